//! The start of a session: OnConnect and the greeting, HELO / EHLO / LHLO, and XCLIENT.
//!
//! On a connection from a Front End node (`xclient_hosts`), OnConnect waits for the first
//! command. When that is XCLIENT (Postfix's extension, plus `TRUSTED`), the Front End names its
//! client and OnConnect is raised once, for that client, with its own address; otherwise it is
//! raised for the connection itself before the command is handled (the greeting has gone by
//! then, so a rejection at OnConnect answers that first command). XCLIENT after EHLO, as
//! Postfix's clients send it, also works: the session then starts over and OnConnect is raised
//! again for the client named.

use super::{Effect, Forwarded, Pending, Raised, Session};
use crate::smtp::command::Command;
use crate::smtp::reply;
use mta_agent_sdk::{Action, DisconnectReason, Event};
use std::net::{IpAddr, SocketAddr};

impl Session {
    /// OnConnect, then the greeting (held back on a connection from a Front End node).
    pub(super) fn start(&mut self) -> Option<Effect> {
        if self.is_front_end_node() {
            self.greet(None);
            return None;
        }
        self.connected = true;
        self.raise(Event::OnConnect, Vec::new(), Pending::Connect(None))
    }

    fn greet(&mut self, banner: Option<String>) {
        let protocol = if self.config.lmtp { "LMTP" } else { "ESMTP" };
        let text = banner.unwrap_or_else(|| format!("{protocol} mta"));
        let line = format!("220 {} {text}\r\n", self.config.hostname);
        self.output.extend_from_slice(line.as_bytes());
    }

    /// Writes a multi-line reply without enhanced status codes (EHLO keywords, RFC 2034 3).
    fn keywords(&mut self, code: u16, lines: &[String]) {
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.output
                .extend_from_slice(format!("{code}{sep}{line}\r\n").as_bytes());
        }
    }

    /// OnConnect answered: at the start or after XCLIENT (`then` is `None`, the greeting
    /// follows), or held back until `then`, the first command of a Front End node.
    pub(super) fn connected_with(
        &mut self,
        raised: Raised,
        then: Option<Command>,
    ) -> Option<Effect> {
        if raised.abandoned || raised.fault.is_some() {
            self.line(421, "4.3.0", "Temporary server error, try again later");
            self.closing = Some(DisconnectReason::Dropped);
            return None;
        }
        if raised.disconnect() {
            self.closing = Some(DisconnectReason::Dropped);
            return None;
        }
        if let Some(response) = raised.rejection() {
            self.refuse_uncounted("", response);
            self.closing = Some(DisconnectReason::Dropped);
            return None;
        }
        let mut banner = None;
        for action in &raised.actions {
            match action {
                Action::SetBanner(text) => banner = Some(text.clone()),
                Action::DisableStartTls => self.starttls_disabled = true,
                _ => {}
            }
        }
        match then {
            None => {
                self.greet(banner);
                None
            }
            Some(command) => self.command(command),
        }
    }

    pub(super) fn hello(&mut self, host: String, extended: bool) -> Option<Effect> {
        let verb = if extended { "EHLO" } else { "HELO" };
        if self.config.lmtp {
            self.refuse(
                verb,
                reply(500, "5.5.1", "This is an LMTP server: use LHLO"),
            );
            return None;
        }
        let event = if extended {
            Event::OnEhloCommand
        } else {
            Event::OnHeloCommand
        };
        let domain = match &self.client.forwarded {
            Some(f) => f.helo.clone().unwrap_or_default(),
            None => host.clone(),
        };
        self.raise(
            event,
            vec![("domain", domain)],
            Pending::Hello {
                host,
                esmtp: extended,
            },
        )
    }

    pub(super) fn lhlo(&mut self, host: String) -> Option<Effect> {
        if !self.config.lmtp {
            self.refuse("LHLO", reply(500, "5.5.2", "Command unrecognized"));
            return None;
        }
        self.hello_answered(Raised::default(), host, true)
    }

    pub(super) fn hello_answered(
        &mut self,
        raised: Raised,
        host: String,
        esmtp: bool,
    ) -> Option<Effect> {
        let verb = if esmtp { "EHLO" } else { "HELO" };
        if self.answered_by_agents(verb, &raised) {
            return None;
        }
        let greeting = format!("{} Hello [{}]", self.config.hostname, self.client.peer.ip());
        self.client.helo = Some(host);
        self.client.esmtp = esmtp;
        if esmtp {
            let mut lines = vec![greeting];
            lines.extend(self.extensions());
            self.keywords(250, &lines);
        } else {
            self.keywords(250, &[greeting]);
        }
        self.end_transaction()
    }

    /// The extensions offered in the EHLO or LHLO reply.
    fn extensions(&self) -> Vec<String> {
        let mut lines = vec![
            "PIPELINING".to_string(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "DSN".into(),
        ];
        if self.config.lmtp {
            return lines;
        }
        lines.push("HELP".into());
        if self.offers_starttls() {
            lines.push("STARTTLS".into());
        }
        if self.offers_auth() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        if self.is_front_end_node() {
            lines.push("XCLIENT NAME ADDR PORT PROTO HELO LOGIN TRUSTED TLS".into());
        }
        lines
    }

    /// XCLIENT from a Front End node: the session starts over as the client it names.
    pub(super) fn xclient(&mut self, attributes: Vec<(String, String)>) -> Option<Effect> {
        if !self.is_front_end_node() {
            // 502: a Front End that is not (or no longer) one of ours goes on as a plain
            // client.
            self.refuse(
                "XCLIENT",
                reply(502, "5.7.0", "XCLIENT is not offered to your address"),
            );
            return None;
        }
        if self.txn.is_some() {
            self.refuse(
                "XCLIENT",
                reply(
                    503,
                    "5.5.1",
                    "XCLIENT is not allowed during a mail transaction",
                ),
            );
            return None;
        }
        let mut ip = self.client.peer.ip();
        let mut port = 0u16;
        let mut forwarded = Forwarded::default();
        let mut login = None;
        for (name, value) in attributes {
            let known = !matches!(value.as_str(), "[UNAVAILABLE]" | "[TEMPUNAVAIL]");
            let bad = || reply(501, "5.5.4", &format!("Invalid XCLIENT attribute {name}"));
            match name.as_str() {
                "ADDR" if known => {
                    let text = value
                        .strip_prefix("IPV6:")
                        .or_else(|| value.strip_prefix("ipv6:"))
                        .unwrap_or(&value);
                    match text.parse::<IpAddr>() {
                        Ok(addr) => ip = addr,
                        Err(_) => {
                            self.refuse("XCLIENT", bad());
                            return None;
                        }
                    }
                }
                "PORT" if known => match value.parse() {
                    Ok(p) => port = p,
                    Err(_) => {
                        self.refuse("XCLIENT", bad());
                        return None;
                    }
                },
                "HELO" if known => forwarded.helo = Some(value),
                "LOGIN" if known => login = Some(value),
                "TRUSTED" => forwarded.trusted = value.eq_ignore_ascii_case("YES"),
                "TLS" => forwarded.tls = value.eq_ignore_ascii_case("YES"),
                "ADDR" | "PORT" | "HELO" | "LOGIN" | "NAME" | "PROTO" | "DESTADDR" | "DESTPORT" => {
                }
                _ => {
                    self.refuse("XCLIENT", bad());
                    return None;
                }
            }
        }
        self.client.remote = SocketAddr::new(ip, port);
        self.client.forwarded = Some(forwarded);
        self.client.authenticated = login;
        self.client.helo = None;
        self.client.esmtp = false;
        self.connected = true;
        self.raise(Event::OnConnect, Vec::new(), Pending::Connect(None))
    }
}
