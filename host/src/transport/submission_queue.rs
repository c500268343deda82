//! Queue directories (`deferred`, `unreachable`, `quarantine`, `poison`, `delivery-*`): one
//! file per item, `<id>.msg`, written under a temporary name, fsync'd, renamed into place, and
//! the directory fsync'd. After a crash, every file there is an item still queued; recovery is
//! a directory scan.
//!
//! File format: a first line `MTAQ1 <n>\n`, then `n` bytes of JSON (envelope, properties,
//! quarantine reason, trace), then the message bytes. A spooled body is not copied into the
//! file: it is `<id>.body` beside it, a hard link to the spool file (the JSON names it), and
//! the message bytes are then the header block alone.

use crate::message::{Envelope, MailItem, Message};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Serialize, Deserialize)]
struct Meta {
    envelope: Envelope,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quarantine: Option<String>,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    trace: crate::message::Trace,
    /// The spooled body's file, relative to the queue's directory (the journal's: its spool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<BodyFile>,
}

/// A body kept in its own file.
#[derive(Serialize, Deserialize)]
struct BodyFile {
    file: String,
    ascii: bool,
}

/// A directory-backed durable queue.
#[derive(Debug)]
pub struct QueueDir {
    dir: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

impl QueueDir {
    /// Opens (creating) the queue `name` under `<data_dir>/queue/`.
    pub fn open(data_dir: &Path, name: &str) -> std::io::Result<Self> {
        let dir = data_dir.join("queue").join(name);
        let tmp = data_dir.join("queue").join("tmp");
        fs::create_dir_all(&dir)?;
        fs::create_dir_all(&tmp)?;
        Ok(Self {
            dir,
            tmp,
            counter: AtomicU64::new(0),
        })
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new queue id, unique on this node: time, process and counter.
    pub fn new_id(&self) -> String {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        format!(
            "{micros:X}{:X}{:04X}",
            std::process::id() & 0xFFFF,
            self.counter.fetch_add(1, Ordering::Relaxed) & 0xFFFF
        )
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.msg"))
    }

    fn body_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.body"))
    }

    /// Removes what a crash left half made: a body without its item, a copy never finished.
    /// Only while nothing else writes the queue (at start-up). Blocking.
    pub fn collect_orphans(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)?.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = match name.strip_suffix(".body") {
                Some(id) => !self.path(id).exists(),
                None => name.ends_with(".body-tmp"),
            };
            if orphan && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Writes `item` durably under its id (assigning one if empty). Blocking.
    pub fn store(&self, item: &mut MailItem, attempts: u32) -> std::io::Result<String> {
        if item.id.is_empty() {
            item.id = self.new_id();
        }
        let body_file = if item.message.body().is_spooled() {
            let at = self.body_path(&item.id);
            item.message.body().persist_at(&at)?;
            Some(format!("{}.body", item.id))
        } else {
            None
        };
        let bytes = encode(item, attempts, body_file.as_deref())?;
        let tmp = self.tmp.join(format!("{}.{}", item.id, std::process::id()));
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, self.path(&item.id))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(item.id.clone())
    }

    /// Reads a queued item and its attempt count. Blocking.
    pub fn load(&self, id: &str) -> std::io::Result<(MailItem, u32)> {
        decode(id, &fs::read(self.path(id))?, Some(&self.dir))
    }

    /// Reads a queued item's envelope and trace only, not its message. Blocking.
    pub fn load_meta(&self, id: &str) -> std::io::Result<(MailItem, u32)> {
        use std::io::{BufRead, Read};
        let mut file = std::io::BufReader::new(File::open(self.path(id))?);
        let mut first = Vec::new();
        file.read_until(b'\n', &mut first)?;
        let len: usize = std::str::from_utf8(&first)
            .ok()
            .and_then(|h| h.trim_end().strip_prefix("MTAQ1 "))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("queue file {id}: bad header line"),
                )
            })?;
        let mut json = vec![0u8; len];
        file.read_exact(&mut json)?;
        let mut bytes = first;
        bytes.extend_from_slice(&json);
        decode(id, &bytes, None)
    }

    /// Removes an item (and its body file), durably. Blocking.
    pub fn remove(&self, id: &str) -> std::io::Result<()> {
        let removed = match fs::remove_file(self.path(id)) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        match fs::remove_file(self.body_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && removed => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        File::open(&self.dir)?.sync_all()
    }

    /// Moves an item (and its body file) to another queue (same filesystem), durably.
    /// Blocking.
    pub fn move_to(&self, id: &str, other: &QueueDir) -> std::io::Result<()> {
        match fs::rename(self.body_path(id), other.body_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::rename(self.path(id), other.path(id))?;
        File::open(&other.dir)?.sync_all()?;
        File::open(&self.dir)?.sync_all()
    }

    /// Ids of every queued item, oldest first (ids sort by time).
    pub fn ids(&self) -> std::io::Result<Vec<String>> {
        let mut ids: Vec<String> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".msg"))
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// The bytes of a queued item: `MTAQ1 <n>\n`, `n` bytes of JSON metadata, the message. A
/// spooled body kept in `body_file` (relative to where the item is kept) is named, not copied;
/// without `body_file`, it is read back into the bytes (blocking).
pub fn encode(item: &MailItem, attempts: u32, body_file: Option<&str>) -> std::io::Result<Vec<u8>> {
    let body = item.message.body();
    let reference = body_file
        .filter(|_| body.is_spooled())
        .map(|file| BodyFile {
            file: file.to_string(),
            ascii: body.is_ascii(),
        });
    let meta = Meta {
        envelope: item.envelope.clone(),
        properties: item.properties.clone(),
        quarantine: item.quarantine.clone(),
        attempts,
        trace: item.trace.clone(),
        body: reference,
    };
    let json = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(json.len() + item.message.memory_len() + 32);
    bytes.extend_from_slice(format!("MTAQ1 {}\n", json.len()).as_bytes());
    bytes.extend_from_slice(&json);
    if meta.body.is_some() {
        bytes.extend_from_slice(&item.message.head());
    } else {
        item.message.write_to(&mut bytes)?;
    }
    Ok(bytes)
}

/// Reads [`encode`]'s bytes back; a body kept in its own file is opened in `base` (with no
/// `base`, the item comes back with an empty body: for listings).
pub fn decode(id: &str, bytes: &[u8], base: Option<&Path>) -> std::io::Result<(MailItem, u32)> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("queue file {id}: {what}"),
        )
    };
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no header line"))?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| bad("header not UTF-8"))?;
    let len: usize = header
        .strip_prefix("MTAQ1 ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad("bad header line"))?;
    let json_end = newline + 1 + len;
    let meta: Meta = serde_json::from_slice(
        bytes
            .get(newline + 1..json_end)
            .ok_or_else(|| bad("truncated"))?,
    )
    .map_err(|e| bad(&e.to_string()))?;
    Ok((
        MailItem {
            id: id.to_string(),
            envelope: meta.envelope,
            message: match (&meta.body, base) {
                (Some(body), Some(base)) => Message::with_body(
                    &bytes[json_end..],
                    crate::message::MessageBody::open(&base.join(&body.file), body.ascii)
                        .map_err(|e| bad(&format!("its body {}: {e}", body.file)))?,
                ),
                _ => Message::parse(&bytes[json_end..]),
            },
            properties: meta.properties,
            quarantine: meta.quarantine,
            trace: meta.trace,
        },
        meta.attempts,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::EnvelopeRecipient;

    #[test]
    fn store_load_remove() {
        let dir = std::env::temp_dir().join(format!("mta-queue-test-{}", std::process::id()));
        let q = QueueDir::open(&dir, "submission").unwrap();
        let mut item = MailItem {
            envelope: Envelope {
                from: "a@b.test".into(),
                recipients: vec![EnvelopeRecipient::new("alice@example.test")],
                ..Default::default()
            },
            message: Message::parse(b"Subject: x\r\n\r\nbody\r\n"),
            ..Default::default()
        };
        item.properties.insert("k".into(), "v".into());
        let id = q.store(&mut item, 2).unwrap();
        assert_eq!(q.ids().unwrap(), std::slice::from_ref(&id));
        let (back, attempts) = q.load(&id).unwrap();
        assert_eq!(attempts, 2);
        assert_eq!(back.envelope, item.envelope);
        assert_eq!(back.message.to_bytes(), item.message.to_bytes());
        assert_eq!(back.properties["k"], "v");
        q.remove(&id).unwrap();
        assert!(q.ids().unwrap().is_empty());
        let _ = fs::remove_dir_all(dir);
    }
}
