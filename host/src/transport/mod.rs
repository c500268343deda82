//! The Transport service: SMTP receive into the durable Submission queue, then categorization
//! and delivery.
//!
//! Accepted items are made durable by the Submission queue's [`journal`] (group commit) before
//! the client gets 250, and handed to the [`categorizer`] in memory, which raises the routing
//! agents' events, resolves and routes each recipient, and delivers each next hop's copy
//! ([`delivery`]). Recipients that must wait go to their next hop's delivery queue (one
//! fsync'd file per item under `queue/delivery-*`), retried with a growing delay until they
//! expire; recipients without a route go to Unreachable; failures produce a non-delivery report
//! ([`dsn`]). An item leaves the journal only once every recipient was delivered, failed or
//! written to one of those queues.

pub mod agent_connector;
pub mod categorizer;
pub mod delivery;
pub mod dsn;
pub mod journal;
pub mod submission_queue;

use crate::message::MailItem;
use crate::smtp::receive::{ready, BoxFuture, Sink, Transactions};
use crate::smtp::reply;
use crate::smtp::session::MailRequest;
use journal::Journal;
use mta_agent_sdk::SmtpResponse;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use submission_queue::QueueDir;
use tokio::sync::mpsc;

/// The queues of a Transport node.
pub struct Queues {
    /// The Submission queue: accepted, not yet categorized.
    pub journal: Journal,
    /// Items a routing agent deferred (or that faulted an agent), to categorize again later.
    pub deferred: QueueDir,
    /// No route for some recipients.
    pub unreachable: QueueDir,
    /// Quarantined by an agent.
    pub quarantine: QueueDir,
    /// Faulted agents too often; never retried automatically.
    pub poison: QueueDir,
    data_dir: PathBuf,
    delivery: Mutex<HashMap<String, Arc<QueueDir>>>,
}

/// Work for the categorizer.
pub enum Work {
    /// A newly accepted item, still in the journal.
    Fresh(Box<MailItem>, u32),
    /// An item of a delivery queue to try again: (queue name, id).
    Retry(String, String),
    /// A deferred item to categorize again.
    Resubmit(String),
    /// A next hop's copy that could not be queued for retry, to deliver again from memory.
    Redeliver(crate::routing::NextHop, Box<MailItem>, u32),
}

impl Queues {
    /// Opens the queues under `data_dir`; returns them with the work left from before a stop.
    pub fn open(data_dir: &std::path::Path) -> std::io::Result<(Self, Vec<Work>)> {
        let (journal, recovered) = Journal::open(&data_dir.join("queue").join("journal"))?;
        let queues = Self {
            journal,
            deferred: QueueDir::open(data_dir, "deferred")?,
            unreachable: QueueDir::open(data_dir, "unreachable")?,
            quarantine: QueueDir::open(data_dir, "quarantine")?,
            poison: QueueDir::open(data_dir, "poison")?,
            data_dir: data_dir.to_path_buf(),
            delivery: Mutex::new(HashMap::new()),
        };
        let mut work: Vec<Work> = recovered
            .into_iter()
            .map(|(i, a)| Work::Fresh(Box::new(i), a))
            .collect();
        work.extend(queues.deferred.ids()?.into_iter().map(Work::Resubmit));
        for entry in std::fs::read_dir(data_dir.join("queue"))?.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("delivery-") && entry.path().is_dir() {
                let queue = queues.delivery(&name)?;
                work.extend(
                    queue
                        .ids()?
                        .into_iter()
                        .map(|id| Work::Retry(name.clone(), id)),
                );
            }
        }
        Ok((queues, work))
    }

    /// The delivery queue of a next hop, by name (`delivery-send-Internet`).
    pub fn delivery(&self, name: &str) -> std::io::Result<Arc<QueueDir>> {
        let mut map = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = map.get(name) {
            return Ok(Arc::clone(q));
        }
        let q = Arc::new(QueueDir::open(&self.data_dir, name)?);
        map.insert(name.to_string(), Arc::clone(&q));
        Ok(q)
    }

    /// A new queue id.
    pub fn new_id(&self) -> String {
        self.deferred.new_id()
    }
}

/// Puts accepted messages into the Submission queue and hands them to the categorizer.
pub struct SubmissionSink {
    queues: Arc<Queues>,
    work: mpsc::UnboundedSender<Work>,
}

impl SubmissionSink {
    /// A sink writing to `queues`, passing each item on to `work`.
    pub fn new(queues: Arc<Queues>, work: mpsc::UnboundedSender<Work>) -> Self {
        Self { queues, work }
    }

    /// Stores an item durably (under its queue id, given one if it has none); the reply the
    /// client gets.
    pub async fn enqueue(&self, mut item: MailItem) -> Result<SmtpResponse, SmtpResponse> {
        if item.id.is_empty() {
            item.id = self.queues.new_id();
        }
        item.trace.received_ms = delivery::now_ms();
        match self.queues.journal.append(&item, 0).await {
            Ok(()) => {
                let id = item.id.clone();
                tracing::info!(message = "Message queued.", queue_id = %id);
                let _ = self.work.send(Work::Fresh(Box::new(item), 0));
                Ok(reply(
                    250,
                    "2.6.0",
                    &format!("<{id}> Queued mail for delivery"),
                ))
            }
            Err(e) if e.raw_os_error() == Some(28) => {
                tracing::error!(message = "Queue disk full.", error = %e);
                Err(reply(452, "4.3.1", "Insufficient system storage"))
            }
            Err(e) => {
                tracing::error!(message = "Queue write failed.", error = %e);
                Err(reply(451, "4.3.0", "Queue write failed, try again later"))
            }
        }
    }
}

/// One session's transactions on Transport: each gets its queue id at MAIL (so Received can
/// name it), and is queued at the end of the data.
struct Submission {
    sink: Arc<SubmissionSink>,
}

impl Transactions for Submission {
    fn mail<'a>(
        &'a mut self,
        _request: &'a MailRequest,
    ) -> BoxFuture<'a, Result<String, SmtpResponse>> {
        ready(Ok(self.sink.queues.new_id()))
    }

    fn message(&mut self, item: MailItem) -> BoxFuture<'_, Vec<SmtpResponse>> {
        Box::pin(async move {
            match self.sink.enqueue(item).await {
                Ok(r) | Err(r) => vec![r],
            }
        })
    }
}

/// The Transport service's sink, shared by its sessions, directories and agents.
#[derive(Clone)]
pub struct TransportSink(pub Arc<SubmissionSink>);

impl Sink for TransportSink {
    fn open(&self) -> Box<dyn Transactions> {
        Box::new(Submission {
            sink: Arc::clone(&self.0),
        })
    }

    fn submit(&self, item: MailItem) -> BoxFuture<'_, Result<SmtpResponse, SmtpResponse>> {
        Box::pin(self.0.enqueue(item))
    }
}
