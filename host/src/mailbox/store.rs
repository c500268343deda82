//! The mailbox store: one Maildir per mailbox under `<data_dir>/mailboxes/<name>/`.
//!
//! Delivery follows the Maildir protocol so that ordinary Maildir tools read what we write: the
//! message is written to `tmp/` under a unique name and fsync'd, then renamed into `new/`, and
//! the directory is fsync'd; only then is the delivery reported done.
//!
//! Files are stored as Postfix and Dovecot store them: LF line endings (each CRLF of the
//! message becomes LF; a bare CR or LF stays as it is), a `Return-Path:` with the envelope
//! sender first (RFC 5321 4.4), then `Delivered-To:` with the recipient.

use crate::message::Message;
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

/// A message as stored, with LF line endings: converted once for all of its recipients when
/// it is in memory; a spooled body is converted as it is written, a piece at a time.
pub struct StoredCopy {
    message: Message,
    converted: Option<Vec<u8>>,
}

impl StoredCopy {
    /// The message, to be stored with every CRLF turned into LF.
    pub fn new(message: &Message) -> Self {
        let converted = message.body().in_memory().map(|body| {
            let mut all = message.head();
            all.extend_from_slice(body);
            to_lf(&all)
        });
        Self {
            message: message.clone(),
            converted,
        }
    }

    /// Writes the converted message. Blocking.
    fn write_into(&self, out: &mut impl Write) -> std::io::Result<()> {
        if let Some(bytes) = &self.converted {
            return out.write_all(bytes);
        }
        let mut lf = LfStream::default();
        let mut buffer = Vec::new();
        lf.push(&self.message.head(), &mut buffer);
        out.write_all(&buffer)?;
        self.message.body().for_each_chunk(|chunk| {
            buffer.clear();
            lf.push(chunk, &mut buffer);
            out.write_all(&buffer)
        })?;
        buffer.clear();
        lf.finish(&mut buffer);
        out.write_all(&buffer)
    }
}

/// [`to_lf`] across the pieces of a stream: a CR at the end of a piece waits for the next.
#[derive(Default)]
struct LfStream {
    cr: bool,
}

impl LfStream {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        out.reserve(bytes.len() + 1);
        for &b in bytes {
            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    out.push(b'\n');
                    continue;
                }
                out.push(b'\r');
            }
            if b == b'\r' {
                self.cr = true;
            } else {
                out.push(b);
            }
        }
    }

    fn finish(self, out: &mut Vec<u8>) {
        if self.cr {
            out.push(b'\r');
        }
    }
}

/// `bytes` with every CRLF pair turned into LF.
pub fn to_lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = memchr::memmem::find(rest, b"\r\n") {
        out.extend_from_slice(&rest[..at]);
        out.push(b'\n');
        rest = &rest[at + 2..];
    }
    out.extend_from_slice(rest);
    out
}

/// An address as written in a trace field: without line breaks or angle brackets.
fn trace_address(address: &str) -> String {
    address
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '<' | '>'))
        .collect()
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

    /// Delivers `copy` into the inbox of `mailbox` for `recipient`, from the envelope sender
    /// `from`; returns the file's path in `new/`.
    pub fn deliver(
        &self,
        mailbox: &str,
        from: &str,
        recipient: &str,
        copy: &StoredCopy,
    ) -> std::io::Result<PathBuf> {
        let head = format!(
            "Return-Path: <{}>\nDelivered-To: {}\n",
            trace_address(from),
            trace_address(recipient)
        );
        self.write(&self.maildir(mailbox), |file| {
            file.write_all(head.as_bytes())?;
            copy.write_into(file)
        })
    }

    /// Delivers a message as it is (already in LF form) into the Maildir folder `folder`.
    pub fn deliver_to(&self, folder: &Path, message: &[u8]) -> std::io::Result<PathBuf> {
        self.write(folder, |file| file.write_all(message))
    }

    fn write(
        &self,
        folder: &Path,
        contents: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>,
    ) -> std::io::Result<PathBuf> {
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(folder.join(sub))?;
        }
        let name = self.unique_name();
        let tmp = folder.join("tmp").join(&name);
        let new = folder.join("new").join(&name);
        let written = (|| {
            let mut file = std::io::BufWriter::with_capacity(64 * 1024, File::create(&tmp)?);
            contents(&mut file)?;
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&tmp, &new)?;
            File::open(folder.join("new"))?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_becomes_lf_and_the_rest_stays() {
        assert_eq!(to_lf(b"a\r\nb\rc\nd\r\r\n"), b"a\nb\rc\nd\r\n");
        let raw = b"a\r\nb\rc\nd\r\r\n\r";
        for cut in 0..raw.len() {
            let (mut lf, mut out) = (LfStream::default(), Vec::new());
            lf.push(&raw[..cut], &mut out);
            lf.push(&raw[cut..], &mut out);
            lf.finish(&mut out);
            assert_eq!(out, to_lf(raw), "cut at {cut}");
        }
        assert_eq!(to_lf(b""), b"");
        assert_eq!(trace_address("a\r\n>b@c"), "ab@c");
    }
}
