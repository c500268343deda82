//! Telling senders: failure and delay notifications, honouring NOTIFY, submitted into the
//! Submission queue like any new message.

use super::delivery::Diagnosis;
use super::dsn;
use super::SubmissionSink;
use crate::message::{EnvelopeRecipient, MailItem};
use crate::service::Service;
use crate::tracking::{EventId, Record};
use std::sync::Arc;

/// Builds and submits delivery status notifications.
pub struct Reports {
    submission: Arc<SubmissionSink>,
    hostname: String,
    postmaster: String,
}

impl Reports {
    /// Reports from `postmaster` of `hostname`, submitted into `submission`.
    pub fn new(submission: Arc<SubmissionSink>, hostname: &str, postmaster: &str) -> Self {
        Self {
            submission,
            hostname: hostname.to_string(),
            postmaster: postmaster.to_string(),
        }
    }

    /// Tells the sender that every recipient of `item` failed for `why`.
    pub async fn fail_all(&self, item: &MailItem, why: Diagnosis) {
        let failures = item
            .envelope
            .recipients
            .iter()
            .map(|r| (r.clone(), why.clone()))
            .collect();
        self.notify(item, failures, dsn::Kind::Failed).await;
    }

    /// Logs each failure (or delay) and tells the sender, if there is anything the sender
    /// asked to hear.
    pub async fn notify(
        &self,
        item: &MailItem,
        failures: Vec<(EnvelopeRecipient, Diagnosis)>,
        kind: dsn::Kind,
    ) {
        if failures.is_empty() {
            return;
        }
        for (r, why) in &failures {
            tracing::info!(message = if kind == dsn::Kind::Failed { "Delivery failed." } else { "Delivery delayed; sender notified." }, queue_id = %item.id, recipient = ?r.address, reply = %why.response);
            if kind == dsn::Kind::Failed {
                let mut record = Record::item(EventId::Fail, Service::Transport, item)
                    .to([r.address.as_str()])
                    .reply(&why.response);
                record.next_hop = why.remote_mta.clone();
                record.write();
            }
        }
        // NOTIFY (RFC 3461): NEVER asks for no report; a list without FAILURE (or DELAY) asks
        // for none of that kind. Without NOTIFY, failures are reported and delays too.
        let wanted = |r: &EnvelopeRecipient| match r.notify {
            None => true,
            Some(n) if n.never => false,
            Some(n) => {
                if kind == dsn::Kind::Failed {
                    n.failure
                } else {
                    n.delay
                }
            }
        };
        let failures: Vec<_> = failures.into_iter().filter(|(r, _)| wanted(r)).collect();
        if failures.is_empty() {
            return;
        }
        if let Some(mut report) =
            dsn::notification(item, &failures, kind, &self.hostname, &self.postmaster)
        {
            report.id = self.submission.new_id();
            report.trace.origin = Some("DSN");
            Record::item(EventId::Dsn, Service::Transport, item)
                .to(failures.iter().map(|(r, _)| r.address.as_str()))
                .related(&report.id)
                .detail(if kind == dsn::Kind::Failed {
                    "failure report"
                } else {
                    "delay notification"
                })
                .write();
            if let Err(e) = self.submission.enqueue(report).await {
                tracing::error!(message = "Cannot queue a report.", queue_id = %item.id, reply = %e);
            }
        }
    }
}
