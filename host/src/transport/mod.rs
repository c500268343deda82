//! The Transport service: SMTP receive into the durable Submission queue, then categorization
//! and delivery.
//!
//! Accepted items are made durable by the Submission queue's [`journal`] (group commit) before
//! the client gets 250, and handed to the categorizer in memory. Until the full categorizer
//! lands (routing agents, connectors, delivery queues per next hop), a minimal categorizer
//! delivers each item's local recipients to the Mailbox Transport service over SMTP. Recipients
//! that must wait (Mailbox Transport down) go to the mailbox delivery queue, one fsync'd file
//! per item, retried with a growing delay; recipients without a route go to Unreachable. An item
//! leaves the journal only after it was delivered or written to one of those queues.

pub mod journal;
pub mod submission_queue;

use crate::message::{EnvelopeRecipient, MailItem};
use crate::organization::Organization;
use crate::smtp::receive::{BoxFuture, Sink};
use crate::smtp::send::{Client, SendError};
use journal::Journal;
use mta_agent_sdk::SmtpResponse;
use std::sync::Arc;
use std::time::Duration;
use submission_queue::QueueDir;
use tokio::sync::mpsc;

/// The queues of a Transport node.
pub struct Queues {
    /// The Submission queue: accepted, not yet categorized.
    pub journal: Journal,
    /// Items waiting for Mailbox Transport delivery (retries).
    pub mailbox_delivery: QueueDir,
    /// No route for some recipients.
    pub unreachable: QueueDir,
    /// Quarantined by an agent.
    pub quarantine: QueueDir,
    /// Faulted agents too often; never retried automatically.
    pub poison: QueueDir,
}

/// Work for the categorizer.
pub enum Work {
    /// A newly accepted item, still in the journal.
    Fresh(Box<MailItem>, u32),
    /// An item of the mailbox delivery queue to try again.
    Retry(String),
}

impl Queues {
    /// Opens the queues under `data_dir`; returns them with the work left from before a stop.
    pub fn open(data_dir: &std::path::Path) -> std::io::Result<(Self, Vec<Work>)> {
        let (journal, recovered) = Journal::open(&data_dir.join("queue").join("journal"))?;
        let queues = Self {
            journal,
            mailbox_delivery: QueueDir::open(data_dir, "delivery-mailbox")?,
            unreachable: QueueDir::open(data_dir, "unreachable")?,
            quarantine: QueueDir::open(data_dir, "quarantine")?,
            poison: QueueDir::open(data_dir, "poison")?,
        };
        let mut work: Vec<Work> = recovered
            .into_iter()
            .map(|(i, a)| Work::Fresh(Box::new(i), a))
            .collect();
        work.extend(queues.mailbox_delivery.ids()?.into_iter().map(Work::Retry));
        Ok((queues, work))
    }
}

/// Puts accepted messages into the Submission queue and hands them to the categorizer.
pub struct SubmissionSink {
    queues: Arc<Queues>,
    work: mpsc::UnboundedSender<Work>,
}

impl SubmissionSink {
    /// A sink writing to `queues`, passing each item on to `work`.
    pub fn new(queues: Arc<Queues>, work: mpsc::UnboundedSender<Work>) -> Self {
        Self { queues, work }
    }

    /// Stores an item durably; the reply the client gets.
    pub async fn enqueue(&self, mut item: MailItem) -> Result<SmtpResponse, SmtpResponse> {
        item.id = self.queues.mailbox_delivery.new_id();
        match self.queues.journal.append(&item, 0).await {
            Ok(()) => {
                let id = item.id.clone();
                tracing::info!(message = "Message queued.", queue_id = %id);
                let _ = self.work.send(Work::Fresh(Box::new(item), 0));
                Ok(
                    SmtpResponse::new(250, "2.6.0", format!("<{id}> Queued mail for delivery"))
                        .expect("valid"),
                )
            }
            Err(e) if e.raw_os_error() == Some(28) => {
                tracing::error!(message = "Queue disk full.", error = %e);
                Err(SmtpResponse::new(452, "4.3.1", "Insufficient system storage").expect("valid"))
            }
            Err(e) => {
                tracing::error!(message = "Queue write failed.", error = %e);
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

/// Where an item came from, so that it is released from the right place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Journal,
    MailboxDelivery,
}

impl Categorizer {
    /// Runs until the channel closes: first `recovered`, then each item as it comes.
    pub async fn run(
        self: Arc<Self>,
        recovered: Vec<Work>,
        mut work: mpsc::UnboundedReceiver<Work>,
        again: mpsc::UnboundedSender<Work>,
    ) {
        if !recovered.is_empty() {
            tracing::info!(
                message = "Recovering queued messages.",
                count = recovered.len()
            );
        }
        for w in recovered {
            let _ = again.send(w);
        }
        let mut in_flight = tokio::task::JoinSet::new();
        while let Some(w) = work.recv().await {
            while in_flight.len() >= 64 {
                in_flight.join_next().await;
            }
            let this = Arc::clone(&self);
            let again = again.clone();
            in_flight.spawn(async move { this.process(w, again).await });
        }
    }

    async fn process(&self, work: Work, again: mpsc::UnboundedSender<Work>) {
        let (mut item, attempts, origin) = match work {
            Work::Fresh(item, attempts) => (*item, attempts, Origin::Journal),
            Work::Retry(id) => {
                let queues = Arc::clone(&self.queues);
                match tokio::task::spawn_blocking(move || queues.mailbox_delivery.load(&id)).await {
                    Ok(Ok((item, attempts))) => (item, attempts, Origin::MailboxDelivery),
                    _ => return, // already done by an earlier wake-up
                }
            }
        };
        let id = item.id.clone();
        if item.quarantine.is_some() {
            tracing::info!(message = "Message quarantined.", queue_id = %id, reason = item.quarantine.as_deref().unwrap_or(""));
            self.hand_over(item, attempts, origin, Handover::Quarantine)
                .await;
            return;
        }
        let (local, remote): (Vec<_>, Vec<_>) = item
            .envelope
            .recipients
            .iter()
            .cloned()
            .partition(|r| self.organization.mailbox_of(&r.address).is_some());
        let mut waiting = Vec::new();
        if !local.is_empty() {
            match self.deliver_local(&item, &local).await {
                Ok(deferred) => waiting = deferred,
                Err(e) => {
                    tracing::warn!(message = "Mailbox delivery failed; will retry.", queue_id = %id, error = %e);
                    waiting = local;
                }
            }
        }
        if !remote.is_empty() {
            let mut unreachable = item.clone();
            unreachable.envelope.recipients = remote;
            tracing::info!(message = "No route for recipients; parked in Unreachable.", queue_id = %id);
            let queues = Arc::clone(&self.queues);
            let _ = tokio::task::spawn_blocking(move || {
                queues.unreachable.store(&mut unreachable, attempts)
            })
            .await;
        }
        if waiting.is_empty() {
            self.hand_over(item, attempts, origin, Handover::Finished)
                .await;
            return;
        }
        item.envelope.recipients = waiting;
        let delay = Duration::from_millis((500u64 << attempts.min(8)).min(60_000));
        if self
            .hand_over(item, attempts + 1, origin, Handover::MailboxDelivery)
            .await
        {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = again.send(Work::Retry(id));
            });
        }
    }

    /// Moves an item on: into a queue file (fsync'd), then out of where it was. Returns
    /// whether it was stored.
    async fn hand_over(
        &self,
        mut item: MailItem,
        attempts: u32,
        origin: Origin,
        to: Handover,
    ) -> bool {
        let queues = Arc::clone(&self.queues);
        let id = item.id.clone();
        let stored = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            match to {
                Handover::Finished => {}
                Handover::Quarantine => {
                    queues.quarantine.store(&mut item, attempts)?;
                }
                Handover::MailboxDelivery => {
                    queues.mailbox_delivery.store(&mut item, attempts)?;
                }
            }
            if origin == Origin::MailboxDelivery && to != Handover::MailboxDelivery {
                queues.mailbox_delivery.remove(&item.id)?;
            }
            Ok(())
        })
        .await;
        match stored {
            Ok(Ok(())) => {
                if origin == Origin::Journal {
                    self.queues.journal.done(&id);
                }
                true
            }
            Ok(Err(e)) => {
                tracing::error!(message = "Cannot move a queued item; it stays where it is.", queue_id = %id, error = %e);
                false
            }
            Err(e) => {
                tracing::error!(message = "Queue task failed.", queue_id = %id, error = %e);
                false
            }
        }
    }

    /// Sends the message to Mailbox Transport for `recipients`; returns those to retry.
    async fn deliver_local(
        &self,
        item: &MailItem,
        recipients: &[EnvelopeRecipient],
    ) -> Result<Vec<EnvelopeRecipient>, SendError> {
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Handover {
    /// Nothing left to do.
    Finished,
    /// Into quarantine.
    Quarantine,
    /// Into the mailbox delivery queue, for a retry.
    MailboxDelivery,
}
