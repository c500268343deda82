//! The command line's side of the control socket: ask the running server, or read the files
//! when none runs, and say which; changes need the server.

use crate::config::HostConfig;
use crate::control::{call, CallError, Request, Response, ServerStatus};
use crate::transport::delivery::now_ms;
use serde::de::DeserializeOwned;
use std::process::ExitCode;

/// Where a listing came from.
pub enum Source {
    /// The running server, with its process id.
    Live(u32),
    /// The files: no server runs.
    Files,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Live(pid) => write!(f, "Live, from the running server (pid {pid})."),
            Source::Files => write!(f, "From the queue files: no server is running."),
        }
    }
}

/// Asks the running server; when none runs, `offline` reads the files.
pub fn read<T: DeserializeOwned>(
    config: &HostConfig,
    request: &Request,
    offline: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(Source, T)> {
    match call(&config.data_dir, request) {
        Ok((response, _)) => {
            let pid = response.pid;
            Ok((
                Source::Live(pid),
                serde_json::from_value(answer(response)?)?,
            ))
        }
        Err(CallError::NotRunning(_)) => Ok((Source::Files, offline()?)),
        Err(e) => Err(e.into()),
    }
}

/// The running server's status, if one runs.
pub fn status(config: &HostConfig) -> anyhow::Result<Option<ServerStatus>> {
    match call(&config.data_dir, &Request::Status) {
        Ok((response, _)) => Ok(Some(serde_json::from_value(answer(response)?)?)),
        Err(CallError::NotRunning(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn answer(response: Response) -> anyhow::Result<serde_json::Value> {
    if response.ok {
        Ok(response.result)
    } else {
        anyhow::bail!("{}", response.error.unwrap_or_else(|| "refused".into()))
    }
}

/// Asks the running server to change something and prints what it did; exits 1 when it
/// refused (the reason on standard error).
pub fn change(config: &HostConfig, request: &Request) -> anyhow::Result<ExitCode> {
    let (response, _) = call(&config.data_dir, request).map_err(|e| match e {
        CallError::NotRunning(path) => anyhow::anyhow!(
            "no server is running (nothing listens on {}): this command changes the queues of a running server; start it with `mta run`",
            path.display()
        ),
        e => e.into(),
    })?;
    if response.ok {
        println!(
            "{}",
            response
                .result
                .as_str()
                .unwrap_or(&response.result.to_string())
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "refused: {}",
            response.error.as_deref().unwrap_or("no reason given")
        );
        Ok(ExitCode::FAILURE)
    }
}

fn span(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// How long ago `ms` (since the epoch) was; `-` for none.
pub fn age(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    span(now_ms().saturating_sub(ms) / 1000)
}

/// How long until `ms` (since the epoch); `now` when past, `-` for none.
pub fn until(ms: u64) -> String {
    match ms {
        0 => "-".into(),
        ms if ms <= now_ms() => "now".into(),
        ms => format!("in {}", span((ms - now_ms()).div_ceil(1000))),
    }
}

/// A size in bytes, short.
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b < 10 * 1024 => format!("{b}B"),
        b if b < 10 * 1024 * 1024 => format!("{}K", b / 1024),
        b => format!("{}M", b / (1024 * 1024)),
    }
}
