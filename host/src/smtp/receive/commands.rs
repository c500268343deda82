//! The SMTP verbs: each parses its arguments, checks the session state, raises its agent event
//! and answers with the right reply code and enhanced status code.

use super::session::{Raised, Session, Transaction};
use crate::message::{EnvelopeRecipient, MailItem, Message};
use mta_agent_sdk::{Action, DisconnectReason, Event, SmtpResponse};
use smtp_proto::{Error as ParseError, Request};
use std::borrow::Cow;

fn reply(code: u16, enhanced: &str, text: &str) -> SmtpResponse {
    SmtpResponse::new(code, enhanced, text).expect("static reply is valid")
}

impl Session {
    /// Handles one command line (`None`: a line refused while framing, already answered).
    pub(super) async fn command(&mut self, line: Option<Vec<u8>>) {
        let Some(line) = line else {
            self.raise_reject("", &reply(500, "5.5.2", "Syntax error"))
                .await;
            return;
        };
        let parsed = Request::parse(&mut line.iter());
        match parsed {
            Ok(request) => self.dispatch(request).await,
            Err(error) => {
                let verb = String::from_utf8_lossy(
                    line.split(|b| *b == b' ' || *b == b'\r')
                        .next()
                        .unwrap_or(&[]),
                )
                .to_ascii_uppercase();
                let response = match error {
                    ParseError::UnknownCommand => reply(500, "5.5.2", "Command unrecognized"),
                    ParseError::InvalidSenderAddress => {
                        reply(501, "5.1.7", "Bad sender address syntax")
                    }
                    ParseError::InvalidRecipientAddress => {
                        reply(501, "5.1.3", "Bad recipient address syntax")
                    }
                    ParseError::SyntaxError { syntax } => {
                        reply(501, "5.5.4", &format!("Syntax error, expected: {syntax}"))
                    }
                    ParseError::InvalidParameter { param } => {
                        reply(501, "5.5.4", &format!("Invalid parameter {param}"))
                    }
                    ParseError::UnsupportedParameter { param } => {
                        reply(555, "5.5.4", &format!("Unsupported parameter {param}"))
                    }
                    ParseError::ResponseTooLong => reply(500, "5.5.6", "Line too long"),
                    _ => reply(500, "5.5.2", "Syntax error"),
                };
                self.refuse(&verb, response).await;
            }
        }
    }

    /// A protocol error: counted, answered, and raised as OnReject.
    async fn refuse(&mut self, command: &str, response: SmtpResponse) {
        self.errors += 1;
        self.reply(&response);
        self.raise_reject(command, &response).await;
    }

    /// Applies what agents said about a command. `true` when they answered it (a reject, a
    /// fault) or the session is closing.
    pub(super) async fn answered_by_agents(&mut self, command: &str, raised: &Raised) -> bool {
        if raised.abandoned {
            self.reply(&reply(
                421,
                "4.3.0",
                "Temporary server error, closing connection",
            ));
            self.close = Some(DisconnectReason::Dropped);
            return true;
        }
        if raised.fault.is_some() {
            let response = reply(451, "4.3.0", "Temporary agent failure, try again later");
            self.reply(&response);
            self.raise_reject(command, &response).await;
            return true;
        }
        if raised.disconnect() {
            self.close = Some(DisconnectReason::Dropped);
            return true;
        }
        if let Some(response) = raised.rejection() {
            self.reply(&response);
            self.raise_reject(command, &response).await;
            return true;
        }
        false
    }

    async fn dispatch(&mut self, request: Request<Cow<'_, str>>) {
        match request {
            Request::Ehlo { host } => self.hello(host.into_owned(), true).await,
            Request::Helo { host } => self.hello(host.into_owned(), false).await,
            Request::Mail { from } => self.mail(from.into_owned()).await,
            Request::Rcpt { to } => self.rcpt(to.into_owned()).await,
            Request::Data => self.data().await,
            Request::Rset => {
                self.simple(Event::OnRsetCommand, "RSET", reply(250, "2.0.0", "OK"))
                    .await
            }
            Request::Noop { .. } => {
                self.simple(Event::OnNoopCommand, "NOOP", reply(250, "2.0.0", "OK"))
                    .await
            }
            Request::Help { .. } => {
                let help = reply(
                    214,
                    "2.0.0",
                    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP HELP VRFY QUIT",
                );
                self.simple(Event::OnHelpCommand, "HELP", help).await
            }
            Request::Quit => {
                self.reply(&reply(221, "2.0.0", "Bye"));
                self.close = Some(DisconnectReason::Quit);
            }
            Request::Vrfy { .. } => {
                if self.receiver.config.vrfy {
                    self.reply(&reply(
                        252,
                        "2.5.0",
                        "Cannot verify the user, but will accept the message",
                    ));
                } else {
                    self.reply(&reply(
                        252,
                        "2.5.0",
                        "VRFY is disabled; send some mail, I'll try my best",
                    ));
                }
            }
            Request::StartTls => self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response.into_owned()).await,
            Request::Bdat { .. } => {
                self.refuse("BDAT", reply(502, "5.5.1", "CHUNKING is not offered"))
                    .await
            }
            other => {
                let verb = other.name();
                self.refuse(
                    verb,
                    reply(502, "5.5.1", &format!("{verb} is not implemented")),
                )
                .await
            }
        }
    }

    async fn hello(&mut self, host: String, esmtp: bool) {
        let (event, verb) = if esmtp {
            (Event::OnEhloCommand, "EHLO")
        } else {
            (Event::OnHeloCommand, "HELO")
        };
        let raised = self.raise(event, vec![("domain", host.clone())]).await;
        if self.answered_by_agents(verb, &raised).await {
            return;
        }
        self.helo = Some(host);
        self.esmtp = esmtp;
        self.txn = None;
        // The EHLO reply carries keywords, never enhanced status codes (RFC 2034 section 3).
        let hostname = &self.receiver.config.hostname;
        let greeting = format!("{hostname} Hello [{}]", self.peer.ip());
        if esmtp {
            let max = self.receiver.config.max_message_size;
            let mut lines = vec![greeting, "PIPELINING".into(), format!("SIZE {max}")];
            lines.extend(
                ["8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN", "HELP"].map(String::from),
            );
            if self.offers_starttls() {
                lines.push("STARTTLS".into());
            }
            if self.offers_auth() {
                lines.push("AUTH PLAIN LOGIN".into());
            }
            self.reply_raw(250, &lines);
        } else {
            self.reply_raw(250, &[greeting]);
        }
    }

    async fn simple(&mut self, event: Event, verb: &str, ok: SmtpResponse) {
        let raised = self.raise(event, Vec::new()).await;
        if self.answered_by_agents(verb, &raised).await {
            return;
        }
        if event == Event::OnRsetCommand {
            self.txn = None;
        }
        self.reply(&ok);
    }

    async fn mail(&mut self, from: smtp_proto::MailFrom<String>) {
        if self.helo.is_none() {
            return self
                .refuse("MAIL", reply(503, "5.5.1", "Send EHLO or HELO first"))
                .await;
        }
        if self.txn.is_some() {
            return self
                .refuse("MAIL", reply(503, "5.5.1", "Nested MAIL command"))
                .await;
        }
        if !self.may_submit() {
            return self
                .refuse("MAIL", reply(530, "5.7.0", "Authentication required"))
                .await;
        }
        let max = self.receiver.config.max_message_size;
        if from.size > max {
            return self
                .refuse(
                    "MAIL",
                    reply(
                        552,
                        "5.3.4",
                        &format!("Message size exceeds fixed maximum message size of {max} bytes"),
                    ),
                )
                .await;
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            return self
                .refuse(
                    "MAIL",
                    reply(553, "5.6.7", "Non-ASCII sender address needs SMTPUTF8"),
                )
                .await;
        }
        let body = if from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0 {
            Some("8BITMIME")
        } else if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            Some("BINARYMIME")
        } else if from.flags & smtp_proto::MAIL_BODY_7BIT != 0 {
            Some("7BIT")
        } else {
            None
        };
        let ret = if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
            Some("FULL")
        } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
            Some("HDRS")
        } else {
            None
        };
        let mut args = vec![
            ("from", from.address.clone()),
            ("smtputf8", smtputf8.to_string()),
        ];
        if from.size > 0 {
            args.push(("size", from.size.to_string()));
        }
        if let Some(b) = body {
            args.push(("body", b.to_string()));
        }
        if let Some(e) = &from.env_id {
            args.push(("envid", e.clone()));
        }
        if let Some(r) = ret {
            args.push(("ret", r.to_string()));
        }
        let raised = self.raise(Event::OnMailCommand, args).await;
        if self.answered_by_agents("MAIL", &raised).await {
            return;
        }
        let mut item = MailItem::default();
        item.envelope.from = from.address;
        item.envelope.size = (from.size > 0).then_some(from.size as u64);
        item.envelope.body_type = body.map(str::to_string);
        item.envelope.ret = ret.map(str::to_string);
        item.envelope.envid = from.env_id;
        item.envelope.smtputf8 = smtputf8;
        self.txn = Some(Transaction { item });
        self.reply(&reply(250, "2.1.0", "Sender OK"));
    }

    async fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) {
        let Some(txn) = &self.txn else {
            return self
                .refuse("RCPT", reply(503, "5.5.1", "Need MAIL before RCPT"))
                .await;
        };
        if txn.item.envelope.recipients.len() >= self.receiver.config.max_recipients {
            return self
                .refuse("RCPT", reply(452, "4.5.3", "Too many recipients"))
                .await;
        }
        if !txn.item.envelope.smtputf8 && !to.address.is_ascii() {
            return self
                .refuse(
                    "RCPT",
                    reply(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8"),
                )
                .await;
        }
        if let Err(response) = self.receiver.policy.check(&to.address, self.may_relay()) {
            return self.refuse("RCPT", response).await;
        }
        let notify = notify_string(to.flags);
        // smtp-proto keeps ORCPT's address and drops its type, which can only be rfc822 there.
        let orcpt = to.orcpt.map(|o| format!("rfc822;{o}"));
        let mut args = vec![("recipient", to.address.clone())];
        if let Some(o) = &orcpt {
            args.push(("orcpt", o.clone()));
        }
        if let Some(n) = &notify {
            args.push(("notify", n.clone()));
        }
        let raised = self.raise(Event::OnRcptCommand, args).await;
        if self.answered_by_agents("RCPT", &raised).await {
            return;
        }
        if let Some(txn) = &mut self.txn {
            if !txn.item.has_recipient(&to.address) {
                txn.item.envelope.recipients.push(EnvelopeRecipient {
                    address: to.address,
                    orcpt,
                    notify,
                    routing_override: None,
                });
            }
        }
        self.reply(&reply(250, "2.1.5", "Recipient OK"));
    }

    async fn data(&mut self) {
        let Some(txn) = &self.txn else {
            return self
                .refuse("DATA", reply(503, "5.5.1", "Need MAIL before DATA"))
                .await;
        };
        if txn.item.envelope.recipients.is_empty() {
            return self
                .refuse("DATA", reply(554, "5.5.1", "No valid recipients"))
                .await;
        }
        let raised = self.raise(Event::OnDataCommand, Vec::new()).await;
        if self.answered_by_agents("DATA", &raised).await {
            return;
        }
        self.reply(
            &SmtpResponse::new(354, "", "Start mail input; end with <CRLF>.<CRLF>").expect("valid"),
        );
        if self.flush().await.is_err() {
            self.close = Some(DisconnectReason::SenderDisconnected);
            return;
        }
        let Some((raw, size)) = self.receive_data().await else {
            return;
        };
        let max = self.receiver.config.max_message_size;
        if size > max {
            self.txn = None;
            return self
                .refuse(
                    "DATA",
                    reply(
                        552,
                        "5.3.4",
                        &format!("Message size exceeds fixed maximum message size of {max} bytes"),
                    ),
                )
                .await;
        }
        self.end_of_data(raw).await;
    }

    /// Reads the message up to CRLF "." CRLF, unstuffing dots. Returns the bytes kept (none past
    /// the size limit) and the full size; `None` when the client went away.
    async fn receive_data(&mut self) -> Option<(Vec<u8>, usize)> {
        let mut receiver = smtp_proto::request::receiver::DataReceiver::new();
        // The receiver looks for CRLF "." CRLF: prime it with the CRLF that ended DATA, so an
        // empty message (a lone "." line) ends at once.
        let mut primer = Vec::new();
        receiver.ingest(&mut b"\r\n".iter(), &mut primer);
        let max = self.receiver.config.max_message_size;
        let mut message = Vec::new();
        let mut dropped = 0usize;
        loop {
            let input = self.take_input();
            let mut bytes = input.iter();
            let done = receiver.ingest(&mut bytes, &mut message);
            if message.len() > max {
                dropped += message.len();
                message.clear();
            }
            if done {
                let rest = bytes.as_slice().to_vec();
                self.put_back_input(&rest);
                return Some((message.clone(), dropped + message.len()));
            }
            if self.fill().await.is_err() {
                self.txn = None;
                self.close = Some(DisconnectReason::SenderDisconnected);
                return None;
            }
        }
    }

    async fn end_of_data(&mut self, raw: Vec<u8>) {
        let received = self.received_field();
        let Some(txn) = self.txn.as_mut() else { return };
        let mut message = Message::parse(&raw);
        message.prepend_header("Received", &received);
        // At OnEndOfHeaders agents see the header block only.
        let body = message.body().to_vec();
        message.set_body(Vec::new());
        txn.item.message = message;
        let mut discard = false;
        let raised = self.raise(Event::OnEndOfHeaders, Vec::new()).await;
        if let Some(txn) = self.txn.as_mut() {
            txn.item.message.set_body(body);
        }
        if self.message_answered(&raised, &mut discard).await {
            return;
        }
        let raised = self.raise(Event::OnEndOfData, Vec::new()).await;
        if self.message_answered(&raised, &mut discard).await {
            return;
        }
        let Some(txn) = self.txn.take() else { return };
        if discard {
            tracing::info!(message = "Message discarded by an agent.");
            self.reply(&reply(250, "2.6.0", "Queued mail for delivery"));
            return;
        }
        match self.receiver.sink.accept(txn.item).await {
            Ok(accepted) => self.reply(&accepted),
            Err(response) => {
                self.reply(&response);
                self.raise_reject("DATA", &response).await;
            }
        }
    }

    /// Applies an end-of-message event's outcome: reject, fault, discard, quarantine.
    async fn message_answered(&mut self, raised: &Raised, discard: &mut bool) -> bool {
        if self.answered_by_agents("DATA", raised).await {
            self.txn = None;
            return true;
        }
        for action in &raised.actions {
            match action {
                Action::Discard => *discard = true,
                Action::Quarantine(reason) => {
                    if let Some(txn) = self.txn.as_mut() {
                        txn.item.quarantine = Some(reason.clone());
                    }
                }
                _ => {}
            }
        }
        false
    }

    fn received_field(&self) -> String {
        let with = match (self.esmtp, self.tls, self.authenticated.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        format!(
            "from {} ([{}]) by {} with {with} id {}-{}; {}",
            self.helo.as_deref().unwrap_or("unknown"),
            self.peer.ip(),
            self.receiver.config.hostname,
            self.receiver.config.service,
            self.id,
            crate::message::date::rfc2822_now()
        )
    }
}

fn notify_string(flags: u64) -> Option<String> {
    if flags & smtp_proto::RCPT_NOTIFY_NEVER != 0 {
        return Some("NEVER".into());
    }
    let mut parts = Vec::new();
    if flags & smtp_proto::RCPT_NOTIFY_SUCCESS != 0 {
        parts.push("SUCCESS");
    }
    if flags & smtp_proto::RCPT_NOTIFY_FAILURE != 0 {
        parts.push("FAILURE");
    }
    if flags & smtp_proto::RCPT_NOTIFY_DELAY != 0 {
        parts.push("DELAY");
    }
    (!parts.is_empty()).then(|| parts.join(","))
}
