//! Raising events to agents: in priority order, with faults contained and time limits enforced.
//!
//! An [`AgentSet`] is the agent instances of one session, mail item or delivery connection, all
//! from one pipeline snapshot. [`AgentSet::dispatch`] calls them synchronously; the async side
//! uses [`dispatch_blocking`], which runs the calls on the agents' own threads
//! ([`super::pool`]) so a slow agent never stalls other sessions nor the file I/O, and gives up
//! on a call that outlives twice its time limit (the call's thread is then counted as hung).

use crate::agents::pipeline::Pipeline;
use crate::agents::snapshot::Tracer;
use crate::message::MailItem;
use abi_stable::sabi_trait::TD_Opaque;
use mta_agent_sdk::abi::{AgentInstanceBox, EventHost, EventHost_TO};
use mta_agent_sdk::{Action, AgentClass, Event};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The host side of an event: what agents read and change, and what they asked for.
pub trait EventContext: EventHost {
    /// Whether what the agents did so far stops the lower-priority agents for this event
    /// (a reject, or a disconnect).
    fn stops_event(&self) -> bool;

    /// The mail item and the actions asked so far, for pipeline tracing; `None` for a context
    /// without a mail item (nothing to trace).
    fn traced(&self) -> Option<(&MailItem, &[Action])> {
        None
    }
}

/// An agent's fault: it returned an error, panicked, or did not return in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The agent's name.
    pub agent: String,
    /// The event it was handling.
    pub event: Event,
    /// What happened.
    pub message: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "agent {:?} faulted in {}: {}",
            self.agent, self.event, self.message
        )
    }
}

/// The agent instances of one session, mail item or delivery connection.
pub struct AgentSet {
    pipeline: Arc<Pipeline>,
    class: AgentClass,
    instances: Vec<Option<AgentInstanceBox>>,
    /// Which agent is being called and since when, for the time limit.
    clock: Arc<CallClock>,
    /// Raise events to this agent only.
    only: Option<usize>,
    /// The agents this set does not get: one of each canary pair, chosen once here.
    skip: Option<Box<[bool]>>,
}

impl AgentSet {
    /// Instances of `class` from `pipeline`, created on first use.
    pub fn new(pipeline: Arc<Pipeline>, class: AgentClass) -> Self {
        let n = pipeline.agents.len();
        Self {
            class,
            instances: (0..n).map(|_| None).collect(),
            clock: Arc::new(CallClock::new()),
            only: None,
            skip: pipeline.choose_canaries(class),
            pipeline,
        }
    }

    /// The same set, raising events to the agent at `index` only (the delivery agent of a
    /// Delivery Agent connector's queue).
    pub fn restricted_to(mut self, index: usize) -> Self {
        // A delivery connection chosen for the canary goes to the canary.
        let skipped = self.skip.as_ref().is_some_and(|s| s[index]);
        self.only = Some(match self.pipeline.canary_partner(index) {
            Some(partner) if skipped => partner,
            _ => index,
        });
        self
    }

    /// The snapshot these agents come from.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Whether any agent handles `event`.
    pub fn handles(&self, event: Event) -> bool {
        event.class() == self.class
            && match self.only {
                Some(i) => self
                    .pipeline
                    .agents
                    .get(i)
                    .is_some_and(|a| a.events.contains(event)),
                None => self.pipeline.handles(event),
            }
    }

    /// Raises `event` to each agent that handles it, in priority order, until one stops it.
    pub fn dispatch<C: EventContext>(&mut self, event: Event, cx: &mut C) -> Result<(), Fault> {
        if !self.handles(event) {
            return Ok(());
        }
        let pipeline = Arc::clone(&self.pipeline);
        // Tracing is decided once per event: off, the loop below pays one branch per agent.
        let mut tracer = if pipeline.message_snapshot {
            cx.traced()
                .and_then(|(item, _)| Tracer::begin(pipeline.service, event, item))
        } else {
            None
        };
        for (index, agent) in pipeline.agents_for(event) {
            if self.only.is_some_and(|only| only != index)
                || self.skip.as_ref().is_some_and(|skip| skip[index])
            {
                continue;
            }
            let fault = |message: String| Fault {
                agent: agent.name.clone(),
                event,
                message,
            };
            let instance = match &mut self.instances[index] {
                Some(instance) => instance,
                slot => match agent.factory.create_agent() {
                    Ok(instance) => slot.insert(instance),
                    Err(message) => {
                        agent.factory.record(true, false);
                        agent.metrics.failed_to_start(event);
                        return Err(fault(format!("could not create an instance: {message}")));
                    }
                },
            };
            self.clock.enter(index);
            let started = Instant::now();
            let result = instance
                .handle(event, EventHost_TO::from_ptr(&mut *cx, TD_Opaque))
                .into_result();
            let elapsed = started.elapsed();
            if self.clock.leave() {
                // Given up on by the session: already reported and counted.
                return Err(fault("abandoned".into()));
            }
            let slow = elapsed > pipeline.time_limit;
            agent.factory.record(result.is_err(), slow);
            agent.metrics.call(event, elapsed, result.is_err(), slow);
            if let Some(tracer) = &mut tracer {
                let fault = result.as_ref().err().map(|e| e.as_str());
                match cx.traced() {
                    Some((item, actions)) => tracer.after(&agent.name, Some(item), actions, fault),
                    None => tracer.after(&agent.name, None, &[], fault),
                }
            }
            if slow {
                tracing::warn!(
                    message = "Agent too slow.",
                    agent = %agent.name,
                    %event,
                    elapsed_ms = elapsed.as_millis() as u64,
                    limit_ms = pipeline.time_limit.as_millis() as u64,
                );
            }
            if let Err(message) = result {
                return Err(fault(message.into_string()));
            }
            if cx.stops_event() {
                break;
            }
        }
        Ok(())
    }
}

/// What became of a dispatch run on the agents' own threads.
pub enum Blocking<C> {
    /// The agents returned: the set and context come back with the result.
    Done(AgentSet, C, Result<(), Fault>),
    /// An agent did not return within its time limit; the set and context stay with the stuck
    /// call and are dropped when (if) it returns.
    Abandoned(Fault),
}

/// Runs [`AgentSet::dispatch`] on the agents' own threads ([`super::pool`]). A call that has
/// not returned after twice the time limit is abandoned: reported and counted (too slow, fault)
/// once, its thread counted as hung, and the caller gets [`Blocking::Abandoned`]. A call over
/// the limit that does return is reported as too slow.
pub async fn dispatch_blocking<C>(mut set: AgentSet, event: Event, mut cx: C) -> Blocking<C>
where
    C: EventContext + Send + 'static,
{
    if !set.handles(event) {
        return Blocking::Done(set, cx, Ok(()));
    }
    let pipeline = Arc::clone(&set.pipeline);
    let clock = Arc::clone(&set.clock);
    let hang = pipeline.time_limit.saturating_mul(2);
    let tick = (pipeline.time_limit / 4).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let pool = super::pool::AgentPool::global();
    let mut task = pool.run(Arc::clone(&clock.abandoned), move || {
        let result = set.dispatch(event, &mut cx);
        (set, cx, result)
    });
    loop {
        tokio::select! {
            joined = &mut task => {
                return match joined {
                    Ok((set, cx, result)) => Blocking::Done(set, cx, result),
                    Err(join_error) => Blocking::Abandoned(Fault {
                        agent: "?".into(),
                        event,
                        message: format!("agent call failed: {join_error}"),
                    }),
                };
            }
            _ = tokio::time::sleep(tick) => {
                let Some(index) = clock.overdue(hang) else { continue };
                pool.hung();
                let agent = pipeline.agents.get(index);
                let name = agent.map(|a| a.name.clone()).unwrap_or_else(|| "?".into());
                if let Some(a) = agent {
                    a.factory.record(true, true);
                    a.factory.hung.fetch_add(1, Ordering::Relaxed);
                    a.metrics.hung(event);
                }
                tracing::error!(
                    message = "Agent did not return within its time limit; abandoning the call.",
                    agent = %name,
                    %event,
                    limit_ms = pipeline.time_limit.as_millis() as u64,
                );
                return Blocking::Abandoned(Fault {
                    agent: name,
                    event,
                    message: format!(
                        "did not return within the time limit of {} ms",
                        pipeline.time_limit.as_millis()
                    ),
                });
            }
        }
    }
}

/// Which agent of a set is being called, since when, and whether the call was given up on.
struct CallClock {
    epoch: Instant,
    index: AtomicUsize,
    started_us: AtomicU64,
    /// Shared with the pool's thread, which ends after an abandoned call returns.
    abandoned: Arc<AtomicBool>,
}

impl CallClock {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            index: AtomicUsize::new(usize::MAX),
            started_us: AtomicU64::new(0),
            abandoned: Arc::new(AtomicBool::new(false)),
        }
    }

    fn enter(&self, index: usize) {
        self.started_us
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.index.store(index, Ordering::Release);
    }

    /// Ends a call; true when it had been abandoned meanwhile.
    fn leave(&self) -> bool {
        self.index.store(usize::MAX, Ordering::Release);
        self.abandoned.load(Ordering::Acquire)
    }

    /// The agent whose call has run longer than `limit`, marking the call abandoned.
    fn overdue(&self, limit: Duration) -> Option<usize> {
        let index = self.index.load(Ordering::Acquire);
        if index == usize::MAX {
            return None;
        }
        let started = Duration::from_micros(self.started_us.load(Ordering::Relaxed));
        if self.epoch.elapsed().saturating_sub(started) <= limit {
            return None;
        }
        (!self.abandoned.swap(true, Ordering::AcqRel)).then_some(index)
    }
}
