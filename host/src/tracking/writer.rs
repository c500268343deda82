//! The tracking log's writer thread: gathers records for a moment, then writes them as whole
//! lines, one `write` per batch
//! on a file opened for appending (so services in other processes sharing the data dir
//! interleave whole lines), a new file each UTC day, and files past the retention removed.

use super::Record;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

/// Records waiting to be written at most; past it they are dropped (and counted).
const CAPACITY: usize = 65_536;

/// How long the thread gathers records after the first of a batch before it writes them. While
/// it sleeps, sending a record wakes nobody: under load the services pay no wake-up and the
/// log no `write` per record (a flush waits at most this long).
const GATHER: std::time::Duration = std::time::Duration::from_millis(50);

enum Message {
    Record(Box<Record>),
    Flush(SyncSender<()>),
}

/// The sending side, shared by every service.
pub(super) struct Writer {
    sender: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl Writer {
    /// Creates `dir` (0700) and starts the thread.
    pub(super) fn start(dir: PathBuf, days: u32) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let (sender, receiver) = mpsc::sync_channel(CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&dropped);
        std::thread::Builder::new()
            .name("mta-tracking".into())
            .spawn(move || run(&dir, days, &receiver, &counter))?;
        Ok(Self { sender, dropped })
    }

    pub(super) fn send(&self, record: Record) {
        match self.sender.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    pub(super) fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.sender.send(Message::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(std::time::Duration::from_secs(5));
        }
    }
}

/// The file of one day.
struct Day {
    date: String,
    file: File,
}

fn run(dir: &Path, days: u32, receiver: &Receiver<Message>, dropped: &AtomicU64) {
    let mut day: Option<Day> = None;
    let mut lines = Vec::new();
    let mut acks = Vec::new();
    while let Ok(first) = receiver.recv() {
        if matches!(first, Message::Record(_)) {
            std::thread::sleep(GATHER);
        }
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => {
                    let date = &record.time[..record.time.len().min(10)];
                    if day.as_ref().is_none_or(|d| d.date != date) {
                        write_out(&mut day, &mut lines);
                        day = open_day(dir, date, days);
                    }
                    if let Ok(line) = serde_json::to_vec(&record) {
                        lines.extend_from_slice(&line);
                        lines.push(b'\n');
                    }
                }
                Message::Flush(ack) => acks.push(ack),
            }
            next = receiver.try_recv().ok();
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                message = "Tracking records dropped: the log could not keep up.",
                records = lost
            );
        }
        write_out(&mut day, &mut lines);
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

fn write_out(day: &mut Option<Day>, lines: &mut Vec<u8>) {
    if lines.is_empty() {
        return;
    }
    if let Some(d) = day {
        if let Err(e) = d.file.write_all(lines) {
            tracing::warn!(message = "Cannot write the tracking log.", error = %e);
        }
    }
    lines.clear();
}

/// Opens `<dir>/<date>.jsonl` for appending (0600) and removes files older than `days`.
fn open_day(dir: &Path, date: &str, days: u32) -> Option<Day> {
    let path = dir.join(format!("{date}.jsonl"));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path);
    prune(dir, date, days);
    match file {
        Ok(file) => Some(Day {
            date: date.to_string(),
            file,
        }),
        Err(e) => {
            tracing::warn!(message = "Cannot open the tracking log.", path = %path.display(), error = %e);
            None
        }
    }
}

/// Removes day files more than `days` before `today` (names compare as dates).
fn prune(dir: &Path, today: &str, days: u32) {
    let Some(oldest) = days_before(today, days) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(date) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
            continue;
        };
        if date.len() == 10 && date < oldest.as_str() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `YYYY-MM-DD` `days` before `date`.
fn days_before(date: &str, days: u32) -> Option<String> {
    let day = crate::message::date::days_from_rfc3339(date)?;
    let secs = (day - i64::from(days)).max(0) as u64 * 86_400;
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    Some(crate::message::date::rfc3339(time)[..10].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_the_last_days() {
        assert_eq!(days_before("2026-12-02", 30).as_deref(), Some("2026-11-02"));
        assert_eq!(days_before("2026-03-01", 1).as_deref(), Some("2026-02-28"));
        let dir = std::env::temp_dir().join(format!("mta-tracking-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "2026-11-01.jsonl",
            "2026-11-02.jsonl",
            "2026-12-02.jsonl",
            "notes.txt",
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        prune(&dir, "2026-12-02", 30);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["2026-11-02.jsonl", "2026-12-02.jsonl", "notes.txt"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
