//! Idle SMTP client connections kept for the next message to the same next hop, so that a busy
//! queue does not open a connection (and repeat the greeting, EHLO and STARTTLS) per message.

use crate::smtp::send::{Client, TlsMode};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an idle connection is kept: well under the usual server idle timeouts (5 min).
const IDLE: Duration = Duration::from_secs(20);
/// Idle connections kept per next hop.
const MAX_IDLE: usize = 64;

/// Idle connections by next hop.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<(Instant, Client)>>>,
}

fn key(address: &str, tls: TlsMode) -> String {
    format!("{address}|{tls:?}")
}

impl Pool {
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
