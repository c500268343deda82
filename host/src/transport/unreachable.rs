//! The Unreachable queue's life: its items expire like any other (a report with 4.4.7 after
//! `expiration_hours`; checked every minute, or every `retry_max_ms` when shorter), and at
//! start-up, when the connectors may have changed, each is
//! categorized again (Exchange resubmits its Unreachable queue the same way), so recipients
//! that have a route now go on and the others are parked again.

use super::delivery::{now_ms, Diagnosis};
use super::reports::Reports;
use super::{Queues, Work};
use crate::smtp::reply;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Resubmits every item now, then checks expiry every `every` (a minute at most), until the
/// runtime stops.
pub async fn run(
    queues: Arc<Queues>,
    reports: Arc<Reports>,
    work: mpsc::UnboundedSender<Work>,
    expiry: Duration,
    every: Duration,
) {
    sweep(&queues, &reports, Some(&work), expiry).await;
    let every = every.clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        if work.is_closed() {
            return;
        }
        sweep(&queues, &reports, None, expiry).await;
    }
}

/// Fails the items past `expiry`; hands the others to the categorizer when `resubmit` is given.
async fn sweep(
    queues: &Arc<Queues>,
    reports: &Reports,
    resubmit: Option<&mpsc::UnboundedSender<Work>>,
    expiry: Duration,
) {
    let q = Arc::clone(queues);
    let ids = tokio::task::spawn_blocking(move || q.unreachable.ids())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    for id in ids {
        let q = Arc::clone(queues);
        let load = id.clone();
        let Ok(Ok((item, _))) =
            tokio::task::spawn_blocking(move || q.unreachable.load(&load)).await
        else {
            continue;
        };
        let age = Duration::from_millis(now_ms().saturating_sub(item.trace.received_ms));
        if age >= expiry {
            tracing::info!(message = "Unreachable item expired.", queue_id = %id);
            let why = reply(550, "5.4.4", "No route to the recipient's domain");
            reports.fail_all(&item, Diagnosis::expired(why)).await;
            let q = Arc::clone(queues);
            let _ = tokio::task::spawn_blocking(move || q.unreachable.remove(&id)).await;
        } else if let Some(work) = resubmit {
            let _ = work.send(Work::Unreachable(id));
        }
    }
}
