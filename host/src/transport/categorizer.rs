//! The categorizer: one mail item at a time from the Submission queue.
//!
//! OnSubmittedMessage; recipient resolution (unknown users of our domains fail with 5.1.1; more
//! than 20 Received fields fail the item with 5.4.6); OnResolvedMessage (routing overrides take
//! effect from here); OnRoutedMessage; OnCategorizedMessage; routing of each recipient to its
//! next hop; then one copy per next hop (bifurcation), delivered at once or queued for retry.
//!
//! Routing agents' actions: `defer` puts the item in the deferred queue for the delay and
//! categorizes it again after; `delete` drops it (logged, no DSN); `fork` splits the recipients
//! not listed into a copy that is journaled and categorized after this one; recipients added,
//! removed or overridden, and edits to the message, are in the item that goes on. An agent fault
//! defers the item; an item that faulted agents twice goes to the Poison queue.

use super::agent_connector::AgentConnectors;
use super::delivery::{self, Outcome, Outcomes};
use super::delivery::{Diagnosis, Target};
use super::dsn;
use super::{Queues, Work};
use crate::agents::context::CallContext;
use crate::agents::dispatch::{dispatch_blocking, Blocking};
use crate::agents::{AgentHost, AgentSet};
use crate::config::HostConfig;
use crate::message::{EnvelopeRecipient, MailItem};
use crate::routing::{NextHop, Route, Router};
use crate::service::Service;
use crate::smtp::reply;
use crate::smtp::send::Protocol;
use crate::smtp::send::TlsMode;
use mta_agent_sdk::{Action, AgentClass, Event};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Hop limit: more Received fields than this is a routing loop (5.4.6).
const MAX_HOPS: usize = 20;
/// Faults before an item goes to the Poison queue (Exchange's PoisonThreshold).
const POISON_THRESHOLD: u32 = 2;

/// The Transport service's categorizer and delivery.
pub struct Categorizer {
    queues: Arc<Queues>,
    router: Router,
    agents: Option<Arc<AgentHost>>,
    agent_connectors: Arc<AgentConnectors>,
    send_limits: std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// Idle connections to next hops, reused.
    pool: Arc<crate::smtp::pool::Pool>,
    /// For send connectors without smart hosts.
    mx: Option<crate::routing::mx::MxResolver>,
    config: HostConfig,
    postmaster: String,
    work: mpsc::UnboundedSender<Work>,
}

/// Where an item being processed came from, so it is released from the right place.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    Journal,
    /// A copy held in memory while its original stays in the journal or a queue file.
    Memory,
    Deferred,
    Delivery(String),
}

impl Categorizer {
    /// A categorizer for `config`, sending follow-up work (retries, forks) to `work`.
    pub fn new(
        config: &HostConfig,
        queues: Arc<Queues>,
        router: Router,
        agents: Option<Arc<AgentHost>>,
        work: mpsc::UnboundedSender<Work>,
    ) -> Self {
        let postmaster = format!(
            "postmaster@{}",
            config
                .organization
                .accepted_domains
                .first()
                .map(String::as_str)
                .unwrap_or(&config.hostname)
        );
        Self {
            agent_connectors: AgentConnectors::new(
                agents.clone(),
                &config.delivery_agent_connectors,
            ),
            send_limits: config
                .send_connectors
                .iter()
                .map(|c| {
                    let n = c.max_concurrent_connections.unwrap_or(20).max(1);
                    (c.name.clone(), Arc::new(tokio::sync::Semaphore::new(n)))
                })
                .collect(),
            pool: crate::smtp::pool::Pool::new(Duration::from_millis(
                config.routing.idle_connection_ms.max(1),
            )),
            mx: config
                .send_connectors
                .iter()
                .any(|c| c.smart_hosts.is_empty())
                .then(|| crate::routing::mx::MxResolver::new(&config.routing.dns_servers))
                .and_then(|r| r.map_err(|e| tracing::error!(message = "No DNS resolver; MX routing will retry.", error = %e)).ok()),
            queues,
            router,
            agents,
            config: config.clone(),
            postmaster,
            work,
        }
    }

    /// Runs until the work channel closes, `recovered` first.
    pub async fn run(
        self: Arc<Self>,
        recovered: Vec<Work>,
        mut work: mpsc::UnboundedReceiver<Work>,
    ) {
        if !recovered.is_empty() {
            tracing::info!(
                message = "Recovering queued messages.",
                count = recovered.len()
            );
        }
        for w in recovered {
            let _ = self.work.send(w);
        }
        let mut in_flight = tokio::task::JoinSet::new();
        while let Some(w) = work.recv().await {
            while in_flight.len() >= 64 {
                in_flight.join_next().await;
            }
            let this = Arc::clone(&self);
            in_flight.spawn(async move { this.process(w).await });
        }
    }

    async fn process(&self, work: Work) {
        match work {
            Work::Fresh(item, attempts) => self.categorize(*item, attempts, Origin::Journal).await,
            Work::Redeliver(hop, item, attempts) => {
                self.deliver(hop, *item, attempts, Origin::Memory).await;
            }
            Work::Resubmit(id) => {
                let queues = Arc::clone(&self.queues);
                let load = id.clone();
                if let Ok(Ok((item, attempts))) =
                    tokio::task::spawn_blocking(move || queues.deferred.load(&load)).await
                {
                    self.categorize(item, attempts, Origin::Deferred).await;
                }
            }
            Work::Retry(queue, id) => {
                let Ok(dir) = self.queues.delivery(&queue) else {
                    return;
                };
                let load = id.clone();
                let Ok(Ok((item, attempts))) =
                    tokio::task::spawn_blocking(move || dir.load(&load)).await
                else {
                    return;
                };
                let Some(hop) = item.trace.next_hop.as_deref().and_then(NextHop::from_key) else {
                    tracing::error!(message = "Queued item without a next hop.", queue = %queue, queue_id = %id);
                    return;
                };
                self.deliver(hop, item, attempts, Origin::Delivery(queue))
                    .await;
            }
        }
    }

    /// Categorizes an item and hands each next hop its copy.
    async fn categorize(&self, mut item: MailItem, attempts: u32, origin: Origin) {
        let id = item.id.clone();
        if item.quarantine.is_some() {
            tracing::info!(message = "Message quarantined.", queue_id = %id, reason = item.quarantine.as_deref().unwrap_or(""));
            let queues = Arc::clone(&self.queues);
            let stored =
                tokio::task::spawn_blocking(move || queues.quarantine.store(&mut item, attempts))
                    .await;
            if matches!(stored, Ok(Ok(_))) {
                self.release(&id, &origin).await;
            }
            return;
        }
        let mut failures: Vec<(EnvelopeRecipient, Diagnosis)> = Vec::new();
        let mut agents = self
            .agents
            .as_ref()
            .map(|h| AgentSet::new(h.pipeline(), AgentClass::Routing));

        if item.message.count("Received") > MAX_HOPS {
            let loop_reply = Diagnosis::local(reply(
                554,
                "5.4.6",
                "Routing loop detected: too many Received fields",
            ));
            failures.extend(
                item.envelope
                    .recipients
                    .drain(..)
                    .map(|r| (r, loop_reply.clone())),
            );
        }

        for event in [
            Event::OnSubmittedMessage,
            Event::OnResolvedMessage,
            Event::OnRoutedMessage,
            Event::OnCategorizedMessage,
        ] {
            if item.envelope.recipients.is_empty() {
                break;
            }
            if event == Event::OnResolvedMessage {
                // Recipient resolution: unknown users of our domains fail here.
                let size = item.message.len() as u64;
                let (keep, unknown): (Vec<_>, Vec<_>) = std::mem::take(&mut item.envelope.recipients)
                    .into_iter()
                    .partition(|r| {
                        r.routing_override.is_some()
                            || !matches!(self.router.route(r, size), Route::Fail(ref f) if f.enhanced_code() == "5.1.1")
                    });
                item.envelope.recipients = keep;
                for r in unknown {
                    failures.push((
                        r,
                        Diagnosis::local(reply(
                            550,
                            "5.1.1",
                            "Recipient address rejected: user unknown",
                        )),
                    ));
                }
                if item.envelope.recipients.is_empty() {
                    break;
                }
            }
            let Some(set) = agents.take() else { continue };
            if !set.handles(event) {
                agents = Some(set);
                continue;
            }
            let mut cx = CallContext::new(event, Service::Transport);
            cx.mail_item = Some(item);
            match dispatch_blocking(set, event, cx).await {
                Blocking::Done(set, cx, result) => {
                    agents = Some(set);
                    let Some(back) = cx.mail_item else {
                        // The context owns the item and always gives it back; should that
                        // ever fail, the item is still in its queue and comes back.
                        tracing::error!(message = "Mail item lost by an agent call; it stays queued.", queue_id = %id);
                        return;
                    };
                    item = back;
                    if let Err(fault) = result {
                        self.notify(&item, std::mem::take(&mut failures), dsn::Kind::Failed)
                            .await;
                        tracing::warn!(message = "Routing agent fault.", agent = %fault.agent, event = %fault.event, error = %fault.message, queue_id = %id);
                        return self.faulted(item, attempts, origin).await;
                    }
                    match self.apply(&mut item, &cx.actions).await {
                        Next::Continue => {}
                        Next::Deferred(delay) => {
                            self.notify(&item, std::mem::take(&mut failures), dsn::Kind::Failed)
                                .await;
                            return self.defer(item, attempts, origin, delay).await;
                        }
                        Next::Deleted => {
                            self.notify(&item, std::mem::take(&mut failures), dsn::Kind::Failed)
                                .await;
                            tracing::info!(message = "Message deleted by a routing agent.", queue_id = %id, event = %event);
                            return self.release(&id, &origin).await;
                        }
                    }
                }
                Blocking::Abandoned(fault) => {
                    tracing::warn!(message = "Routing agent abandoned.", agent = %fault.agent, queue_id = %id);
                    // The item stayed with the stuck call: it is still in the journal or its
                    // queue, and comes back on the next start; faults are counted there.
                    return;
                }
            }
        }

        // Routing: one copy per next hop.
        let size = item.message.len() as u64;
        let mut hops: BTreeMap<NextHop, Vec<EnvelopeRecipient>> = BTreeMap::new();
        let mut unreachable = Vec::new();
        for r in std::mem::take(&mut item.envelope.recipients) {
            match self.router.route(&r, size) {
                Route::Hop(hop) => hops.entry(hop).or_default().push(r),
                Route::Unreachable => unreachable.push(r),
                Route::Fail(why) => failures.push((r, Diagnosis::local(why))),
            }
        }
        if !unreachable.is_empty() {
            let mut parked = item.clone();
            parked.envelope.recipients = unreachable;
            tracing::info!(message = "No route for recipients; parked in Unreachable.", queue_id = %id, recipients = parked.envelope.recipients.len());
            let queues = Arc::clone(&self.queues);
            let stored = tokio::task::spawn_blocking(move || {
                queues.unreachable.store(&mut parked, attempts)
            })
            .await;
            if !matches!(stored, Ok(Ok(_))) {
                tracing::error!(message = "Cannot park recipients in Unreachable; the item stays queued.", queue_id = %id);
                return;
            }
        }
        let many = hops.len() > 1;
        let mut handed_over = true;
        for (n, (hop, recipients)) in hops.into_iter().enumerate() {
            let mut copy = item.clone();
            copy.envelope.recipients = recipients;
            if many {
                copy.id = format!("{id}-{n}");
            }
            handed_over &= self.deliver(hop, copy, 0, Origin::Journal).await;
        }
        self.notify(&item, failures, dsn::Kind::Failed).await;
        if handed_over {
            self.release(&id, &origin).await;
        }
    }

    /// Applies a routing event's actions to the item.
    async fn apply(&self, item: &mut MailItem, actions: &[Action]) -> Next {
        for action in actions {
            match action {
                Action::Delete => return Next::Deleted,
                Action::Defer { delay, .. } => return Next::Deferred(*delay),
                Action::Fork(keep) => {
                    let (stay, go): (Vec<_>, Vec<_>) =
                        std::mem::take(&mut item.envelope.recipients)
                            .into_iter()
                            .partition(|r| keep.iter().any(|k| k.eq_ignore_ascii_case(&r.address)));
                    item.envelope.recipients = stay;
                    if !go.is_empty() {
                        let mut fork = item.clone();
                        fork.envelope.recipients = go.clone();
                        fork.id = self.queues.new_id();
                        let fork_id = fork.id.clone();
                        if self.submit(fork).await {
                            tracing::info!(message = "Mail item forked.", queue_id = %item.id, fork = %fork_id);
                        } else {
                            // Not journaled: the recipients stay with this item.
                            item.envelope.recipients.extend(go);
                        }
                    }
                }
                Action::SubmitMessage {
                    from,
                    recipients,
                    mime,
                } => match MailItem::submitted(from, recipients, mime) {
                    Ok(new) => {
                        let _ = self.submit(new).await;
                    }
                    Err(e) => {
                        tracing::warn!(message = "Agent submission refused.", queue_id = %item.id, error = %e)
                    }
                },
                _ => {}
            }
        }
        Next::Continue
    }

    /// Journals a new item (a fork, an agent's submission, a notification) and queues it.
    async fn submit(&self, mut item: MailItem) -> bool {
        if item.id.is_empty() {
            item.id = self.queues.new_id();
        }
        if item.trace.received_ms == 0 {
            item.trace.received_ms = delivery::now_ms();
        }
        match self.queues.journal.append(&item, 0).await {
            Ok(()) => {
                let _ = self.work.send(Work::Fresh(Box::new(item), 0));
                true
            }
            Err(e) => {
                tracing::error!(message = "Cannot queue a new mail item.", queue_id = %item.id, error = %e);
                false
            }
        }
    }

    /// Delivers one next hop's copy, queuing what must wait and reporting what failed. Returns
    /// whether every recipient is delivered, failed or safely queued.
    async fn deliver(
        &self,
        hop: NextHop,
        mut item: MailItem,
        attempts: u32,
        origin: Origin,
    ) -> bool {
        let outcomes: Outcomes = match &hop {
            NextHop::Mailbox => {
                let target = Target {
                    address: &self.config.mailbox.listen,
                    name: None,
                    tls: TlsMode::None,
                    protocol: Protocol::Lmtp,
                };
                delivery::smtp(&self.pool, &target, &self.config.hostname, &item)
                    .await
                    .unwrap_or_else(|e| {
                        delivery::all(
                            &item,
                            Outcome::retry(
                                451,
                                "4.4.1",
                                &format!("Mailbox Transport unavailable: {e}"),
                            ),
                        )
                    })
            }
            NextHop::Send(name) => {
                match self.config.send_connectors.iter().find(|c| &c.name == name) {
                    Some(c) => {
                        // Per-connector concurrency: at most this many connections at once.
                        let _permit = match self.send_limits.get(name) {
                            Some(limit) => Some(Arc::clone(limit).acquire_owned().await),
                            None => None,
                        };
                        delivery::send_connector(
                            &self.pool,
                            c,
                            &self.config.hostname,
                            &item,
                            self.mx.as_ref(),
                        )
                        .await
                    }
                    None => gone(&item, name),
                }
            }
            NextHop::Agent(name) => match self
                .config
                .delivery_agent_connectors
                .iter()
                .find(|c| &c.name == name)
            {
                Some(c) => {
                    let delivery = self.agent_connectors.deliver(c, &item).await;
                    for new in delivery.submitted {
                        let _ = self.submit(new).await;
                    }
                    if delivery.queue_failed {
                        self.kick(&hop.queue_name(), &item.id).await;
                    }
                    delivery.outcomes
                }
                None => gone(&item, name),
            },
            NextHop::Foreign(name) => match self
                .config
                .foreign_connectors
                .iter()
                .find(|c| &c.name == name)
            {
                Some(c) => {
                    let (c, hostname, copy) =
                        (c.clone(), self.config.hostname.clone(), item.clone());
                    tokio::task::spawn_blocking(move || {
                        delivery::foreign_connector(&c, &hostname, &copy)
                    })
                    .await
                    .unwrap_or_default()
                }
                None => gone(&item, name),
            },
        };
        let mut failures = Vec::new();
        let mut waiting: Vec<(EnvelopeRecipient, Diagnosis)> = Vec::new();
        for (r, outcome) in outcomes {
            match outcome {
                Outcome::Delivered => {}
                Outcome::Fail(why) => failures.push((r, why)),
                Outcome::Retry(why) => waiting.push((r, why)),
            }
        }
        let last_reason = waiting.last().map(|(_, why)| why.clone());
        let age = Duration::from_millis(delivery::now_ms().saturating_sub(item.trace.received_ms));
        let expiry = Duration::from_secs(self.config.routing.expiration_hours * 3600);
        if !waiting.is_empty() && age >= expiry {
            // 4.4.7 is a persistent transient failure that has run out of time; the report says
            // Action: failed with Status: 4.4.7, as RFC 3463 intends, and gives the last answer
            // the next hop gave as its diagnostic.
            failures.extend(waiting.drain(..).map(|(r, why)| {
                let mut why = match (&why.remote_mta, &r.last_attempt) {
                    // This attempt never reached the next hop: report what it said last.
                    (None, Some(last)) if last.remote_mta.is_some() => Diagnosis::remote(
                        reply(last.code, &last.enhanced, &last.text),
                        last.remote_mta.as_deref(),
                    ),
                    _ => why,
                };
                why.status = Some("4.4.7".into());
                (r, why)
            }));
        }
        self.notify(&item, failures, dsn::Kind::Failed).await;

        let queue = hop.queue_name();
        if waiting.is_empty() {
            if let Origin::Delivery(q) = &origin {
                if let Ok(dir) = self.queues.delivery(q) {
                    let id = item.id.clone();
                    let _ = tokio::task::spawn_blocking(move || dir.remove(&id)).await;
                }
            }
            return true;
        }
        let delay_notice = Duration::from_secs(self.config.routing.delay_notification_hours * 3600);
        if age >= delay_notice && !item.trace.delay_notified {
            let mut view = item.clone();
            view.envelope.recipients = waiting.iter().map(|(r, _)| r.clone()).collect();
            self.notify(&view, waiting.clone(), dsn::Kind::Delayed)
                .await;
            item.trace.delay_notified = true;
        }
        // Each waiting recipient keeps its last answer, for the report if it expires.
        item.envelope.recipients = waiting
            .into_iter()
            .map(|(mut r, why)| {
                r.last_attempt = Some(crate::message::LastAttempt {
                    code: why.response.code(),
                    enhanced: why.response.enhanced_code().to_string(),
                    text: why.response.text().to_string(),
                    remote_mta: why.remote_mta,
                });
                r
            })
            .collect();
        item.trace.next_hop = Some(hop.key());
        let Ok(dir) = self.queues.delivery(&queue) else {
            return false;
        };
        let id = item.id.clone();
        let keep = item.clone();
        let stored = tokio::task::spawn_blocking(move || dir.store(&mut item, attempts + 1)).await;
        if !matches!(stored, Ok(Ok(_))) {
            // Still where it came from (the journal or its queue file): try the copy again from
            // memory later, so a full disk delays delivery instead of stopping it.
            tracing::error!(message = "Cannot queue an item for retry; it stays where it is and is tried again.", queue = %queue, queue_id = %id);
            let work = self.work.clone();
            let delay = Duration::from_millis(self.config.routing.retry_base_ms.max(100));
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = work.send(Work::Redeliver(hop, Box::new(keep), attempts + 1));
            });
            return false;
        }
        tracing::info!(message = "Delivery deferred.", queue = %queue, queue_id = %id, attempts = attempts + 1, reason = %last_reason.as_ref().map(|r| r.response.to_string()).unwrap_or_default());
        let base = self.config.routing.retry_base_ms.max(1);
        let delay = last_reason
            .as_ref()
            .and_then(|why| why.retry_after)
            .unwrap_or_else(|| {
                Duration::from_millis(
                    base.saturating_mul(1 << attempts.min(16))
                        .min(self.config.routing.retry_max_ms.max(base)),
                )
            });
        let work = self.work.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = work.send(Work::Retry(queue, id));
        });
        true
    }

    /// Tries every item waiting in `queue` now (but `current`): after a delivery agent failed
    /// its queue, they fail at once instead of at their next retry.
    async fn kick(&self, queue: &str, current: &str) {
        let Ok(dir) = self.queues.delivery(queue) else {
            return;
        };
        let ids = tokio::task::spawn_blocking(move || dir.ids())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        for id in ids.into_iter().filter(|id| id != current) {
            let _ = self.work.send(Work::Retry(queue.to_string(), id));
        }
    }

    /// Sends the sender a delivery status notification, if there is anything to say.
    async fn notify(
        &self,
        item: &MailItem,
        failures: Vec<(EnvelopeRecipient, Diagnosis)>,
        kind: dsn::Kind,
    ) {
        if failures.is_empty() {
            return;
        }
        for (r, why) in &failures {
            tracing::info!(message = if kind == dsn::Kind::Failed { "Delivery failed." } else { "Delivery delayed; sender notified." }, queue_id = %item.id, recipient = ?r.address, reply = %why.response);
        }
        // NOTIFY (RFC 3461): NEVER asks for no report; a list without FAILURE (or DELAY) asks
        // for none of that kind. Without NOTIFY, failures are reported and delays too.
        let wanted = |r: &EnvelopeRecipient| match r.notify {
            None => true,
            Some(n) if n.never => false,
            Some(n) => {
                if kind == dsn::Kind::Failed {
                    n.failure
                } else {
                    n.delay
                }
            }
        };
        let failures: Vec<_> = failures.into_iter().filter(|(r, _)| wanted(r)).collect();
        if failures.is_empty() {
            return;
        }
        if let Some(report) = dsn::notification(
            item,
            &failures,
            kind,
            &self.config.hostname,
            &self.postmaster,
        ) {
            let _ = self.submit(report).await;
        }
    }

    async fn faulted(&self, mut item: MailItem, attempts: u32, origin: Origin) {
        item.trace.faults += 1;
        if item.trace.faults >= POISON_THRESHOLD {
            let queues = Arc::clone(&self.queues);
            let id = item.id.clone();
            tracing::error!(message = "Mail item faulted agents repeatedly; moved to the Poison queue.", queue_id = %id, faults = item.trace.faults);
            let stored =
                tokio::task::spawn_blocking(move || queues.poison.store(&mut item, attempts)).await;
            if matches!(stored, Ok(Ok(_))) {
                self.release(&id, &origin).await;
            }
            return;
        }
        // Categorized again after the first retry delay.
        let delay = Duration::from_millis(self.config.routing.retry_base_ms);
        self.defer(item, attempts, origin, delay).await;
    }

    async fn defer(&self, mut item: MailItem, attempts: u32, origin: Origin, delay: Duration) {
        let id = item.id.clone();
        let queues = Arc::clone(&self.queues);
        let stored =
            tokio::task::spawn_blocking(move || queues.deferred.store(&mut item, attempts + 1))
                .await;
        if !matches!(stored, Ok(Ok(_))) {
            tracing::error!(message = "Cannot defer a mail item.", queue_id = %id);
            return;
        }
        tracing::info!(message = "Mail item deferred.", queue_id = %id, delay_ms = delay.as_millis() as u64);
        if origin != Origin::Deferred {
            self.release(&id, &origin).await;
        }
        let work = self.work.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = work.send(Work::Resubmit(id));
        });
    }

    /// The item is fully handed on: remove it from where it came from.
    async fn release(&self, id: &str, origin: &Origin) {
        match origin {
            Origin::Journal => self.queues.journal.done(id),
            Origin::Deferred => {
                let queues = Arc::clone(&self.queues);
                let id = id.to_string();
                let _ = tokio::task::spawn_blocking(move || queues.deferred.remove(&id)).await;
            }
            Origin::Delivery(q) => {
                if let Ok(dir) = self.queues.delivery(q) {
                    let id = id.to_string();
                    let _ = tokio::task::spawn_blocking(move || dir.remove(&id)).await;
                }
            }
            Origin::Memory => {}
        }
    }
}

/// What a routing event decided.
enum Next {
    Continue,
    Deferred(Duration),
    Deleted,
}

fn gone(item: &MailItem, name: &str) -> Outcomes {
    delivery::all(
        item,
        Outcome::retry(451, "4.4.0", &format!("Connector {name} no longer exists")),
    )
}
