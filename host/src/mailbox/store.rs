//! The mailbox store: one Maildir per mailbox under `<data_dir>/mailboxes/<name>/`.
//!
//! Delivery follows the Maildir protocol so that ordinary Maildir tools read what we write: the
//! message is written to `tmp/` under a unique name and fsync'd, then renamed into `new/`, and
//! the directory is fsync'd; only then is the delivery reported done.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The mailboxes of this node.
#[derive(Debug)]
pub struct MailboxStore {
    root: PathBuf,
    hostname: String,
    counter: AtomicU64,
}

impl MailboxStore {
    /// The store under `root`.
    pub fn new(root: PathBuf, hostname: &str) -> Self {
        Self {
            root,
            hostname: hostname.replace(['/', ':'], "_"),
            counter: AtomicU64::new(0),
        }
    }

    /// The Maildir of a mailbox.
    pub fn maildir(&self, mailbox: &str) -> PathBuf {
        self.root.join(mailbox)
    }

    /// Creates the Maildir folders of a mailbox (inbox, `.Sent`, `.Outbox`).
    pub fn create(&self, mailbox: &str) -> std::io::Result<()> {
        let dir = self.maildir(mailbox);
        for folder in [dir.clone(), dir.join(".Sent"), dir.join(".Outbox")] {
            for sub in ["tmp", "new", "cur"] {
                fs::create_dir_all(folder.join(sub))?;
            }
        }
        Ok(())
    }

    /// Delivers `message` into the inbox of `mailbox`; returns the file's path in `new/`.
    pub fn deliver(&self, mailbox: &str, message: &[u8]) -> std::io::Result<PathBuf> {
        self.deliver_to(&self.maildir(mailbox), message)
    }

    /// Delivers into the Maildir folder `folder`.
    pub fn deliver_to(&self, folder: &Path, message: &[u8]) -> std::io::Result<PathBuf> {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(folder.join(sub))?;
        }
        let name = self.unique_name();
        let tmp = folder.join("tmp").join(&name);
        let new = folder.join("new").join(&name);
        {
            let mut file = File::create(&tmp)?;
            file.write_all(message)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &new)?;
        File::open(folder.join("new"))?.sync_all()?;
        Ok(new)
    }

    /// A Maildir unique name: `seconds.MmicrosPpidQcounter.host`, zero-padded so that names
    /// sort in delivery order.
    fn unique_name(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}.M{:06}P{}Q{:09}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed),
            self.hostname
        )
    }
}
