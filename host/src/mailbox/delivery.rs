//! Mailbox Transport delivery: takes LMTP (RFC 2033) from Transport and writes each
//! recipient's copy into its Maildir before answering for that recipient; it never queues.
//!
//! One reply per recipient after the data means a delivery that fails for one mailbox (a full
//! disk, a broken Maildir) is retried for that recipient only: the others are never delivered
//! twice.

use crate::mailbox::store::{MailboxStore, StoredCopy};
use crate::message::MailItem;
use crate::organization::Organization;
use crate::service::Service;
use crate::smtp::receive::{ready, BoxFuture, RecipientPolicy, Sink, Transactions};
use crate::smtp::reply;
use crate::smtp::session::MailRequest;
use crate::tracking::{EventId, Record};
use mta_agent_sdk::SmtpResponse;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Delivers into the mailbox store.
pub struct MailboxSink {
    /// The store.
    pub store: Arc<MailboxStore>,
    /// Which addresses are mailboxes.
    pub organization: Arc<Organization>,
    /// Numbers the deliveries, for the Received field's id.
    pub deliveries: Arc<AtomicU64>,
}

struct Delivery {
    store: Arc<MailboxStore>,
    organization: Arc<Organization>,
    deliveries: Arc<AtomicU64>,
}

impl Sink for MailboxSink {
    fn open(&self) -> Box<dyn Transactions> {
        Box::new(Delivery {
            store: Arc::clone(&self.store),
            organization: Arc::clone(&self.organization),
            deliveries: Arc::clone(&self.deliveries),
        })
    }

    fn submit(&self, _item: MailItem) -> BoxFuture<'_, Result<SmtpResponse, SmtpResponse>> {
        ready(Err(reply(
            554,
            "5.3.3",
            "Mailbox Transport takes messages over LMTP only",
        )))
    }
}

impl Transactions for Delivery {
    fn mail<'a>(
        &'a mut self,
        _request: &'a MailRequest,
    ) -> BoxFuture<'a, Result<String, SmtpResponse>> {
        let n = self.deliveries.fetch_add(1, Ordering::Relaxed) + 1;
        ready(Ok(format!("mailbox-{n}")))
    }

    fn message(&mut self, mut item: MailItem) -> BoxFuture<'_, Vec<SmtpResponse>> {
        let store = Arc::clone(&self.store);
        let organization = Arc::clone(&self.organization);
        // Mailbox Transport's receipt: its DELIVER records measure the delivery latency from
        // here (the metrics' `service="mailbox"`), as Transport's measure from its own.
        item.trace.received_ms = crate::transport::delivery::now_ms();
        Box::pin(async move {
            let recipients = item.envelope.recipients.len();
            let delivered =
                tokio::task::spawn_blocking(move || deliver(&store, &organization, &item)).await;
            delivered.unwrap_or_else(|_| {
                vec![reply(451, "4.3.0", "Mailbox delivery failed, try again later"); recipients]
            })
        })
    }
}

/// Writes each recipient's copy; one reply per recipient. Two addresses of one mailbox get one
/// copy.
fn deliver(
    store: &MailboxStore,
    organization: &Organization,
    item: &MailItem,
) -> Vec<SmtpResponse> {
    let copy = StoredCopy::new(&item.message);
    let mut done: Vec<(String, SmtpResponse)> = Vec::new();
    item.envelope
        .recipients
        .iter()
        .map(|r| {
            let Some(mailbox) = organization.mailbox_of(&r.address) else {
                return reply(550, "5.1.1", "Recipient address rejected: user unknown");
            };
            if let Some((_, answer)) = done.iter().find(|(m, _)| *m == mailbox) {
                return answer.clone();
            }
            let answer = match store.deliver(&mailbox, &item.envelope.from, &r.address, &copy) {
                Ok(path) => {
                    let message_id = item.message.header("Message-ID").unwrap_or_default();
                    tracing::info!(message = "Delivered.", recipient = ?r.address, message_id = ?message_id, path = %path.display());
                    Record::item(EventId::Deliver, Service::Mailbox, item)
                        .to([r.address.as_str()])
                        .connector(format!("mailbox {mailbox}"))
                        .next_hop(path.display().to_string())
                        .write();
                    reply(250, "2.0.0", &format!("Delivered to {mailbox}"))
                }
                Err(e) if e.raw_os_error() == Some(28) => {
                    tracing::error!(message = "Mailbox delivery failed: disk full.", recipient = ?r.address);
                    reply(452, "4.3.1", "Insufficient system storage")
                }
                Err(e) => {
                    tracing::error!(message = "Mailbox delivery failed.", recipient = ?r.address, error = %e);
                    Record::item(EventId::Defer, Service::Mailbox, item)
                        .to([r.address.as_str()])
                        .detail(format!("mailbox delivery failed: {e}"))
                        .write();
                    reply(451, "4.3.0", "Mailbox delivery failed, try again later")
                }
            };
            done.push((mailbox, answer.clone()));
            answer
        })
        .collect()
}

/// Mailbox delivery takes only our mailboxes, never relays.
pub struct MailboxPolicy(pub Arc<Organization>);

impl RecipientPolicy for MailboxPolicy {
    fn check(&self, address: &str, _may_relay: bool) -> Result<(), SmtpResponse> {
        self.0.check_recipient(address, false)
    }
}

/// The organisation's rule for receive connectors: local mailboxes, and relay when allowed.
pub struct OrganizationPolicy(pub Arc<Organization>);

impl RecipientPolicy for OrganizationPolicy {
    fn check(&self, address: &str, may_relay: bool) -> Result<(), SmtpResponse> {
        self.0.check_recipient(address, may_relay)
    }
}
