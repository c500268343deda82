//! STARTTLS (RFC 3207) and AUTH PLAIN / LOGIN (RFC 4954, 4616).
//!
//! After STARTTLS, whatever the client sent in clear after the command is discarded and the
//! session starts over (the client must EHLO again), so nothing injected before the handshake
//! can act inside the TLS session. AUTH is offered only over TLS unless the listener says
//! otherwise; checking the password is an effect, so the shell can do it off the session's task.

use super::{Effect, Mode, Pending, Raised, Session};
use crate::smtp::reply;
use base64::Engine;
use mta_agent_sdk::{DisconnectReason, Event, SmtpResponse};

/// Where an AUTH exchange stands while it waits for the client's next line.
#[derive(Debug)]
pub(crate) enum AuthStep {
    /// PLAIN: the response to an empty challenge.
    Plain,
    /// LOGIN: the user name.
    LoginUser,
    /// LOGIN: the password, for this user.
    LoginPassword(String),
}

impl Session {
    pub(super) fn offers_starttls(&self) -> bool {
        self.config.starttls && !self.client.tls && !self.starttls_disabled
    }

    pub(super) fn offers_auth(&self) -> bool {
        self.config.auth
            && self.config.permissions.users
            && self.client.authenticated.is_none()
            && (self.client.tls || !self.config.auth_requires_tls)
    }

    pub(super) fn starttls(&mut self) -> Option<Effect> {
        self.raise(
            Event::OnStartTlsCommand,
            Vec::new(),
            Pending::StartTlsAgents,
        )
    }

    pub(super) fn starttls_answered(&mut self, raised: Raised) -> Option<Effect> {
        if self.answered_by_agents("STARTTLS", &raised) {
            return None;
        }
        if !self.offers_starttls() {
            let response = if self.client.tls {
                reply(503, "5.5.1", "TLS is already active")
            } else {
                reply(454, "4.7.0", "TLS not available")
            };
            self.refuse("STARTTLS", response);
            return None;
        }
        self.line(220, "2.0.0", "Ready to start TLS");
        // Nothing sent in clear after STARTTLS may be used inside TLS.
        self.input.clear();
        self.pending = Some(Pending::StartTls);
        Some(Effect::StartTls)
    }

    /// The answer to [`Effect::StartTls`]: whether the handshake succeeded.
    pub fn tls_done(&mut self, ok: bool) {
        let pending = self.pending.take();
        debug_assert!(matches!(pending, Some(Pending::StartTls)), "{pending:?}");
        if !ok {
            self.closing = Some(DisconnectReason::Dropped);
            return;
        }
        self.input.clear();
        self.client.tls = true;
        self.client.helo = None;
        self.client.esmtp = false;
        self.client.authenticated = None;
        let effect = self.end_transaction();
        self.resume_with(effect);
    }

    pub(super) fn auth(&mut self, mechanism: String, initial: Option<String>) -> Option<Effect> {
        let name = match mechanism.as_str() {
            "PLAIN" | "LOGIN" => mechanism.clone(),
            _ => "OTHER".to_string(),
        };
        self.raise(
            Event::OnAuthCommand,
            vec![("mechanism", name)],
            Pending::AuthAgents { mechanism, initial },
        )
    }

    pub(super) fn auth_answered(
        &mut self,
        raised: Raised,
        mechanism: String,
        initial: Option<String>,
    ) -> Option<Effect> {
        if self.answered_by_agents("AUTH", &raised) {
            return None;
        }
        let refusal = if !self.config.auth || !self.config.permissions.users {
            Some(reply(502, "5.5.1", "AUTH is not offered"))
        } else if self.client.authenticated.is_some() {
            Some(reply(503, "5.5.1", "Already authenticated"))
        } else if self.txn.is_some() {
            Some(reply(
                503,
                "5.5.1",
                "AUTH is not allowed during a mail transaction",
            ))
        } else if !self.client.tls && self.config.auth_requires_tls {
            Some(reply(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ))
        } else if mechanism != "PLAIN" && mechanism != "LOGIN" {
            Some(reply(
                504,
                "5.5.4",
                "Unrecognized authentication type; use PLAIN or LOGIN",
            ))
        } else {
            None
        };
        if let Some(response) = refusal {
            self.refuse("AUTH", response);
            return None;
        }
        let initial = initial.filter(|i| i != "=");
        match (mechanism.as_str(), initial) {
            ("PLAIN", Some(response)) => self.plain(&response),
            ("PLAIN", None) => {
                self.challenge("", super::security::AuthStep::Plain);
                None
            }
            (_, Some(user)) => self.login_user(&user),
            (_, None) => {
                self.challenge("VXNlcm5hbWU6", AuthStep::LoginUser);
                None
            }
        }
    }

    fn challenge(&mut self, prompt: &str, step: AuthStep) {
        self.output
            .extend_from_slice(format!("334 {prompt}\r\n").as_bytes());
        self.mode = Mode::AuthLine(step);
    }

    /// The client's answer to a 334 challenge.
    pub(super) fn auth_line(
        &mut self,
        step: AuthStep,
        line: Result<String, SmtpResponse>,
    ) -> Option<Effect> {
        let line = match line {
            Ok(line) => line,
            Err(response) => {
                self.refuse("AUTH", response);
                return None;
            }
        };
        if line.trim() == "*" {
            self.refuse_uncounted("AUTH", reply(501, "5.7.0", "Authentication cancelled"));
            return None;
        }
        match step {
            AuthStep::Plain => self.plain(&line),
            AuthStep::LoginUser => self.login_user(&line),
            AuthStep::LoginPassword(user) => {
                let password = self.decode(&line)?;
                self.check(
                    "LOGIN",
                    user,
                    String::from_utf8_lossy(&password).into_owned(),
                )
            }
        }
    }

    fn login_user(&mut self, encoded: &str) -> Option<Effect> {
        let user = self.decode(encoded)?;
        let user = String::from_utf8_lossy(&user).into_owned();
        self.challenge("UGFzc3dvcmQ6", AuthStep::LoginPassword(user));
        None
    }

    /// AUTH PLAIN: `authzid NUL authcid NUL password`, base64.
    fn plain(&mut self, encoded: &str) -> Option<Effect> {
        let decoded = self.decode(encoded)?;
        let mut parts = decoded.split(|b| *b == 0);
        let (Some(authz), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            self.malformed();
            return None;
        };
        if !authz.is_empty() && authz != user {
            self.malformed();
            return None;
        }
        let user = String::from_utf8_lossy(user).into_owned();
        let password = String::from_utf8_lossy(password).into_owned();
        self.check("PLAIN", user, password)
    }

    fn check(&mut self, mechanism: &str, user: String, password: String) -> Option<Effect> {
        self.pending = Some(Pending::AuthCheck {
            mechanism: mechanism.to_string(),
            user: user.clone(),
        });
        Some(Effect::Authenticate { user, password })
    }

    /// The answer to [`Effect::Authenticate`]: whether the credentials are valid.
    pub fn auth_done(&mut self, outcome: crate::auth::Outcome) {
        let Some(Pending::AuthCheck { mechanism, user }) = self.pending.take() else {
            debug_assert!(false, "auth_done without a check");
            return;
        };
        match outcome {
            crate::auth::Outcome::Valid => {}
            crate::auth::Outcome::Invalid => {
                self.refuse(
                    "AUTH",
                    reply(535, "5.7.8", "Authentication credentials invalid"),
                );
                return;
            }
            crate::auth::Outcome::Locked => {
                self.refuse(
                    "AUTH",
                    reply(
                        454,
                        "4.7.0",
                        "Too many failed authentications from your address, try again later",
                    ),
                );
                return;
            }
        }
        let effect = self.raise(
            Event::OnEndOfAuthentication,
            vec![("mechanism", mechanism), ("identity", user.clone())],
            Pending::EndOfAuthentication { user },
        );
        self.resume_with(effect);
    }

    pub(super) fn end_of_auth_answered(&mut self, raised: Raised, user: String) -> Option<Effect> {
        if self.answered_by_agents("AUTH", &raised) {
            return None;
        }
        self.client.authenticated = Some(user);
        self.line(235, "2.7.0", "Authentication successful");
        None
    }

    fn decode(&mut self, text: &str) -> Option<Vec<u8>> {
        match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
            Ok(bytes) => Some(bytes),
            Err(_) => {
                self.malformed();
                None
            }
        }
    }

    fn malformed(&mut self) {
        self.refuse(
            "AUTH",
            reply(501, "5.5.2", "Cannot decode the authentication response"),
        );
    }
}
