//! Idle SMTP client connections kept for the next message to the same next hop, so that a busy
//! queue does not open a connection (and repeat the greeting, EHLO and STARTTLS) per message.

use crate::smtp::send::{Client, TlsMode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long an idle connection is kept: well under the usual server idle timeouts (5 min).
const IDLE: Duration = Duration::from_secs(20);
/// Idle connections kept per next hop.
const MAX_IDLE: usize = 64;

/// Concurrent connections to one destination host, whatever the connector.
const PER_DESTINATION: usize = 20;

/// Idle connections by next hop, and the per-destination connection limits.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<(Instant, Client)>>>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
}

fn key(address: &str, tls: TlsMode) -> String {
    format!("{address}|{tls:?}")
}

impl Pool {
    /// Waits for a connection slot to `address` (at most [`PER_DESTINATION`] at once).
    pub async fn slot(&self, address: &str) -> Option<OwnedSemaphorePermit> {
        let limit = {
            let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(
                limits
                    .entry(address.to_ascii_lowercase())
                    .or_insert_with(|| Arc::new(Semaphore::new(PER_DESTINATION))),
            )
        };
        limit.acquire_owned().await.ok()
    }

    /// An idle connection to `address` with this TLS mode, if one is fresh enough.
    pub fn take(&self, address: &str, tls: TlsMode) -> Option<Client> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&key(address, tls))?;
        while let Some((since, client)) = list.pop() {
            if since.elapsed() < IDLE {
                return Some(client);
            }
        }
        None
    }

    /// Keeps a connection whose last transaction ended cleanly.
    pub fn put(&self, address: &str, tls: TlsMode, client: Client) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key(address, tls)).or_default();
        list.retain(|(since, _)| since.elapsed() < IDLE);
        if list.len() < MAX_IDLE {
            list.push((Instant::now(), client));
        }
    }
}
