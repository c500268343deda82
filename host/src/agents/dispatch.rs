//! Raising events to agents: in priority order, with faults contained and time limits enforced.
//!
//! An [`AgentSet`] is the agent instances of one session, mail item or delivery connection, all
//! from one pipeline snapshot. [`dispatch_blocking`] runs the calls on the agents' own threads
//! ([`super::pool`]) so a slow agent never stalls other sessions nor the file I/O, and gives up
//! on a call that outlives twice its time limit (the call's thread is then counted as hung).
//! An agent that goes async (the SDK's `async_context`) gives its thread back at once; the
//! dispatcher awaits its continuation off the pool, under the same limits.

use crate::agents::log::AgentLog;
use crate::agents::pipeline::Pipeline;
use crate::agents::snapshot::Tracer;
use crate::message::MailItem;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::RString;
use mta_agent_sdk::abi::{AgentInstanceBox, ContinuationBox, EventHost, EventHost_TO};
use mta_agent_sdk::{Action, AgentClass, Event};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

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

    /// The agent about to be called: its log lines carry its name.
    fn enter_agent(&mut self, log: &Arc<AgentLog>) {
        let _ = log;
    }

    /// The completion of the call that just went async (`begin_async`), if it did.
    fn take_pending(&mut self) -> Option<PendingCompletion> {
        None
    }
}

/// Where an async agent call's continuation arrives.
pub struct PendingCompletion(pub oneshot::Receiver<ContinuationBox>);

impl std::fmt::Debug for PendingCompletion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingCompletion")
    }
}

/// An agent's fault: it returned an error, panicked, or did not return in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The agent's name.
    pub agent: String,
    /// The library its code comes from (empty when unknown).
    pub library: String,
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

/// How far one event's dispatch has gone, carried between runs on the agents' threads while
/// an async call is pending.
#[derive(Default)]
struct Progress {
    /// Position, among the agents that handle the event, of the next agent to call.
    next: usize,
    /// Whether tracing was decided (once per event).
    begun: bool,
    tracer: Option<Tracer>,
}

/// An async call whose continuation has arrived, to run before the next agent.
struct Resume {
    index: usize,
    started: Instant,
    continuation: Option<ContinuationBox>,
}

/// What one run on the agents' threads ended with.
enum Step {
    /// Every agent ran, or one stopped the event, or one faulted.
    Done(Result<(), Fault>),
    /// The agent at `index` went async at `started`.
    Pending {
        index: usize,
        started: Instant,
        completion: PendingCompletion,
    },
}

/// Whether to go on with the next agent after a call.
enum After {
    Next,
    Stop(Result<(), Fault>),
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

    fn fault(&self, index: usize, event: Event, message: String) -> Fault {
        let agent = self.pipeline.agents.get(index);
        Fault {
            agent: agent.map_or_else(|| "?".into(), |a| a.name.clone()),
            library: agent.map_or_else(String::new, |a| a.library.path.display().to_string()),
            event,
            message,
        }
    }

    /// Raises `event` to each agent that handles it, in priority order, until one stops it, on
    /// the calling thread; an async call is waited for by blocking this thread. For benches and
    /// tools outside a runtime (it must not be called from an async task): sessions and mail
    /// items use [`dispatch_blocking`], which enforces the time limits.
    pub fn dispatch<C: EventContext>(&mut self, event: Event, cx: &mut C) -> Result<(), Fault> {
        if !self.handles(event) {
            return Ok(());
        }
        let mut progress = Progress::default();
        let mut resume = None;
        loop {
            match self.run(event, cx, &mut progress, resume.take()) {
                Step::Done(result) => return result,
                Step::Pending {
                    index,
                    started,
                    completion,
                } => {
                    resume = Some(Resume {
                        index,
                        started,
                        continuation: completion.0.blocking_recv().ok(),
                    })
                }
            }
        }
    }

    /// Raises `event` to the agents that handle it, in priority order, from where `progress`
    /// stands, until one stops it or goes async. `resume` first finishes the async call whose
    /// continuation arrived. Runs on the agents' threads.
    fn run<C: EventContext>(
        &mut self,
        event: Event,
        cx: &mut C,
        progress: &mut Progress,
        resume: Option<Resume>,
    ) -> Step {
        let pipeline = Arc::clone(&self.pipeline);
        if !progress.begun {
            progress.begun = true;
            // Tracing is decided once per event: off, the loop below pays one branch per agent.
            progress.tracer = if pipeline.message_snapshot {
                cx.traced()
                    .and_then(|(item, _)| Tracer::begin(pipeline.service, event, item))
            } else {
                None
            };
        }
        if let Some(Resume {
            index,
            started,
            continuation,
        }) = resume
        {
            let agent = &pipeline.agents[index];
            cx.enter_agent(&agent.log);
            self.clock.enter_at(index, started);
            let result = match continuation {
                Some(continuation) => continuation
                    .resume(EventHost_TO::from_ptr(&mut *cx, TD_Opaque))
                    .into_result()
                    .map_err(RString::into_string),
                None => Err("the agent's async context was dropped without completing".into()),
            };
            let pending = cx.take_pending();
            if self.clock.leave() {
                return Step::Done(Err(self.fault(index, event, "abandoned".into())));
            }
            if let (Ok(()), Some(completion)) = (&result, pending) {
                // The completion went async again: same call, same clock.
                return Step::Pending {
                    index,
                    started,
                    completion,
                };
            }
            if let After::Stop(result) =
                self.after_call(index, event, cx, result, started.elapsed(), progress)
            {
                return Step::Done(result);
            }
        }
        while let Some(index) = pipeline.handler_at(event, progress.next) {
            progress.next += 1;
            if self.only.is_some_and(|only| only != index)
                || self.skip.as_ref().is_some_and(|skip| skip[index])
            {
                continue;
            }
            let agent = &pipeline.agents[index];
            let instance = match &mut self.instances[index] {
                Some(instance) => instance,
                slot => match agent.factory.create_agent() {
                    Ok(instance) => slot.insert(instance),
                    Err(message) => {
                        agent.factory.record(true, false);
                        agent.metrics.failed_to_start(event);
                        return Step::Done(Err(self.fault(
                            index,
                            event,
                            format!("could not create an instance: {message}"),
                        )));
                    }
                },
            };
            cx.enter_agent(&agent.log);
            self.clock.enter(index);
            let started = Instant::now();
            let result = instance
                .handle(event, EventHost_TO::from_ptr(&mut *cx, TD_Opaque))
                .into_result()
                .map_err(RString::into_string);
            let pending = cx.take_pending();
            if self.clock.leave() {
                // Given up on by the session: already reported and counted.
                return Step::Done(Err(self.fault(index, event, "abandoned".into())));
            }
            if let (Ok(()), Some(completion)) = (&result, pending) {
                // The agent went async: its thread is free, the dispatcher waits off the pool.
                return Step::Pending {
                    index,
                    started,
                    completion,
                };
            }
            if let After::Stop(result) =
                self.after_call(index, event, cx, result, started.elapsed(), progress)
            {
                return Step::Done(result);
            }
        }
        Step::Done(Ok(()))
    }

    /// Counts, traces and reports a finished call (a synchronous one, or an async one whose
    /// continuation ran), and says whether the next agent gets the event.
    fn after_call<C: EventContext>(
        &self,
        index: usize,
        event: Event,
        cx: &mut C,
        result: Result<(), String>,
        elapsed: Duration,
        progress: &mut Progress,
    ) -> After {
        let pipeline = &self.pipeline;
        let agent = &pipeline.agents[index];
        let slow = elapsed > pipeline.time_limit;
        agent.factory.record(result.is_err(), slow);
        agent.metrics.call(event, elapsed, result.is_err(), slow);
        agent.log.flush(event);
        if let Some(tracer) = &mut progress.tracer {
            let fault = result.as_ref().err().map(String::as_str);
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
            return After::Stop(Err(self.fault(index, event, message)));
        }
        if cx.stops_event() {
            return After::Stop(Ok(()));
        }
        After::Next
    }
}

/// What became of a dispatch run on the blocking pool.
pub enum Blocking<C> {
    /// The agents returned: the set and context come back with the result.
    Done(AgentSet, C, Result<(), Fault>),
    /// An agent did not return (or complete) within twice its time limit; the set and context
    /// stay with the stuck call and are dropped when (if) it returns.
    Abandoned(Fault),
}

/// Raises `event` to the agents of `set`: each call runs on the agents' pool, never on an
/// async worker. A call that has not returned after twice the time limit is abandoned:
/// reported and counted (too slow, fault, hung) once, and the caller gets
/// [`Blocking::Abandoned`]. A call over the limit that does return is reported as too slow.
///
/// An agent that goes async frees its pool thread at once: this future waits for its
/// continuation (holding no thread), runs it on the pool, and carries on with the next agent.
/// The same limits apply, counted from the call to the end of the continuation; a
/// continuation that never comes is abandoned at twice the limit (no thread is stuck, so
/// none is replaced).
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
    let mut progress = Progress::default();
    let mut resume = None;
    loop {
        // The agents run under the caller's span (the session, the mail item), so their log
        // lines and the host's lines about them say which session or item they belong to.
        let span = tracing::Span::current();
        let mut task = pool.run(Arc::clone(&clock.abandoned), move || {
            let _in_caller = span.enter();
            let step = set.run(event, &mut cx, &mut progress, resume);
            (set, cx, progress, step)
        });
        let (returned_set, returned_cx, returned_progress, step) = loop {
            tokio::select! {
                joined = &mut task => {
                    match joined {
                        Ok(returned) => break returned,
                        Err(join_error) => return Blocking::Abandoned(Fault {
                            agent: "?".into(),
                            library: String::new(),
                            event,
                            message: format!("agent call failed: {join_error}"),
                        }),
                    }
                }
                _ = tokio::time::sleep(tick) => {
                    let Some(index) = clock.overdue(hang) else { continue };
                    pool.hung();
                    return Blocking::Abandoned(abandon(&pipeline, index, event, false));
                }
            }
        };
        (set, cx, progress) = (returned_set, returned_cx, returned_progress);
        match step {
            Step::Done(result) => return Blocking::Done(set, cx, result),
            Step::Pending {
                index,
                started,
                completion,
            } => {
                let deadline = tokio::time::Instant::from_std(started + hang);
                let continuation = match tokio::time::timeout_at(deadline, completion.0).await {
                    Ok(Ok(continuation)) => Some(continuation),
                    // The host's end was dropped without a continuation: a fault.
                    Ok(Err(_)) => None,
                    Err(_) => return Blocking::Abandoned(abandon(&pipeline, index, event, true)),
                };
                resume = Some(Resume {
                    index,
                    started,
                    continuation,
                });
            }
        }
    }
}

/// Reports and counts an agent call given up on: a synchronous call that did not return, or
/// an async one whose continuation did not come (`completing`), within twice its time limit.
fn abandon(pipeline: &Pipeline, index: usize, event: Event, completing: bool) -> Fault {
    let agent = pipeline.agents.get(index);
    let name = agent.map(|a| a.name.clone()).unwrap_or_else(|| "?".into());
    let library = agent.map_or_else(String::new, |a| a.library.path.display().to_string());
    if let Some(a) = agent {
        a.factory.record(true, true);
        a.factory.hung.fetch_add(1, Ordering::Relaxed);
        a.metrics.hung(event);
    }
    let limit_ms = pipeline.time_limit.as_millis() as u64;
    if completing {
        tracing::error!(
            message = "Agent did not complete its async call within twice its time limit; abandoning the call.",
            agent = %name,
            library = %library,
            %event,
            limit_ms,
        );
    } else {
        tracing::error!(
            message = "Agent did not return within its time limit; abandoning the call.",
            agent = %name,
            library = %library,
            %event,
            limit_ms,
        );
    }
    let what = if completing { "complete" } else { "return" };
    Fault {
        agent: name,
        library,
        event,
        message: format!("did not {what} within the time limit of {limit_ms} ms"),
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
        self.enter_at(index, Instant::now());
    }

    /// A call that began at `started` (an async call resumed: its limit counts from there).
    fn enter_at(&self, index: usize, started: Instant) {
        let since_epoch = started.saturating_duration_since(self.epoch);
        self.started_us
            .store(since_epoch.as_micros() as u64, Ordering::Relaxed);
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
