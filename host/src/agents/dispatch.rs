//! Raising events to agents: in priority order, with faults contained and time limits enforced.
//!
//! An [`AgentSet`] is the agent instances of one session, mail item or delivery connection, all
//! from one pipeline snapshot. [`AgentSet::dispatch`] calls them synchronously; the async side
//! uses [`dispatch_blocking`], which runs the calls on the blocking pool so a slow agent never
//! stalls other sessions, and gives up on a call that outlives its time limit.

use crate::agents::pipeline::Pipeline;
use abi_stable::sabi_trait::TD_Opaque;
use mta_agent_sdk::abi::{AgentInstanceBox, EventHost, EventHost_TO};
use mta_agent_sdk::{AgentClass, Event};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The host side of an event: what agents read and change, and what they asked for.
pub trait EventContext: EventHost {
    /// Whether what the agents did so far stops the lower-priority agents for this event
    /// (a reject, or a disconnect).
    fn stops_event(&self) -> bool;
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
    /// Index of the agent being called, for naming a call that does not return.
    current: Arc<AtomicUsize>,
}

impl AgentSet {
    /// Instances of `class` from `pipeline`, created on first use.
    pub fn new(pipeline: Arc<Pipeline>, class: AgentClass) -> Self {
        let n = pipeline.agents.len();
        Self {
            pipeline,
            class,
            instances: (0..n).map(|_| None).collect(),
            current: Arc::new(AtomicUsize::new(usize::MAX)),
        }
    }

    /// The snapshot these agents come from.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Whether any agent handles `event`.
    pub fn handles(&self, event: Event) -> bool {
        event.class() == self.class && self.pipeline.handles(event)
    }

    /// Raises `event` to each agent that handles it, in priority order, until one stops it.
    pub fn dispatch<C: EventContext>(&mut self, event: Event, cx: &mut C) -> Result<(), Fault> {
        if !self.handles(event) {
            return Ok(());
        }
        let pipeline = Arc::clone(&self.pipeline);
        for (index, agent) in pipeline.agents_for(event) {
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
                        return Err(fault(format!("could not create an instance: {message}")));
                    }
                },
            };
            self.current.store(index, Ordering::Relaxed);
            let started = Instant::now();
            let result = instance
                .handle(event, EventHost_TO::from_ptr(&mut *cx, TD_Opaque))
                .into_result();
            let elapsed = started.elapsed();
            self.current.store(usize::MAX, Ordering::Relaxed);
            let slow = elapsed > pipeline.time_limit;
            agent.factory.record(result.is_err(), slow);
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

/// What became of a dispatch run on the blocking pool.
pub enum Blocking<C> {
    /// The agents returned: the set and context come back with the result.
    Done(AgentSet, C, Result<(), Fault>),
    /// An agent did not return within its time limit; the set and context stay with the stuck
    /// call and are dropped when (if) it returns.
    Abandoned(Fault),
}

/// Runs [`AgentSet::dispatch`] on the blocking pool and waits at most twice the time limit for
/// each agent that handles the event. The caller decides what a fault means (a 451, a deferral).
pub async fn dispatch_blocking<C>(mut set: AgentSet, event: Event, mut cx: C) -> Blocking<C>
where
    C: EventContext + Send + 'static,
{
    if !set.handles(event) {
        return Blocking::Done(set, cx, Ok(()));
    }
    let pipeline = Arc::clone(&set.pipeline);
    // Each call may take up to twice its limit before it is abandoned: a call over the limit that
    // still returns is reported as too slow; one that does not is reported and given up.
    let calls = pipeline.agents_for(event).count() as u32;
    let budget = pipeline.time_limit.saturating_mul(2 * calls) + Duration::from_millis(20);
    let current = Arc::clone(&set.current);
    let task = tokio::task::spawn_blocking(move || {
        let result = set.dispatch(event, &mut cx);
        (set, cx, result)
    });
    match tokio::time::timeout(budget, task).await {
        Ok(Ok((set, cx, result))) => Blocking::Done(set, cx, result),
        Ok(Err(join_error)) => Blocking::Abandoned(Fault {
            agent: "?".into(),
            event,
            message: format!("agent call failed: {join_error}"),
        }),
        Err(_) => {
            let index = current.load(Ordering::Relaxed);
            let agent = pipeline
                .agents
                .get(index)
                .map(|a| a.name.clone())
                .unwrap_or_else(|| "?".into());
            if let Some(a) = pipeline.agents.get(index) {
                a.factory.record(true, true);
            }
            tracing::error!(
                message = "Agent did not return within its time limit; abandoning the call.",
                agent = %agent,
                %event,
                limit_ms = pipeline.time_limit.as_millis() as u64,
            );
            Blocking::Abandoned(Fault {
                agent,
                event,
                message: format!(
                    "did not return within the time limit of {} ms",
                    pipeline.time_limit.as_millis()
                ),
            })
        }
    }
}
