//! The Transport service: SMTP receive into the durable Submission queue, then categorization
//! and delivery.
//!
//! Until the full categorizer lands (routing agents, connectors, delivery queues per next hop),
//! a minimal categorizer delivers each item's local recipients to the Mailbox Transport service
//! over SMTP and parks the others in the Unreachable queue. Items it cannot deliver now stay in
//! the Submission queue and are retried with a growing delay; nothing is removed before the
//! next hop has answered 250.

pub mod submission_queue;

use crate::message::MailItem;
use crate::organization::Organization;
use crate::smtp::receive::{BoxFuture, Sink};
use crate::smtp::send::{Client, SendError};
use mta_agent_sdk::SmtpResponse;
use std::sync::Arc;
use std::time::Duration;
use submission_queue::QueueDir;
use tokio::sync::mpsc;

/// The queues of a Transport node.
pub struct Queues {
    /// Accepted, not yet categorized and delivered.
    pub submission: QueueDir,
    /// No route for some recipients.
    pub unreachable: QueueDir,
    /// Quarantined by an agent.
    pub quarantine: QueueDir,
    /// Faulted agents too often; never retried automatically.
    pub poison: QueueDir,
}

impl Queues {
    /// Opens the queues under `data_dir`.
    pub fn open(data_dir: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self {
            submission: QueueDir::open(data_dir, "submission")?,
            unreachable: QueueDir::open(data_dir, "unreachable")?,
            quarantine: QueueDir::open(data_dir, "quarantine")?,
            poison: QueueDir::open(data_dir, "poison")?,
        })
    }
}

/// Puts accepted messages into the Submission queue and wakes the categorizer.
pub struct SubmissionSink {
    queues: Arc<Queues>,
    wake: mpsc::UnboundedSender<String>,
}

impl SubmissionSink {
    /// A sink writing to `queues`, waking `wake` with each new id.
    pub fn new(queues: Arc<Queues>, wake: mpsc::UnboundedSender<String>) -> Self {
        Self { queues, wake }
    }

    /// Stores an item durably; the reply the client gets.
    pub async fn enqueue(&self, mut item: MailItem) -> Result<SmtpResponse, SmtpResponse> {
        let queues = Arc::clone(&self.queues);
        let stored =
            tokio::task::spawn_blocking(move || queues.submission.store(&mut item, 0)).await;
        match stored {
            Ok(Ok(id)) => {
                tracing::info!(message = "Message queued.", queue_id = %id);
                let _ = self.wake.send(id.clone());
                Ok(
                    SmtpResponse::new(250, "2.6.0", format!("<{id}> Queued mail for delivery"))
                        .expect("valid"),
                )
            }
            Ok(Err(e)) if e.raw_os_error() == Some(28) => {
                tracing::error!(message = "Queue disk full.", error = %e);
                Err(SmtpResponse::new(452, "4.3.1", "Insufficient system storage").expect("valid"))
            }
            Ok(Err(e)) => {
                tracing::error!(message = "Queue write failed.", error = %e);
                Err(
                    SmtpResponse::new(451, "4.3.0", "Queue write failed, try again later")
                        .expect("valid"),
                )
            }
            Err(e) => {
                tracing::error!(message = "Queue write task failed.", error = %e);
                Err(
                    SmtpResponse::new(451, "4.3.0", "Queue write failed, try again later")
                        .expect("valid"),
                )
            }
        }
    }
}

impl Sink for SubmissionSink {
    fn accept(&self, item: MailItem) -> BoxFuture<'_, Result<SmtpResponse, SmtpResponse>> {
        Box::pin(self.enqueue(item))
    }
}

/// The minimal categorizer: local recipients to Mailbox Transport, others to Unreachable.
pub struct Categorizer {
    /// Queues.
    pub queues: Arc<Queues>,
    /// Accepted domains and mailboxes.
    pub organization: Arc<Organization>,
    /// Where Mailbox Transport delivery listens.
    pub mailbox_address: String,
    /// Our name, for EHLO.
    pub hostname: String,
}

impl Categorizer {
    /// Runs until the channel closes: first the items left from before a restart, then each
    /// new one as it is queued.
    pub async fn run(
        self: Arc<Self>,
        mut wake: mpsc::UnboundedReceiver<String>,
        retry: mpsc::UnboundedSender<String>,
    ) {
        let queues = Arc::clone(&self.queues);
        if let Ok(Ok(ids)) = tokio::task::spawn_blocking(move || queues.submission.ids()).await {
            if !ids.is_empty() {
                tracing::info!(message = "Recovering queued messages.", count = ids.len());
            }
            for id in ids {
                let _ = retry.send(id);
            }
        }
        let mut in_flight = tokio::task::JoinSet::new();
        while let Some(id) = wake.recv().await {
            while in_flight.len() >= 32 {
                in_flight.join_next().await;
            }
            let this = Arc::clone(&self);
            let retry = retry.clone();
            in_flight.spawn(async move { this.process(id, retry).await });
        }
    }

    async fn process(&self, id: String, retry: mpsc::UnboundedSender<String>) {
        let queues = Arc::clone(&self.queues);
        let load_id = id.clone();
        let Ok(Ok((mut item, attempts))) =
            tokio::task::spawn_blocking(move || queues.submission.load(&load_id)).await
        else {
            return; // already done by an earlier wake-up
        };
        if item.quarantine.is_some() {
            let queues = Arc::clone(&self.queues);
            let qid = id.clone();
            let _ = tokio::task::spawn_blocking(move || {
                queues.submission.move_to(&qid, &queues.quarantine)
            })
            .await;
            tracing::info!(message = "Message quarantined.", queue_id = %id, reason = item.quarantine.as_deref().unwrap_or(""));
            return;
        }
        let (local, remote): (Vec<_>, Vec<_>) = item
            .envelope
            .recipients
            .iter()
            .cloned()
            .partition(|r| self.organization.mailbox_of(&r.address).is_some());
        let mut pending = remote.clone();
        if !local.is_empty() {
            match self.deliver_local(&item, &local).await {
                Ok(deferred) => pending.extend(deferred),
                Err(e) => {
                    tracing::warn!(message = "Mailbox delivery failed; will retry.", queue_id = %id, error = %e);
                    pending.extend(local.clone());
                }
            }
        }
        let local_left: Vec<_> = pending
            .iter()
            .filter(|r| !remote.contains(r))
            .cloned()
            .collect();
        let queues = Arc::clone(&self.queues);
        if local_left.is_empty() {
            if remote.is_empty() {
                let _ = tokio::task::spawn_blocking(move || queues.submission.remove(&id)).await;
                return;
            }
            item.envelope.recipients = remote;
            let _ = tokio::task::spawn_blocking(move || {
                queues.unreachable.store(&mut item, attempts)?;
                queues.submission.remove(&item.id)
            })
            .await;
            return;
        }
        // Keep the item with the recipients still to deliver, and retry later.
        item.envelope.recipients = pending;
        let delay = Duration::from_millis((500u64 << attempts.min(8)).min(60_000));
        let stored =
            tokio::task::spawn_blocking(move || queues.submission.store(&mut item, attempts + 1))
                .await;
        if matches!(stored, Ok(Ok(_))) {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = retry.send(id);
            });
        }
    }

    /// Sends the message to Mailbox Transport for `recipients`; returns those deferred.
    async fn deliver_local(
        &self,
        item: &MailItem,
        recipients: &[crate::message::EnvelopeRecipient],
    ) -> Result<Vec<crate::message::EnvelopeRecipient>, SendError> {
        let mut client = Client::connect(
            &self.mailbox_address,
            &self.hostname,
            Duration::from_secs(60),
        )
        .await?;
        let rcpts: Vec<(String, String)> = recipients
            .iter()
            .map(|r| (r.address.clone(), String::new()))
            .collect();
        let sent = client
            .send_mail(&item.envelope.from, "", &rcpts, &item.message.to_bytes())
            .await?;
        client.quit().await;
        let data_ok = sent.data.as_ref().is_some_and(|r| r.is_success());
        let mut deferred = Vec::new();
        for (r, (_, outcome)) in recipients.iter().zip(sent.recipients) {
            match outcome {
                Ok(()) if data_ok => {}
                Err(reply) if reply.is_permanent() => {
                    tracing::warn!(message = "Recipient refused by the mailbox service.", recipient = %r.address, reply = %reply);
                }
                _ => deferred.push(r.clone()),
            }
        }
        Ok(deferred)
    }
}
