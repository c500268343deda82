//! The Transport service's file-system entries into the Submission queue: the **pickup**
//! directory (plain messages, envelope taken from their headers) and the **replay** directory
//! (messages carrying their envelope in leading `X-Sender` / `X-Receiver` fields).
//!
//! Both are polled. A file is claimed by renaming it to `.tmp` (so another poller or a restart
//! never takes it twice), read a piece at a time (its body spooled, never whole in memory),
//! submitted durably, then deleted; a file that cannot be read as a message is renamed `.bad`
//! and left for the operator. While back pressure holds new mail back, files wait.

pub mod pickup;
pub mod replay;

use crate::message::body::SpoolPlace;
use crate::message::{MailItem, Message};
use crate::smtp::receive::Sink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How a directory turns a file into a mail item.
pub trait Format: Send + Sync + 'static {
    /// The directory's name in logs.
    fn name(&self) -> &'static str;
    /// Makes a file's message (CRLF line endings) a mail item, or says why it is bad.
    fn read(&self, message: Message) -> Result<MailItem, String>;
}

/// Polls `dir` every `interval`, submitting at most `per_poll` files each time; large bodies
/// are spooled to `spool`.
pub async fn watch(
    dir: PathBuf,
    format: Arc<dyn Format>,
    sink: Arc<dyn Sink>,
    spool: SpoolPlace,
    interval: Duration,
    per_poll: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(message = "Cannot create directory.", dir = %dir.display(), error = %e);
        return;
    }
    // Files claimed before a crash are taken again.
    for path in files(&dir, "tmp") {
        let _ = std::fs::rename(&path, path.with_extension("eml"));
    }
    loop {
        for path in files(&dir, "eml").into_iter().take(per_poll) {
            if sink.paused() {
                // Back pressure: the files wait where they are.
                break;
            }
            take(&path, format.as_ref(), sink.as_ref(), &spool).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .is_some_and(|x| x.eq_ignore_ascii_case(extension))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

async fn take(path: &Path, format: &dyn Format, sink: &dyn Sink, spool: &SpoolPlace) {
    let claimed = path.with_extension("tmp");
    if std::fs::rename(path, &claimed).is_err() {
        return; // someone else took it
    }
    let (file, place) = (claimed.clone(), spool.clone());
    let read = tokio::task::spawn_blocking(move || crate::message::file::read(&file, Some(&place)))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let message = match read {
        Ok(message) => message,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            tracing::warn!(message = "Bad message file; renamed .bad.", directory = format.name(), path = %path.display(), reason = %e);
            let _ = std::fs::rename(&claimed, path.with_extension("bad"));
            return;
        }
        Err(e) => {
            tracing::warn!(message = "Cannot read file.", directory = format.name(), path = %claimed.display(), error = %e);
            let _ = std::fs::rename(&claimed, path);
            return;
        }
    };
    let mut item = match format.read(message) {
        Ok(item) => item,
        Err(reason) => {
            tracing::warn!(message = "Bad message file; renamed .bad.", directory = format.name(), path = %path.display(), reason = %reason);
            let _ = std::fs::rename(&claimed, path.with_extension("bad"));
            return;
        }
    };
    // The directories are this host's own: whoever can write there is trusted.
    item.trace.vouched = true;
    match sink.submit(item).await {
        Ok(reply) => {
            tracing::info!(message = "Submitted from directory.", directory = format.name(), file = %path.display(), reply = %reply);
            let _ = std::fs::remove_file(&claimed);
        }
        Err(reply) if reply.is_permanent() => {
            tracing::warn!(message = "Message refused; renamed .bad.", directory = format.name(), path = %path.display(), reply = %reply);
            let _ = std::fs::rename(&claimed, path.with_extension("bad"));
        }
        Err(reply) => {
            // Try again at the next poll.
            tracing::warn!(message = "Submission failed; will retry.", directory = format.name(), path = %path.display(), reply = %reply);
            let _ = std::fs::rename(&claimed, path);
        }
    }
}
