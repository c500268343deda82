//! Back pressure, as Exchange calls it: the Transport service watches what it holds (items and
//! bytes queued in memory, its resident memory, the free space of the queue's disk) and, once
//! any of them passes its high-water mark, takes no new mail: SMTP receive answers MAIL with
//! 452 4.3.1 and the pickup and replay directories pause. When every resource is back under its
//! low-water mark (hysteresis, so the state does not flap), mail is taken again. Mail already
//! accepted keeps flowing all along, and reports and agent submissions are never refused here:
//! they come from mail already accepted.
//!
//! Items and bytes are read at every MAIL (they are counters); memory and disk once a second.

use super::journal::Load;
use crate::config::BackPressureConfig;
use crate::smtp::reply;
use mta_agent_sdk::SmtpResponse;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The resources watched, in the order they are reported.
const RESOURCES: [&str; 4] = ["queued items", "queued bytes", "memory", "disk"];

/// One resource's reading against its marks.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reading {
    /// What is measured.
    pub resource: String,
    /// The value now.
    pub value: u64,
    /// Over this, mail is refused.
    pub high: u64,
    /// Under this (for every resource), mail is accepted again.
    pub low: u64,
    /// Whether this resource holds mail back now.
    pub over: bool,
    /// The unit of the three numbers.
    pub unit: String,
}

/// The state `mta queue list` shows.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Pressure {
    /// Whether new mail is refused.
    pub refusing: bool,
    /// Every resource.
    pub readings: Vec<Reading>,
}

#[derive(Default)]
struct State {
    /// Per resource: its value and whether it is over (it stays over until under `low`).
    values: [u64; 4],
    over: [bool; 4],
    /// The disk's free bytes and the most that may be used (its high-water mark), for SIZE.
    disk_free: u64,
    disk_room: u64,
    refusing: bool,
}

/// The back-pressure monitor of one Transport node.
pub struct BackPressure {
    marks: BackPressureConfig,
    load: Arc<Load>,
    queue_root: PathBuf,
    memory_total_kb: u64,
    state: Mutex<State>,
}

impl BackPressure {
    /// Watches `load` (the journal's live items) and the disk holding `queue_root`.
    pub fn new(marks: &BackPressureConfig, load: Arc<Load>, queue_root: &Path) -> Arc<Self> {
        let this = Arc::new(Self {
            marks: marks.clone(),
            load,
            queue_root: queue_root.to_path_buf(),
            memory_total_kb: memory_total_kb(),
            state: Mutex::new(State::default()),
        });
        this.check();
        this
    }

    fn marks(&self, i: usize) -> (u64, u64) {
        let m = &self.marks;
        match i {
            0 => (m.queued_items_high, m.queued_items_low),
            1 => (m.queued_mb_high << 20, m.queued_mb_low << 20),
            2 => (m.memory_percent_high, m.memory_percent_low),
            _ => (m.disk_percent_high, m.disk_percent_low),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes new readings of `which` resources into the state; logs a change of state.
    fn update(&self, readings: &[(usize, u64)], disk: Option<(u64, u64)>) -> bool {
        let mut s = self.lock();
        for &(i, value) in readings {
            let (high, low) = self.marks(i);
            s.values[i] = value;
            s.over[i] = if s.over[i] {
                value > low
            } else {
                value >= high
            };
        }
        if let Some((free, room)) = disk {
            s.disk_free = free;
            s.disk_room = room;
        }
        let refusing = s.over.iter().any(|o| *o);
        if refusing != s.refusing {
            s.refusing = refusing;
            let (values, over) = (s.values, s.over);
            drop(s);
            let named: Vec<String> = (0..4)
                .filter(|&i| over[i] || !refusing)
                .map(|i| {
                    let (high, low) = self.marks(i);
                    format!("{} {} (high {high}, low {low})", RESOURCES[i], values[i])
                })
                .collect();
            if refusing {
                tracing::warn!(message = "Back pressure: new mail is refused (452 4.3.1) until every resource is under its low-water mark.", over = %named.join("; "));
            } else {
                tracing::info!(message = "Back pressure relieved: new mail is accepted again.", levels = %named.join("; "));
            }
        }
        refusing
    }

    fn fast_readings(&self) -> [(usize, u64); 2] {
        [(0, self.load.items()), (1, self.load.bytes())]
    }

    /// Reads every resource (memory and disk included); called once a second.
    pub fn check(&self) {
        let mut readings = self.fast_readings().to_vec();
        if let Some(percent) =
            resident_kb().and_then(|rss| (rss * 100).checked_div(self.memory_total_kb))
        {
            readings.push((2, percent));
        }
        let mut disk = None;
        if let Ok(fs) = rustix::fs::statvfs(&self.queue_root) {
            let unit = fs.f_frsize.max(1);
            // As df counts it: space reserved for root is neither used nor available.
            let used = fs.f_blocks.saturating_sub(fs.f_bfree) * unit;
            let free = fs.f_bavail * unit;
            let usable = used + free;
            if let Some(percent) = (used * 100).checked_div(usable) {
                readings.push((3, percent));
                let room = usable / 100 * self.marks.disk_percent_high;
                disk = Some((free, room.saturating_sub(used)));
            }
        }
        self.update(&readings, disk);
    }

    /// At MAIL: `Ok` when a message (of `size` bytes, if the client declared it) may be taken.
    pub fn admit(&self, size: Option<u64>) -> Result<(), SmtpResponse> {
        if self.update(&self.fast_readings(), None) {
            return Err(reply(
                452,
                "4.3.1",
                "Insufficient system resources, try again later",
            ));
        }
        // Never accept more than can be stored: a declared size that would take the queue's
        // disk past its high-water mark is refused for now.
        let room = self.lock().disk_room;
        if size.is_some_and(|n| n > room) {
            return Err(reply(452, "4.3.1", "Insufficient system storage"));
        }
        Ok(())
    }

    /// Whether the directories wait (mail is refused).
    pub fn paused(&self) -> bool {
        self.update(&self.fast_readings(), None)
    }

    /// Whether memory is getting tight (items or bytes in memory past their low-water mark):
    /// delivery queues then keep new copies on disk rather than in memory.
    pub fn tight(&self) -> bool {
        let (_, items_low) = self.marks(0);
        let (_, bytes_low) = self.marks(1);
        self.load.items() >= items_low || self.load.bytes() >= bytes_low
    }

    /// The state and every reading.
    pub fn pressure(&self) -> Pressure {
        let s = self.lock();
        Pressure {
            refusing: s.refusing,
            readings: (0..4)
                .map(|i| {
                    let (high, low) = self.marks(i);
                    Reading {
                        resource: RESOURCES[i].into(),
                        value: s.values[i],
                        high,
                        low,
                        over: s.over[i],
                        unit: match i {
                            0 => "items",
                            1 => "bytes",
                            _ => "percent",
                        }
                        .into(),
                    }
                })
                .collect(),
        }
    }
}

/// The machine's memory in KiB, or the control group's limit when lower (in a container).
fn memory_total_kb() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| field_kb(&text, "MemTotal:"))
        .unwrap_or(0);
    let group = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map(|bytes| bytes / 1024);
    match group {
        Some(limit) if limit > 0 && (machine == 0 || limit < machine) => limit,
        _ => machine,
    }
}

/// This process's resident memory in KiB.
fn resident_kb() -> Option<u64> {
    field_kb(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmRSS:",
    )
}

fn field_kb(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_high_mark_refuses_until_under_the_low_mark() {
        let marks = BackPressureConfig {
            queued_items_high: 10,
            queued_items_low: 5,
            ..Default::default()
        };
        let bp = BackPressure::new(&marks, Arc::new(Load::default()), Path::new("."));
        let at = |n: u64| bp.update(&[(0, n)], None);
        assert!(!at(9));
        assert!(at(10), "at the high-water mark");
        assert!(at(7), "still over the low-water mark");
        assert!(!at(5), "at the low-water mark");
        assert!(!at(9));
        let p = bp.pressure();
        assert!(!p.refusing);
        assert_eq!(p.readings[0].value, 9);
    }

    #[test]
    fn a_declared_size_past_the_disk_mark_is_refused() {
        let bp = BackPressure::new(
            &BackPressureConfig::default(),
            Arc::new(Load::default()),
            Path::new("."),
        );
        assert!(bp.admit(Some(1000)).is_ok());
        let r = bp.admit(Some(u64::MAX)).unwrap_err();
        assert_eq!((r.code(), r.enhanced_code()), (452, "4.3.1"));
    }
}
