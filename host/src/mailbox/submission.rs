//! Mailbox Transport submission: messages a user puts in a mailbox's outbox (the `.Outbox`
//! Maildir folder) are submitted over SMTP to the Transport service, then moved to `.Sent`.
//!
//! The envelope comes from the header fields, as for the pickup directory; the sender is the
//! mailbox's own address unless `From` names another address in our domains. `Bcc` is removed.
//! A message stays in the outbox until Transport answered 250, so nothing is lost if Transport
//! is down; a permanent refusal leaves it in the outbox's `cur/` flagged (`:2,F`) and logged.

use crate::directories::pickup::addresses;
use crate::mailbox::store::MailboxStore;
use crate::organization::Organization;
use crate::smtp::send::Client;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Polls every mailbox's outbox.
pub struct OutboxSubmission {
    /// The mailboxes.
    pub store: Arc<MailboxStore>,
    /// Mailbox names.
    pub mailboxes: Vec<String>,
    /// Our domains.
    pub organization: Arc<Organization>,
    /// Where Transport listens.
    pub transport: String,
    /// Our name, for EHLO.
    pub hostname: String,
}

impl OutboxSubmission {
    /// Runs until shutdown, polling every `interval`.
    pub async fn run(self, interval: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            for mailbox in &self.mailboxes {
                let outbox = self.store.maildir(mailbox).join(".Outbox");
                for path in pending(&outbox) {
                    self.submit(mailbox, &path).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    async fn submit(&self, mailbox: &str, path: &Path) {
        let Ok(raw) = std::fs::read(path) else { return };
        let own = format!(
            "{mailbox}@{}",
            self.organization
                .domains()
                .first()
                .map(String::as_str)
                .unwrap_or("localhost")
        );
        let Some(parsed) = mail_parser::MessageParser::default().parse_headers(&raw) else {
            return self.refused(path, "not a message");
        };
        let from = addresses(&parsed, "From")
            .into_iter()
            .next()
            .filter(|a| self.organization.mailbox_of(a).as_deref() == Some(mailbox))
            .unwrap_or(own);
        let mut recipients: Vec<(String, String)> = Vec::new();
        for field in ["To", "Cc", "Bcc"] {
            for a in addresses(&parsed, field) {
                if !recipients.iter().any(|(r, _)| r.eq_ignore_ascii_case(&a)) {
                    recipients.push((a, String::new()));
                }
            }
        }
        if recipients.is_empty() {
            return self.refused(path, "no recipient in To, Cc or Bcc");
        }
        let mut message = crate::message::Message::parse(&raw);
        message.remove_header("Bcc");
        let result = async {
            let mut client =
                Client::connect(&self.transport, &self.hostname, Duration::from_secs(60)).await?;
            let sent = client
                .send_mail(&from, "", &recipients, &message.to_bytes())
                .await;
            client.quit().await;
            sent
        }
        .await;
        match result {
            Ok(sent) if sent.data.as_ref().is_some_and(|r| r.is_success()) => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let base = name.split(":2,").next().unwrap_or(&name).to_string();
                let sent_dir = self.store.maildir(mailbox).join(".Sent").join("cur");
                let _ = std::fs::create_dir_all(&sent_dir);
                match std::fs::rename(path, sent_dir.join(format!("{base}:2,S"))) {
                    Ok(()) => tracing::info!(
                        message = "Submitted from outbox.",
                        mailbox,
                        recipients = recipients.len()
                    ),
                    Err(e) => {
                        tracing::error!(message = "Submitted, but could not move to Sent.", mailbox, error = %e)
                    }
                }
            }
            Ok(sent) => {
                let reply = sent
                    .data
                    .or_else(|| sent.recipients.into_iter().find_map(|(_, r)| r.err()));
                match reply {
                    Some(r) if r.is_permanent() => self.refused(path, &r.to_string()),
                    other => {
                        tracing::warn!(message = "Outbox submission deferred.", mailbox, reply = ?other.map(|r| r.to_string()))
                    }
                }
            }
            Err(e) if e.is_permanent() => self.refused(path, &e.to_string()),
            Err(e) => tracing::warn!(message = "Outbox submission deferred.", mailbox, error = %e),
        }
    }

    fn refused(&self, path: &Path, why: &str) {
        tracing::warn!(message = "Outbox message refused; flagged in the outbox.", path = %path.display(), reason = why);
        if let (Some(dir), Some(name)) = (path.parent().and_then(Path::parent), path.file_name()) {
            let name = name.to_string_lossy();
            let base = name.split(":2,").next().unwrap_or(&name);
            let _ = std::fs::create_dir_all(dir.join("cur"));
            let _ = std::fs::rename(path, dir.join("cur").join(format!("{base}:2,F")));
        }
    }
}

/// Messages waiting in an outbox: everything in `new/`, and unflagged messages in `cur/`.
fn pending(outbox: &Path) -> Vec<PathBuf> {
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
