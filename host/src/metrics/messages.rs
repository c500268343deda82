//! Messages moved, counted where every move is already recorded: the tracking record
//! ([`crate::tracking::Record::write`]), whose event ids are Exchange's. Counting there keeps one
//! account of what happened, whether the tracking log is on or not.

use super::ServiceLabel;
use crate::tracking::{EventId, Record};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Which service and which connector: the delivery queue or connector the record names, and for
/// a message received, where it came from (SMTP, PICKUP, REPLAY, AGENT, OUTBOX, DSN).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    service: &'static str,
    connector: String,
}

type Latency = Family<ServiceLabel, Histogram, fn() -> Histogram>;

/// The message counters and the delivery latency.
pub struct Messages {
    received: Family<MessageLabels, Counter>,
    delivered: Family<MessageLabels, Counter>,
    sent: Family<MessageLabels, Counter>,
    deferred: Family<MessageLabels, Counter>,
    failed: Family<MessageLabels, Counter>,
    latency: Latency,
}

/// From a tenth of a second to about 7 hours (longer waits land in `+Inf`): a local delivery
/// takes milliseconds, a message for a next hop that is down waits until it comes back.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 4.0, 10))
}

impl Messages {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let this = Self {
            received: Family::default(),
            delivered: Family::default(),
            sent: Family::default(),
            deferred: Family::default(),
            failed: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        };
        for (name, help, family) in [
            (
                "messages_received",
                "Messages received (tracking event RECEIVE), by service and source (SMTP, PICKUP, REPLAY, AGENT, OUTBOX, DSN) in the connector label",
                &this.received,
            ),
            (
                "messages_delivered",
                "Messages delivered to mailboxes or by delivery agents (DELIVER), by service and connector",
                &this.delivered,
            ),
            (
                "messages_sent",
                "Messages handed to the next hop (SEND), by service and connector",
                &this.sent,
            ),
            (
                "messages_deferred",
                "Delivery attempts that ended in a retry (DEFER), by service and connector",
                &this.deferred,
            ),
            (
                "messages_failed",
                "Recipients failed permanently (FAIL), by service and connector",
                &this.failed,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register_with_unit(
            "delivery_latency",
            "From the service's receipt of a message to its delivery or hand-off (DELIVER, SEND)",
            Unit::Seconds,
            this.latency.clone(),
        );
        this
    }

    /// Counts what `record` says happened; `received_ms` is when the service took the message
    /// (0: unknown), for the latency of a delivery.
    pub fn tracked(&self, record: &Record, received_ms: u64) {
        let family = match record.event {
            Some(EventId::Receive) => &self.received,
            Some(EventId::Deliver) => &self.delivered,
            Some(EventId::Send) => &self.sent,
            Some(EventId::Defer) => &self.deferred,
            Some(EventId::Fail) => &self.failed,
            _ => return,
        };
        let service = crate::service::Service::parse(&record.service).map_or("", |s| s.as_str());
        family
            .get_or_create(&MessageLabels {
                service,
                connector: record
                    .connector
                    .as_ref()
                    .or(record.source.as_ref())
                    .cloned()
                    .unwrap_or_default(),
            })
            .inc();
        if matches!(record.event, Some(EventId::Deliver | EventId::Send)) && received_ms > 0 {
            let ms = crate::transport::delivery::now_ms().saturating_sub(received_ms);
            self.latency
                .get_or_create(&ServiceLabel { service })
                .observe(ms as f64 / 1000.0);
        }
    }
}
