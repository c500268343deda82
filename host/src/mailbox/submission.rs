//! Mailbox Transport submission: messages a user puts in a mailbox's outbox (the `.Outbox`
//! Maildir folder) are submitted over SMTP to the Transport service, then moved to `.Sent`.
//!
//! The envelope comes from the header fields, as for the pickup directory; the sender is the
//! mailbox's own address unless `From` names another address of the same mailbox. `Bcc` is
//! removed. Transport is told who submits with XCLIENT `LOGIN` (the mailbox's address), as a
//! client that authenticated.
//!
//! Every recipient ends one way or another, and only once:
//! - taken by Transport: done;
//! - refused for good (5xx): the mailbox gets a non-delivery report naming it;
//! - too many for one transaction (452): sent at once in the next transaction;
//! - refused for now (4xx), or Transport down: the message stays in the outbox and is tried
//!   again at the next poll, for those recipients only.
//!
//! Which recipients are done is written (fsync'd) to `<data_dir>/queue/outbox/<mailbox>/`
//! after each transaction, so a crash or a retry never sends to them again. When none is left,
//! the message moves to `.Sent` (or, if no recipient took it, stays flagged `F` in the outbox).

use crate::directories::pickup::addresses;
use crate::mailbox::store::{MailboxStore, StoredCopy};
use crate::message::{EnvelopeRecipient, MailItem, Message};
use crate::organization::Organization;
use crate::service::Service;
use crate::smtp::send::{Client, SendError};
use crate::tracking::{EventId, Record};
use crate::transport::delivery::Diagnosis;
use crate::transport::dsn;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Polls every mailbox's outbox.
pub struct OutboxSubmission {
    /// The mailboxes.
    pub store: Arc<MailboxStore>,
    /// Our domains and mailboxes, as the running configuration has them: a reload that adds a
    /// mailbox has its outbox polled from the next pass.
    pub organization: Arc<arc_swap::ArcSwap<Organization>>,
    /// Where Transport listens.
    pub transport: String,
    /// Our name, for EHLO and reports.
    pub hostname: String,
    /// Where the recipients already handed over are recorded.
    pub progress: PathBuf,
    /// Where large bodies are spooled while they are sent.
    pub spool: crate::message::body::SpoolPlace,
}

/// What became of the recipients of one pass.
#[derive(Default)]
struct Pass {
    /// Taken, or reported: never sent to again.
    done: BTreeSet<String>,
    /// Refused for good, for the report.
    refused: Vec<(EnvelopeRecipient, Diagnosis)>,
    /// To try again later.
    waiting: usize,
    /// At least one recipient was taken.
    sent: bool,
}

impl OutboxSubmission {
    /// Runs until shutdown, polling every `interval`.
    pub async fn run(self, interval: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            for mailbox in self.organization.load().mailboxes() {
                let outbox = self.store.maildir(&mailbox).join(".Outbox");
                for path in pending(&outbox) {
                    self.submit(&mailbox, &path).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    fn own_address(&self, mailbox: &str) -> String {
        format!(
            "{mailbox}@{}",
            self.organization
                .load()
                .domains()
                .first()
                .map(String::as_str)
                .unwrap_or("localhost")
        )
    }

    async fn submit(&self, mailbox: &str, path: &Path) {
        // Read a piece at a time: a large body is spooled, not held.
        let (file, place) = (path.to_path_buf(), self.spool.clone());
        let read =
            tokio::task::spawn_blocking(move || crate::message::file::read(&file, Some(&place)))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let mut message = match read {
            Ok(message) => message,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return self.refused(path, &e.to_string())
            }
            Err(_) => return,
        };
        let head = message.head();
        let own = self.own_address(mailbox);
        let Some(parsed) = mail_parser::MessageParser::default().parse_headers(&head) else {
            return self.refused(path, "not a message");
        };
        let from = addresses(&parsed, "From")
            .into_iter()
            .next()
            .filter(|a| self.organization.load().mailbox_of(a).as_deref() == Some(mailbox))
            .unwrap_or_else(|| own.clone());
        let mut recipients: Vec<String> = Vec::new();
        for field in ["To", "Cc", "Bcc"] {
            for a in addresses(&parsed, field) {
                if !recipients.iter().any(|r| r.eq_ignore_ascii_case(&a)) {
                    recipients.push(a);
                }
            }
        }
        if recipients.is_empty() {
            return self.refused(path, "no recipient in To, Cc or Bcc");
        }
        message.remove_header("Bcc");
        let progress = self.progress_file(mailbox, path);
        let already = read_progress(&progress);
        let todo: Vec<String> = recipients
            .into_iter()
            .filter(|r| !already.contains(&r.to_ascii_lowercase()))
            .collect();
        let pass = match self
            .transactions(&own, &from, &todo, &message, &progress, &already)
            .await
        {
            Ok(pass) => pass,
            Err(e) => {
                tracing::warn!(message = "Outbox submission deferred.", mailbox, error = %e);
                return;
            }
        };
        if !pass.refused.is_empty() {
            self.report(mailbox, &from, &message, &pass.refused);
        }
        if pass.waiting > 0 {
            tracing::warn!(
                message = "Outbox submission deferred for some recipients.",
                mailbox,
                waiting = pass.waiting
            );
            return;
        }
        let _ = std::fs::remove_file(&progress);
        if pass.sent || !already.is_empty() {
            self.move_to_sent(mailbox, path, todo.len());
        } else {
            self.refused(path, "Transport refused every recipient");
        }
    }

    /// Sends `todo` in as many transactions as Transport's recipient limit needs.
    async fn transactions(
        &self,
        own: &str,
        from: &str,
        todo: &[String],
        message: &Message,
        progress: &Path,
        already: &BTreeSet<String>,
    ) -> Result<Pass, SendError> {
        let mut pass = Pass {
            done: already.clone(),
            ..Pass::default()
        };
        // The mailbox's owner submits: Transport is told so, as of a client that
        // authenticated.
        let attributes = format!(
            "ADDR=127.0.0.1 LOGIN={} TRUSTED=NO",
            crate::smtp::xtext::encode(own)
        );
        let mut client = Client::connect_naming(
            &self.transport,
            &self.hostname,
            Duration::from_secs(60),
            &attributes,
        )
        .await?;
        let mut pending: Vec<String> = todo.to_vec();
        while !pending.is_empty() {
            let rcpts: Vec<(String, String)> =
                pending.iter().map(|r| (r.clone(), String::new())).collect();
            let sent = match client.transaction(from, "", &rcpts, message).await {
                Ok(sent) => sent,
                Err(SendError::Rejected(_, r)) if r.is_permanent() => {
                    // The sender itself is refused: every recipient is.
                    for rcpt in pending.drain(..) {
                        pass.done.insert(rcpt.to_ascii_lowercase());
                        pass.refused
                            .push((EnvelopeRecipient::new(&rcpt), Diagnosis::local(r.clone())));
                    }
                    break;
                }
                Err(e) => {
                    pass.waiting += pending.len();
                    write_progress(progress, &pass.done);
                    client.quit().await;
                    return if pass.done.len() > already.len() {
                        Ok(pass)
                    } else {
                        Err(e)
                    };
                }
            };
            let mut again = Vec::new();
            for (rcpt, result) in pending.iter().zip(sent.recipients) {
                match result {
                    Ok(response) => {
                        pass.sent = true;
                        pass.done.insert(rcpt.to_ascii_lowercase());
                        let mut record = Record::new(EventId::Submit, Service::Mailbox)
                            .to([rcpt.as_str()])
                            .source("OUTBOX")
                            .connector(format!("mailbox {own}"))
                            .reply(&response);
                        record.sender = from.to_string();
                        record.message_id =
                            message.header("Message-ID").map(|v| v.trim().to_string());
                        record.size = Some(message.len() as u64);
                        record.auth_user = Some(own.to_string());
                        record.write();
                    }
                    Err(refusal) if refusal.too_many_recipients() => again.push(rcpt.clone()),
                    Err(refusal) if refusal.response.is_permanent() => {
                        pass.done.insert(rcpt.to_ascii_lowercase());
                        pass.refused.push((
                            EnvelopeRecipient::new(rcpt),
                            Diagnosis::local(refusal.response),
                        ));
                    }
                    Err(refusal) => {
                        tracing::info!(message = "Outbox recipient deferred.", recipient = ?rcpt, reply = %refusal.response);
                        pass.waiting += 1;
                    }
                }
            }
            write_progress(progress, &pass.done);
            if again.len() == pending.len() {
                pass.waiting += again.len();
                break;
            }
            pending = again;
        }
        client.quit().await;
        Ok(pass)
    }

    /// Delivers a non-delivery report for `refused` into the mailbox's inbox.
    fn report(
        &self,
        mailbox: &str,
        from: &str,
        message: &Message,
        refused: &[(EnvelopeRecipient, Diagnosis)],
    ) {
        let mut item = MailItem {
            message: message.clone(),
            ..MailItem::default()
        };
        item.envelope.from = from.to_string();
        item.envelope.recipients = refused.iter().map(|(r, _)| r.clone()).collect();
        item.trace.received_ms = crate::transport::delivery::now_ms();
        item.trace.vouched = true;
        let Some(report) = dsn::notification(
            &item,
            refused,
            dsn::Kind::Failed,
            &self.hostname,
            &self.organization.load().postmaster(),
        ) else {
            return;
        };
        let copy = StoredCopy::new(&report.message);
        match self.store.deliver(mailbox, "", from, &copy) {
            Ok(path) => {
                tracing::info!(message = "Outbox recipients refused; report delivered to the mailbox.", mailbox, refused = refused.len(), path = %path.display())
            }
            Err(e) => {
                tracing::error!(message = "Cannot deliver the report for refused outbox recipients.", mailbox, error = %e)
            }
        }
    }

    fn progress_file(&self, mailbox: &str, path: &Path) -> PathBuf {
        self.progress.join(mailbox).join(base_name(path))
    }

    fn move_to_sent(&self, mailbox: &str, path: &Path, recipients: usize) {
        let sent_dir = self.store.maildir(mailbox).join(".Sent").join("cur");
        let _ = std::fs::create_dir_all(&sent_dir);
        match std::fs::rename(path, sent_dir.join(format!("{}:2,S", base_name(path)))) {
            Ok(()) => tracing::info!(message = "Submitted from outbox.", mailbox, recipients),
            Err(e) => {
                tracing::error!(message = "Submitted, but could not move to Sent.", mailbox, error = %e)
            }
        }
    }

    fn refused(&self, path: &Path, why: &str) {
        tracing::warn!(message = "Outbox message refused; flagged in the outbox.", path = %path.display(), reason = why);
        if let Some(dir) = path.parent().and_then(Path::parent) {
            let _ = std::fs::create_dir_all(dir.join("cur"));
            let _ = std::fs::rename(
                path,
                dir.join("cur").join(format!("{}:2,F", base_name(path))),
            );
        }
    }
}

/// A Maildir file's unique name, without its flags.
fn base_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split(":2,").next().unwrap_or(&name).to_string()
}

/// The recipients already handed over, lower case.
fn read_progress(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Records the recipients handed over, durably (write aside, fsync, rename).
fn write_progress(path: &Path, done: &BTreeSet<String>) {
    let Some(dir) = path.parent() else { return };
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        for r in done {
            writeln!(file, "{r}")?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        tracing::error!(message = "Cannot record outbox progress.", path = %path.display(), error = %e);
    }
}

/// Messages waiting in an outbox: everything in `new/`, and unflagged messages in `cur/`.
pub(crate) fn pending(outbox: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(entries) = std::fs::read_dir(outbox.join(sub)) {
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                let flagged = name
                    .split_once(":2,")
                    .is_some_and(|(_, flags)| flags.contains('F'));
                if e.path().is_file() && !flagged && !name.starts_with('.') {
                    out.push(e.path());
                }
            }
        }
    }
    out.sort();
    out
}
