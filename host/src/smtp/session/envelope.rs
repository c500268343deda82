//! MAIL FROM and RCPT TO: each checks the session, raises its agent event, then hands the
//! envelope to the sink (the Front End relays it to Transport there), and answers with the
//! sink's verdict, so a refusal anywhere reaches the client at the command that caused it.
//!
//! RCPT TO checks the command itself (a transaction, the recipient limit, SMTPUTF8) first, then
//! raises OnRcptCommand, and only then checks the recipient against the organization and the
//! relay rule: agents may answer for recipients the host does not know (aliases, catch-alls,
//! address rewriting), and what they leave is checked like what a client sends.

use super::{Effect, MailRequest, Pending, Raised, Session, Transaction};
use crate::message::parameters::Orcpt;
use crate::message::{EnvelopeRecipient, MailItem};
use crate::smtp::command::{MailFrom, RcptTo};
use crate::smtp::reply;
use mta_agent_sdk::{Action, Event, SmtpResponse};

impl Session {
    pub(super) fn mail(&mut self, from: MailFrom) -> Option<Effect> {
        self.subject.sender = Some(from.address.clone());
        let refusal = if self.client.helo.is_none() {
            Some(reply(503, "5.5.1", "Send EHLO or HELO first"))
        } else if self.txn.is_some() {
            Some(reply(503, "5.5.1", "Nested MAIL command"))
        } else if !self.may_submit() {
            Some(reply(530, "5.7.0", "Authentication required"))
        } else if from.size.unwrap_or(0) > self.config.max_message_size as u64 {
            Some(reply(
                552,
                "5.3.4",
                &format!(
                    "Message size exceeds fixed maximum message size of {} bytes",
                    self.config.max_message_size
                ),
            ))
        } else if !from.smtputf8 && !from.address.is_ascii() {
            Some(reply(
                553,
                "5.6.7",
                "Non-ASCII sender address needs SMTPUTF8",
            ))
        } else {
            None
        };
        if let Some(response) = refusal {
            self.refuse("MAIL", response);
            return None;
        }
        let mut args = vec![
            ("from", from.address.clone()),
            ("smtputf8", from.smtputf8.to_string()),
        ];
        if let Some(size) = from.size.filter(|s| *s > 0) {
            args.push(("size", size.to_string()));
        }
        if let Some(body) = from.body {
            args.push(("body", body.as_str().to_string()));
        }
        if let Some(envid) = &from.envid {
            args.push(("envid", envid.clone()));
        }
        if let Some(ret) = from.ret {
            args.push(("ret", ret.as_str().to_string()));
        }
        self.raise(Event::OnMailCommand, args, Pending::Mail(from))
    }

    pub(super) fn mail_answered(&mut self, raised: Raised, from: MailFrom) -> Option<Effect> {
        if self.answered_by_agents("MAIL", &raised) {
            return None;
        }
        let mut item = MailItem::default();
        item.envelope.from = from.address.clone();
        item.envelope.size = from.size.filter(|s| *s > 0);
        item.envelope.body_type = from.body;
        item.envelope.ret = from.ret;
        item.envelope.envid = from.envid.clone();
        item.envelope.smtputf8 = from.smtputf8;
        item.trace.vouched = self.client.authenticated.is_some() || self.trusted_server();
        self.txn = Some(Transaction {
            item,
            id: String::new(),
            data_started: false,
        });
        self.pending = Some(Pending::MailSink);
        Some(Effect::Mail(MailRequest {
            from,
            client: self.client.clone(),
            may_relay: self.may_relay(),
            trusted: self.trusted_server(),
        }))
    }

    /// The answer to [`Effect::Mail`]: the transaction's id, or the sink's refusal.
    pub fn mail_done(&mut self, result: Result<String, SmtpResponse>) {
        let pending = self.pending.take();
        debug_assert!(matches!(pending, Some(Pending::MailSink)), "{pending:?}");
        match result {
            Ok(id) => {
                // Transport names the queue id it gave the transaction, as it does after the
                // data: a Front End relaying the session learns it here, before its agents
                // see the recipients, so its records (pipeline snapshots) join Transport's.
                let text = if self.config.service == crate::service::Service::Transport {
                    format!("<{id}> Sender OK")
                } else {
                    "Sender OK".to_string()
                };
                if let Some(txn) = self.txn.as_mut() {
                    txn.item.id = id.clone();
                    txn.id = id;
                }
                self.line(250, "2.1.0", &text);
            }
            Err(response) => {
                self.txn = None;
                self.refuse_uncounted("MAIL", response);
            }
        }
    }

    pub(super) fn rcpt(&mut self, to: RcptTo) -> Option<Effect> {
        self.subject.recipient = Some(to.address.clone());
        let Some(txn) = &self.txn else {
            self.refuse("RCPT", reply(503, "5.5.1", "Need MAIL before RCPT"));
            return None;
        };
        let smtputf8 = txn.item.envelope.smtputf8;
        if txn.item.envelope.recipients.len() >= self.config.max_recipients {
            // Not the client's error: it sends the rest in another transaction (RFC 5321
            // 4.5.3.1.10).
            self.refuse_uncounted("RCPT", reply(452, "4.5.3", "Too many recipients"));
            return None;
        }
        let address = if to.address.eq_ignore_ascii_case("postmaster") {
            self.config.postmaster.clone()
        } else {
            to.address
        };
        if !smtputf8 && !address.is_ascii() {
            self.refuse(
                "RCPT",
                reply(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8"),
            );
            return None;
        }
        if txn.item.has_recipient(&address) {
            self.line(250, "2.1.5", "Recipient OK");
            return None;
        }
        let rcpt = EnvelopeRecipient {
            address,
            orcpt: to.orcpt,
            notify: to.notify,
            ..EnvelopeRecipient::default()
        };
        let mut args = vec![("recipient", rcpt.address.clone())];
        if let Some(o) = &rcpt.orcpt {
            args.push(("orcpt", o.to_string()));
        }
        if let Some(n) = &rcpt.notify {
            args.push(("notify", n.to_string()));
        }
        self.raise(Event::OnRcptCommand, args, Pending::Rcpt(rcpt))
    }

    /// After OnRcptCommand: the host's own checks apply to the recipient the agents left (the
    /// client's, or the one an agent put in its place), so an alias or a rewritten address is
    /// judged like any other: a mailbox of ours passes, an unknown user gets 550 5.1.1, and a
    /// remote domain needs a client that may relay (550 5.7.1 otherwise; no agent opens the
    /// relay). A reject or fault of an agent answers first and stands.
    pub(super) fn rcpt_answered(
        &mut self,
        raised: Raised,
        mut rcpt: EnvelopeRecipient,
    ) -> Option<Effect> {
        if self.answered_by_agents("RCPT", &raised) {
            return None;
        }
        let txn = self.txn.as_ref()?;
        let rewritten = raised.actions.iter().rev().find_map(|a| match a {
            Action::SetRecipient(address) => Some(address.clone()),
            _ => None,
        });
        if let Some(address) = rewritten.filter(|a| *a != rcpt.address) {
            if !txn.item.envelope.smtputf8 && !address.is_ascii() {
                // The agent's doing, not the client's: refused, not counted.
                self.refuse_uncounted(
                    "RCPT",
                    reply(553, "5.6.7", "Non-ASCII recipient address needs SMTPUTF8"),
                );
                return None;
            }
            // Reports name the address the sender wrote (RFC 3461 ORCPT).
            if rcpt.orcpt.is_none() {
                rcpt.orcpt = Some(Orcpt {
                    addr_type: if rcpt.address.is_ascii() {
                        "rfc822"
                    } else {
                        "utf-8"
                    }
                    .to_string(),
                    address: std::mem::take(&mut rcpt.address),
                });
            }
            rcpt.address = address;
        }
        if let Err(response) = self.policy.check(&rcpt.address, self.may_relay()) {
            self.refuse("RCPT", response);
            return None;
        }
        if self
            .txn
            .as_ref()
            .is_some_and(|t| t.item.has_recipient(&rcpt.address))
        {
            // An alias of a recipient already accepted: one copy.
            self.line(250, "2.1.5", "Recipient OK");
            return None;
        }
        self.pending = Some(Pending::RcptSink(rcpt.clone()));
        Some(Effect::Rcpt(rcpt))
    }

    /// The answer to [`Effect::Rcpt`].
    pub fn rcpt_done(&mut self, result: Result<(), SmtpResponse>) {
        let Some(Pending::RcptSink(rcpt)) = self.pending.take() else {
            debug_assert!(false, "rcpt_done without a recipient");
            return;
        };
        match result {
            Ok(()) => {
                if let Some(txn) = self.txn.as_mut() {
                    txn.item.envelope.recipients.push(rcpt);
                }
                self.line(250, "2.1.5", "Recipient OK");
            }
            Err(response) => self.refuse_uncounted("RCPT", response),
        }
    }
}
