//! What an operator does to the delivery queues while they run: suspend and resume a queue or
//! a message, retry a queue now, look at every copy, and take copies out (to remove, redirect
//! or release them elsewhere). Copies being delivered are never touched: a command that names
//! one says so, and the operator tries again when the attempt is over.

use super::{lock, DeliveryQueues, Entry, NextHopQueue, Settle, State};
use crate::message::MailItem;
use crate::transport::holds::is_copy_of;
use crate::transport::submission_queue::QueueDir;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Where a copy is in its queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyState {
    /// Due now, waiting for a free worker.
    Ready,
    /// Waiting for its next attempt.
    Retry,
    /// Being delivered.
    InFlight,
    /// Suspended by an operator.
    Suspended,
}

/// A copy as an operator sees it.
pub struct Located {
    /// The delivery queue's name.
    pub queue: String,
    /// Where it is in the queue.
    pub state: CopyState,
    /// The copy: its envelope and trace always; its message only for copies held in memory
    /// (a copy in a queue file is read without its message).
    pub item: MailItem,
    /// Delivery attempts so far.
    pub attempts: u32,
}

/// A copy taken out of its queue. [`Taken::finish`] lets go of where it was kept (its queue
/// file, or its share of the item in the Submission queue); until then a crash leaves it
/// where it was.
pub struct Taken {
    /// The queue it was in.
    pub queue: String,
    /// The copy, message included.
    pub item: MailItem,
    settle: Option<Arc<Settle>>,
    file: Option<Arc<QueueDir>>,
}

impl Taken {
    /// An item taken from the directory queue `queue` (kept in `dir`).
    pub fn from_directory(queue: &str, item: MailItem, dir: Arc<QueueDir>) -> Self {
        Self {
            queue: queue.to_string(),
            item,
            settle: None,
            file: Some(dir),
        }
    }

    /// The copy has been dealt with: remove its file, or settle it.
    pub async fn finish(self) {
        if let Some(dir) = self.file {
            let id = self.item.id.clone();
            let _ = tokio::task::spawn_blocking(move || dir.remove(&id)).await;
        }
        if let Some(settle) = self.settle {
            settle.one().await;
        }
    }

    /// The copy could not be dealt with: back to its queue, due now.
    pub fn put_back(self, queues: &DeliveryQueues) {
        // A directory queue's item never left its file.
        let Some(queue) = queues.queue_named(&self.queue) else {
            return;
        };
        let entry = match self.file {
            Some(_) => Entry::File(self.item.id),
            None => Entry::Memory {
                item: Box::new(self.item),
                attempts: 0,
                settle: self.settle,
            },
        };
        queue.push(entry);
    }
}

impl State {
    /// Takes the copies of the message `id` that wait in the queue (due now, or scheduled),
    /// each with the time it was due (`now` for those due already).
    fn waiting_copies_of(&mut self, id: &str, now: u64) -> Vec<(u64, Entry)> {
        let (out, keep): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.ready)
            .into_iter()
            .partition(|e| is_copy_of(e.id(), id));
        self.ready = keep.into();
        let mut out: Vec<(u64, Entry)> = out.into_iter().map(|e| (now, e)).collect();
        let due: Vec<(u64, u64)> = self
            .scheduled
            .iter()
            .filter(|(_, e)| is_copy_of(e.id(), id))
            .map(|(k, _)| *k)
            .collect();
        out.extend(
            due.into_iter()
                .filter_map(|k| self.scheduled.remove(&k).map(|e| (k.0, e))),
        );
        out
    }

    /// Takes the copies of the message `id` an operator suspended.
    fn held_copies_of(&mut self, id: &str) -> Vec<(u64, Entry)> {
        let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(_, e)| is_copy_of(e.id(), id));
        self.held = keep;
        out
    }
}

impl DeliveryQueues {
    /// The running queue named `name` (as `mta queue list` prints it).
    pub fn queue_named(&self, name: &str) -> Option<Arc<NextHopQueue>> {
        lock(&self.queues)
            .values()
            .find(|q| q.key.name() == name)
            .cloned()
    }

    fn all(&self) -> Vec<Arc<NextHopQueue>> {
        lock(&self.queues).values().cloned().collect()
    }

    /// Suspends or resumes the queue `name`, durably; whether it changed. A queue not started
    /// yet is suspended from its start. Copies being delivered finish their attempt.
    pub fn set_queue_suspended(&self, name: &str, suspended: bool) -> std::io::Result<bool> {
        let changed = self.holds.set_queue(name, suspended)?;
        if let Some(queue) = self.queue_named(name) {
            queue.suspended.store(suspended, Ordering::Release);
            queue.wake.notify_one();
        }
        Ok(changed)
    }

    /// Makes every copy of `name` waiting for a retry due now; how many. `None`: no such
    /// queue is running.
    pub fn retry_now(&self, name: &str) -> Option<usize> {
        let queue = self.queue_named(name)?;
        let mut s = lock(&queue.state);
        let waiting = std::mem::take(&mut s.scheduled);
        let count = waiting.len();
        s.ready.extend(waiting.into_values());
        drop(s);
        queue.wake.notify_one();
        Some(count)
    }

    /// Suspends or resumes the message `id` (and its copies), durably: suspended copies are
    /// set aside, resumed ones are due now. Returns whether the setting changed and how many
    /// copies in the queues it moved.
    pub fn set_message_suspended(
        &self,
        id: &str,
        suspended: bool,
    ) -> std::io::Result<(bool, usize)> {
        let changed = self.holds.set_message(id, suspended)?;
        let mut moved = 0;
        let now = super::now_ms();
        for queue in self.all() {
            let mut s = lock(&queue.state);
            if suspended {
                let hold = s.waiting_copies_of(id, now);
                moved += hold.len();
                s.held.extend(hold);
            } else {
                let go = s.held_copies_of(id);
                moved += go.len();
                s.ready.extend(go.into_iter().map(|(_, e)| e));
            }
            drop(s);
            queue.wake.notify_one();
        }
        Ok((changed, moved))
    }

    /// Whether the queue `name` is suspended (running or not).
    pub fn holds_queue(&self, name: &str) -> bool {
        self.holds.queue_suspended(name)
    }

    /// Every copy in every queue (of `only`, if given): with its message header block when
    /// `headers` (for listings by Message-ID), else the envelope and trace only. Reads queue
    /// files: blocking work is done off the async threads.
    pub async fn copies(&self, only: Option<&str>, headers: bool) -> Vec<Located> {
        let mut found = Vec::new();
        let mut files = Vec::new();
        for queue in self.all() {
            let name = queue.key.name();
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let s = lock(&queue.state);
            let entries = s
                .ready
                .iter()
                .map(|e| (CopyState::Ready, e))
                .chain(s.scheduled.values().map(|e| (CopyState::Retry, e)))
                .chain(s.held.iter().map(|(_, e)| (CopyState::Suspended, e)));
            for (state, entry) in entries {
                match entry {
                    Entry::Memory { item, attempts, .. } => found.push(Located {
                        queue: name.clone(),
                        state,
                        item: (**item).clone(),
                        attempts: *attempts,
                    }),
                    Entry::File(id) => {
                        files.push((name.clone(), state, Arc::clone(&queue.dir), id.clone()))
                    }
                }
            }
            for id in &s.in_flight_ids {
                files.push((
                    name.clone(),
                    CopyState::InFlight,
                    Arc::clone(&queue.dir),
                    id.clone(),
                ));
            }
        }
        let loaded = tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .filter_map(|(queue, state, dir, id)| {
                    let read = if headers {
                        dir.load(&id)
                    } else {
                        dir.load_meta(&id)
                    };
                    let (item, attempts) = match read {
                        Ok(found) => found,
                        // A copy being delivered from memory has no file: it is listed by its
                        // id alone rather than not at all.
                        Err(_) if state == CopyState::InFlight => (
                            MailItem {
                                id,
                                ..MailItem::default()
                            },
                            0,
                        ),
                        Err(_) => return None,
                    };
                    Some(Located {
                        queue,
                        state,
                        item,
                        attempts,
                    })
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        found.extend(loaded);
        found
    }

    /// A copy of the message `id`, whole (its message read from its file if it has one).
    pub async fn find(&self, id: &str) -> Option<MailItem> {
        for queue in self.all() {
            let file = {
                let s = lock(&queue.state);
                let entries = s
                    .ready
                    .iter()
                    .chain(s.scheduled.values())
                    .chain(s.held.iter().map(|(_, e)| e));
                let mut file = None;
                for entry in entries.filter(|e| is_copy_of(e.id(), id)) {
                    match entry {
                        Entry::Memory { item, .. } => return Some((**item).clone()),
                        Entry::File(found) => file = Some(found.clone()),
                    }
                }
                file.or_else(|| s.in_flight_ids.iter().find(|i| is_copy_of(i, id)).cloned())
            };
            if let Some(found) = file {
                let dir = Arc::clone(&queue.dir);
                if let Ok(Ok((item, _))) =
                    tokio::task::spawn_blocking(move || dir.load(&found)).await
                {
                    return Some(item);
                }
            }
        }
        None
    }

    /// Takes every copy of the message `id` out of its queue, except those being delivered,
    /// whose ids come second.
    pub async fn take(&self, id: &str) -> (Vec<Taken>, Vec<String>) {
        let mut taken = Vec::new();
        let mut busy = Vec::new();
        let mut files = Vec::new();
        for queue in self.all() {
            let mut s = lock(&queue.state);
            busy.extend(
                s.in_flight_ids
                    .iter()
                    .filter(|i| is_copy_of(i, id))
                    .cloned(),
            );
            let now = super::now_ms();
            let mut out = s.waiting_copies_of(id, now);
            out.extend(s.held_copies_of(id));
            for (_, entry) in out {
                s.memory_bytes = s.memory_bytes.saturating_sub(entry.bytes());
                match entry {
                    Entry::Memory { item, settle, .. } => taken.push(Taken {
                        queue: queue.key.name(),
                        item: *item,
                        settle,
                        file: None,
                    }),
                    Entry::File(found) => files.push((Arc::clone(&queue), found)),
                }
            }
        }
        for (queue, found) in files {
            let dir = Arc::clone(&queue.dir);
            let load = found.clone();
            match tokio::task::spawn_blocking(move || dir.load(&load)).await {
                Ok(Ok((item, _))) => taken.push(Taken {
                    queue: queue.key.name(),
                    item,
                    settle: None,
                    file: Some(Arc::clone(&queue.dir)),
                }),
                // Unreadable: it stays in its queue, where the next attempt reports it.
                _ => queue.push(Entry::File(found)),
            }
        }
        (taken, busy)
    }
}
