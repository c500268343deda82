//! The categorizer: one mail item at a time from the Submission queue.
//!
//! More than 20 Received fields fail the item with 5.4.6 first. Then OnSubmittedMessage;
//! OnResolvedMessage, where agents see every recipient, the unknown users of our domains
//! included, and may redirect them (remove and add) or set routing overrides; then the unknown
//! users still left without an override fail with 5.1.1 (a report, as for any failure);
//! OnRoutedMessage; OnCategorizedMessage; routing of each recipient to its next hop; then one
//! copy per next hop (bifurcation), delivered at once or queued for retry. Unknown users are
//! failed after OnResolvedMessage, not before, so that aliases and catch-alls can live in an
//! agent, as Exchange's address rewriting does.
//!
//! Routing agents' actions: `defer` puts the item in the deferred queue for the delay and
//! categorizes it again after; `delete` drops it (logged, no DSN); `fork` splits the recipients
//! not listed into a copy that is journaled and categorized after this one; recipients added,
//! removed or overridden, and edits to the message, are in the item that goes on. An agent fault
//! defers the item; an item that faulted agents twice goes to the Poison queue. An item that
//! would be deferred past `expiration_hours` fails instead, with a 4.4.7 report.

use super::delivery::{Diagnosis, QueueKey};
use super::delivery_queue::{DeliveryQueues, Release, Settle};
use super::dsn;
use super::reports::Reports;
use super::{Queues, SubmissionSink, Work};
use crate::agents::context::CallContext;
use crate::agents::dispatch::{dispatch_blocking, Blocking};
use crate::agents::{AgentHost, AgentSet};
use crate::config::HostConfig;
use crate::message::{EnvelopeRecipient, MailItem};
use crate::routing::{Route, Router};
use crate::service::Service;
use crate::smtp::reply;
use crate::tracking::{EventId, Record};
use mta_agent_sdk::{Action, AgentClass, Event};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Hop limit: more Received fields than this is a routing loop (5.4.6).
const MAX_HOPS: usize = 20;
/// Faults before an item goes to the Poison queue (Exchange's PoisonThreshold).
const POISON_THRESHOLD: u32 = 2;

/// Where the categorizer hands items on.
pub struct Handoff {
    /// The delivery queues, for each next hop's copy.
    pub deliveries: Arc<DeliveryQueues>,
    /// Failure reports.
    pub reports: Arc<Reports>,
    /// The Submission queue, for forks and agents' new messages.
    pub submission: Arc<SubmissionSink>,
}

/// The Transport service's categorizer.
pub struct Categorizer {
    queues: Arc<Queues>,
    /// Replaced by a host configuration reload; an item keeps the router it started with.
    router: arc_swap::ArcSwap<Router>,
    agents: Option<Arc<AgentHost>>,
    deliveries: Arc<DeliveryQueues>,
    reports: Arc<Reports>,
    submission: Arc<SubmissionSink>,
    config: arc_swap::ArcSwap<HostConfig>,
    work: mpsc::UnboundedSender<Work>,
}

/// Where an item being categorized came from, so it is released from the right place.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    Journal,
    Deferred,
    /// Resubmitted from the Unreachable queue (its routes may exist now).
    Unreachable,
}

impl Categorizer {
    /// A categorizer for `config`, handing copies to `deliveries` and follow-up work (deferred
    /// items) to `work`.
    pub fn new(
        config: &HostConfig,
        queues: Arc<Queues>,
        router: Router,
        agents: Option<Arc<AgentHost>>,
        handoff: Handoff,
        work: mpsc::UnboundedSender<Work>,
    ) -> Self {
        Self {
            queues,
            router: arc_swap::ArcSwap::from_pointee(router),
            agents,
            deliveries: handoff.deliveries,
            reports: handoff.reports,
            submission: handoff.submission,
            config: arc_swap::ArcSwap::from_pointee(config.clone()),
            work,
        }
    }

    /// A reloaded host configuration: items categorized from now on use `router` and
    /// `config`'s retry settings.
    pub fn reconfigure(&self, router: Router, config: &HostConfig) {
        self.router.store(Arc::new(router));
        self.config.store(Arc::new(config.clone()));
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
            match w {
                // A deferred item waits for the time it was deferred to, across a restart.
                Work::Resubmit(id) => self.resubmit_at_its_time(id),
                w => {
                    let _ = self.work.send(w);
                }
            }
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

    fn resubmit_at_its_time(&self, id: String) {
        let (queues, work) = (Arc::clone(&self.queues), self.work.clone());
        tokio::spawn(async move {
            let load = id.clone();
            let due = tokio::task::spawn_blocking(move || queues.deferred.load_meta(&load))
                .await
                .ok()
                .and_then(Result::ok)
                .map_or(0, |(item, _)| item.trace.next_attempt_ms);
            let wait = due.saturating_sub(super::delivery::now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let _ = work.send(Work::Resubmit(id));
        });
    }

    async fn process(&self, work: Work) {
        match work {
            Work::Fresh(item, attempts) => self.categorize(*item, attempts, Origin::Journal).await,
            Work::Resubmit(id) => self.again_from("deferred", id, Origin::Deferred).await,
            Work::Unreachable(id) => {
                self.again_from("unreachable", id, Origin::Unreachable)
                    .await
            }
        }
    }

    /// Categorizes an item of a directory queue again, unless someone (an operator command,
    /// or an earlier resubmission) is working on it: then it is left to them.
    async fn again_from(&self, queue: &'static str, id: String, origin: Origin) {
        let claim = format!("{queue}/{id}");
        if !self.queues.claim(&claim) {
            return;
        }
        let dir = self.queues.directory(queue);
        if let Ok(Ok((item, attempts))) = tokio::task::spawn_blocking(move || dir.load(&id)).await {
            self.categorize(item, attempts, origin).await;
        }
        self.queues.unclaim(&claim);
    }

    /// Categorizes an item and hands each next hop its copy.
    async fn categorize(&self, mut item: MailItem, attempts: u32, origin: Origin) {
        let id = item.id.clone();
        let router = self.router.load_full();
        if item.quarantine.is_some() {
            tracing::info!(message = "Message quarantined.", queue_id = %id, reason = item.quarantine.as_deref().unwrap_or(""));
            Record::item(EventId::Agentinfo, Service::Transport, &item)
                .connector("quarantine")
                .detail(format!(
                    "quarantined: {}",
                    item.quarantine.as_deref().unwrap_or("")
                ))
                .write();
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
            if event == Event::OnRoutedMessage {
                // Recipient resolution ends here, after OnResolvedMessage: the agents there
                // may have redirected an unknown user or given it a routing override, so only
                // the unknown users they left fail.
                self.fail_unknown(&router, &mut item, &mut failures);
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
            // A call that never returns keeps its item: a copy stays here to be faulted.
            let kept = item.clone();
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
                    super::tracked::recipient_changes(&kept.envelope.recipients, &item, event);
                    super::tracked::agent_actions(&item, event, &cx.actions);
                    if let Err(fault) = result {
                        self.reports
                            .notify(&item, std::mem::take(&mut failures), dsn::Kind::Failed)
                            .await;
                        tracing::warn!(message = "Routing agent fault.", agent = %fault.agent, library = %fault.library, event = %fault.event, error = ?fault.message, queue_id = %id);
                        return self.faulted(item, attempts, origin, &fault).await;
                    }
                    match self.apply(&mut item, &cx.actions).await {
                        Next::Continue => {}
                        Next::Deferred(delay) => {
                            self.reports
                                .notify(&item, std::mem::take(&mut failures), dsn::Kind::Failed)
                                .await;
                            return self.defer(item, attempts, origin, delay).await;
                        }
                        Next::Deleted => {
                            self.reports
                                .notify(&item, std::mem::take(&mut failures), dsn::Kind::Failed)
                                .await;
                            tracing::info!(message = "Message deleted by a routing agent.", queue_id = %id, event = %event);
                            Record::item(EventId::Drop, Service::Transport, &item)
                                .detail(format!("deleted by a routing agent in {event}"))
                                .write();
                            return self.release(&id, &origin).await;
                        }
                    }
                }
                Blocking::Abandoned(fault) => {
                    // A call that did not return is a fault like any other: twice, and the
                    // item goes to Poison instead of hanging the categorizer again.
                    tracing::warn!(message = "Routing agent abandoned.", agent = %fault.agent, library = %fault.library, event = %fault.event, queue_id = %id);
                    self.reports
                        .notify(&kept, std::mem::take(&mut failures), dsn::Kind::Failed)
                        .await;
                    return self.faulted(kept, attempts, origin, &fault).await;
                }
            }
        }

        // Routing: one copy per next hop (per destination domain for MX delivery).
        let size = item.message.len() as u64;
        let mut hops: BTreeMap<QueueKey, Vec<EnvelopeRecipient>> = BTreeMap::new();
        let mut unreachable = Vec::new();
        for r in std::mem::take(&mut item.envelope.recipients) {
            match router.route(&r, size) {
                Route::Hop(hop) => {
                    let key = self.deliveries.key_for(&hop, &r.address);
                    hops.entry(key).or_default().push(r)
                }
                Route::Unreachable => unreachable.push(r),
                Route::Fail(why) => failures.push((r, Diagnosis::local(why))),
            }
        }
        if !unreachable.is_empty() {
            let mut parked = item.clone();
            let addresses: Vec<&str> = unreachable.iter().map(|r| r.address.as_str()).collect();
            parked.trace.reason = Some(format!("no route for {}", addresses.join(", ")));
            parked.envelope.recipients = unreachable;
            if origin == Origin::Unreachable {
                // Parked again: under a new id, as the old file goes with the release.
                parked.id = self.queues.new_id();
            }
            tracing::info!(message = "No route for recipients; parked in Unreachable.", queue_id = %id, recipients = parked.envelope.recipients.len());
            Record::item(EventId::Defer, Service::Transport, &parked)
                .connector("unreachable")
                .detail("no route: parked in Unreachable")
                .write();
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
        self.reports
            .notify(&item, failures, dsn::Kind::Failed)
            .await;
        if hops.is_empty() {
            return self.release(&id, &origin).await;
        }
        // The item is released once every copy is settled by its queue.
        let release = match origin {
            Origin::Journal => Release::Journal(id.clone()),
            Origin::Deferred => Release::Deferred(id.clone()),
            Origin::Unreachable => Release::Unreachable(id.clone()),
        };
        let settle = Settle::new(Arc::clone(&self.queues), release, hops.len());
        let many = hops.len() > 1;
        for (n, (key, recipients)) in hops.into_iter().enumerate() {
            let mut copy = item.clone();
            copy.envelope.recipients = recipients;
            if many {
                copy.id = format!("{id}-{n}");
                Record::item(EventId::Transfer, Service::Transport, &copy)
                    .connector(key.name())
                    .related(&copy.id)
                    .detail("a copy per next hop")
                    .write();
            }
            self.deliveries
                .enqueue(key, copy, Arc::clone(&settle))
                .await;
        }
    }

    /// Fails, with 5.1.1, the recipients of our domains that have no mailbox and no routing
    /// override.
    fn fail_unknown(
        &self,
        router: &Router,
        item: &mut MailItem,
        failures: &mut Vec<(EnvelopeRecipient, Diagnosis)>,
    ) {
        let size = item.message.len() as u64;
        let (keep, unknown): (Vec<_>, Vec<_>) = std::mem::take(&mut item.envelope.recipients)
            .into_iter()
            .partition(|r| {
                r.routing_override.is_some()
                    || !matches!(router.route(r, size), Route::Fail(ref f) if f.enhanced_code() == "5.1.1")
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
                        let tracked = Record::item(EventId::Transfer, Service::Transport, &fork);
                        if self.submit(fork).await {
                            tracing::info!(message = "Mail item forked.", queue_id = %item.id, fork = %fork_id);
                            let mut tracked = tracked
                                .related(&fork_id)
                                .detail("forked by a routing agent");
                            tracked.queue_id = item.id.clone();
                            tracked.write();
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

    /// Journals a new item (a fork, an agent's submission) and queues it.
    async fn submit(&self, item: MailItem) -> bool {
        match self.submission.enqueue(item).await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(message = "Cannot queue a new mail item.", reply = %e);
                false
            }
        }
    }

    async fn faulted(
        &self,
        mut item: MailItem,
        attempts: u32,
        origin: Origin,
        fault: &crate::agents::Fault,
    ) {
        item.trace.faults += 1;
        item.trace.reason = Some(format!(
            "{} agent faults; the last: {fault}",
            item.trace.faults
        ));
        if item.trace.faults >= POISON_THRESHOLD {
            let queues = Arc::clone(&self.queues);
            let id = item.id.clone();
            tracing::error!(message = "Mail item faulted agents repeatedly; moved to the Poison queue.", queue_id = %id, faults = item.trace.faults);
            Record::item(EventId::Poisonmessage, Service::Transport, &item)
                .agent(fault.agent.to_string())
                .detail(item.trace.reason.clone().unwrap_or_default())
                .write();
            let stored =
                tokio::task::spawn_blocking(move || queues.poison.store(&mut item, attempts)).await;
            if matches!(stored, Ok(Ok(_))) {
                self.release(&id, &origin).await;
            }
            return;
        }
        // Categorized again after the first retry delay.
        let delay = Duration::from_millis(self.config.load().routing.retry_base_ms);
        self.defer(item, attempts, origin, delay).await;
    }

    async fn defer(&self, mut item: MailItem, attempts: u32, origin: Origin, delay: Duration) {
        let id = item.id.clone();
        // A deferred item ends like every queued one: past `expiration_hours` its recipients
        // fail with 4.4.7 instead of waiting again.
        let age =
            Duration::from_millis(super::delivery::now_ms().saturating_sub(item.trace.received_ms));
        if age >= Duration::from_secs(self.config.load().routing.expiration_hours * 3600) {
            let text = match &item.trace.reason {
                Some(reason) => {
                    format!("Message expired while its routing was deferred ({reason})")
                }
                None => "Message expired while its routing was deferred".to_string(),
            };
            tracing::info!(message = "Deferred item expired.", queue_id = %id);
            self.reports
                .fail_all(&item, Diagnosis::expired(reply(451, "4.4.7", &text)))
                .await;
            return self.release(&id, &origin).await;
        }
        // The time survives a restart.
        item.trace.next_attempt_ms =
            super::delivery::now_ms().saturating_add(delay.as_millis() as u64);
        let tracked = Record::item(EventId::Defer, Service::Transport, &item);
        let queues = Arc::clone(&self.queues);
        let stored =
            tokio::task::spawn_blocking(move || queues.deferred.store(&mut item, attempts + 1))
                .await;
        if !matches!(stored, Ok(Ok(_))) {
            tracing::error!(message = "Cannot defer a mail item.", queue_id = %id);
            return;
        }
        tracing::info!(message = "Mail item deferred.", queue_id = %id, delay_ms = delay.as_millis() as u64);
        tracked
            .detail(format!("categorizer: retry in {} ms", delay.as_millis()))
            .write();
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
        let queues = Arc::clone(&self.queues);
        let id = id.to_string();
        match origin {
            Origin::Journal => self.queues.journal.done(&id),
            Origin::Deferred => {
                let _ = tokio::task::spawn_blocking(move || queues.deferred.remove(&id)).await;
            }
            Origin::Unreachable => {
                let _ = tokio::task::spawn_blocking(move || queues.unreachable.remove(&id)).await;
            }
        }
    }
}

/// What a routing event decided.
enum Next {
    Continue,
    Deferred(Duration),
    Deleted,
}
