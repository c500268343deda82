//! Idle SMTP client connections kept for the next message to the same next hop, so that a busy
//! queue does not open a connection (and repeat the greeting, EHLO and STARTTLS) per message.
//!
//! A connection is kept at most the pool's idle time; a timer then closes it with QUIT, as it
//! does every connection the pool lets go (too many idle ones, a stop), so next hops never see
//! a connection simply dropped.

use crate::smtp::send::{Client, TlsMode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Idle connections kept per next hop.
const MAX_IDLE: usize = 64;

/// Concurrent connections to one destination host, whatever the connector.
const PER_DESTINATION: usize = 20;

/// Idle connections by next hop, and the per-destination connection limits.
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<(Instant, Client)>>>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    idle_for: Duration,
    /// Where a copy converted for one next hop (8-bit to 7-bit) spools its body.
    spool: Option<crate::message::body::SpoolPlace>,
    /// How long a TCP connect to a next hop may take.
    connect_timeout: Duration,
    /// The roots next hops' certificates are checked against.
    roots: Arc<rustls::RootCertStore>,
}

fn key(address: &str, tls: TlsMode) -> String {
    format!("{address}|{tls:?}")
}

/// Says QUIT on each connection, off the caller's task.
fn close(clients: Vec<Client>) {
    if clients.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for client in clients {
            client.quit().await;
        }
    });
}

impl Pool {
    /// A pool keeping idle connections for `idle_for`, with the timer that closes them after.
    /// Must be called inside the tokio runtime.
    pub fn new(
        idle_for: Duration,
        spool: Option<crate::message::body::SpoolPlace>,
        connect_timeout: Duration,
        roots: Arc<rustls::RootCertStore>,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            idle: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
            idle_for,
            spool,
            connect_timeout,
            roots,
        });
        let weak: Weak<Pool> = Arc::downgrade(&pool);
        let tick = (idle_for / 2).max(Duration::from_millis(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(pool) = weak.upgrade() else { return };
                close(pool.expired());
            }
        });
        pool
    }

    /// The roots next hops' certificates are checked against.
    pub fn roots(&self) -> Arc<rustls::RootCertStore> {
        Arc::clone(&self.roots)
    }

    /// How long a TCP connect to a next hop may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Where a copy converted for one next hop spools its body.
    pub fn spool(&self) -> Option<&crate::message::body::SpoolPlace> {
        self.spool.as_ref()
    }

    /// Takes every connection idle for longer than the pool keeps them.
    fn expired(&self) -> Vec<Client> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for list in idle.values_mut() {
            let (old, fresh): (Vec<_>, Vec<_>) = std::mem::take(list)
                .into_iter()
                .partition(|(since, _)| since.elapsed() >= self.idle_for);
            *list = fresh;
            out.extend(old.into_iter().map(|(_, c)| c));
        }
        idle.retain(|_, list| !list.is_empty());
        out
    }

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
        let mut stale = Vec::new();
        let mut found = None;
        while let Some((since, client)) = list.pop() {
            if since.elapsed() < self.idle_for {
                found = Some(client);
                break;
            }
            stale.push(client);
        }
        drop(idle);
        close(stale);
        found
    }

    /// Keeps a connection whose last transaction ended cleanly.
    pub fn put(&self, address: &str, tls: TlsMode, client: Client) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key(address, tls)).or_default();
        if list.len() >= MAX_IDLE {
            let (_, oldest) = list.remove(0);
            drop(idle);
            close(vec![oldest]);
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.entry(key(address, tls))
                .or_default()
                .push((Instant::now(), client));
            return;
        }
        list.push((Instant::now(), client));
    }

    /// Closes every idle connection (at a stop).
    pub fn close_all(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let all: Vec<Client> = idle
            .drain()
            .flat_map(|(_, list)| list.into_iter().map(|(_, c)| c))
            .collect();
        drop(idle);
        close(all);
    }
}
