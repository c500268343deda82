//! STARTTLS (RFC 3207) and AUTH PLAIN / LOGIN (RFC 4954, 4616).
//!
//! After STARTTLS, whatever the client sent in clear after the command is discarded and the
//! session starts over (the client must EHLO again), so nothing injected before the handshake
//! can act inside the TLS session. AUTH is offered only over TLS unless `[auth] require_tls`
//! is false; a successful AUTH lets the client relay.

use super::session::Session;
use crate::smtp::stream::Stream;
use base64::Engine;
use mta_agent_sdk::{DisconnectReason, Event, SmtpResponse};

fn reply(code: u16, enhanced: &str, text: &str) -> SmtpResponse {
    SmtpResponse::new(code, enhanced, text).expect("static reply is valid")
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Session {
    pub(super) fn offers_starttls(&self) -> bool {
        self.receiver.tls.is_some() && !self.tls && !self.starttls_disabled
    }

    pub(super) fn offers_auth(&self) -> bool {
        !self.receiver.auth.users.is_empty()
            && self.receiver.config.permissions.users
            && self.authenticated.is_none()
            && (self.tls || !self.receiver.auth.require_tls)
    }

    pub(super) async fn starttls(&mut self) {
        let raised = self.raise(Event::OnStartTlsCommand, Vec::new()).await;
        if self.answered_by_agents("STARTTLS", &raised).await {
            return;
        }
        let Some(acceptor) = self.receiver.tls.clone().filter(|_| self.offers_starttls()) else {
            let response = if self.tls {
                reply(503, "5.5.1", "TLS is already active")
            } else {
                reply(454, "4.7.0", "TLS not available")
            };
            self.errors += 1;
            self.reply(&response);
            self.raise_reject("STARTTLS", &response).await;
            return;
        };
        self.reply(&reply(220, "2.0.0", "Ready to start TLS"));
        if self.flush().await.is_err() {
            self.close = Some(DisconnectReason::SenderDisconnected);
            return;
        }
        self.discard_input();
        let Some(tcp) = self.stream.take_plain() else {
            self.close = Some(DisconnectReason::Dropped);
            return;
        };
        match tokio::time::timeout(self.receiver.config.idle_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                self.tls = true;
                self.helo = None;
                self.esmtp = false;
                self.txn = None;
                self.authenticated = None;
                tracing::debug!(message = "TLS established.");
            }
            Ok(Err(e)) => {
                tracing::info!(message = "TLS handshake failed.", error = %e);
                self.close = Some(DisconnectReason::Dropped);
            }
            Err(_) => self.close = Some(DisconnectReason::Timeout),
        }
    }

    pub(super) async fn auth(&mut self, mechanism: u64, initial: String) {
        let name = match mechanism {
            smtp_proto::AUTH_PLAIN => "PLAIN",
            smtp_proto::AUTH_LOGIN => "LOGIN",
            _ => "OTHER",
        };
        let raised = self
            .raise(Event::OnAuthCommand, vec![("mechanism", name.to_string())])
            .await;
        if self.answered_by_agents("AUTH", &raised).await {
            return;
        }
        let refusal =
            if self.receiver.auth.users.is_empty() || !self.receiver.config.permissions.users {
                Some(reply(502, "5.5.1", "AUTH is not offered"))
            } else if self.authenticated.is_some() {
                Some(reply(503, "5.5.1", "Already authenticated"))
            } else if self.txn.is_some() {
                Some(reply(
                    503,
                    "5.5.1",
                    "AUTH is not allowed during a mail transaction",
                ))
            } else if !self.tls && self.receiver.auth.require_tls {
                Some(reply(
                    538,
                    "5.7.11",
                    "Encryption required for requested authentication mechanism",
                ))
            } else if name == "OTHER" {
                Some(reply(
                    504,
                    "5.5.4",
                    "Unrecognized authentication type; use PLAIN or LOGIN",
                ))
            } else {
                None
            };
        if let Some(response) = refusal {
            self.errors += 1;
            self.reply(&response);
            self.raise_reject("AUTH", &response).await;
            return;
        }
        let credentials = match name {
            "PLAIN" => self.plain(initial).await,
            _ => self.login(initial).await,
        };
        let Some((user, password)) = credentials else {
            return; // cancelled or malformed: already answered
        };
        let known = self.receiver.auth.users.iter().any(|u| {
            same_secret(u.name.as_bytes(), user.as_bytes())
                && same_secret(u.password.as_bytes(), password.as_bytes())
        });
        if !known {
            let response = reply(535, "5.7.8", "Authentication credentials invalid");
            self.errors += 1;
            self.reply(&response);
            self.raise_reject("AUTH", &response).await;
            tracing::info!(message = "Authentication failed.", user = %user);
            return;
        }
        let raised = self
            .raise(
                Event::OnEndOfAuthentication,
                vec![("mechanism", name.to_string()), ("identity", user.clone())],
            )
            .await;
        if self.answered_by_agents("AUTH", &raised).await {
            return;
        }
        tracing::info!(message = "Authenticated.", user = %user, mechanism = name);
        self.authenticated = Some(user);
        self.reply(&reply(235, "2.7.0", "Authentication successful"));
    }

    /// AUTH PLAIN: `authzid NUL authcid NUL password`, base64.
    async fn plain(&mut self, initial: String) -> Option<(String, String)> {
        let encoded = if initial.is_empty() {
            self.challenge("").await?
        } else {
            initial
        };
        let decoded = self.decode(&encoded).await?;
        let mut parts = decoded.split(|b| *b == 0);
        let (Some(authz), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            self.malformed().await;
            return None;
        };
        let user = String::from_utf8_lossy(user).into_owned();
        if !authz.is_empty() && authz != user.as_bytes() {
            self.malformed().await;
            return None;
        }
        Some((user, String::from_utf8_lossy(password).into_owned()))
    }

    /// AUTH LOGIN: user name, then password, each base64 after a 334 prompt.
    async fn login(&mut self, initial: String) -> Option<(String, String)> {
        let user = if initial.is_empty() {
            self.challenge("VXNlcm5hbWU6").await?
        } else {
            initial
        };
        let user = self.decode(&user).await?;
        let password = self.challenge("UGFzc3dvcmQ6").await?;
        let password = self.decode(&password).await?;
        Some((
            String::from_utf8_lossy(&user).into_owned(),
            String::from_utf8_lossy(&password).into_owned(),
        ))
    }

    /// Sends a 334 prompt and reads the client's line; `None` when cancelled or closed.
    async fn challenge(&mut self, prompt: &str) -> Option<String> {
        self.reply_raw(334, &[prompt.to_string()]);
        let line = match self.next_line().await {
            Some(l) => l,
            None => return None,
        };
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if text == "*" {
            let response = reply(501, "5.7.0", "Authentication cancelled");
            self.reply(&response);
            self.raise_reject("AUTH", &response).await;
            return None;
        }
        Some(text)
    }

    async fn decode(&mut self, text: &str) -> Option<Vec<u8>> {
        match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
            Ok(bytes) => Some(bytes),
            Err(_) => {
                self.malformed().await;
                None
            }
        }
    }

    async fn malformed(&mut self) {
        let response = reply(501, "5.5.2", "Cannot decode the authentication response");
        self.errors += 1;
        self.reply(&response);
        self.raise_reject("AUTH", &response).await;
    }
}
