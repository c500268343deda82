//! The control socket: how `mta` commands talk to the running server.
//!
//! The server listens on `<data_dir>/run/control.sock`, a Unix socket only its owner may open
//! (mode 0600, in the 0700 run directory). A command connects, writes one [`Request`] as a JSON
//! line, and reads one [`Response`] line; a response that carries bytes (an exported message)
//! says how many follow it. When no server answers, commands that only read fall back to the
//! files and say so; commands that change something need the server, which does them one at a
//! time.

mod server;

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use server::{serve, Control};

use crate::transport::queue_management::MessageFilter;

/// What a command asks of the server.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Roles, listeners, pipelines, queues and back pressure.
    Status,
    /// Reload the host configuration (as SIGHUP does).
    Reload,
    /// Every queue.
    QueueList,
    /// A queue's waiting copies are due now (`unreachable`: routed again).
    QueueRetry { queue: String },
    /// Suspend a delivery queue.
    QueueSuspend { queue: String },
    /// Resume a delivery queue.
    QueueResume { queue: String },
    /// Route the Unreachable queue again.
    QueueResubmit { queue: String },
    /// The messages matching a filter.
    MessageList { filter: MessageFilter },
    /// Suspend a message.
    MessageSuspend { id: String },
    /// Resume a message.
    MessageResume { id: String },
    /// Remove a message, with or without a report to its sender.
    MessageRemove { id: String, ndr: bool },
    /// A message's bytes.
    MessageExport { id: String },
    /// From Poison or quarantine back to the Submission queue.
    MessageRelease { id: String },
    /// To another recipient.
    MessageRedirect { id: String, to: String },
}

impl Request {
    /// How long a command waits for the answer. The status counts queue files (without reading
    /// them), and commands that only want to know what a server runs (`mta agent ...`) must
    /// not hang on a stopped or stuck one; listing a large queue reads many files: generous,
    /// but never forever.
    pub fn answer_within(&self) -> Duration {
        match self {
            Request::Status => Duration::from_secs(15),
            _ => Duration::from_secs(300),
        }
    }
}

/// The server's answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the request returns.
    #[serde(default)]
    pub result: serde_json::Value,
    /// Bytes that follow the line (an exported message).
    #[serde(default)]
    pub payload: usize,
    /// The server's process id.
    #[serde(default)]
    pub pid: u32,
}

/// What `mta status` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server's process id.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    /// Its host configuration file (none: the embedded defaults).
    pub config: Option<String>,
    /// Its data directory.
    pub data_dir: String,
    /// The roles it runs.
    pub roles: Vec<String>,
    /// Each role's SMTP listener: service and address.
    pub listeners: Vec<(String, String)>,
    /// Each service's agent pipeline.
    pub pipelines: Vec<PipelineStatus>,
    /// Items per queue, when it runs the Transport role.
    pub queues: Vec<(String, usize)>,
    /// Back pressure, when it runs the Transport role.
    pub back_pressure: Option<crate::transport::back_pressure::Pressure>,
    /// The host configuration's reloads.
    #[serde(default)]
    pub configuration: crate::reconfiguration::ReloadState,
}

/// One service's agent pipeline, for `mta status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PipelineStatus {
    /// The service.
    pub service: String,
    /// Its agents file (absolute).
    pub file: Option<String>,
    /// The running pipeline's generation.
    pub generation: u64,
    /// Enabled agents in it.
    pub agents: usize,
    /// The last reload's error, if it failed (the running pipeline is older).
    pub last_error: Option<String>,
    /// Quarantined agents.
    pub quarantined: Vec<String>,
}

/// The control socket of a server whose data directory is `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("run").join("control.sock")
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No server listens on the socket (none runs with this data directory).
    #[error("no server is running (nothing listens on {0})")]
    NotRunning(PathBuf),
    /// The server could not be reached or answered nonsense.
    #[error("the control socket {path}: {error}")]
    Failed {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        error: std::io::Error,
    },
}

/// Sends `request` to the server of `data_dir`; its response and the bytes that follow it.
pub fn call(data_dir: &Path, request: &Request) -> Result<(Response, Vec<u8>), CallError> {
    let path = socket_path(data_dir);
    let failed = |error| CallError::Failed {
        path: path.clone(),
        error,
    };
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(CallError::NotRunning(path));
        }
        Err(e) => return Err(failed(e)),
    };
    let _ = stream.set_read_timeout(Some(request.answer_within()));
    let mut line = serde_json::to_vec(request).map_err(|e| failed(e.into()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(failed)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(|e| match e.kind() {
        // The read timeout: say so, not "Resource temporarily unavailable".
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            failed(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", request.answer_within().as_secs()),
            ))
        }
        _ => failed(e),
    })?;
    let response: Response = serde_json::from_str(&answer).map_err(|e| {
        failed(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unreadable answer: {e}"),
        ))
    })?;
    let mut payload = vec![0; response.payload];
    reader.read_exact(&mut payload).map_err(failed)?;
    Ok((response, payload))
}
