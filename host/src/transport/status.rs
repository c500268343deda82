//! The Transport service's live state, for scripts and monitoring that read files: once a
//! second the back-pressure readings are taken and written, with every delivery queue's state,
//! to `run/queues.json` (`mta queue list` asks the server over the control socket).

use super::back_pressure::{BackPressure, Pressure};
use super::delivery_queue::{DeliveryQueues, QueueStatus};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What `run/queues.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LiveStatus {
    /// When it was written (ms since the epoch): a stale file means no server is running.
    pub written_ms: u64,
    /// The process that wrote it.
    pub pid: u32,
    /// Back pressure.
    pub back_pressure: Pressure,
    /// The delivery queues.
    pub queues: Vec<QueueStatus>,
}

/// Takes the readings and writes the file every second, until the runtime stops.
pub async fn run(pressure: Arc<BackPressure>, deliveries: Arc<DeliveryQueues>, path: PathBuf) {
    loop {
        let p = Arc::clone(&pressure);
        // Reading /proc and statvfs is quick, but it is file I/O: off the async threads.
        let _ = tokio::task::spawn_blocking(move || p.check()).await;
        let status = LiveStatus {
            written_ms: super::delivery::now_ms(),
            pid: std::process::id(),
            back_pressure: pressure.pressure(),
            queues: deliveries.status(),
        };
        if let Ok(json) = serde_json::to_vec_pretty(&status) {
            let path = path.clone();
            let _ = tokio::task::spawn_blocking(move || crate::fsutil::replace(&path, &json)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
