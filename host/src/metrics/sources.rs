//! What is read from the running services at each scrape: queue depths and ages, back
//! pressure, pipeline generations. These are states, not events; reading them when asked costs
//! nothing between scrapes.

use super::ServiceLabel;
use crate::agents::AgentHost;
use crate::transport::back_pressure::BackPressure;
use crate::transport::delivery_queue::DeliveryQueues;
use crate::transport::Queues;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// The running services the metrics read.
#[derive(Default)]
pub struct Sources {
    /// The Transport service, when this process runs it.
    pub transport: Option<TransportView>,
    /// The agent hosts (Transport, Front End).
    pub agents: Vec<Arc<AgentHost>>,
}

/// The parts of a running Transport service the metrics read.
pub struct TransportView {
    /// The delivery queues (live: copies in memory included).
    pub deliveries: Arc<DeliveryQueues>,
    /// The queues on disk.
    pub queues: Arc<Queues>,
    /// The back-pressure monitor.
    pub pressure: Arc<BackPressure>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: String,
    unit: String,
}

/// The gauges set at each scrape.
pub(crate) struct State {
    messages: Family<QueueLabel, Gauge>,
    in_flight: Family<QueueLabel, Gauge>,
    oldest: Family<QueueLabel, Gauge<f64, AtomicU64>>,
    refusing: Gauge,
    reading: Family<ResourceLabels, Gauge>,
    high: Family<ResourceLabels, Gauge>,
    over: Family<ResourceLabels, Gauge>,
}

/// Directories under `queue/` that are not queues: the Submission queue's journal (counted from
/// its live items), files being written, the outbox's progress, spooled bodies.
const NOT_QUEUES: [&str; 4] = ["journal", "tmp", "outbox", "spool"];

impl State {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let this = Self {
            messages: Family::default(),
            in_flight: Family::default(),
            oldest: Family::default(),
            refusing: Gauge::default(),
            reading: Family::default(),
            high: Family::default(),
            over: Family::default(),
        };
        registry.register(
            "queue_messages",
            "Messages in each queue: submission (accepted, not yet settled), each delivery queue (ready, in delivery and waiting for a retry), unreachable, poison, quarantine, deferred",
            this.messages.clone(),
        );
        registry.register(
            "queue_in_flight",
            "Deliveries under way, per delivery queue",
            this.in_flight.clone(),
        );
        registry.register_with_unit(
            "queue_oldest_message_age",
            "Age of the oldest message kept in each queue's directory (0 when empty)",
            Unit::Seconds,
            this.oldest.clone(),
        );
        registry.register(
            "back_pressure_refusing",
            "1 while back pressure refuses new mail (452 4.3.1), else 0",
            this.refusing.clone(),
        );
        registry.register(
            "back_pressure_reading",
            "The last reading of each watched resource",
            this.reading.clone(),
        );
        registry.register(
            "back_pressure_high_water",
            "Each resource's high-water mark",
            this.high.clone(),
        );
        registry.register(
            "back_pressure_over",
            "1 while the resource holds mail back (over its high-water mark, not yet under its low one)",
            this.over.clone(),
        );
        this
    }

    /// Reads `sources` into the gauges. Blocking: lists the queue directories.
    pub(super) fn refresh(&self, sources: &Sources) {
        let agents = &super::global().agents;
        for host in &sources.agents {
            agents
                .generation
                .get_or_create(&ServiceLabel {
                    service: host.service().as_str(),
                })
                .set(host.pipeline().generation as i64);
        }
        agents
            .hung_threads
            .set(crate::agents::pool::AgentPool::global().hung_threads() as i64);
        let Some(transport) = &sources.transport else {
            return;
        };
        let pressure = transport.pressure.pressure();
        self.refusing.set(i64::from(pressure.refusing));
        for r in pressure.readings {
            let labels = ResourceLabels {
                resource: r.resource.replace(' ', "_"),
                unit: r.unit,
            };
            self.reading.get_or_create(&labels).set(r.value as i64);
            self.high.get_or_create(&labels).set(r.high as i64);
            self.over.get_or_create(&labels).set(i64::from(r.over));
        }
        // Queues come and go (one per next hop): only those that exist now are shown.
        self.messages.clear();
        self.in_flight.clear();
        self.oldest.clear();
        let set = |family: &Family<QueueLabel, Gauge>, queue: &str, n: usize| {
            family
                .get_or_create(&QueueLabel {
                    queue: queue.to_string(),
                })
                .set(n as i64);
        };
        set(
            &self.messages,
            "submission",
            transport.queues.journal.load().items() as usize,
        );
        let live = transport.deliveries.status();
        let mut counted: HashSet<&str> = HashSet::new();
        for q in &live {
            set(&self.messages, &q.name, q.active + q.retry);
            set(&self.in_flight, &q.name, q.in_flight);
            counted.insert(q.name.split('/').next().unwrap_or(&q.name));
        }
        let root = transport.queues.root();
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        let now = crate::transport::delivery::now_ms();
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if NOT_QUEUES.contains(&name.as_str()) || !entry.path().is_dir() {
                continue;
            }
            let Ok(dir) = crate::transport::submission_queue::QueueDir::open(
                root.parent().unwrap_or(&root),
                &name,
            ) else {
                continue;
            };
            let ids = dir.ids().unwrap_or_default();
            if !counted.contains(name.as_str()) {
                set(&self.messages, &name, ids.len());
            }
            // Ids sort by the time the Transport service gave them: the first is the oldest.
            let received = ids
                .first()
                .and_then(|id| dir.load_meta(id).ok())
                .map_or(0, |(item, _)| item.trace.received_ms);
            let age = if received == 0 {
                0.0
            } else {
                now.saturating_sub(received) as f64 / 1000.0
            };
            self.oldest
                .get_or_create(&QueueLabel { queue: name })
                .set(age);
        }
    }
}
