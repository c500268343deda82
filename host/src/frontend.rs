//! Front End Transport: a stateless SMTP proxy. It runs the Front End agents, then hands each
//! transaction to a Transport node of the pool and answers the client's DATA with that node's
//! answer, so a 250 from us means a Transport node has the message durably. It stores nothing.

use crate::message::MailItem;
use crate::smtp::receive::{BoxFuture, Sink};
use crate::smtp::send::{Client, SendError};
use crate::transport::delivery::parameters;
use mta_agent_sdk::SmtpResponse;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Relays to a pool of Transport nodes: round-robin, failing over to the next on connect errors.
pub struct ProxySink {
    nodes: Vec<String>,
    next: AtomicUsize,
    hostname: String,
}

impl ProxySink {
    /// A proxy to `nodes` (`ip:port`).
    pub fn new(nodes: Vec<String>, hostname: &str) -> Self {
        Self {
            nodes,
            next: AtomicUsize::new(0),
            hostname: hostname.to_string(),
        }
    }

    async fn relay(&self, item: MailItem) -> Result<SmtpResponse, SmtpResponse> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let message = item.message.to_bytes();
        for i in 0..self.nodes.len() {
            let node = &self.nodes[(start + i) % self.nodes.len()];
            let mut client = match Client::connect(node, &self.hostname, Duration::from_secs(30))
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(message = "Transport node unavailable; trying the next.", node = %node, error = %e);
                    continue;
                }
            };
            // The node's EHLO decides which envelope parameters it gets, as for any next hop.
            let (params, recipients) = parameters(&client, &item);
            let sent = client
                .send_mail(&item.envelope.from, &params, &recipients, &message)
                .await;
            client.quit().await;
            return match sent {
                Ok(sent) => match sent.data {
                    Some(reply) if reply.is_success() => Ok(reply),
                    Some(reply) => Err(reply),
                    None => Err(sent
                        .recipients
                        .into_iter()
                        .find_map(|(_, r)| r.err())
                        .unwrap_or_else(|| {
                            temporary("No recipient accepted by the Transport service")
                        })),
                },
                Err(SendError::Rejected(_, reply)) => Err(reply),
                Err(e) => {
                    tracing::warn!(message = "Relay to Transport failed.", node = %node, error = %e);
                    Err(temporary("Transport service unavailable, try again later"))
                }
            };
        }
        Err(temporary("No Transport service available, try again later"))
    }
}

fn temporary(text: &str) -> SmtpResponse {
    SmtpResponse::new(451, "4.4.0", text).expect("valid")
}

impl Sink for ProxySink {
    fn accept(&self, item: MailItem) -> BoxFuture<'_, Result<SmtpResponse, SmtpResponse>> {
        Box::pin(self.relay(item))
    }
}
