//! The Submission queue's journal: group commit for accepted messages.
//!
//! Every accepted mail item is appended to the current segment of an append-only journal under
//! `<data_dir>/queue/journal/`. One writer thread takes every append waiting at that moment,
//! writes them in one go and calls `fdatasync` once: a single flush makes the whole batch
//! durable, and only then is each client answered 250. So durability costs one flush per batch
//! instead of one or two per message.
//!
//! When every copy of an item is settled (delivered, failed, or written to its delivery queue's
//! fsync'd file), a `done` record is appended without waiting for a flush: if a crash loses it,
//! the item is simply processed again (at-least-once); a stop flushes them ([`Journal::sync`]).
//! A segment whose items are all done is deleted; segments rotate at [`SEGMENT_MAX`] bytes, and
//! at each rotation the live records of older segments are carried forward into the new one
//! (compaction), so one long-lived item never keeps later segments on disk.
//!
//! A write that fails (a full disk) fails its whole batch, and nothing more is written to that
//! segment: appends are refused (the client gets 4xx) until a new segment could be opened, so a
//! torn record can only ever be the last of its segment.
//!
//! Record: `0xA7, kind, len (u32 LE), payload, crc32(kind, len, payload) (u32 LE)`. Recovery
//! reads every segment in order. A torn record at the end of a segment was being written when
//! the process died and was never acknowledged; a bad record anywhere else (a damaged disk) is
//! logged with its offset and skipped, and reading goes on at the next valid record.

use crate::message::MailItem;
use crate::transport::submission_queue::{decode, encode};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

/// Segments rotate past this size.
pub const SEGMENT_MAX: u64 = 64 * 1024 * 1024;
/// Live records carried forward per rotation, at most (the rest at the next rotations).
const CARRY_MAX: usize = 10_000;
const MAGIC: u8 = 0xA7;
const APPEND: u8 = 1;
const DONE: u8 = 2;
/// The most appends one flush covers.
const BATCH_MAX: usize = 4096;

enum Request {
    Append {
        id: String,
        payload: Vec<u8>,
        /// The spooled body's file in the spool directory.
        body: Option<String>,
        ack: oneshot::Sender<io::Result<()>>,
    },
    Done {
        id: String,
    },
    /// Makes everything written so far durable.
    Sync {
        ack: oneshot::Sender<io::Result<()>>,
    },
}

/// The journal's handle; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    sender: mpsc::Sender<Request>,
    load: Arc<Load>,
    spool: PathBuf,
}

/// What the journal holds live: the items accepted and not yet settled, and the bytes of their
/// records. Each is also in memory (waiting for the categorizer or in a delivery queue), so
/// back pressure watches these.
#[derive(Debug, Default)]
pub struct Load {
    items: AtomicU64,
    bytes: AtomicU64,
}

impl Load {
    /// Live items.
    pub fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    /// Bytes of their records (a spooled body counts as its reference only).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: u64) {
        self.items.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn remove(&self, bytes: u64) {
        self.items.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Journal {
    /// Opens the journal in `dir`, returning it and the items that were accepted but not done
    /// before the last stop, oldest first, with their attempt counts.
    pub fn open(dir: &Path) -> io::Result<(Self, Vec<(MailItem, u32)>)> {
        Self::open_with(dir, SEGMENT_MAX)
    }

    /// [`open`](Self::open) with segments rotating at `segment_max` bytes (tests use small ones).
    ///
    /// Spooled bodies of the journal's items are in the `spool` directory beside `dir`; a
    /// record names its body's file, which the journal removes once the item is done. Files
    /// there that no live record names (a session that died while receiving) are removed here.
    pub fn open_with(dir: &Path, segment_max: u64) -> io::Result<(Self, Vec<(MailItem, u32)>)> {
        fs::create_dir_all(dir)?;
        let spool = dir.parent().unwrap_or(dir).join("spool");
        fs::create_dir_all(&spool)?;
        let mut segments: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let number = name.strip_suffix(".log")?.parse::<u64>().ok()?;
                Some((number, e.path()))
            })
            .collect();
        segments.sort();
        let mut live: HashMap<String, (u64, Vec<u8>)> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for (number, path) in &segments {
            for (kind, payload) in read_records(path)? {
                let Some((id, rest)) = split_id(&payload) else {
                    continue;
                };
                match kind {
                    APPEND => {
                        if !live.contains_key(&id) {
                            order.push(id.clone());
                        }
                        live.insert(id, (*number, rest.to_vec()));
                    }
                    DONE => {
                        live.remove(&id);
                    }
                    _ => {}
                }
            }
        }
        let mut counts: HashMap<u64, usize> = HashMap::new();
        let mut location = HashMap::new();
        let mut items = Vec::new();
        let load = Arc::new(Load::default());
        for id in order {
            let Some((segment, bytes)) = live.remove(&id) else {
                continue;
            };
            match decode(&id, &bytes, Some(&spool)) {
                Ok(item) => {
                    *counts.entry(segment).or_default() += 1;
                    load.add(bytes.len() as u64);
                    let body = spool_name(&spool, &item.0);
                    location.insert(id, (segment, bytes.len() as u64, body));
                    items.push(item);
                }
                Err(e) => {
                    tracing::error!(message = "Unreadable journal record skipped.", id = %id, error = %e)
                }
            }
        }
        let named: std::collections::HashSet<String> =
            location.values().filter_map(|l| l.2.clone()).collect();
        let mut orphans = 0;
        for entry in fs::read_dir(&spool)?.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !named.contains(&name) && fs::remove_file(entry.path()).is_ok() {
                orphans += 1;
            }
        }
        if orphans > 0 {
            tracing::info!(
                message = "Spool files of messages never accepted removed.",
                count = orphans
            );
        }
        let next = segments.last().map_or(1, |(n, _)| n + 1);
        // Every segment is tracked; finished ones go once all older ones have gone (below).
        for (number, _) in &segments {
            counts.entry(*number).or_default();
        }
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            current: next,
            file: Some(open_segment(dir, next)?),
            size: 0,
            counts,
            location,
            segment_max,
            load: Arc::clone(&load),
            spool: spool.clone(),
        };
        writer.counts.entry(next).or_default();
        // What earlier runs left live moves into the new segment, so the old ones can go.
        writer.carry_forward();
        writer.collect();
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("queue-journal".into())
            .spawn(move || writer.run(receiver))?;
        Ok((
            Self {
                sender,
                load,
                spool,
            },
            items,
        ))
    }

    /// What the journal holds live.
    pub fn load(&self) -> &Arc<Load> {
        &self.load
    }

    /// Appends an item and waits until it is durable. A spooled body is made durable in the
    /// spool directory first, and the record names it.
    pub async fn append(&self, item: &MailItem, attempts: u32) -> io::Result<()> {
        let body = if item.message.body().is_spooled() {
            let (content, spool) = (item.message.body().clone(), self.spool.clone());
            Some(
                tokio::task::spawn_blocking(move || adopt(&content, &spool))
                    .await
                    .map_err(io::Error::other)??,
            )
        } else {
            None
        };
        let payload = encode(item, attempts, body.as_deref())?;
        let (ack, done) = oneshot::channel();
        self.sender
            .send(Request::Append {
                id: item.id.clone(),
                payload,
                body,
                ack,
            })
            .map_err(|_| io::Error::other("the journal writer stopped"))?;
        done.await
            .map_err(|_| io::Error::other("the journal writer stopped"))?
    }

    /// Waits until every record sent so far (done records included) is on disk.
    pub async fn sync(&self) -> io::Result<()> {
        let (ack, done) = oneshot::channel();
        self.sender
            .send(Request::Sync { ack })
            .map_err(|_| io::Error::other("the journal writer stopped"))?;
        done.await
            .map_err(|_| io::Error::other("the journal writer stopped"))?
    }

    /// Records that an item needs the journal no more.
    pub fn done(&self, id: &str) {
        let _ = self.sender.send(Request::Done { id: id.to_string() });
    }
}

struct Writer {
    dir: PathBuf,
    current: u64,
    /// The current segment; `None` after a failed write until a new one could be opened.
    file: Option<File>,
    size: u64,
    /// Live items per segment.
    counts: HashMap<u64, usize>,
    /// Segment, record size and spooled body of each live item.
    location: HashMap<String, (u64, u64, Option<String>)>,
    segment_max: u64,
    load: Arc<Load>,
    spool: PathBuf,
}

impl Writer {
    fn run(&mut self, receiver: mpsc::Receiver<Request>) {
        let mut buffer = Vec::with_capacity(1 << 20);
        while let Ok(first) = receiver.recv() {
            let mut appends: Vec<Appended> = Vec::new();
            let mut dones: Vec<String> = Vec::new();
            let mut syncs = Vec::new();
            buffer.clear();
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Append {
                        id,
                        payload,
                        body,
                        ack,
                    } => {
                        encode_record(&mut buffer, APPEND, &id, &payload);
                        appends.push((id, payload.len() as u64, body, ack));
                    }
                    Request::Done { id } => {
                        encode_record(&mut buffer, DONE, &id, &[]);
                        dones.push(id);
                    }
                    Request::Sync { ack } => syncs.push(ack),
                }
                if appends.len() < BATCH_MAX {
                    next = receiver.try_recv().ok();
                }
            }
            if self.file.is_none() {
                // The last write failed: nothing more goes to that segment.
                self.rotate();
            }
            let result = match self.file.as_mut() {
                None => Err(io::Error::other(
                    "no journal segment can be opened (is the disk full?)",
                )),
                Some(file) => file.write_all(&buffer).and_then(|()| {
                    if appends.is_empty() && syncs.is_empty() {
                        Ok(())
                    } else {
                        file.sync_data()
                    }
                }),
            };
            let failed = result.as_ref().err().map(|e| (e.kind(), e.raw_os_error()));
            let error = || match failed {
                Some((_, Some(code))) => io::Error::from_raw_os_error(code),
                Some((kind, None)) => io::Error::new(kind, "journal write failed"),
                None => io::Error::other("journal write failed"),
            };
            if failed.is_some() {
                for ack in syncs {
                    let _ = ack.send(Err(error()));
                }
                // The batch is not on disk: its appends were refused (their clients get 4xx),
                // so they are not live; its done records may be lost, which only means their
                // items would be processed again after a crash. The segment is not written to
                // again.
                tracing::error!(message = "Journal write failed; appends are refused until a new segment is open.", segment = self.current, error = %error());
                for (_, _, _, ack) in appends {
                    let _ = ack.send(Err(error()));
                }
                for id in dones {
                    if let Some((segment, size, body)) = self.location.remove(&id) {
                        self.load.remove(size);
                        self.remove_body(body);
                        self.release(segment);
                    }
                }
                self.file = None;
                continue;
            }
            self.size += buffer.len() as u64;
            let mut finished = Vec::new();
            for (id, size, body, ack) in appends {
                *self.counts.entry(self.current).or_default() += 1;
                self.load.add(size);
                let kept = body.clone();
                if let Some((old, old_size, old_body)) =
                    self.location.insert(id, (self.current, size, body))
                {
                    self.load.remove(old_size);
                    if old_body != kept {
                        self.remove_body(old_body);
                    }
                    finished.push(old);
                }
                let _ = ack.send(Ok(()));
            }
            for id in dones {
                if let Some((segment, size, body)) = self.location.remove(&id) {
                    self.load.remove(size);
                    self.remove_body(body);
                    finished.push(segment);
                }
            }
            for segment in finished {
                self.release(segment);
            }
            // Answered once the batch is on disk and accounted for: whoever waited sees the
            // load with its done records applied.
            for ack in syncs {
                let _ = ack.send(Ok(()));
            }
            if self.size >= self.segment_max {
                self.rotate();
                self.carry_forward();
            }
        }
    }

    /// Copies the live records of the segments before the current one into it, so those
    /// segments can go. Their items are found again at their new place after a crash (the
    /// last append of an id wins).
    fn carry_forward(&mut self) {
        let old: Vec<u64> = {
            let mut numbers: Vec<u64> = self
                .counts
                .iter()
                .filter(|(n, c)| **n != self.current && **c > 0)
                .map(|(n, _)| *n)
                .collect();
            numbers.sort_unstable();
            numbers
        };
        let mut carried = 0;
        for number in old {
            if carried >= CARRY_MAX {
                break;
            }
            let path = segment_path(&self.dir, number);
            let Ok(records) = read_records(&path) else {
                continue;
            };
            let Some(file) = self.file.as_mut() else {
                return;
            };
            // Written in pieces, so carrying forward never holds a segment's worth in memory;
            // the items move only once all of it is on disk.
            let mut buffer = Vec::new();
            let mut moved = Vec::new();
            let mut written = 0u64;
            let mut result = Ok(());
            for (kind, payload) in records {
                let Some((id, rest)) = split_id(&payload) else {
                    continue;
                };
                if kind == APPEND && self.location.get(&id).map(|l| l.0) == Some(number) {
                    encode_record(&mut buffer, APPEND, &id, rest);
                    moved.push(id);
                }
                if buffer.len() >= 1 << 20 {
                    result = file.write_all(&buffer);
                    written += buffer.len() as u64;
                    buffer.clear();
                    if result.is_err() {
                        break;
                    }
                }
            }
            if result.is_ok() {
                written += buffer.len() as u64;
                result = file.write_all(&buffer).and_then(|()| file.sync_data());
            }
            self.size += written;
            if let Err(e) = result {
                tracing::error!(message = "Cannot carry journal records forward.", segment = number, error = %e);
                self.file = None;
                return;
            }
            carried += moved.len();
            for id in moved {
                *self.counts.entry(self.current).or_default() += 1;
                if let Some(at) = self.location.get_mut(&id) {
                    at.0 = self.current;
                }
                self.release(number);
            }
            tracing::debug!(
                message = "Journal records carried forward.",
                from = number,
                to = self.current
            );
        }
    }

    /// An item's spooled body is the journal's no more: every copy was delivered, failed, or
    /// is kept by a queue directory (by its own link).
    fn remove_body(&self, body: Option<String>) {
        if let Some(name) = body {
            let _ = fs::remove_file(self.spool.join(name));
        }
    }

    /// One item of `segment` is done.
    fn release(&mut self, segment: u64) {
        if let Some(count) = self.counts.get_mut(&segment) {
            *count = count.saturating_sub(1);
        }
        self.collect();
    }

    /// Deletes finished segments, oldest first, stopping at the first with live items. Only a
    /// prefix may go: a segment's `done` records can refer to items of older segments, and
    /// deleting it while those remain would bring the items back after a crash.
    fn collect(&mut self) {
        let mut numbers: Vec<u64> = self.counts.keys().copied().collect();
        numbers.sort_unstable();
        for number in numbers {
            if number == self.current || self.counts.get(&number) != Some(&0) {
                break;
            }
            self.counts.remove(&number);
            let _ = fs::remove_file(segment_path(&self.dir, number));
        }
    }

    fn rotate(&mut self) {
        let next = self.current + 1;
        match open_segment(&self.dir, next) {
            Ok(file) => {
                self.file = Some(file);
                self.current = next;
                self.size = 0;
                self.counts.entry(next).or_default();
                self.collect();
            }
            Err(e) => {
                self.file = None;
                tracing::error!(message = "Cannot open a new journal segment.", error = %e)
            }
        }
    }
}

/// The items accepted and not yet done, read without changing anything (for `mta queue`, while
/// the server may be running).
pub fn live_items(dir: &Path) -> io::Result<Vec<(MailItem, u32)>> {
    let mut segments: Vec<(u64, PathBuf)> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                Some((name.strip_suffix(".log")?.parse::<u64>().ok()?, e.path()))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    segments.sort();
    let mut live: Vec<(String, Vec<u8>)> = Vec::new();
    for (_, path) in &segments {
        for (kind, payload) in read_records(path).into_iter().flatten() {
            let Some((id, rest)) = split_id(&payload) else {
                continue;
            };
            live.retain(|(i, _)| *i != id);
            if kind == APPEND {
                live.push((id, rest.to_vec()));
            }
        }
    }
    Ok(live
        .into_iter()
        .filter_map(|(id, bytes)| decode(&id, &bytes, None).ok())
        .collect())
}

/// An append waiting for its flush: id, record size, spooled body, acknowledgement.
type Appended = (String, u64, Option<String>, oneshot::Sender<io::Result<()>>);

/// The name of an item's spooled body in `spool`, if it is there.
fn spool_name(spool: &Path, item: &MailItem) -> Option<String> {
    let path = item.message.body().path()?;
    (path.parent() == Some(spool)).then(|| path.file_name()?.to_str().map(str::to_string))?
}

/// Makes a spooled body the journal's, in `spool`: kept where it is when it is there already,
/// else linked (or copied) in under a new name. Blocking.
fn adopt(body: &crate::message::MessageBody, spool: &Path) -> io::Result<String> {
    if let Some(name) = body.path().and_then(|p| {
        (p.parent() == Some(spool))
            .then(|| p.file_name()?.to_str().map(str::to_string))
            .flatten()
    }) {
        body.keep()?;
        return Ok(name);
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "j{:x}-{:x}-{:x}.body",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    body.persist_at(&spool.join(&name))?;
    File::open(spool)?.sync_all()?;
    Ok(name)
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:012}.log"))
}

fn open_segment(dir: &Path, number: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, number))?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

fn encode_record(out: &mut Vec<u8>, kind: u8, id: &str, body: &[u8]) {
    let len = (2 + id.len() + body.len()) as u32;
    let start = out.len();
    out.push(MAGIC);
    out.push(kind);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out[start + 1..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The records of a segment, read one at a time (a segment is never held in memory whole). A
/// bad record before the end (damage) is reported and skipped: reading goes on at the next
/// offset where a valid record starts. One at the very end (a torn write, never acknowledged)
/// is ignored with a warning.
fn read_records(path: &Path) -> io::Result<Records> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    Ok(Records {
        reader: io::BufReader::with_capacity(256 * 1024, file),
        path: path.to_path_buf(),
        pos: 0,
        at: 0,
        len,
    })
}

/// The iterator of [`read_records`].
struct Records {
    reader: io::BufReader<File>,
    path: PathBuf,
    /// Where the next record starts.
    pos: u64,
    /// Where the reader stands.
    at: u64,
    len: u64,
}

impl Records {
    /// The record at `pos`, if a whole one with a valid checksum is there: its kind, payload
    /// and where the next one starts.
    fn record_at(&mut self, pos: u64) -> Option<(u8, Vec<u8>, u64)> {
        if self.at != pos {
            self.reader.seek(io::SeekFrom::Start(pos)).ok()?;
            self.at = pos;
        }
        let mut head = [0u8; 6];
        self.reader.read_exact(&mut head).ok()?;
        self.at += 6;
        if head[0] != MAGIC {
            return None;
        }
        let len = u32::from_le_bytes([head[2], head[3], head[4], head[5]]) as u64;
        if pos + 6 + len + 4 > self.len {
            return None;
        }
        let mut payload = vec![0u8; len as usize];
        self.reader.read_exact(&mut payload).ok()?;
        let mut crc = [0u8; 4];
        self.reader.read_exact(&mut crc).ok()?;
        self.at += len + 4;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&head[1..]);
        hasher.update(&payload);
        if hasher.finalize() != u32::from_le_bytes(crc) {
            return None;
        }
        Some((head[1], payload, pos + 6 + len + 4))
    }

    /// The next offset after `pos` where a whole, valid record starts.
    fn resync(&mut self, pos: u64) -> Option<u64> {
        let mut candidate = pos + 1;
        while candidate < self.len {
            // Find the next MAGIC byte, reading forward.
            if self.at != candidate {
                self.reader.seek(io::SeekFrom::Start(candidate)).ok()?;
                self.at = candidate;
            }
            let buffer = self.reader.fill_buf().ok()?;
            if buffer.is_empty() {
                return None;
            }
            match memchr::memchr(MAGIC, buffer) {
                Some(i) => {
                    candidate += i as u64;
                    if self.record_at(candidate).is_some() {
                        return Some(candidate);
                    }
                    candidate += 1;
                }
                None => {
                    let n = buffer.len();
                    self.reader.consume(n);
                    self.at += n as u64;
                    candidate = self.at;
                }
            }
        }
        None
    }
}

impl Iterator for Records {
    type Item = (u8, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        while self.pos < self.len {
            let pos = self.pos;
            if let Some((kind, payload, next)) = self.record_at(pos) {
                self.pos = next;
                return Some((kind, payload));
            }
            match self.resync(pos) {
                Some(at) => {
                    tracing::error!(message = "Damaged journal record skipped; reading goes on after it.", path = %self.path.display(), offset = pos, skipped_bytes = at - pos);
                    self.pos = at;
                }
                None => {
                    tracing::warn!(message = "Journal segment ends with an incomplete record (never acknowledged); ignored.", path = %self.path.display(), offset = pos, bytes = self.len - pos);
                    self.pos = self.len;
                }
            }
        }
        None
    }
}

fn split_id(payload: &[u8]) -> Option<(String, &[u8])> {
    let n = u16::from_le_bytes(payload.get(..2)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(payload.get(2..2 + n)?)
        .ok()?
        .to_string();
    Some((id, &payload[2 + n..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Envelope, EnvelopeRecipient, Message};

    fn item(id: &str) -> MailItem {
        MailItem {
            id: id.into(),
            envelope: Envelope {
                from: "a@b.test".into(),
                recipients: vec![EnvelopeRecipient::new("alice@example.test")],
                ..Default::default()
            },
            message: Message::parse(format!("Subject: {id}\r\n\r\nx\r\n").as_bytes()),
            ..Default::default()
        }
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_long_lived_item_is_carried_forward_and_pins_no_segment() {
        let dir = std::env::temp_dir().join(format!("mta-journal-carry-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        {
            let (j, _) = Journal::open_with(&dir, 2000).unwrap();
            j.append(&item("LONG"), 3).await.unwrap();
            for n in 0..100 {
                let id = format!("short-{n}");
                j.append(&item(&id), 0).await.unwrap();
                j.done(&id);
            }
            j.sync().await.unwrap();
            assert!(
                segments(&dir).len() <= 3,
                "segments kept: {:?}",
                segments(&dir)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (_j, recovered) = Journal::open_with(&dir, 2000).unwrap();
        let ids: Vec<(String, u32)> = recovered.iter().map(|(i, a)| (i.id.clone(), *a)).collect();
        assert_eq!(ids, [("LONG".to_string(), 3)]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_load_counts_live_items_and_their_bytes() {
        let dir = std::env::temp_dir().join(format!("mta-journal-load-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        {
            let (j, _) = Journal::open(&dir).unwrap();
            for id in ["A", "B", "C"] {
                j.append(&item(id), 0).await.unwrap();
            }
            j.done("B");
            j.sync().await.unwrap();
            assert_eq!(j.load().items(), 2);
            let one = encode(&item("A"), 0, None).unwrap().len() as u64;
            assert_eq!(j.load().bytes(), 2 * one);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (j, recovered) = Journal::open(&dir).unwrap();
        assert_eq!((recovered.len(), j.load().items()), (2, 2));
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_damaged_record_costs_only_itself() {
        let dir = std::env::temp_dir().join(format!("mta-journal-damage-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        {
            let (j, _) = Journal::open(&dir).unwrap();
            for id in ["A", "B", "C"] {
                j.append(&item(id), 0).await.unwrap();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        // Flip a byte inside B's record.
        let path = segments(&dir).pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.windows(10).position(|w| w == b"Subject: B").unwrap();
        bytes[at + 9] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let (_j, recovered) = Journal::open(&dir).unwrap();
        let ids: Vec<String> = recovered.iter().map(|(i, _)| i.id.clone()).collect();
        assert_eq!(
            ids,
            ["A", "C"],
            "the records after the damaged one are read"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_done_record_is_never_deleted_before_the_item_it_finishes() {
        let dir = std::env::temp_dir().join(format!("mta-journal-prefix-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let settle = || std::thread::sleep(std::time::Duration::from_millis(50));
        {
            let (j, _) = Journal::open(&dir).unwrap(); // segment 1
            j.append(&item("A"), 0).await.unwrap();
            j.append(&item("B"), 0).await.unwrap();
        }
        settle();
        {
            let (j, _) = Journal::open(&dir).unwrap(); // segment 2: done(A), C
            j.done("A");
            j.append(&item("C"), 0).await.unwrap();
        }
        settle();
        {
            let (j, _) = Journal::open(&dir).unwrap(); // segment 3: done(C), D
            j.done("C");
            j.append(&item("D"), 0).await.unwrap();
        }
        settle();
        // Segment 2 has nothing live, but holds A's done record while segment 1 (B) remains.
        let (_j, recovered) = Journal::open(&dir).unwrap();
        let ids: Vec<String> = recovered.iter().map(|(i, _)| i.id.clone()).collect();
        assert_eq!(ids, ["B", "D"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn appended_items_come_back_until_done_and_torn_tails_are_ignored() {
        let dir = std::env::temp_dir().join(format!("mta-journal-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        {
            let (journal, recovered) = Journal::open(&dir).unwrap();
            assert!(recovered.is_empty());
            for id in ["A", "B", "C"] {
                journal.append(&item(id), 0).await.unwrap();
            }
            journal.done("B");
            journal.append(&item("D"), 1).await.unwrap(); // flushes the done record too
        }
        // A torn record at the end of the newest segment.
        let newest = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .max()
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&newest).unwrap();
        f.write_all(&[MAGIC, APPEND, 200, 0, 0, 0, 1, 2, 3])
            .unwrap();
        drop(f);
        let (journal, recovered) = Journal::open(&dir).unwrap();
        let ids: Vec<(String, u32)> = recovered.iter().map(|(i, a)| (i.id.clone(), *a)).collect();
        assert_eq!(
            ids,
            [
                ("A".to_string(), 0),
                ("C".to_string(), 0),
                ("D".to_string(), 1)
            ]
        );
        assert_eq!(
            recovered[0].0.message.header("Subject").as_deref(),
            Some("A")
        );
        for id in ["A", "C", "D"] {
            journal.done(id);
        }
        journal.append(&item("E"), 0).await.unwrap();
        journal.done("E");
        journal.append(&item("F"), 0).await.unwrap();
        drop(journal);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (_journal, recovered) = Journal::open(&dir).unwrap();
        let ids: Vec<String> = recovered.iter().map(|(i, _)| i.id.clone()).collect();
        assert_eq!(ids, ["F"]);
        // the finished older segments were removed
        assert!(fs::read_dir(&dir).unwrap().count() <= 2);
        let _ = fs::remove_dir_all(&dir);
    }
}
