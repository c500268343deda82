//! The delivery queues: one per next hop (per destination domain for a Send connector that
//! delivers by MX), each with its own workers, limits and retry schedule.
//!
//! The categorizer hands each copy to its queue and goes on: it never waits for a delivery.
//! A queue runs at most its next hop's concurrency of deliveries at once; a next hop that is
//! slow, down or tarpitting holds up only its own queue. A copy that must wait is written to
//! the queue's directory (`queue/delivery-*`, fsync'd) with its next attempt time, so retries
//! survive a restart and are the queue's own business: nothing goes back through the
//! categorizer.
//!
//! A copy fresh from the categorizer is in memory; the item it came from stays in the journal
//! (or its deferred file) until every copy is *settled*: delivered, failed with its report
//! queued, or written to its queue's directory. A queue with a large backlog in memory writes
//! new copies to its directory at once, so memory stays bounded.

use super::delivery::{now_ms, Attempted, Deliverer, Diagnosis, Outcome, QueueKey};
use super::dsn;
use super::reports::Reports;
use super::submission_queue::QueueDir;
use super::{Queues, SubmissionSink};
use crate::config::HostConfig;
use crate::message::{EnvelopeRecipient, LastAttempt, MailItem};
use crate::routing::NextHop;
use crate::service::Service;
use crate::tracking::{EventId, Record};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

pub mod operator;

/// A stalled queue with more than this many copies in memory writes new ones to its directory.
const SPILL_ITEMS: usize = 500;
/// ... or more than this many bytes.
const SPILL_BYTES: usize = 32 * 1024 * 1024;
/// A queue that has copies to deliver and has finished no attempt for this long is stalled.
const STALLED_MS: u64 = 3000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What is released once every copy of an item is settled.
pub enum Release {
    /// The item's journal record (a done record is written).
    Journal(String),
    /// The item's file in the deferred queue (removed).
    Deferred(String),
    /// The item's file in the Unreachable queue (removed).
    Unreachable(String),
}

/// Counts the unsettled copies of one item; the last one settled releases the item.
pub struct Settle {
    release: Mutex<Option<Release>>,
    remaining: AtomicUsize,
    queues: Arc<Queues>,
}

impl Settle {
    /// For `copies` copies of an item kept by `release`.
    pub fn new(queues: Arc<Queues>, release: Release, copies: usize) -> Arc<Self> {
        Arc::new(Self {
            release: Mutex::new(Some(release)),
            remaining: AtomicUsize::new(copies),
            queues,
        })
    }

    /// One copy is settled.
    pub async fn one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let release = lock(&self.release).take();
        match release {
            Some(Release::Journal(id)) => self.queues.journal.done(&id),
            Some(Release::Deferred(id)) => {
                let queues = Arc::clone(&self.queues);
                let _ = tokio::task::spawn_blocking(move || queues.deferred.remove(&id)).await;
            }
            Some(Release::Unreachable(id)) => {
                let queues = Arc::clone(&self.queues);
                let _ = tokio::task::spawn_blocking(move || queues.unreachable.remove(&id)).await;
            }
            None => {}
        }
    }
}

/// A copy to deliver.
enum Entry {
    /// In memory, fresh from the categorizer (or kept in memory when its file could not be
    /// written).
    Memory {
        item: Box<MailItem>,
        attempts: u32,
        settle: Option<Arc<Settle>>,
    },
    /// In the queue's directory.
    File(String),
}

impl Entry {
    /// The copy's queue id.
    fn id(&self) -> &str {
        match self {
            Entry::Memory { item, .. } => &item.id,
            Entry::File(id) => id,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Entry::Memory { item, .. } => item.message.memory_len(),
            Entry::File(_) => 0,
        }
    }
}

/// One queue's state.
#[derive(Default)]
struct State {
    ready: VecDeque<Entry>,
    /// Entries waiting for their time: (due ms, sequence) -> entry.
    scheduled: BTreeMap<(u64, u64), Entry>,
    /// Entries an operator suspended (`mta message suspend`), each with the time it was due.
    held: Vec<(u64, Entry)>,
    /// The ids of the copies being delivered.
    in_flight_ids: Vec<String>,
    in_flight: usize,
    memory_bytes: usize,
    last_error: Option<String>,
    /// When an attempt last finished (or the queue started).
    last_progress_ms: u64,
    delivered: u64,
    failed: u64,
    deferred: u64,
}

/// One next hop's queue.
pub struct NextHopQueue {
    key: QueueKey,
    dir: Arc<QueueDir>,
    /// Concurrent deliveries (the next hop's limit; a reload may change it).
    workers: AtomicUsize,
    /// Suspended by an operator (`mta queue suspend`): no delivery starts.
    suspended: AtomicBool,
    state: Mutex<State>,
    wake: Notify,
}

/// What `mta queue list` shows of a queue (also written to the status file).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct QueueStatus {
    /// The queue's name.
    pub name: String,
    /// Copies ready or being delivered.
    pub active: usize,
    /// Copies waiting for a retry.
    pub retry: usize,
    /// Deliveries under way.
    pub in_flight: usize,
    /// When the next waiting copy is due (ms since the epoch; 0: none).
    pub next_retry_ms: u64,
    /// The last error (the remote reply or connection error).
    pub last_error: Option<String>,
    /// Copies delivered, failed and deferred since the start.
    pub delivered: u64,
    /// Copies failed.
    pub failed: u64,
    /// Attempts that ended in a retry.
    pub deferred: u64,
    /// Suspended by an operator: no delivery starts until it is resumed.
    #[serde(default)]
    pub suspended: bool,
    /// Copies an operator suspended.
    #[serde(default)]
    pub held: usize,
}

/// Every delivery queue of the node.
pub struct DeliveryQueues {
    queues: Mutex<HashMap<QueueKey, Arc<NextHopQueue>>>,
    store: Arc<Queues>,
    /// Replaced by a host configuration reload; an attempt keeps the one it started with.
    deliverer: arc_swap::ArcSwap<Deliverer>,
    reports: Arc<Reports>,
    submission: Arc<SubmissionSink>,
    config: arc_swap::ArcSwap<HostConfig>,
    sequence: AtomicU64,
    stopping: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
    holds: super::holds::Holds,
    this: Weak<DeliveryQueues>,
}

impl DeliveryQueues {
    /// The queues of this node, with nothing in them yet.
    pub fn new(
        config: &HostConfig,
        store: Arc<Queues>,
        deliverer: Arc<Deliverer>,
        reports: Arc<Reports>,
        submission: Arc<SubmissionSink>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            queues: Mutex::new(HashMap::new()),
            holds: super::holds::Holds::open(&store.root()),
            store,
            deliverer: arc_swap::ArcSwap::new(deliverer),
            reports,
            submission,
            config: arc_swap::ArcSwap::from_pointee(config.clone()),
            sequence: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            this: this.clone(),
        })
    }

    /// The queue of `key`, started on first use.
    fn queue(&self, key: &QueueKey) -> std::io::Result<Arc<NextHopQueue>> {
        let mut queues = lock(&self.queues);
        if let Some(q) = queues.get(key) {
            return Ok(Arc::clone(q));
        }
        let q = Arc::new(NextHopQueue {
            key: key.clone(),
            dir: self.store.delivery(&key.dir_name())?,
            workers: AtomicUsize::new(self.deliverer.load().concurrency(&key.hop)),
            suspended: AtomicBool::new(self.holds.queue_suspended(&key.name())),
            state: Mutex::new(State {
                last_progress_ms: now_ms(),
                ..State::default()
            }),
            wake: Notify::new(),
        });
        queues.insert(key.clone(), Arc::clone(&q));
        let (q2, this) = (Arc::clone(&q), self.this.clone());
        tokio::spawn(async move { dispatch(q2, this).await });
        Ok(q)
    }

    /// A reloaded host configuration: attempts started from now on use `deliverer` (its
    /// connectors, TLS policies and limits) and `config`'s retry settings. The old
    /// deliverer's idle connections are closed; attempts under way finish with it.
    pub fn reconfigure(&self, deliverer: Arc<Deliverer>, config: &HostConfig) {
        let old = self.deliverer.swap(Arc::clone(&deliverer));
        self.config.store(Arc::new(config.clone()));
        for q in lock(&self.queues).values() {
            q.workers
                .store(deliverer.concurrency(&q.key.hop), Ordering::Relaxed);
            q.wake.notify_one();
        }
        old.close_idle();
    }

    /// The queue key of a copy routed to `hop` for `recipient`.
    pub fn key_for(&self, hop: &crate::routing::NextHop, recipient: &str) -> QueueKey {
        let domain = match hop {
            crate::routing::NextHop::Send(name) if self.deliverer.load().by_mx(name) => Some(
                recipient
                    .rsplit_once('@')
                    .map_or("", |(_, d)| d)
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            ),
            _ => None,
        };
        QueueKey {
            hop: hop.clone(),
            domain,
        }
    }

    /// Takes a fresh copy from the categorizer. `settle` is told once it is settled.
    pub async fn enqueue(&self, key: QueueKey, mut item: MailItem, settle: Arc<Settle>) {
        let queue = match self.queue(&key) {
            Ok(q) => q,
            Err(e) => {
                // No directory for the queue: the copy stays unsettled, so its item stays
                // queued where it came from and comes back at the next start.
                tracing::error!(message = "Cannot open a delivery queue.", queue = %key.name(), error = %e);
                return;
            }
        };
        let (backlog, bytes, stalled) = {
            let s = lock(&queue.state);
            let stalled = now_ms().saturating_sub(s.last_progress_ms) > STALLED_MS;
            (s.ready.len() + s.scheduled.len(), s.memory_bytes, stalled)
        };
        // A queue that is not getting through its copies (a slow, dead or tarpitting next
        // hop) keeps new ones on disk once its backlog in memory is large, or once memory is
        // getting tight for the node: then it holds no memory the other queues need. A queue
        // that is moving keeps its copies in memory (writing each would cost an fsync); if
        // the node takes more than it delivers, back pressure slows the senders.
        let spill = stalled
            && backlog > 0
            && (backlog >= SPILL_ITEMS || bytes >= SPILL_BYTES || self.submission.pressure.tight());
        if spill {
            item.trace.next_hop = Some(key.hop.key());
            item.trace.next_hop_domain = key.domain.clone();
            item.trace.next_attempt_ms = now_ms();
            let dir = Arc::clone(&queue.dir);
            let stored = tokio::task::spawn_blocking(move || {
                let id = dir.store(&mut item, 0).map(|_| item.id.clone());
                (id, item)
            })
            .await;
            match stored {
                Ok((Ok(id), _)) => {
                    queue.push(Entry::File(id));
                    settle.one().await;
                    return;
                }
                Ok((Err(e), back)) => {
                    tracing::warn!(message = "Cannot spill a copy to its queue directory; kept in memory.", queue = %key.name(), error = %e);
                    item = back;
                }
                Err(_) => return,
            }
        }
        queue.push(Entry::Memory {
            item: Box::new(item),
            attempts: 0,
            settle: Some(settle),
        });
    }

    /// Schedules the copies left in the delivery directories by an earlier run, each at its
    /// next attempt time.
    pub async fn recover(&self) -> usize {
        let store = Arc::clone(&self.store);
        let found = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let root = store.root();
            let Ok(entries) = std::fs::read_dir(&root) else {
                return found;
            };
            for entry in entries.filter_map(|e| e.ok()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with("delivery-") {
                    continue;
                }
                let Ok(dir) = store.delivery(&name) else { continue };
                let _ = dir.collect_orphans();
                for id in dir.ids().unwrap_or_default() {
                    match dir.load_meta(&id) {
                        Ok((item, _)) => found.push((id, item)),
                        Err(e) => tracing::error!(message = "Unreadable queue file skipped.", queue = %name, queue_id = %id, error = %e),
                    }
                }
            }
            found
        })
        .await
        .unwrap_or_default();
        let count = found.len();
        for (id, item) in found {
            let Some(key) = QueueKey::of(&item) else {
                tracing::error!(message = "Queued item without a next hop.", queue_id = %id);
                continue;
            };
            if let Ok(queue) = self.queue(&key) {
                let due = item.trace.next_attempt_ms;
                queue.schedule(due, Entry::File(id), self.next_sequence());
            }
        }
        count
    }

    fn next_sequence(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// Fails every copy waiting in `queue` (not those being delivered) with `response`: a
    /// delivery agent failed its queue. Each sender gets a report.
    async fn fail_waiting(&self, queue: &NextHopQueue, response: mta_agent_sdk::SmtpResponse) {
        let waiting: Vec<Entry> = {
            let mut s = lock(&queue.state);
            let mut all: Vec<Entry> = s.ready.drain(..).collect();
            all.extend(std::mem::take(&mut s.scheduled).into_values());
            s.memory_bytes = 0;
            s.failed += all.len() as u64;
            all
        };
        for entry in waiting {
            let (item, settle, from_file) = match entry {
                Entry::Memory { item, settle, .. } => (*item, settle, false),
                Entry::File(id) => {
                    let dir = Arc::clone(&queue.dir);
                    match tokio::task::spawn_blocking(move || dir.load(&id)).await {
                        Ok(Ok((item, _))) => (item, None, true),
                        _ => continue,
                    }
                }
            };
            let failures = item
                .envelope
                .recipients
                .iter()
                .map(|r| (r.clone(), Diagnosis::local(response.clone())))
                .collect();
            self.reports
                .notify(&item, failures, dsn::Kind::Failed)
                .await;
            if from_file {
                let (dir, id) = (Arc::clone(&queue.dir), item.id.clone());
                let _ = tokio::task::spawn_blocking(move || dir.remove(&id)).await;
            }
            if let Some(settle) = settle {
                settle.one().await;
            }
        }
    }

    /// The status of every queue.
    pub fn status(&self) -> Vec<QueueStatus> {
        let queues: Vec<Arc<NextHopQueue>> = lock(&self.queues).values().cloned().collect();
        let mut out: Vec<QueueStatus> = queues.iter().map(|q| q.status()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Stops starting deliveries, and waits up to `timeout` for those under way to end.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.stopping.store(true, Ordering::Release);
        for q in lock(&self.queues).values() {
            q.wake.notify_one();
        }
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let drained = tokio::time::timeout(timeout, wait).await.is_ok();
        self.deliverer.load().close_idle();
        drained
    }

    /// One delivery of one entry, and what follows from it.
    async fn deliver(&self, queue: &NextHopQueue, entry: Entry) {
        let (mut item, attempts, settle, from_file) = match entry {
            Entry::Memory {
                item,
                attempts,
                settle,
            } => (*item, attempts, settle, false),
            Entry::File(id) => {
                let dir = Arc::clone(&queue.dir);
                let load = id.clone();
                match tokio::task::spawn_blocking(move || dir.load(&load)).await {
                    Ok(Ok((item, attempts))) => (item, attempts, None, true),
                    // Gone meanwhile (delivered by an earlier attempt, removed by hand).
                    _ => return,
                }
            }
        };
        let key = &queue.key;
        let Attempted {
            outcomes,
            queue_failed,
            submitted,
        } = self.deliverer.load_full().attempt(key, &item).await;
        for new in submitted {
            if let Err(e) = self.submission.enqueue(new).await {
                tracing::warn!(message = "Agent submission refused.", reply = %e);
            }
        }
        if let Some(response) = queue_failed {
            self.fail_waiting(queue, response).await;
        }
        let mut failures = Vec::new();
        let mut waiting: Vec<(EnvelopeRecipient, Diagnosis)> = Vec::new();
        let mut delivered = 0u64;
        let latency_ms = now_ms().saturating_sub(item.trace.received_ms);
        for (r, outcome) in outcomes {
            match outcome {
                Outcome::Delivered => {
                    delivered += 1;
                    tracing::info!(message = "Sent.", queue = %key.name(), queue_id = %item.id, recipient = ?r.address, latency_ms);
                    if !matches!(key.hop, NextHop::Agent(_)) {
                        // Delivery agents track their own DELIVER.
                        Record::item(EventId::Send, Service::Transport, &item)
                            .to([r.address.as_str()])
                            .connector(key.name())
                            .write();
                    }
                }
                Outcome::Sent(how) => {
                    delivered += 1;
                    tracing::info!(message = "Sent.", queue = %key.name(), queue_id = %item.id, recipient = ?r.address, latency_ms, reply = %how.response);
                    let mut record = Record::item(EventId::Send, Service::Transport, &item)
                        .to([r.address.as_str()])
                        .connector(key.name())
                        .reply(&how.response);
                    record.next_hop = how.remote_mta;
                    record.write();
                }
                Outcome::Fail(why) => failures.push((r, why)),
                Outcome::Retry(why) => waiting.push((r, why)),
            }
        }
        let last_reason = waiting.last().map(|(_, why)| why.clone());
        let age = Duration::from_millis(now_ms().saturating_sub(item.trace.received_ms));
        let expiry = Duration::from_secs(self.config.load().routing.expiration_hours * 3600);
        if !waiting.is_empty() && age >= expiry {
            // 4.4.7 is a persistent transient failure that has run out of time; the report says
            // Action: failed with Status: 4.4.7, as RFC 3463 intends, and gives the last answer
            // the next hop gave as its diagnostic.
            failures.extend(waiting.drain(..).map(|(r, why)| {
                let mut why = match (&why.remote_mta, &r.last_attempt) {
                    // This attempt never reached the next hop: report what it said last.
                    (None, Some(last)) if last.remote_mta.is_some() => Diagnosis::remote(
                        crate::smtp::reply(last.code, &last.enhanced, &last.text),
                        last.remote_mta.as_deref(),
                    ),
                    _ => why,
                };
                why.status = Some("4.4.7".into());
                (r, why)
            }));
        }
        {
            let mut s = lock(&queue.state);
            s.delivered += delivered;
            s.failed += failures.len() as u64;
            if let Some(why) = &last_reason {
                s.last_error = Some(why.response.to_string());
                s.deferred += 1;
            } else if delivered > 0 {
                s.last_error = None;
            }
        }
        self.reports
            .notify(&item, failures, dsn::Kind::Failed)
            .await;

        if waiting.is_empty() {
            if from_file {
                let (dir, id) = (Arc::clone(&queue.dir), item.id.clone());
                let _ = tokio::task::spawn_blocking(move || dir.remove(&id)).await;
            }
            if let Some(settle) = settle {
                settle.one().await;
            }
            return;
        }
        let delay_notice =
            Duration::from_secs(self.config.load().routing.delay_notification_hours * 3600);
        if age >= delay_notice && !item.trace.delay_notified {
            let mut view = item.clone();
            view.envelope.recipients = waiting.iter().map(|(r, _)| r.clone()).collect();
            self.reports
                .notify(&view, waiting.clone(), dsn::Kind::Delayed)
                .await;
            item.trace.delay_notified = true;
        }
        // Each waiting recipient keeps its last answer, for the report if it expires.
        item.envelope.recipients = waiting
            .into_iter()
            .map(|(mut r, why)| {
                r.last_attempt = Some(LastAttempt {
                    code: why.response.code(),
                    enhanced: why.response.enhanced_code().to_string(),
                    text: why.response.text().to_string(),
                    remote_mta: why.remote_mta,
                });
                r
            })
            .collect();
        let base = self.config.load().routing.retry_base_ms.max(1);
        let delay = last_reason
            .as_ref()
            .and_then(|why| why.retry_after)
            .unwrap_or_else(|| {
                Duration::from_millis(
                    base.saturating_mul(1 << attempts.min(16))
                        .min(self.config.load().routing.retry_max_ms.max(base)),
                )
            });
        let due = now_ms().saturating_add(delay.as_millis() as u64);
        item.trace.next_hop = Some(key.hop.key());
        item.trace.next_hop_domain = key.domain.clone();
        item.trace.next_attempt_ms = due;
        let id = item.id.clone();
        let dir = Arc::clone(&queue.dir);
        let stored = tokio::task::spawn_blocking(move || {
            let r = dir.store(&mut item, attempts + 1).map(|_| ());
            (r, item)
        })
        .await;
        let reason = last_reason
            .as_ref()
            .map(|r| r.response.to_string())
            .unwrap_or_default();
        match stored {
            Ok((Ok(()), item)) => {
                tracing::info!(message = "Delivery deferred.", queue = %key.name(), queue_id = %id, attempts = attempts + 1, retry_ms = delay.as_millis() as u64, reason = %reason);
                let mut record = Record::item(EventId::Defer, Service::Transport, &item)
                    .connector(key.name())
                    .reply(&reason)
                    .detail(format!(
                        "attempt {}; retry in {} s",
                        attempts + 1,
                        delay.as_secs()
                    ));
                record.next_hop = last_reason.as_ref().and_then(|r| r.remote_mta.clone());
                record.write();
                queue.schedule(due, Entry::File(id), self.next_sequence());
                if let Some(settle) = settle {
                    settle.one().await;
                }
            }
            Ok((Err(e), item)) => {
                // Still where it came from (the journal, its queue file): try the copy again
                // from memory, so a full disk delays delivery instead of stopping it; the item
                // is settled when this copy finally is.
                tracing::error!(message = "Cannot queue an item for retry; it is kept in memory and tried again.", queue = %key.name(), queue_id = %id, error = %e);
                let retry = now_ms() + self.config.load().routing.retry_base_ms.max(100);
                queue.schedule(
                    retry,
                    Entry::Memory {
                        item: Box::new(item),
                        attempts: attempts + 1,
                        settle,
                    },
                    self.next_sequence(),
                );
            }
            Err(_) => {}
        }
    }
}

impl NextHopQueue {
    fn push(&self, entry: Entry) {
        let mut s = lock(&self.state);
        if s.ready.is_empty() && s.scheduled.is_empty() && s.in_flight == 0 {
            // An idle queue gets work: it is not stalled until it has had time to try.
            s.last_progress_ms = now_ms();
        }
        s.memory_bytes += entry.bytes();
        s.ready.push_back(entry);
        drop(s);
        self.wake.notify_one();
    }

    fn schedule(&self, due: u64, entry: Entry, sequence: u64) {
        let mut s = lock(&self.state);
        s.memory_bytes += entry.bytes();
        s.scheduled.insert((due, sequence), entry);
        drop(s);
        self.wake.notify_one();
    }

    /// The next entry to deliver, if a worker is free and one is due; else how long to wait.
    /// Entries `held` names (suspended messages) are set aside instead.
    fn next(&self, held: impl Fn(&str) -> bool) -> Result<Entry, Duration> {
        let mut s = lock(&self.state);
        let now = now_ms();
        while let Some(((due, _), _)) = s.scheduled.first_key_value() {
            if *due > now {
                break;
            }
            if let Some((_, entry)) = s.scheduled.pop_first() {
                s.ready.push_back(entry);
            }
        }
        if s.in_flight < self.workers.load(Ordering::Relaxed)
            && !self.suspended.load(Ordering::Acquire)
        {
            while let Some(entry) = s.ready.pop_front() {
                if held(entry.id()) {
                    s.held.push((now, entry));
                    continue;
                }
                s.in_flight += 1;
                s.in_flight_ids.push(entry.id().to_string());
                s.memory_bytes = s.memory_bytes.saturating_sub(entry.bytes());
                return Ok(entry);
            }
        }
        let wait = s
            .scheduled
            .first_key_value()
            .map(|((due, _), _)| Duration::from_millis(due.saturating_sub(now)))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        Err(wait)
    }

    fn finished(&self, id: &str) {
        let mut s = lock(&self.state);
        s.in_flight -= 1;
        if let Some(at) = s.in_flight_ids.iter().position(|i| i == id) {
            s.in_flight_ids.swap_remove(at);
        }
        s.last_progress_ms = now_ms();
        drop(s);
        self.wake.notify_one();
    }

    fn status(&self) -> QueueStatus {
        let s = lock(&self.state);
        QueueStatus {
            name: self.key.name(),
            active: s.ready.len() + s.in_flight,
            retry: s.scheduled.len(),
            in_flight: s.in_flight,
            next_retry_ms: s
                .scheduled
                .first_key_value()
                .map_or(0, |((due, _), _)| *due),
            last_error: s.last_error.clone(),
            delivered: s.delivered,
            failed: s.failed,
            deferred: s.deferred,
            suspended: self.suspended.load(Ordering::Acquire),
            held: s.held.len(),
        }
    }
}

/// A queue's dispatcher: starts a delivery whenever a worker is free and a copy is due.
async fn dispatch(queue: Arc<NextHopQueue>, queues: Weak<DeliveryQueues>) {
    loop {
        let Some(all) = queues.upgrade() else { return };
        if all.stopping.load(Ordering::Acquire) {
            return;
        }
        match queue.next(|id| all.holds.message_suspended(id)) {
            Ok(entry) => {
                all.in_flight.fetch_add(1, Ordering::AcqRel);
                let q = Arc::clone(&queue);
                tokio::spawn(async move {
                    let id = entry.id().to_string();
                    all.deliver(&q, entry).await;
                    q.finished(&id);
                    if all.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
                        all.idle.notify_waiters();
                    }
                });
            }
            Err(wait) => {
                drop(all);
                tokio::select! {
                    _ = queue.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
