//! The Transport service's file-system entries into the Submission queue: the **pickup**
//! directory (plain messages, envelope taken from their headers) and the **replay** directory
//! (messages carrying their envelope in leading `X-Sender` / `X-Receiver` fields).
//!
//! Both are polled for files named `*.eml`. A file is claimed by renaming it to
//! `*.eml.mta-claimed` (a suffix no writer uses, so a restart takes back only what this host
//! claimed, never a writer's half-written temporary file), opened without following symlinks
//! and read a piece at a time (its body spooled, never whole in memory), submitted durably,
//! then deleted. A file that is not a regular file, is larger than the Transport receive
//! connector's size limit, or cannot be read as a message is renamed `*.bad` and logged for
//! the operator. While back pressure holds new mail back, files wait.

pub mod pickup;
pub mod replay;

use crate::message::body::SpoolPlace;
use crate::message::{MailItem, Message};
use crate::service::Service;
use crate::smtp::receive::Sink;
use crate::tracking::{EventId, Record};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The suffix of a claimed file.
const CLAIMED: &str = ".mta-claimed";

/// How a directory turns a file into a mail item.
pub trait Format: Send + Sync + 'static {
    /// The directory's name in logs.
    fn name(&self) -> &'static str;
    /// Makes a file's message (CRLF line endings) a mail item, or says why it is bad.
    fn read(&self, message: Message) -> Result<MailItem, String>;
}

/// How a directory is polled.
#[derive(Clone, Debug)]
pub struct Polling {
    /// Between polls.
    pub interval: Duration,
    /// Most files taken per poll.
    pub per_poll: usize,
    /// Largest message taken, in bytes.
    pub max_size: u64,
}

/// Polls `dir`, submitting its files; large bodies are spooled to `spool`.
pub async fn watch(
    dir: PathBuf,
    format: Arc<dyn Format>,
    sink: Arc<dyn Sink>,
    spool: SpoolPlace,
    polling: Polling,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(message = "Cannot create directory.", dir = ?dir, error = %e);
        return;
    }
    // Files this host claimed before a crash are taken again.
    for (path, name) in files(&dir, CLAIMED) {
        let _ = std::fs::rename(&path, dir.join(&name[..name.len() - CLAIMED.len()]));
    }
    loop {
        for (path, name) in files(&dir, ".eml").into_iter().take(polling.per_poll) {
            if sink.paused() {
                // Back pressure: the files wait where they are.
                break;
            }
            take(
                &dir,
                &path,
                &name,
                format.as_ref(),
                sink.as_ref(),
                &spool,
                &polling,
            )
            .await;
        }
        tokio::select! {
            _ = tokio::time::sleep(polling.interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// The entries of `dir` whose name ends with `suffix` (ignoring case), sorted.
fn files(dir: &Path, suffix: &str) -> Vec<(PathBuf, String)> {
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_string();
                    let lower = name.to_ascii_lowercase();
                    (lower.ends_with(suffix) && name.len() > suffix.len()).then(|| (e.path(), name))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// What follows a file's fate: `x.eml` becomes `x.bad`.
fn bad_name(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.bad", &name[..name.len() - ".eml".len()]))
}

/// The tracking log's name for a directory.
fn origin(format: &dyn Format) -> &'static str {
    if format.name() == "replay" {
        "REPLAY"
    } else {
        "PICKUP"
    }
}

async fn take(
    dir: &Path,
    path: &Path,
    name: &str,
    format: &dyn Format,
    sink: &dyn Sink,
    spool: &SpoolPlace,
    polling: &Polling,
) {
    let claimed = dir.join(format!("{name}{CLAIMED}"));
    let bad = |reason: &str| {
        tracing::warn!(message = "Bad message file; renamed .bad.", directory = format.name(), file = ?name, reason = ?reason);
        Record::new(EventId::Badmail, Service::Transport)
            .source(origin(format))
            .detail(format!("{name}: {reason}"))
            .write();
        let _ = std::fs::rename(&claimed, bad_name(dir, name));
    };
    if std::fs::rename(path, &claimed).is_err() {
        return; // someone else took it
    }
    let (file, place, max) = (claimed.clone(), spool.clone(), polling.max_size);
    let read = tokio::task::spawn_blocking(move || {
        crate::message::file::read_limited(&file, Some(&place), max)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let message = match read {
        Ok(message) => message,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return bad(&e.to_string()),
        Err(e) => {
            tracing::warn!(message = "Cannot read file.", directory = format.name(), file = ?name, error = %e);
            let _ = std::fs::rename(&claimed, path);
            return;
        }
    };
    let mut item = match format.read(message) {
        Ok(item) => item,
        Err(reason) => return bad(&reason),
    };
    // The directories are this host's own: whoever can write there is trusted.
    item.trace.vouched = true;
    item.trace.origin = Some(origin(format));
    let tracked = Record::item(EventId::Badmail, Service::Transport, &item).source(origin(format));
    match sink.submit(item).await {
        Ok(reply) => {
            tracing::info!(message = "Submitted from directory.", directory = format.name(), file = ?name, reply = %reply);
            let _ = std::fs::remove_file(&claimed);
        }
        Err(reply) if reply.is_permanent() => {
            tracing::warn!(message = "Message refused; renamed .bad.", directory = format.name(), file = ?name, reply = %reply);
            tracked.reply(&reply).detail(name).write();
            let _ = std::fs::rename(&claimed, bad_name(dir, name));
        }
        Err(reply) => {
            // Try again at the next poll.
            tracing::warn!(message = "Submission failed; will retry.", directory = format.name(), file = ?name, reply = %reply);
            let _ = std::fs::rename(&claimed, path);
        }
    }
}
