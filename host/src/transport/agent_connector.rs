//! Delivery Agent connectors: delivery to non-SMTP systems through the delivery agent whose
//! protocol is the connector's, with the connection model of the reference.
//!
//! A **connection** is one agent instance: OnOpenConnection (the agent must register it), then
//! OnDeliverMailItem for each mail item handed to it, then OnCloseConnection. A connection
//! carries up to the connector's `max_messages_per_connection` items (default 20): an open
//! connection waits a moment ([`IDLE`]) for the next item of its queue before it is closed. At
//! most `max_concurrent_connections` (default 5) are open at once, idle ones included.
//!
//! What the agent asks for takes effect:
//! - acks per item or per recipient: delivered, retried, failed with a report;
//! - `unregister_connection`: the connection closes after this item; the next item opens a
//!   new one;
//! - `defer_queue(delay)`: nothing is delivered through the connector until the delay is over;
//!   this item and every later one wait for it;
//! - `fail_queue`: this item and every item waiting in the connector's queue fail, each sender
//!   getting a report (the delivery queue does that); items that arrive later are delivered as
//!   usual;
//! - `submit_message`: a new message enters the Submission queue.

use super::delivery::{all, now_ms, Diagnosis, Outcome, Outcomes};
use crate::agents::context::CallContext;
use crate::agents::dispatch::{dispatch_blocking, Blocking};
use crate::agents::{AgentHost, AgentSet, Fault};
use crate::config::DeliveryAgentConnectorConfig;
use crate::message::{EnvelopeRecipient, MailItem};
use crate::service::Service;
use crate::tracking::{EventId, Record};
use mta_agent_sdk::{AckStatus, Action, AgentClass, Event, SmtpResponse};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long an open connection waits for the next item of its queue.
pub const IDLE: Duration = Duration::from_secs(1);

/// What one delivery through a Delivery Agent connector came to.
#[derive(Default)]
pub struct AgentDelivery {
    /// Each recipient's outcome.
    pub outcomes: Outcomes,
    /// The agent failed the whole queue with this reply: every item waiting in it fails.
    pub queue_failed: Option<SmtpResponse>,
    /// Messages the agent submitted, for the Submission queue.
    pub submitted: Vec<MailItem>,
}

/// An open connection: one agent instance that registered.
struct Connection {
    set: AgentSet,
    /// The next-hop domain its events are told.
    next_hop: String,
    generation: u64,
    delivered: usize,
    idle_since: Instant,
    _permit: OwnedSemaphorePermit,
}

/// One connector's connections and queue-wide decisions.
struct Connector {
    limit: Arc<Semaphore>,
    max_messages: usize,
    idle: Mutex<Vec<Connection>>,
    /// Signalled when a connection goes idle or closes, for deliveries waiting for one.
    available: tokio::sync::Notify,
    /// `defer_queue`: nothing is delivered before this time (ms since the epoch), and why.
    paused: Mutex<Option<(u64, SmtpResponse)>>,
}

/// Delivery Agent connectors: the agent serving each, and their connections.
pub struct AgentConnectors {
    agents: Option<Arc<AgentHost>>,
    connectors: HashMap<String, Arc<Connector>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AgentConnectors {
    /// For the Transport service's agents and these connectors. Starts the timer that closes
    /// idle connections, so it must be called inside the tokio runtime.
    pub fn new(
        agents: Option<Arc<AgentHost>>,
        connectors: &[DeliveryAgentConnectorConfig],
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            agents,
            connectors: connectors
                .iter()
                .map(|c| {
                    let state = Connector {
                        limit: Arc::new(Semaphore::new(
                            c.max_concurrent_connections.unwrap_or(5).max(1),
                        )),
                        max_messages: c.max_messages_per_connection.unwrap_or(20).max(1),
                        idle: Mutex::new(Vec::new()),
                        available: tokio::sync::Notify::new(),
                        paused: Mutex::new(None),
                    };
                    (c.name.clone(), Arc::new(state))
                })
                .collect(),
        });
        if !this.connectors.is_empty() {
            let weak = Arc::downgrade(&this);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(IDLE / 2).await;
                    let Some(this) = weak.upgrade() else { return };
                    for connector in this.connectors.values() {
                        let expired: Vec<Connection> = {
                            let mut idle = lock(&connector.idle);
                            let (old, fresh) = std::mem::take(&mut *idle)
                                .into_iter()
                                .partition(|c| c.idle_since.elapsed() >= IDLE);
                            *idle = fresh;
                            old
                        };
                        for connection in expired {
                            close(connection).await;
                            connector.available.notify_one();
                        }
                    }
                }
            });
        }
        this
    }

    /// Delivers `item` through the delivery agent of `connector`'s protocol, on an open
    /// connection of the connector or a new one.
    pub async fn deliver(
        &self,
        connector: &DeliveryAgentConnectorConfig,
        item: &MailItem,
    ) -> AgentDelivery {
        let done = |outcomes| AgentDelivery {
            outcomes,
            ..AgentDelivery::default()
        };
        let Some(state) = self.connectors.get(&connector.name) else {
            return done(nobody(item));
        };
        if let Some(outcomes) = state.queue_decision(item) {
            return done(outcomes);
        }
        let Some(host) = &self.agents else {
            return done(nobody(item));
        };
        let pipeline = host.pipeline();
        let Some(index) = pipeline.agents.iter().position(|a| {
            a.class == AgentClass::Delivery
                && a.canary_of.is_none()
                && a.delivery_protocol
                    .eq_ignore_ascii_case(&connector.delivery_protocol)
        }) else {
            return done(nobody(item));
        };
        let generation = pipeline.generation;
        let next_hop = next_hop_domain(connector);
        let mut delivery = AgentDelivery::default();
        let connection = match state.connection(generation, &next_hop).await {
            Slot::Open(connection) => connection,
            Slot::New(permit) => {
                let set = AgentSet::new(pipeline, AgentClass::Delivery).restricted_to(index);
                match open(set, &next_hop, item).await {
                    Opened::Registered(set, submitted) => {
                        delivery.submitted = submitted;
                        Connection {
                            set,
                            next_hop: next_hop.clone(),
                            generation,
                            delivered: 0,
                            idle_since: Instant::now(),
                            _permit: permit,
                        }
                    }
                    Opened::Refused(outcomes, actions, submitted) => {
                        drop(permit);
                        state.available.notify_one();
                        delivery.submitted = submitted;
                        delivery.queue_failed = state.queue_actions(&actions);
                        delivery.outcomes = outcomes;
                        return delivery;
                    }
                }
            }
        };

        // OnDeliverMailItem
        let mut cx = context(Event::OnDeliverMailItem, &next_hop);
        cx.mail_item = Some(item.clone());
        let (set, cx) = match dispatch_blocking(connection.set, Event::OnDeliverMailItem, cx).await
        {
            Blocking::Done(set, cx, Ok(())) => (set, cx),
            Blocking::Done(set, _, Err(f)) => {
                // The instance faulted: it is not used again.
                close_set(set, &next_hop).await;
                state.available.notify_one();
                delivery.outcomes = fault(item, &f);
                return delivery;
            }
            Blocking::Abandoned(f) => {
                state.available.notify_one();
                delivery.outcomes = fault(item, &f);
                return delivery;
            }
        };
        delivery.outcomes = acknowledgements(item, &cx.actions);
        delivery.queue_failed = state.queue_actions(&cx.actions);
        delivery.submitted.extend(submissions(&cx.actions));
        if let Some(retry) = state.paused_outcome() {
            // defer_queue in this very event: what was not acked waits with the queue.
            for (_, outcome) in delivery.outcomes.iter_mut() {
                if matches!(outcome, Outcome::Retry(_)) {
                    *outcome = retry.clone();
                }
            }
        }
        for (r, outcome) in &delivery.outcomes {
            if *outcome == Outcome::Delivered {
                let latency_ms = now_ms().saturating_sub(item.trace.received_ms);
                tracing::info!(message = "Delivered by agent.", connector = %connector.name, recipient = ?r.address, queue_id = %item.id, latency_ms);
                Record::item(EventId::Deliver, Service::Transport, item)
                    .to([r.address.as_str()])
                    .connector(connector.name.clone())
                    .detail(format!(
                        "delivery agent, protocol {}",
                        connector.delivery_protocol
                    ))
                    .write();
            }
        }
        let connection = Connection {
            set,
            delivered: connection.delivered + 1,
            idle_since: Instant::now(),
            ..connection
        };
        let unregistered = cx.asked(|a| matches!(a, Action::UnregisterConnection));
        if unregistered
            || connection.delivered >= state.max_messages
            || delivery.queue_failed.is_some()
        {
            close(connection).await;
        } else {
            lock(&state.idle).push(connection);
        }
        state.available.notify_one();
        delivery
    }
}

/// A connection for the next item: an open one, or room to open one.
enum Slot {
    Open(Connection),
    New(OwnedSemaphorePermit),
}

impl Connector {
    /// An open connection of this pipeline generation, else room for a new one, else waits for
    /// either. An idle connection of an older generation is closed and its room reused.
    async fn connection(&self, generation: u64, next_hop: &str) -> Slot {
        loop {
            let notified = self.available.notified();
            let idle = lock(&self.idle).pop();
            match idle {
                Some(c) if c.generation == generation => return Slot::Open(c),
                Some(stale) => {
                    let Connection { set, _permit, .. } = stale;
                    close_set(set, next_hop).await;
                    return Slot::New(_permit);
                }
                None => {}
            }
            if let Ok(permit) = Arc::clone(&self.limit).try_acquire_owned() {
                return Slot::New(permit);
            }
            notified.await;
        }
    }

    /// What a `defer_queue` of an earlier delivery decides for `item`, if anything.
    fn queue_decision(&self, item: &MailItem) -> Option<Outcomes> {
        self.paused_outcome().map(|o| all(item, o))
    }

    /// The outcome of an item while the queue is deferred.
    fn paused_outcome(&self) -> Option<Outcome> {
        let mut paused = lock(&self.paused);
        let (until, response) = paused.clone()?;
        let now = now_ms();
        if now >= until {
            *paused = None;
            return None;
        }
        let mut diagnosis = Diagnosis::local(response);
        diagnosis.retry_after = Some(Duration::from_millis(until - now));
        Some(Outcome::Retry(diagnosis))
    }

    /// Applies `defer_queue`; the reply of a `fail_queue`, if the agent asked for one.
    fn queue_actions(&self, actions: &[Action]) -> Option<SmtpResponse> {
        let mut failed = None;
        for action in actions {
            match action {
                Action::DeferQueue { delay, response } => {
                    let until = now_ms().saturating_add(delay.as_millis() as u64);
                    *lock(&self.paused) = Some((until, response.clone()));
                    tracing::info!(message = "Delivery agent deferred its queue.", delay_ms = delay.as_millis() as u64, reply = %response);
                }
                Action::FailQueue(response) => {
                    tracing::info!(message = "Delivery agent failed its queue.", reply = %response);
                    failed = Some(response.clone());
                }
                _ => {}
            }
        }
        failed
    }
}

/// What OnOpenConnection came to.
enum Opened {
    /// The agent registered the connection.
    Registered(AgentSet, Vec<MailItem>),
    /// It did not (or faulted, or acted on the queue): the item's outcomes, and what it asked.
    Refused(Outcomes, Vec<Action>, Vec<MailItem>),
}

/// Raises OnOpenConnection.
async fn open(set: AgentSet, next_hop: &str, item: &MailItem) -> Opened {
    let cx = context(Event::OnOpenConnection, next_hop);
    match dispatch_blocking(set, Event::OnOpenConnection, cx).await {
        Blocking::Done(set, cx, Ok(())) => {
            let submitted = submissions(&cx.actions);
            if let Some(outcome) = queue_outcome(&cx.actions) {
                close_set(set, next_hop).await;
                return Opened::Refused(all(item, outcome), cx.actions, submitted);
            }
            if !cx.asked(|a| matches!(a, Action::RegisterConnection { .. })) {
                return Opened::Refused(nobody(item), Vec::new(), submitted);
            }
            Opened::Registered(set, submitted)
        }
        Blocking::Done(_, _, Err(f)) | Blocking::Abandoned(f) => {
            Opened::Refused(fault(item, &f), Vec::new(), Vec::new())
        }
    }
}

/// Raises OnCloseConnection on a connection that is done.
async fn close(connection: Connection) {
    let Connection { set, next_hop, .. } = connection;
    close_set(set, &next_hop).await;
}

async fn close_set(set: AgentSet, next_hop: &str) {
    let cx = context(Event::OnCloseConnection, next_hop);
    // Nothing is left to fail or defer at close; a fault is only reported.
    if let Blocking::Done(_, _, Err(f)) | Blocking::Abandoned(f) =
        dispatch_blocking(set, Event::OnCloseConnection, cx).await
    {
        tracing::warn!(message = "Delivery agent fault.", agent = %f.agent, library = %f.library, event = %f.event, error = ?f.message, next_hop = %next_hop);
    }
}

fn context(event: Event, next_hop: &str) -> CallContext {
    let mut cx = CallContext::new(event, Service::Transport);
    cx.args = vec![("next_hop_domain", next_hop.to_string())];
    cx
}

/// The next-hop domain agents are told: the connector's first address space.
fn next_hop_domain(connector: &DeliveryAgentConnectorConfig) -> String {
    connector
        .address_spaces
        .first()
        .map(|s| {
            if s.space == "*" {
                s.kind.clone()
            } else {
                s.space.clone()
            }
        })
        .unwrap_or_default()
}

fn nobody(item: &MailItem) -> Outcomes {
    all(
        item,
        Outcome::retry(451, "4.4.0", "No DeliveryAgent handled the queue"),
    )
}

fn fault(item: &MailItem, f: &Fault) -> Outcomes {
    tracing::warn!(message = "Delivery agent fault.", agent = %f.agent, library = %f.library, event = %f.event, error = ?f.message, queue_id = %item.id);
    all(
        item,
        Outcome::retry(
            451,
            "4.4.0",
            &format!("Delivery agent fault: {}", f.message),
        ),
    )
}

/// A FailQueue or DeferQueue action, as the outcome of the item at hand.
fn queue_outcome(actions: &[Action]) -> Option<Outcome> {
    actions.iter().find_map(|a| match a {
        Action::FailQueue(r) => Some(Outcome::Fail(Diagnosis::local(r.clone()))),
        Action::DeferQueue { delay, response } => {
            let mut diagnosis = Diagnosis::local(response.clone());
            diagnosis.retry_after = Some(*delay);
            Some(Outcome::Retry(diagnosis))
        }
        _ => None,
    })
}

/// Each recipient's outcome from the agent's acks; a recipient left without one waits.
fn acknowledgements(item: &MailItem, actions: &[Action]) -> Outcomes {
    let mut outcomes: Vec<(EnvelopeRecipient, Option<Outcome>)> = item
        .envelope
        .recipients
        .iter()
        .map(|r| (r.clone(), None))
        .collect();
    let of = |status: AckStatus, response: &SmtpResponse| match status {
        AckStatus::Success => Outcome::Delivered,
        AckStatus::Retry => Outcome::Retry(Diagnosis::local(response.clone())),
        AckStatus::Fail => Outcome::Fail(Diagnosis::local(response.clone())),
    };
    for action in actions {
        match action {
            Action::AckRecipient {
                recipient,
                status,
                response,
            } => {
                for (r, o) in outcomes.iter_mut() {
                    if r.address.eq_ignore_ascii_case(recipient) && o.is_none() {
                        *o = Some(of(*status, response));
                    }
                }
            }
            Action::AckMailItem { status, response } => {
                for (_, o) in outcomes.iter_mut().filter(|(_, o)| o.is_none()) {
                    *o = Some(of(*status, response));
                }
            }
            other => {
                if let Some(outcome) = queue_outcome(std::slice::from_ref(other)) {
                    for (_, o) in outcomes.iter_mut().filter(|(_, o)| o.is_none()) {
                        *o = Some(outcome.clone());
                    }
                }
            }
        }
    }
    outcomes
        .into_iter()
        .map(|(r, o)| {
            let outcome = o.unwrap_or_else(|| {
                Outcome::retry(
                    451,
                    "4.4.0",
                    "DeliveryAgent returned without processing message",
                )
            });
            (r, outcome)
        })
        .collect()
}

/// The messages an agent submitted, checked like a client's.
fn submissions(actions: &[Action]) -> Vec<MailItem> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SubmitMessage {
                from,
                recipients,
                mime,
            } => match MailItem::submitted(from, recipients, mime) {
                Ok(item) => Some(item),
                Err(e) => {
                    tracing::warn!(message = "Agent submission refused.", error = %e);
                    None
                }
            },
            _ => None,
        })
        .collect()
}
