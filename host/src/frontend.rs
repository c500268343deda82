//! Front End Transport: a stateless SMTP proxy that relays each session to a Transport node in
//! real time, as Exchange's Front End does.
//!
//! At the client's first MAIL FROM the Front End opens an SMTP session with a node of its pool
//! (round-robin, failing over to the next node that cannot be reached or that answers MAIL with
//! `452 4.3.1` or `421`, as a node under back pressure or stopping does), names the client with XCLIENT when the node
//! offers it, and relays MAIL. Each RCPT TO, DATA and the message are
//! relayed as they come, and the client gets the node's own reply to each: a recipient that
//! Transport (or one of its agents) refuses is refused to the client at RCPT, and a 250 after
//! the data means a Transport node has the message durably. With no node reachable, MAIL gets
//! `451 4.4.0`. It stores nothing.

use crate::message::{Envelope, EnvelopeRecipient, MailItem};
use crate::smtp::receive::{ready, BoxFuture, Sink, Transactions};
use crate::smtp::reply;
use crate::smtp::send::{Client, SendError};
use crate::smtp::session::MailRequest;
use crate::smtp::xtext;
use crate::transport::delivery::{mail_parameters, rcpt_parameters};
use mta_agent_sdk::SmtpResponse;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the Front End waits for a Transport node.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The pool of Transport nodes.
pub struct ProxySink {
    nodes: Vec<String>,
    next: AtomicUsize,
    hostname: String,
    transactions: AtomicU64,
}

impl ProxySink {
    /// A proxy to `nodes` (`ip:port`).
    pub fn new(nodes: Vec<String>, hostname: &str) -> Arc<Self> {
        Arc::new(Self {
            nodes,
            next: AtomicUsize::new(0),
            hostname: hostname.to_string(),
            transactions: AtomicU64::new(0),
        })
    }

    /// A session with a node that answers, the client named to it with XCLIENT, and the node.
    /// A node that refuses the client for good (its agents, at OnConnect or EHLO) gives the
    /// client that refusal; one that cannot be reached, or refuses the session for now, makes
    /// way for the next, and joins `passed`. Nodes already in `passed` are not tried again.
    /// `after`: the node the last attempt ended at, to go on from it; none for a session's
    /// first attempt, which takes the next turn of the round-robin.
    async fn connect(
        &self,
        xclient: &str,
        after: Option<usize>,
        passed: &mut Vec<usize>,
    ) -> Result<(Client, usize), SmtpResponse> {
        let count = self.nodes.len();
        let start = match after {
            Some(at) => at + 1,
            None => self.next.fetch_add(1, Ordering::Relaxed),
        };
        for i in 0..count {
            let at = (start + i) % count;
            if passed.contains(&at) {
                continue;
            }
            let node = &self.nodes[at];
            match Client::connect_naming(node, &self.hostname, TIMEOUT, xclient).await {
                Ok(client) => return Ok((client, at)),
                Err(SendError::Rejected(_, r)) if r.is_permanent() => {
                    tracing::info!(message = "Transport refused the client.", node = %node, reply = %r);
                    return Err(r);
                }
                Err(e) => {
                    tracing::warn!(message = "Transport node unavailable; trying the next.", node = %node, error = %e);
                    passed.push(at);
                }
            }
        }
        Err(unavailable())
    }
}

/// Whether a node's reply to MAIL says the node itself cannot take mail now, so that another
/// node may: back pressure (`452 4.3.1`) or a node going down (`421`). Any other refusal (an
/// agent's `451 4.7.1` rate limit, say) is the client's, as the node's policy.
fn node_busy(r: &SmtpResponse) -> bool {
    r.code() == 421 || (r.code() == 452 && r.enhanced_code() == "4.3.1")
}

/// A [`ProxySink`] shared by the Front End's sessions.
#[derive(Clone)]
pub struct FrontEndSink(pub Arc<ProxySink>);

impl Sink for FrontEndSink {
    fn open(&self) -> Box<dyn Transactions> {
        Box::new(Relay {
            proxy: Arc::clone(&self.0),
            upstream: None,
            node: 0,
            named: String::new(),
            in_data: false,
        })
    }

    fn submit(&self, _item: MailItem) -> BoxFuture<'_, Result<SmtpResponse, SmtpResponse>> {
        ready(Err(reply(
            554,
            "5.3.3",
            "The Front End stores nothing and takes no submissions",
        )))
    }
}

/// One client session's relay: the Transport session it opened, if any.
struct Relay {
    proxy: Arc<ProxySink>,
    upstream: Option<Client>,
    /// The node `upstream` is a session with (its index in the pool).
    node: usize,
    /// The XCLIENT attributes the upstream session was opened with.
    named: String,
    /// DATA was accepted upstream and the message not sent yet.
    in_data: bool,
}

fn unavailable() -> SmtpResponse {
    reply(
        451,
        "4.4.0",
        "No Transport service available, try again later",
    )
}

/// XCLIENT attributes naming the Front End's client (values in xtext).
fn xclient_attributes(request: &MailRequest) -> String {
    let client = &request.client;
    let addr = match client.remote.ip() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPV6:{v6}"),
    };
    let mut out = format!("ADDR={addr} PORT={}", client.remote.port());
    out.push_str(&format!(
        " PROTO={}",
        if client.esmtp { "ESMTP" } else { "SMTP" }
    ));
    if let Some(helo) = client.helo_name() {
        out.push_str(&format!(" HELO={}", xtext::encode(helo)));
    }
    if let Some(user) = &client.authenticated {
        out.push_str(&format!(" LOGIN={}", xtext::encode(user)));
    }
    out.push_str(if request.trusted {
        " TRUSTED=YES"
    } else {
        " TRUSTED=NO"
    });
    out.push_str(if client.tls { " TLS=YES" } else { " TLS=NO" });
    out
}

impl Relay {
    /// Drops the upstream session after a broken connection.
    fn lost(&mut self, e: &SendError) -> SmtpResponse {
        tracing::warn!(message = "Relay to Transport failed.", error = %e);
        self.upstream = None;
        self.in_data = false;
        match e {
            SendError::Rejected(_, r) => r.clone(),
            _ => reply(
                451,
                "4.4.0",
                "Transport service unavailable, try again later",
            ),
        }
    }

    /// Sends one command upstream; its reply, or the loss of the session as a 451.
    async fn relay(&mut self, line: &str) -> Result<SmtpResponse, SmtpResponse> {
        let Some(client) = self.upstream.as_mut() else {
            return Err(unavailable());
        };
        match client.command(line).await {
            Ok(r) => Ok(r),
            Err(e) => Err(self.lost(&e)),
        }
    }
}

impl Transactions for Relay {
    fn mail<'a>(
        &'a mut self,
        request: &'a MailRequest,
    ) -> BoxFuture<'a, Result<String, SmtpResponse>> {
        Box::pin(async move {
            let named = xclient_attributes(request);
            if self.upstream.is_some() && self.named != named {
                // The client is not who it was (it authenticated, or started TLS): name it
                // again in a new session.
                if let Some(old) = self.upstream.take() {
                    old.quit().await;
                }
            }
            // A node that cannot take mail now (back pressure's 452 4.3.1, a 421 as it stops)
            // makes way for the next node, as one that cannot be reached does: nothing of the
            // transaction is upstream yet. When no node is left, the last refusal is the
            // client's.
            let mut passed: Vec<usize> = Vec::new();
            let mut after = None;
            let mut busy: Option<SmtpResponse> = None;
            let r = loop {
                if self.upstream.is_none() {
                    match self.proxy.connect(&named, after, &mut passed).await {
                        Ok((client, node)) => {
                            self.upstream = Some(client);
                            self.node = node;
                            self.named = named.clone();
                        }
                        Err(r) => return Err(busy.filter(|_| r.is_transient()).unwrap_or(r)),
                    }
                }
                let Some(client) = self.upstream.as_ref() else {
                    return Err(unavailable());
                };
                let envelope = Envelope {
                    from: request.from.address.clone(),
                    envid: request.from.envid.clone(),
                    ret: request.from.ret,
                    body_type: request.from.body,
                    smtputf8: request.from.smtputf8,
                    size: request.from.size,
                    ..Envelope::default()
                };
                let line = format!(
                    "MAIL FROM:<{}>{}",
                    envelope.from,
                    mail_parameters(client, &envelope)
                );
                let r = self.relay(&line).await?;
                if node_busy(&r) && passed.len() + 1 < self.proxy.nodes.len() {
                    tracing::info!(message = "Transport node cannot take mail now; trying the next.", node = %self.proxy.nodes[self.node], reply = %r);
                    passed.push(self.node);
                    after = Some(self.node);
                    busy = Some(r);
                    // Not waited for: a node under load may be slow to answer QUIT.
                    if let Some(old) = self.upstream.take() {
                        tokio::spawn(old.quit());
                    }
                    continue;
                }
                break r;
            };
            if !r.is_success() {
                return Err(r);
            }
            // Transport's queue id when its reply names one, so the message has one id in
            // both services; a numbered id of our own otherwise.
            if let Some(id) = crate::tracking::queued_id(r.text())
                .filter(|id| crate::agents::snapshot::valid_queue_id(id))
            {
                return Ok(id.to_string());
            }
            let n = self.proxy.transactions.fetch_add(1, Ordering::Relaxed) + 1;
            Ok(format!("frontend-{n}"))
        })
    }

    fn rcpt<'a>(
        &'a mut self,
        recipient: &'a EnvelopeRecipient,
    ) -> BoxFuture<'a, Result<(), SmtpResponse>> {
        Box::pin(async move {
            let Some(client) = self.upstream.as_ref() else {
                return Err(unavailable());
            };
            let line = format!(
                "RCPT TO:<{}>{}",
                recipient.address,
                rcpt_parameters(client, recipient)
            );
            let r = self.relay(&line).await?;
            if r.is_success() {
                Ok(())
            } else {
                Err(r)
            }
        })
    }

    fn data(&mut self) -> BoxFuture<'_, Result<(), SmtpResponse>> {
        Box::pin(async move {
            let r = self.relay("DATA").await?;
            if r.code() == 354 {
                self.in_data = true;
                Ok(())
            } else {
                Err(r)
            }
        })
    }

    fn message(&mut self, item: MailItem) -> BoxFuture<'_, Vec<SmtpResponse>> {
        Box::pin(async move {
            let Some(client) = self.upstream.as_mut() else {
                return vec![unavailable()];
            };
            self.in_data = false;
            match client.message(&item.message, 1).await {
                Ok(mut replies) => vec![replies.pop().unwrap_or_else(unavailable)],
                Err(e) => vec![self.lost(&e)],
            }
        })
    }

    fn reset(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.in_data {
                // DATA cannot be taken back: ending the session makes Transport drop the
                // message it was receiving.
                self.in_data = false;
                self.upstream = None;
                return;
            }
            if let Some(client) = self.upstream.as_mut() {
                if let Err(e) = client.reset().await {
                    self.lost(&e);
                }
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(client) = self.upstream.take() {
                if !self.in_data {
                    client.quit().await;
                }
            }
        })
    }
}
