//! DATA and the message: the data is received up to CRLF "." CRLF; what can be known about the
//! message in the session is decided in the session (its size, a routing loop), never accepted
//! and bounced later; then the trace fields, OnEndOfHeaders, OnEndOfData and the sink.
//!
//! A body past the spool threshold is not kept: once the header block has ended, the body is
//! handed to the shell a piece at a time ([`Effect::Spool`]), which writes it to a spool file,
//! so a session holds at most about the threshold and a piece, whatever the message's size.

use super::{Effect, Mode, Pending, Raised, Session, SpoolChunk, Spooling};
use crate::message::body::{MessageBody, CHUNK};
use crate::message::file::MAX_HEADER;
use crate::message::{header_end, Message};
use crate::smtp::data::DataReceiver;
use crate::smtp::reply;
use crate::tracking::EventId;
use mta_agent_sdk::{Action, Event, SmtpResponse};

/// More Received fields than this is a routing loop (RFC 5321 6.3).
pub const MAX_HOPS: usize = 20;

/// The refusal of a header block larger than [`MAX_HEADER`].
fn header_too_large() -> mta_agent_sdk::SmtpResponse {
    reply(
        552,
        "5.3.4",
        &format!("Message header size exceeds fixed maximum size of {MAX_HEADER} bytes"),
    )
}

impl Session {
    pub(super) fn data(&mut self) -> Option<Effect> {
        let Some(txn) = &self.txn else {
            self.refuse("DATA", reply(503, "5.5.1", "Need MAIL before DATA"));
            return None;
        };
        if txn.item.envelope.recipients.is_empty() {
            let code = if self.config.lmtp { 503 } else { 554 };
            self.refuse("DATA", reply(code, "5.5.1", "No valid recipients"));
            return None;
        }
        self.raise(Event::OnDataCommand, Vec::new(), Pending::DataAgents)
    }

    pub(super) fn data_answered(&mut self, raised: Raised) -> Option<Effect> {
        if self.answered_by_agents("DATA", &raised) {
            return None;
        }
        self.pending = Some(Pending::DataSink);
        Some(Effect::Data)
    }

    /// The answer to [`Effect::Data`]: go ahead (354), or the sink's refusal.
    pub fn data_done(&mut self, result: Result<(), SmtpResponse>) {
        let pending = self.pending.take();
        debug_assert!(matches!(pending, Some(Pending::DataSink)), "{pending:?}");
        match result {
            Ok(()) => {
                if let Some(txn) = self.txn.as_mut() {
                    txn.data_started = true;
                }
                self.output
                    .extend_from_slice(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n");
                self.mode = Mode::Data {
                    receiver: DataReceiver::new(),
                    message: Vec::new(),
                    size: 0,
                    spooling: Spooling::default(),
                };
            }
            Err(response) => self.refuse_uncounted("DATA", response),
        }
    }

    /// Feeds buffered input to the data receiver. `None` when more input is needed; once the
    /// end of the data is found (or a piece of the body is ready for the spool), what follows.
    pub(super) fn data_input(&mut self) -> Option<Option<Effect>> {
        let spool = self.config.spool;
        let piece = spool.unwrap_or(CHUNK).clamp(1, CHUNK);
        let max = self.config.max_message_size;
        let Mode::Data {
            receiver,
            message,
            size,
            spooling,
        } = &mut self.mode
        else {
            return Some(None);
        };
        let before = message.len();
        let end = receiver.feed(&self.input, message);
        *size += message.len() - before;
        if *size > max || spooling.refusal.is_some() {
            // Past the limit (or after a failure) nothing more is kept; only the size is
            // counted. The shell drops its spool file when the transaction ends.
            spooling.head = None;
            message.clear();
            message.shrink_to_fit();
        } else if spool
            .is_some_and(|threshold| spooling.head.is_none() && message.len() > threshold)
        {
            match header_end(message) {
                Some(at) if at <= MAX_HEADER => {
                    let body = message.split_off(at);
                    spooling.head = Some(std::mem::replace(message, body));
                }
                Some(_) => {
                    spooling.refusal = Some(header_too_large());
                    message.clear();
                }
                None if message.len() > MAX_HEADER => {
                    spooling.refusal = Some(header_too_large());
                    message.clear();
                }
                None => {}
            }
        }
        let Some(taken) = end else {
            self.input.clear();
            if spooling.head.is_some() && message.len() >= piece {
                let piece = std::mem::take(message);
                self.pending = Some(Pending::Spool(None));
                return Some(Some(Effect::Spool(SpoolChunk::Write(piece))));
            }
            return None;
        };
        self.input.drain(..taken);
        let (message, size, spooling) = (std::mem::take(message), *size, std::mem::take(spooling));
        self.mode = Mode::Command;
        if let Some(refusal) = spooling.refusal.filter(|_| size <= max) {
            self.refuse_uncounted("DATA", refusal);
            return Some(self.end_transaction());
        }
        if let Some(head) = spooling.head {
            self.pending = Some(Pending::Spool(Some((head, size))));
            return Some(Some(Effect::Spool(SpoolChunk::Finish(message))));
        }
        Some(self.end_of_data(message, None, size))
    }

    /// The answer to [`Effect::Spool`]: the body once it was the last piece.
    pub fn spool_done(&mut self, result: std::io::Result<Option<MessageBody>>) {
        let Some(Pending::Spool(last)) = self.pending.take() else {
            debug_assert!(false, "spool_done without a spool write");
            return;
        };
        let storage = |e: &std::io::Error| {
            tracing::error!(message = "Cannot spool a message body.", error = %e);
            if e.raw_os_error() == Some(28) {
                reply(452, "4.3.1", "Insufficient system storage")
            } else {
                reply(451, "4.3.0", "Cannot store the message, try again later")
            }
        };
        match (last, result) {
            (None, Ok(_)) => {}
            (None, Err(e)) => {
                if let Mode::Data {
                    spooling, message, ..
                } = &mut self.mode
                {
                    spooling.refusal = Some(storage(&e));
                    spooling.head = None;
                    message.clear();
                }
            }
            (Some((head, size)), Ok(Some(body))) => {
                let effect = self.end_of_data(head, Some(body), size);
                self.resume_with(effect);
            }
            (Some(_), result) => {
                let e = result
                    .err()
                    .unwrap_or_else(|| std::io::Error::other("no body from the spool"));
                self.refuse_uncounted("DATA", storage(&e));
                let effect = self.end_transaction();
                self.resume_with(effect);
            }
        }
    }

    /// The message has arrived: refuse what can be refused now, add the trace fields, raise
    /// OnEndOfHeaders with the header block only.
    fn end_of_data(
        &mut self,
        raw: Vec<u8>,
        spooled: Option<MessageBody>,
        size: usize,
    ) -> Option<Effect> {
        if size > self.config.max_message_size {
            self.refuse_uncounted(
                "DATA",
                reply(
                    552,
                    "5.3.4",
                    &format!(
                        "Message size exceeds fixed maximum message size of {} bytes",
                        self.config.max_message_size
                    ),
                ),
            );
            return self.end_transaction();
        }
        let mut message = match spooled {
            Some(body) => Message::with_body(&raw, body),
            None => Message::parse(&raw),
        };
        drop(raw);
        if message.count("Received") > MAX_HOPS {
            self.refuse_uncounted(
                "DATA",
                reply(
                    554,
                    "5.4.6",
                    "Routing loop detected: too many Received fields",
                ),
            );
            return self.end_transaction();
        }
        let received = self.received_field();
        let _ = message.prepend_header("Received", &received);
        if self.client.authenticated.is_some() {
            // A submission (RFC 6409 8.2, 8.3): the fields a message must have.
            if message.header("Date").is_none() {
                let _ = message.add_header("Date", &crate::message::date::rfc2822_now());
            }
            if message.header("Message-ID").is_none() {
                let id = crate::message::new_message_id(&self.config.hostname);
                let _ = message.add_header("Message-ID", &id);
            }
        }
        let body = message.take_body();
        let txn = self.txn.as_mut()?;
        txn.item.message = message;
        self.discard = false;
        self.raise(
            Event::OnEndOfHeaders,
            Vec::new(),
            Pending::EndOfHeaders(body),
        )
    }

    pub(super) fn end_of_headers_answered(
        &mut self,
        raised: Raised,
        body: MessageBody,
    ) -> Option<Effect> {
        if let Some(txn) = self.txn.as_mut() {
            txn.item.message.set_content(body);
        }
        if let Some(effect) = self.message_answered(&raised) {
            return effect;
        }
        self.raise(Event::OnEndOfData, Vec::new(), Pending::EndOfData)
    }

    pub(super) fn end_of_data_answered(&mut self, raised: Raised) -> Option<Effect> {
        if let Some(effect) = self.message_answered(&raised) {
            return effect;
        }
        if self.discard {
            tracing::info!(message = "Message discarded by an agent.");
            let item = self.txn.as_ref().map(|t| &t.item);
            self.tracking_record(EventId::Drop, item)
                .detail("discarded by an SMTP receive agent")
                .write();
            self.line(250, "2.6.0", "Queued mail for delivery");
            return self.end_transaction();
        }
        let txn = self.txn.as_mut()?;
        let item = std::mem::take(&mut txn.item);
        let replies = if self.config.lmtp {
            item.envelope.recipients.len().max(1)
        } else {
            1
        };
        let record = self.tracking_record(EventId::Receive, Some(&item));
        self.pending = Some(Pending::Message(replies, Box::new(record)));
        Some(Effect::Message(Box::new(item)))
    }

    /// Applies an end-of-message event's outcome: a reject or fault ends the transaction
    /// (`Some`, with the effect that tells the sink); discard and quarantine are noted.
    fn message_answered(&mut self, raised: &Raised) -> Option<Option<Effect>> {
        if self.answered_by_agents("DATA", raised) {
            return Some(self.end_transaction());
        }
        for action in &raised.actions {
            match action {
                Action::Discard => self.discard = true,
                Action::Quarantine(reason) => {
                    if let Some(txn) = self.txn.as_mut() {
                        txn.item.quarantine = Some(reason.clone());
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// The answer to [`Effect::Message`]: one reply (SMTP), or one per recipient in the order
    /// they were accepted (LMTP). A missing reply is a temporary failure.
    pub fn message_done(&mut self, replies: Vec<SmtpResponse>) {
        let Some(Pending::Message(wanted, record)) = self.pending.take() else {
            debug_assert!(false, "message_done without a message");
            return;
        };
        self.txn = None;
        let missing = reply(
            451,
            "4.3.0",
            "No answer for this recipient, try again later",
        );
        for i in 0..wanted {
            let response = replies.get(i).unwrap_or(&missing).clone();
            let mut tracked = (*record).clone();
            if self.config.lmtp {
                tracked.recipients = record.recipients.get(i).cloned().into_iter().collect();
            }
            if response.is_success() {
                tracked.reply(&response).write();
                self.reply(&response);
            } else {
                tracked.event = Some(EventId::Reject);
                tracked.reply(&response).detail("DATA").write();
                self.refuse_untracked("DATA", response);
            }
        }
    }

    /// This hop's Received field (RFC 5321 4.4), with the protocol names of RFC 3848 and 6531.
    fn received_field(&self) -> String {
        let smtputf8 = self.txn.as_ref().is_some_and(|t| t.item.envelope.smtputf8);
        let with = protocol_name(
            self.config.lmtp,
            self.client.esmtp,
            smtputf8,
            self.client.tls,
            self.client.authenticated.is_some(),
        );
        let id = self.txn.as_ref().map(|t| t.id.as_str()).unwrap_or("");
        let single = self
            .txn
            .as_ref()
            .and_then(|t| match t.item.envelope.recipients.as_slice() {
                [only] => Some(only.address.clone()),
                _ => None,
            });
        let mut field = format!(
            "from {} ([{}]) by {} with {with} id {id}",
            self.client.helo.as_deref().unwrap_or("unknown"),
            self.client.peer.ip(),
            self.config.hostname,
        );
        if let Some(rcpt) = single {
            field.push_str(&format!(" for <{rcpt}>"));
        }
        field.push_str(&format!("; {}", crate::message::date::rfc2822_now()));
        field
    }
}

/// The `with` protocol name of a Received field: SMTP, ESMTP or UTF8SMTP (RFC 6531), with `S`
/// for TLS and `A` for an authenticated client (RFC 3848); LMTP between this host's services.
fn protocol_name(
    lmtp: bool,
    esmtp: bool,
    smtputf8: bool,
    tls: bool,
    authenticated: bool,
) -> String {
    let base = match (lmtp, esmtp, smtputf8) {
        (true, _, _) => "LMTP",
        (false, false, _) => "SMTP",
        (false, true, true) => "UTF8SMTP",
        (false, true, false) => "ESMTP",
    };
    let extended = base != "SMTP";
    let suffix = match (extended && tls, extended && authenticated) {
        (false, false) => "",
        (true, false) => "S",
        (false, true) => "A",
        (true, true) => "SA",
    };
    format!("{base}{suffix}")
}

#[cfg(test)]
mod protocol_names {
    use super::protocol_name;

    #[test]
    fn received_fields_name_the_protocol_as_rfc_3848_and_6531_say() {
        // (lmtp, esmtp, smtputf8, tls, authenticated) -> with
        let table = [
            ((false, false, false, false, false), "SMTP"),
            ((false, false, false, true, true), "SMTP"),
            ((false, true, false, false, false), "ESMTP"),
            ((false, true, false, true, false), "ESMTPS"),
            ((false, true, false, false, true), "ESMTPA"),
            ((false, true, false, true, true), "ESMTPSA"),
            ((false, true, true, false, false), "UTF8SMTP"),
            ((false, true, true, true, false), "UTF8SMTPS"),
            ((false, true, true, false, true), "UTF8SMTPA"),
            ((false, true, true, true, true), "UTF8SMTPSA"),
            ((true, true, false, false, false), "LMTP"),
            ((true, true, true, true, true), "LMTPSA"),
        ];
        for ((lmtp, esmtp, utf8, tls, auth), want) in table {
            assert_eq!(
                protocol_name(lmtp, esmtp, utf8, tls, auth),
                want,
                "{lmtp} {esmtp} {utf8} {tls} {auth}"
            );
        }
    }
}
