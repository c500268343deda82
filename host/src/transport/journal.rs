//! The Submission queue's journal: group commit for accepted messages.
//!
//! Every accepted mail item is appended to the current segment of an append-only journal under
//! `<data_dir>/queue/journal/`. One writer thread takes every append waiting at that moment,
//! writes them in one go and calls `fdatasync` once: a single flush makes the whole batch
//! durable, and only then is each client answered 250. So durability costs one flush per batch
//! instead of one or two per message.
//!
//! When the categorizer is done with an item (delivered, or moved to a per-next-hop queue file
//! that was itself fsync'd), a `done` record is appended without waiting for a flush: if a crash
//! loses it, the item is simply processed again (at-least-once). A segment whose items are all
//! done is deleted; segments rotate at [`SEGMENT_MAX`] bytes.
//!
//! Record: `0xA7, kind, len (u32 LE), payload, crc32(kind, len, payload) (u32 LE)`. Recovery
//! reads every segment in order and stops a segment at its first torn or corrupt record (a
//! record that was being written when the process died was never acknowledged).

use crate::message::MailItem;
use crate::transport::submission_queue::{decode, encode};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Segments rotate past this size.
pub const SEGMENT_MAX: u64 = 64 * 1024 * 1024;
const MAGIC: u8 = 0xA7;
const APPEND: u8 = 1;
const DONE: u8 = 2;
/// The most appends one flush covers.
const BATCH_MAX: usize = 4096;

enum Request {
    Append {
        id: String,
        payload: Vec<u8>,
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
}

impl Journal {
    /// Opens the journal in `dir`, returning it and the items that were accepted but not done
    /// before the last stop, oldest first, with their attempt counts.
    pub fn open(dir: &Path) -> io::Result<(Self, Vec<(MailItem, u32)>)> {
        fs::create_dir_all(dir)?;
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
        for id in order {
            let Some((segment, bytes)) = live.remove(&id) else {
                continue;
            };
            match decode(&id, &bytes) {
                Ok(item) => {
                    *counts.entry(segment).or_default() += 1;
                    location.insert(id, segment);
                    items.push(item);
                }
                Err(e) => {
                    tracing::error!(message = "Unreadable journal record skipped.", id = %id, error = %e)
                }
            }
        }
        let next = segments.last().map_or(1, |(n, _)| n + 1);
        // Every segment is tracked; finished ones go once all older ones have gone (below).
        for (number, _) in &segments {
            counts.entry(*number).or_default();
        }
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            current: next,
            file: open_segment(dir, next)?,
            size: 0,
            counts,
            location,
        };
        writer.counts.entry(next).or_default();
        writer.collect();
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("queue-journal".into())
            .spawn(move || writer.run(receiver))?;
        Ok((Self { sender }, items))
    }

    /// Appends an item and waits until it is durable.
    pub async fn append(&self, item: &MailItem, attempts: u32) -> io::Result<()> {
        let payload = encode(item, attempts)?;
        let (ack, done) = oneshot::channel();
        self.sender
            .send(Request::Append {
                id: item.id.clone(),
                payload,
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
    file: File,
    size: u64,
    /// Live items per segment.
    counts: HashMap<u64, usize>,
    /// Segment of each live item.
    location: HashMap<String, u64>,
}

impl Writer {
    fn run(&mut self, receiver: mpsc::Receiver<Request>) {
        let mut buffer = Vec::with_capacity(1 << 20);
        while let Ok(first) = receiver.recv() {
            let mut acks = Vec::new();
            let mut syncs = Vec::new();
            let mut finished = Vec::new();
            buffer.clear();
            let mut next = Some(first);
            while let Some(request) = next.take() {
                match request {
                    Request::Append { id, payload, ack } => {
                        encode_record(&mut buffer, APPEND, &id, &payload);
                        *self.counts.entry(self.current).or_default() += 1;
                        if let Some(old) = self.location.insert(id, self.current) {
                            finished.push(old);
                        }
                        acks.push(ack);
                    }
                    Request::Done { id } => {
                        encode_record(&mut buffer, DONE, &id, &[]);
                        if let Some(segment) = self.location.remove(&id) {
                            finished.push(segment);
                        }
                    }
                    Request::Sync { ack } => syncs.push(ack),
                }
                if acks.len() < BATCH_MAX {
                    next = receiver.try_recv().ok();
                }
            }
            let result = self.file.write_all(&buffer).and_then(|()| {
                if acks.is_empty() && syncs.is_empty() {
                    Ok(())
                } else {
                    self.file.sync_data()
                }
            });
            for ack in syncs {
                let _ = ack.send(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                });
            }
            self.size += buffer.len() as u64;
            let failed = result
                .as_ref()
                .err()
                .map(|e| (e.kind(), e.to_string(), e.raw_os_error()));
            for ack in acks {
                let _ = ack.send(match &failed {
                    None => Ok(()),
                    Some((kind, text, Some(code))) => {
                        let _ = (kind, text);
                        Err(io::Error::from_raw_os_error(*code))
                    }
                    Some((kind, text, None)) => Err(io::Error::new(*kind, text.clone())),
                });
            }
            for segment in finished {
                self.release(segment);
            }
            if self.size >= SEGMENT_MAX || failed.is_some() {
                self.rotate();
            }
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
                self.file = file;
                self.current = next;
                self.size = 0;
                self.counts.entry(next).or_default();
                self.collect();
            }
            Err(e) => tracing::error!(message = "Cannot open a new journal segment.", error = %e),
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
        for (kind, payload) in read_records(path).unwrap_or_default() {
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
        .filter_map(|(id, bytes)| decode(&id, &bytes).ok())
        .collect())
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

/// The records of a segment up to its first torn or corrupt one.
fn read_records(path: &Path) -> io::Result<Vec<(u8, Vec<u8>)>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut records = Vec::new();
    let mut pos = 0;
    while pos + 10 <= bytes.len() {
        if bytes[pos] != MAGIC {
            break;
        }
        let kind = bytes[pos + 1];
        let len = u32::from_le_bytes(bytes[pos + 2..pos + 6].try_into().expect("4 bytes")) as usize;
        let end = pos + 6 + len;
        if end + 4 > bytes.len() {
            break;
        }
        let crc = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[pos + 1..end]) != crc {
            break;
        }
        records.push((kind, bytes[pos + 6..end].to_vec()));
        pos = end + 4;
    }
    if pos < bytes.len() {
        tracing::warn!(message = "Journal segment ends with an incomplete record (never acknowledged); ignored.", path = %path.display(), bytes = bytes.len() - pos);
    }
    Ok(records)
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
