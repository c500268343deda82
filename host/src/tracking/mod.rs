//! The message tracking log (Exchange's message tracking, Postfix's one line per event with
//! the queue id): one JSON object per line under `<data_dir>/tracking/`, a file per day (UTC),
//! kept `[tracking] days`.
//!
//! Every place that moves a message records what happened with [`record`]: it never blocks
//! and never fails the mail. Records go through a bounded channel to one writer thread; when
//! the channel is full (the disk stalls), records are dropped and counted rather than holding
//! a session or growing memory. The log is an account for the operator, not part of the
//! queue's durability: it is written without fsync.

mod query;
mod writer;

pub use query::{queued_id, read_records, stories, Filter, Story};

use crate::message::MailItem;
use crate::service::Service;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::SystemTime;

/// Exchange's event ids, plus REJECT for refusals in the SMTP session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventId {
    /// A message was received (SMTP, a directory, an agent, a report of this host).
    Receive,
    /// A message was refused during the SMTP session (MAIL, RCPT or DATA).
    Reject,
    /// A mailbox's outbox handed a message to Transport.
    Submit,
    /// An agent acted on the message (the agent and what it did are in `detail`).
    Agentinfo,
    /// A routing agent changed a recipient's routing domain.
    Resolve,
    /// A routing agent expanded a recipient into others.
    Expand,
    /// A routing agent replaced a recipient.
    Redirect,
    /// A copy was split off (a fork, or a bifurcation by next hop): `related` names it.
    Transfer,
    /// A delivery attempt failed temporarily; it will be retried.
    Defer,
    /// Delivered to a mailbox (Maildir) or by a delivery agent.
    Deliver,
    /// Handed to the next hop over SMTP or to a drop directory.
    Send,
    /// A recipient failed permanently.
    Fail,
    /// A delivery status notification was generated: `related` is its queue id.
    Dsn,
    /// The message was moved to the Poison queue.
    Poisonmessage,
    /// The message was deleted (by an agent, or expired without a report).
    Drop,
    /// A directory file could not be read as a message and was renamed `.bad`.
    Badmail,
    /// An operator released the message from Poison or quarantine into the Submission queue.
    Resubmit,
}

impl EventId {
    /// The id as the log spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receive => "RECEIVE",
            Self::Reject => "REJECT",
            Self::Submit => "SUBMIT",
            Self::Agentinfo => "AGENTINFO",
            Self::Resolve => "RESOLVE",
            Self::Expand => "EXPAND",
            Self::Redirect => "REDIRECT",
            Self::Transfer => "TRANSFER",
            Self::Defer => "DEFER",
            Self::Deliver => "DELIVER",
            Self::Send => "SEND",
            Self::Fail => "FAIL",
            Self::Dsn => "DSN",
            Self::Poisonmessage => "POISONMESSAGE",
            Self::Drop => "DROP",
            Self::Badmail => "BADMAIL",
            Self::Resubmit => "RESUBMIT",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s names, in any case.
    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_ascii_uppercase())).ok()
    }
}

/// One tracking record. Fields that do not apply to an event are left out of the line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When, as RFC 3339 in UTC with milliseconds.
    pub time: String,
    /// What happened.
    pub event: Option<EventId>,
    /// Which service recorded it.
    pub service: String,
    /// The Transport queue id (empty where there is none yet: the Front End, a refusal).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub queue_id: String,
    /// The Message-ID field, if the message has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The envelope sender (empty for the null sender).
    #[serde(default)]
    pub sender: String,
    /// The recipients the event is about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// The message's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Where it came from: SMTP, PICKUP, REPLAY, AGENT, OUTBOX, DSN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The original client's address (through a Front End, the one it named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The name the client gave in HELO or EHLO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helo: Option<String>,
    /// The authenticated user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
    /// Whether the session was encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// The connector or queue involved (a receive service, a send connector, a delivery queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
    /// The next hop (a smart host, an MX host, a mailbox path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<String>,
    /// The SMTP reply given or received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The agent involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Why, or what (free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Another queue id the event links to (the fork's copy, the report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related: Option<String>,
    /// When the service took the message (ms since the epoch; 0: unknown), for the delivery
    /// latency metric. Not logged: the RECEIVE record says it.
    #[serde(skip)]
    pub received_ms: u64,
}

impl Record {
    /// A record of `event` by `service`, now. Without a tracking log (`[tracking] enabled =
    /// false`, one-shot commands) a record only feeds the metrics (event, service, connector,
    /// received time), so what only the log shows is not built.
    pub fn new(event: EventId, service: Service) -> Self {
        Self {
            time: if enabled() {
                crate::message::date::rfc3339(SystemTime::now())
            } else {
                String::new()
            },
            event: Some(event),
            service: service.as_str().to_string(),
            ..Self::default()
        }
    }

    /// A record of `event` about `item`: its queue id, Message-ID, sender, every recipient
    /// and size.
    pub fn item(event: EventId, service: Service, item: &MailItem) -> Self {
        let mut record = Self::new(event, service);
        record.received_ms = item.trace.received_ms;
        if !enabled() {
            return record;
        }
        record.queue_id = match service {
            // Mailbox Transport's own ids are per session; its records carry the id of the
            // Transport queue the message came from, so they join that message's story.
            Service::Mailbox => upstream_id(item).unwrap_or_default(),
            // The Front End's ids are per session too; its reply names Transport's.
            Service::FrontEnd => String::new(),
            _ => item.id.clone(),
        };
        record.message_id = item
            .message
            .header("Message-ID")
            .map(|v| v.trim().to_string());
        record.sender = item.envelope.from.clone();
        record.recipients = item
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.clone())
            .collect();
        record.size = Some(item.message.len() as u64);
        record
    }

    /// The same record about only `recipients`.
    pub fn to<'a>(mut self, recipients: impl IntoIterator<Item = &'a str>) -> Self {
        if enabled() {
            self.recipients = recipients.into_iter().map(str::to_string).collect();
        }
        self
    }

    /// Sets the reply.
    pub fn reply(mut self, reply: impl ToString) -> Self {
        if enabled() {
            self.reply = Some(reply.to_string().trim_end().to_string());
        }
        self
    }

    /// Sets the detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        if enabled() {
            self.detail = Some(detail.into());
        }
        self
    }

    /// Sets the source.
    pub fn source(mut self, source: &str) -> Self {
        self.source = Some(source.to_string());
        self
    }

    /// Sets the connector or queue.
    pub fn connector(mut self, connector: impl Into<String>) -> Self {
        self.connector = Some(connector.into());
        self
    }

    /// Sets the next hop.
    pub fn next_hop(mut self, next_hop: impl Into<String>) -> Self {
        self.next_hop = Some(next_hop.into());
        self
    }

    /// Sets the related queue id.
    pub fn related(mut self, related: impl Into<String>) -> Self {
        self.related = Some(related.into());
        self
    }

    /// Sets the agent.
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = Some(agent.into());
        self
    }

    /// Counts the record in the metrics, and writes it to the tracking log, if one is open.
    pub fn write(self) {
        crate::metrics::global()
            .messages
            .tracked(&self, self.received_ms);
        record(self);
    }
}

/// The id the hop before this one gave the message: the first Received field's `id` that is
/// not the item's own.
fn upstream_id(item: &MailItem) -> Option<String> {
    item.message
        .fields()
        .iter()
        .filter(|f| f.name().eq_ignore_ascii_case("Received"))
        .filter_map(|f| {
            let value = f.value();
            let mut words = value.split_whitespace();
            words.find(|w| *w == "id")?;
            let id = words.next()?.trim_end_matches(';').to_string();
            (!id.is_empty() && id != item.id && !id.ends_with(';')).then_some(id)
        })
        .next()
}

static LOG: OnceLock<writer::Writer> = OnceLock::new();

/// Opens the tracking log under `dir`, keeping `days` days of files. Later calls do nothing.
pub fn install(dir: std::path::PathBuf, days: u32) -> std::io::Result<()> {
    if LOG.get().is_some() {
        return Ok(());
    }
    let writer = writer::Writer::start(dir, days)?;
    let _ = LOG.set(writer);
    Ok(())
}

/// Whether a tracking log is open: records are written.
pub fn enabled() -> bool {
    LOG.get().is_some()
}

/// Records an event; does nothing when no tracking log is open (one-shot commands, tests of
/// parts).
pub fn record(record: Record) {
    if let Some(log) = LOG.get() {
        log.send(record);
    }
}

/// Waits until every record made so far is written (at shutdown).
pub fn flush() {
    if let Some(log) = LOG.get() {
        log.flush();
    }
}
