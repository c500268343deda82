//! Metrics in the Prometheus text format, for the operator's dashboards and alerts: what the
//! services moved, how full the queues are, how the agents behave and whether back pressure
//! holds mail back.
//!
//! Counters and histograms live in one process-wide [`Metrics`] (the places that count are deep
//! in the services: the tracking record, the SMTP shell, the agent dispatcher), registered once
//! with their label families. Hot paths keep handles made once (an agent's per-event handles are
//! made when its pipeline is built), so counting is an atomic add. What is a state rather than
//! an event (queue depth, back pressure, pipeline generations) is read from the running services
//! at each scrape ([`Sources`]). [`endpoint`] serves `GET /metrics` when `[metrics] listen` is
//! set; without it nothing listens, and counting costs the same few atomic adds.
//!
//! Every name starts with `mta_`; docs/operations.md lists them with their labels.

mod agents;
pub mod endpoint;
mod messages;
mod smtp;
mod sources;

pub use agents::AgentCalls;
pub use smtp::OpenSession;
pub use sources::{Sources, TransportView};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::Registry;
use std::sync::{Mutex, OnceLock};

/// Every metric of the process, registered under the `mta_` prefix.
pub struct Metrics {
    registry: Registry,
    /// Messages moved, from the tracking records.
    pub messages: messages::Messages,
    /// SMTP sessions, TLS handshakes and refusals of the receive side.
    pub smtp: smtp::Smtp,
    /// Agent calls and pipeline reloads.
    pub agents: agents::Agents,
    /// Queue depths and back pressure, refreshed at each scrape.
    pub(crate) state: sources::State,
    /// One scrape at a time: a refresh clears the queue gauges before setting them again, and
    /// a scrape running alongside would see them half set.
    scraping: Mutex<()>,
}

/// A service label (`frontend`, `transport`, `mailbox`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// The service.
    pub service: &'static str,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics (made at first use).
pub fn global() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("mta");
        let messages = messages::Messages::register(&mut registry);
        let smtp = smtp::Smtp::register(&mut registry);
        let agents = agents::Agents::register(&mut registry);
        let state = sources::State::register(&mut registry);
        Self {
            registry,
            messages,
            smtp,
            agents,
            state,
            scraping: Mutex::new(()),
        }
    }

    /// Reads the running services' state into the gauges (blocking: it lists queue
    /// directories), then writes every metric in the text format.
    pub fn scrape(&self, sources: &Sources) -> String {
        let _one = self.scraping.lock().unwrap_or_else(|e| e.into_inner());
        self.state.refresh(sources);
        let mut text = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
