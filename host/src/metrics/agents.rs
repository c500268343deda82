//! Agent calls and pipeline reloads.
//!
//! An agent's handles are made once, when its pipeline is built ([`AgentCalls::new`]): one set
//! per event it handles, so a call is counted with atomic adds and no lookup. Handles with the
//! same labels share their values, so an agent carried over by a reload keeps counting on.

use super::ServiceLabel;
use crate::service::Service;
use mta_agent_sdk::{Event, EventSet};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: &'static str,
    agent: String,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    service: &'static str,
    agent: String,
}

type Latency = Family<CallLabels, Histogram, fn() -> Histogram>;

/// The agent metrics.
pub struct Agents {
    calls: Family<CallLabels, Counter>,
    faults: Family<CallLabels, Counter>,
    timeouts: Family<CallLabels, Counter>,
    hung: Family<CallLabels, Counter>,
    latency: Latency,
    reload_failures: Family<ServiceLabel, Counter>,
    /// Set at each scrape from the running pipelines.
    pub(super) generation: Family<ServiceLabel, Gauge>,
    /// Set at each scrape from the agents' thread pool.
    pub(super) hung_threads: Gauge,
    canary_share: Family<AgentLabels, Gauge>,
    canary_rolled_back: Family<AgentLabels, Counter>,
}

/// From 10 µs (an agent that looks at a header) to about 10 s (past any sensible time limit).
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 4.0, 11))
}

impl Agents {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let this = Self {
            calls: Family::default(),
            faults: Family::default(),
            timeouts: Family::default(),
            hung: Family::default(),
            latency: Family::new_with_constructor(call_histogram),
            reload_failures: Family::default(),
            generation: Family::default(),
            hung_threads: Gauge::default(),
            canary_share: Family::default(),
            canary_rolled_back: Family::default(),
        };
        registry.register(
            "agent_calls",
            "Calls into agents, by service, agent and event",
            this.calls.clone(),
        );
        registry.register(
            "agent_faults",
            "Agent calls that returned an error, panicked or were abandoned",
            this.faults.clone(),
        );
        registry.register(
            "agent_timeouts",
            "Agent calls that took longer than timeLimitInMilliseconds",
            this.timeouts.clone(),
        );
        registry.register(
            "agent_hung_calls",
            "Agent calls abandoned past twice the time limit (their threads are hung)",
            this.hung.clone(),
        );
        registry.register_with_unit(
            "agent_call_duration",
            "How long agent calls took, by service, agent and event",
            Unit::Seconds,
            this.latency.clone(),
        );
        registry.register(
            "agent_pipeline_generation",
            "The generation of each service's running agent pipeline (0: no agents file)",
            this.generation.clone(),
        );
        registry.register(
            "agent_pipeline_reload_failures",
            "Agent pipeline reloads that failed (the running pipeline kept serving)",
            this.reload_failures.clone(),
        );
        registry.register(
            "agent_hung_threads",
            "Agent threads held by abandoned calls that have not returned",
            this.hung_threads.clone(),
        );
        registry.register(
            "agent_canary_share",
            "The percentage of new sessions or mail items a canary serves (0 once rolled back)",
            this.canary_share.clone(),
        );
        registry.register(
            "agent_canary_rolled_back",
            "Canaries rolled back automatically for faulting or timing out more than their current agent",
            this.canary_rolled_back.clone(),
        );
        this
    }

    /// `agent` of `service` is a canary serving `percent` of new sessions or mail items.
    pub fn canary_share(&self, service: Service, agent: &str, percent: u32) {
        self.canary_share
            .get_or_create(&AgentLabels {
                service: service.as_str(),
                agent: agent.to_string(),
            })
            .set(i64::from(percent));
    }

    /// The canary `agent` of `service` was rolled back.
    pub fn canary_rolled_back(&self, service: Service, agent: &str) {
        let labels = AgentLabels {
            service: service.as_str(),
            agent: agent.to_string(),
        };
        self.canary_rolled_back.get_or_create(&labels).inc();
        self.canary_share.get_or_create(&labels).set(0);
    }

    /// A reload of `service`'s pipeline failed.
    pub fn reload_failed(&self, service: Service) {
        self.reload_failures
            .get_or_create(&ServiceLabel {
                service: service.as_str(),
            })
            .inc();
    }
}

/// One event's handles.
struct EventCalls {
    calls: Counter,
    faults: Counter,
    timeouts: Counter,
    hung: Counter,
    latency: Histogram,
}

/// The handles of one agent of a pipeline, per event it handles.
pub struct AgentCalls {
    by_event: Box<[Option<EventCalls>]>,
}

impl std::fmt::Debug for AgentCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCalls").finish_non_exhaustive()
    }
}

impl AgentCalls {
    /// The handles of `agent` of `service`'s pipeline for each of `events`.
    pub fn new(service: Service, agent: &str, events: EventSet) -> Self {
        let m = &super::global().agents;
        let by_event = Event::ALL
            .iter()
            .map(|&event| {
                events.contains(event).then(|| {
                    let labels = CallLabels {
                        service: service.as_str(),
                        agent: agent.to_string(),
                        event: event.name(),
                    };
                    EventCalls {
                        calls: m.calls.get_or_create_owned(&labels),
                        faults: m.faults.get_or_create_owned(&labels),
                        timeouts: m.timeouts.get_or_create_owned(&labels),
                        hung: m.hung.get_or_create_owned(&labels),
                        latency: m.latency.get_or_create_owned(&labels),
                    }
                })
            })
            .collect();
        Self { by_event }
    }

    fn of(&self, event: Event) -> Option<&EventCalls> {
        self.by_event.get(event as usize)?.as_ref()
    }

    /// A call returned after `elapsed`; `faulted` when it returned an error or panicked, `slow`
    /// when it took longer than the time limit.
    pub fn call(&self, event: Event, elapsed: Duration, faulted: bool, slow: bool) {
        let Some(m) = self.of(event) else { return };
        m.calls.inc();
        m.latency.observe(elapsed.as_secs_f64());
        if faulted {
            m.faults.inc();
        }
        if slow {
            m.timeouts.inc();
        }
    }

    /// An instance could not be made for a call: a fault.
    pub fn failed_to_start(&self, event: Event) {
        if let Some(m) = self.of(event) {
            m.calls.inc();
            m.faults.inc();
        }
    }

    /// A call was abandoned past twice the time limit: a hung call, a timeout and a fault.
    pub fn hung(&self, event: Event) {
        if let Some(m) = self.of(event) {
            m.calls.inc();
            m.hung.inc();
            m.timeouts.inc();
            m.faults.inc();
        }
    }
}
