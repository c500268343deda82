//! The Transport service: SMTP receive into the durable Submission queue, then categorization
//! and delivery.
//!
//! Accepted items are made durable by the Submission queue's [`journal`] (group commit) before
//! the client gets 250, and handed to the [`categorizer`] in memory, which raises the routing
//! agents' events, resolves and routes each recipient, and hands each next hop's copy to its
//! [`delivery_queue`], whose own workers deliver it ([`delivery`]) and retry what must wait
//! (one fsync'd file per copy under `queue/delivery-*`) until it expires. Recipients without a
//! route go to Unreachable; failures produce a non-delivery report ([`dsn`], [`reports`]). An
//! item leaves the journal only once every copy was delivered, failed, or written to its
//! queue's directory.

pub mod agent_connector;
pub mod back_pressure;
pub mod categorizer;
pub mod delivery;
pub mod delivery_queue;
pub mod dsn;
pub mod holds;
pub mod journal;
pub mod queue_management;
pub mod reports;
pub mod status;
pub mod submission_queue;
pub mod tls_policy;
mod tracked;
pub mod unreachable;

use crate::message::MailItem;
use crate::service::Service;
use crate::smtp::receive::{ready, BoxFuture, Sink, Transactions};
use crate::smtp::reply;
use crate::smtp::session::MailRequest;
use crate::tracking::{EventId, Record};
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
    pub deferred: Arc<QueueDir>,
    /// No route for some recipients.
    pub unreachable: Arc<QueueDir>,
    /// Quarantined by an agent.
    pub quarantine: Arc<QueueDir>,
    /// Faulted agents too often; never retried automatically.
    pub poison: Arc<QueueDir>,
    data_dir: PathBuf,
    delivery: Mutex<HashMap<String, Arc<QueueDir>>>,
    /// Items of the directory queues someone is working on (`queue/id`): the categorizer
    /// routing one again, or an operator command taking it.
    busy: Mutex<std::collections::HashSet<String>>,
}

/// Work for the categorizer.
pub enum Work {
    /// A newly accepted item, still in the journal.
    Fresh(Box<MailItem>, u32),
    /// A deferred item to categorize again.
    Resubmit(String),
    /// An item of the Unreachable queue to categorize again (routes may exist now).
    Unreachable(String),
}

impl Queues {
    /// Opens the queues under `data_dir`; returns them with the work left from before a stop.
    pub fn open(data_dir: &std::path::Path) -> std::io::Result<(Self, Vec<Work>)> {
        let (journal, recovered) = Journal::open(&data_dir.join("queue").join("journal"))?;
        let queues = Self {
            journal,
            deferred: Arc::new(QueueDir::open(data_dir, "deferred")?),
            unreachable: Arc::new(QueueDir::open(data_dir, "unreachable")?),
            quarantine: Arc::new(QueueDir::open(data_dir, "quarantine")?),
            poison: Arc::new(QueueDir::open(data_dir, "poison")?),
            data_dir: data_dir.to_path_buf(),
            delivery: Mutex::new(HashMap::new()),
            busy: Mutex::new(Default::default()),
        };
        // Nothing else writes the queues yet: what a crash left half made goes.
        for q in [
            &*queues.deferred,
            &*queues.unreachable,
            &*queues.quarantine,
            &*queues.poison,
        ] {
            q.collect_orphans()?;
        }
        let mut work: Vec<Work> = recovered
            .into_iter()
            .map(|(i, a)| Work::Fresh(Box::new(i), a))
            .collect();
        work.extend(queues.deferred.ids()?.into_iter().map(Work::Resubmit));
        Ok((queues, work))
    }

    /// `<data_dir>/queue`.
    pub fn root(&self) -> PathBuf {
        self.data_dir.join("queue")
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

    /// A directory queue by name: `deferred`, `unreachable`, `quarantine` or `poison`
    /// (anything else is `poison`'s neighbour `deferred`: callers name only these four).
    pub fn directory(&self, name: &str) -> Arc<QueueDir> {
        Arc::clone(match name {
            "unreachable" => &self.unreachable,
            "quarantine" => &self.quarantine,
            "poison" => &self.poison,
            _ => &self.deferred,
        })
    }

    /// Marks `key` (`queue/id`) as being worked on; false when someone already is.
    pub fn claim(&self, key: &str) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string())
    }

    /// Ends a [`Queues::claim`].
    pub fn unclaim(&self, key: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Puts accepted messages into the Submission queue and hands them to the categorizer.
pub struct SubmissionSink {
    queues: Arc<Queues>,
    work: mpsc::UnboundedSender<Work>,
    /// Whether new mail is taken now.
    pub pressure: Arc<back_pressure::BackPressure>,
}

impl SubmissionSink {
    /// A sink writing to `queues`, passing each item on to `work`; `pressure` decides whether
    /// new mail (not reports or agent submissions) is taken.
    pub fn new(
        queues: Arc<Queues>,
        work: mpsc::UnboundedSender<Work>,
        pressure: Arc<back_pressure::BackPressure>,
    ) -> Self {
        Self {
            queues,
            work,
            pressure,
        }
    }

    /// A new queue id, for an item whose id must be known before it is queued.
    pub fn new_id(&self) -> String {
        self.queues.new_id()
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
                let queued = reply(250, "2.6.0", &format!("<{id}> Queued mail for delivery"));
                if let Some(origin) = item.trace.origin.take() {
                    Record::item(EventId::Receive, Service::Transport, &item)
                        .source(origin)
                        .reply(&queued)
                        .write();
                }
                let _ = self.work.send(Work::Fresh(Box::new(item), 0));
                Ok(queued)
            }
            Err(e) if e.raw_os_error() == Some(28) => {
                item.message.body().let_go();
                tracing::error!(message = "Queue disk full.", error = %e);
                Err(reply(452, "4.3.1", "Insufficient system storage"))
            }
            Err(e) => {
                item.message.body().let_go();
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
        request: &'a MailRequest,
    ) -> BoxFuture<'a, Result<String, SmtpResponse>> {
        ready(
            self.sink
                .pressure
                .admit(request.from.size)
                .map(|()| self.sink.queues.new_id()),
        )
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

    fn paused(&self) -> bool {
        self.0.pressure.paused()
    }
}

/// A host configuration's routing, built aside at a reload.
pub struct Routing {
    router: crate::routing::Router,
    deliverer: Arc<delivery::Deliverer>,
}

/// A running Transport service: its queues, categorizer and delivery queues.
pub struct Transport {
    /// Where its sessions, directories and agents put messages.
    pub sink: TransportSink,
    /// The delivery queues.
    pub deliveries: Arc<delivery_queue::DeliveryQueues>,
    /// The queues on disk.
    pub queues: Arc<Queues>,
    /// Failure reports, for operator removals with a report.
    reports: Arc<reports::Reports>,
    /// The categorizer's work, for items routed again.
    work: mpsc::UnboundedSender<Work>,
    /// The categorizer, for a host configuration reload.
    categorizer: Arc<categorizer::Categorizer>,
    /// The Transport service's agents (delivery agents are reached through the deliverer).
    agents: Option<Arc<crate::agents::AgentHost>>,
}

impl Transport {
    /// Opens the queues, recovers what an earlier run left, and starts the categorizer and the
    /// delivery queues.
    pub async fn start(
        config: &crate::config::HostConfig,
        agents: Option<Arc<crate::agents::AgentHost>>,
        organization: Arc<crate::organization::Organization>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let (queues, recovered) = Queues::open(&config.data_dir).context("opening the queues")?;
        let queues = Arc::new(queues);
        let router = crate::routing::Router::new(config, Arc::clone(&organization))
            .map_err(|e| anyhow::anyhow!("routing: {e}"))?;
        let (work_tx, work_rx) = mpsc::unbounded_channel();
        let pressure = back_pressure::BackPressure::new(
            &config.back_pressure,
            Arc::clone(queues.journal.load()),
            &queues.root(),
        );
        let submission = Arc::new(SubmissionSink::new(
            Arc::clone(&queues),
            work_tx.clone(),
            Arc::clone(&pressure),
        ));
        let reports = Arc::new(reports::Reports::new(
            Arc::clone(&submission),
            &config.hostname,
            &organization.postmaster(),
        ));
        let deliverer = Arc::new(delivery::Deliverer::new(config, agents.clone()));
        let agent_host = agents.clone();
        let deliveries = delivery_queue::DeliveryQueues::new(
            config,
            Arc::clone(&queues),
            deliverer,
            Arc::clone(&reports),
            Arc::clone(&submission),
        );
        let waiting = deliveries.recover().await;
        if waiting > 0 {
            tracing::info!(message = "Delivery queues recovered.", copies = waiting);
        }
        tokio::spawn(unreachable::run(
            Arc::clone(&queues),
            Arc::clone(&reports),
            work_tx.clone(),
            std::time::Duration::from_secs(config.routing.expiration_hours * 3600),
            std::time::Duration::from_millis(config.routing.retry_max_ms),
        ));
        let categorizer = Arc::new(categorizer::Categorizer::new(
            config,
            Arc::clone(&queues),
            router,
            agents,
            categorizer::Handoff {
                deliveries: Arc::clone(&deliveries),
                reports: Arc::clone(&reports),
                submission: Arc::clone(&submission),
            },
            work_tx.clone(),
        ));
        tokio::spawn(Arc::clone(&categorizer).run(recovered, work_rx));
        tokio::spawn(status::run(
            pressure,
            Arc::clone(&deliveries),
            config.run_dir().join("queues.json"),
        ));
        Ok(Self {
            sink: TransportSink(submission),
            deliveries,
            queues,
            reports,
            work: work_tx,
            categorizer,
            agents: agent_host,
        })
    }
}

impl Transport {
    /// For a reloaded host configuration: builds the router and the deliverer aside,
    /// without touching the running ones (an error changes nothing).
    pub fn prepare(
        &self,
        config: &crate::config::HostConfig,
        organization: Arc<crate::organization::Organization>,
    ) -> anyhow::Result<Routing> {
        let router = crate::routing::Router::new(config, organization)
            .map_err(|e| anyhow::anyhow!("routing: {e}"))?;
        let deliverer = Arc::new(delivery::Deliverer::new(config, self.agents.clone()));
        Ok(Routing { router, deliverer })
    }

    /// Swaps in what [`Transport::prepare`] built. Items and attempts under way finish with
    /// what they started with.
    pub fn apply(&self, routing: Routing, config: &crate::config::HostConfig) {
        self.categorizer.reconfigure(routing.router, config);
        self.deliveries.reconfigure(routing.deliverer, config);
    }

    /// Hands every item of the Unreachable queue to the categorizer again (routes may exist
    /// now). Blocking (reads the queue's directory).
    pub fn reroute_unreachable(&self) {
        let ids = self.queues.unreachable.ids().unwrap_or_default();
        if !ids.is_empty() {
            tracing::info!(
                message = "Routing the Unreachable queue again.",
                items = ids.len()
            );
        }
        for id in ids {
            let _ = self.work.send(Work::Unreachable(id));
        }
    }

    /// At a stop: lets the deliveries under way finish (up to `timeout`), then makes every
    /// journal record written so far durable, done records included, so a clean restart
    /// delivers nothing twice.
    pub async fn stop(&self, timeout: std::time::Duration) {
        let started = std::time::Instant::now();
        let drained = self.deliveries.drain(timeout).await;
        if let Err(e) = self.queues.journal.sync().await {
            tracing::error!(message = "Cannot flush the journal at the stop.", error = %e);
        }
        tracing::info!(
            message = "Transport stopped.",
            drained,
            elapsed_ms = started.elapsed().as_millis() as u64
        );
    }
}
