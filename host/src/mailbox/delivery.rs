//! Mailbox Transport delivery: takes SMTP from Transport and writes each recipient's copy into
//! its Maildir before answering; it never queues.

use crate::mailbox::store::MailboxStore;
use crate::message::MailItem;
use crate::organization::Organization;
use crate::smtp::receive::{BoxFuture, RecipientPolicy, Sink};
use mta_agent_sdk::SmtpResponse;
use std::sync::Arc;

/// Delivers into the mailbox store.
pub struct MailboxSink {
    /// The store.
    pub store: Arc<MailboxStore>,
    /// Which addresses are mailboxes.
    pub organization: Arc<Organization>,
}

impl Sink for MailboxSink {
    fn accept(&self, item: MailItem) -> BoxFuture<'_, Result<SmtpResponse, SmtpResponse>> {
        Box::pin(async move {
            let store = Arc::clone(&self.store);
            let organization = Arc::clone(&self.organization);
            let delivered = tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
                let bytes = item.message.to_bytes();
                let mut n = 0;
                for r in &item.envelope.recipients {
                    if let Some(mailbox) = organization.mailbox_of(&r.address) {
                        let path = store.deliver(&mailbox, &bytes)?;
                        tracing::info!(message = "Delivered.", recipient = %r.address, path = %path.display());
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await;
            match delivered {
                Ok(Ok(n)) => {
                    Ok(
                        SmtpResponse::new(250, "2.6.0", format!("Delivered to {n} mailbox(es)"))
                            .expect("valid"),
                    )
                }
                Ok(Err(e)) if e.raw_os_error() == Some(28) => {
                    Err(
                        SmtpResponse::new(452, "4.3.1", "Insufficient system storage")
                            .expect("valid"),
                    )
                }
                _ => {
                    Err(
                        SmtpResponse::new(451, "4.3.0", "Mailbox delivery failed, try again later")
                            .expect("valid"),
                    )
                }
            }
        })
    }
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
