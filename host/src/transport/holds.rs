//! What an operator suspended: delivery queues (`mta queue suspend`) and messages
//! (`mta message suspend`), kept in `queue/suspended.json` so a suspension survives a restart
//! until the operator resumes it.
//!
//! A suspended message is named by its queue id; the copies split off it per next hop
//! (`ID-0`, `ID-1`, ...) are held with it, so the id the client was given in the 250 reply
//! holds every copy.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file's contents.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Held {
    #[serde(default)]
    queues: BTreeSet<String>,
    #[serde(default)]
    messages: BTreeSet<String>,
}

/// The suspended queues and messages of a Transport node.
#[derive(Debug)]
pub struct Holds {
    path: PathBuf,
    held: Mutex<Held>,
}

/// Whether the copy `id` belongs to the message `wanted`: the message itself or one of the
/// copies split off it per next hop (`wanted-N`).
pub fn is_copy_of(id: &str, wanted: &str) -> bool {
    id == wanted
        || id
            .strip_prefix(wanted)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Holds {
    /// Reads `<queue_root>/suspended.json`; a missing or unreadable file holds nothing (an
    /// unreadable one is logged).
    pub fn open(queue_root: &Path) -> Self {
        let path = queue_root.join("suspended.json");
        let held = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(message = "Unreadable suspensions file; nothing is suspended.", path = %path.display(), error = %e);
                Held::default()
            }),
            Err(_) => Held::default(),
        };
        Self {
            path,
            held: Mutex::new(held),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the queue `name` is suspended.
    pub fn queue_suspended(&self, name: &str) -> bool {
        self.lock().queues.contains(name)
    }

    /// Whether the copy `id` belongs to a suspended message.
    pub fn message_suspended(&self, id: &str) -> bool {
        let held = self.lock();
        !held.messages.is_empty() && held.messages.iter().any(|m| is_copy_of(id, m))
    }

    /// The suspended messages.
    pub fn messages(&self) -> Vec<String> {
        self.lock().messages.iter().cloned().collect()
    }

    /// Suspends or resumes a queue; whether that changed anything. Durable when it returns.
    pub fn set_queue(&self, name: &str, suspended: bool) -> std::io::Result<bool> {
        self.change(|h| {
            if suspended {
                h.queues.insert(name.to_string())
            } else {
                h.queues.remove(name)
            }
        })
    }

    /// Suspends or resumes a message; whether that changed anything. Durable when it returns.
    pub fn set_message(&self, id: &str, suspended: bool) -> std::io::Result<bool> {
        self.change(|h| {
            if suspended {
                h.messages.insert(id.to_string())
            } else {
                h.messages.remove(id)
            }
        })
    }

    /// Applies `edit` and writes the file (fsync'd) if it changed anything; on a failed write
    /// the change is undone, so memory never says more than the disk.
    fn change(&self, edit: impl FnOnce(&mut Held) -> bool) -> std::io::Result<bool> {
        let mut held = self.lock();
        let before = held.clone();
        if !edit(&mut held) {
            return Ok(false);
        }
        let json = serde_json::to_vec_pretty(&*held).map_err(std::io::Error::other)?;
        if let Err(e) = crate::fsutil::write_atomic(&self.path, &json) {
            *held = before;
            return Err(e);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_holds_its_copies_per_next_hop_and_nothing_else() {
        assert!(is_copy_of("19A2F", "19A2F"));
        assert!(is_copy_of("19A2F-0", "19A2F"));
        assert!(is_copy_of("19A2F-12", "19A2F"));
        assert!(!is_copy_of("19A2F0", "19A2F"));
        assert!(!is_copy_of("19A2F-", "19A2F"));
        assert!(!is_copy_of("19A2F-x", "19A2F"));
        assert!(!is_copy_of("19A2", "19A2F"));
    }

    #[test]
    fn suspensions_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("mta-holds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let holds = Holds::open(&dir);
        assert!(holds.set_queue("delivery-send-Out", true).unwrap());
        assert!(!holds.set_queue("delivery-send-Out", true).unwrap());
        assert!(holds.set_message("ABC", true).unwrap());
        let again = Holds::open(&dir);
        assert!(again.queue_suspended("delivery-send-Out"));
        assert!(again.message_suspended("ABC-1"));
        assert!(again.set_message("ABC", false).unwrap());
        assert!(!Holds::open(&dir).message_suspended("ABC"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
