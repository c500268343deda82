//! Delivery to each kind of next hop, reporting an outcome per recipient:
//! - Mailbox Transport delivery over SMTP;
//! - a Send connector's smart hosts over SMTP (tried in order);
//! - a Delivery Agent connector, through the delivery agent that declares its protocol, with
//!   the event sequence and acknowledgements of the reference;
//! - a Foreign connector's drop directory, in replay format.

use crate::agents::context::CallContext;
use crate::agents::dispatch::{dispatch_blocking, Blocking};
use crate::agents::{AgentHost, AgentSet};
use crate::config::{DeliveryAgentConnectorConfig, ForeignConnectorConfig, SendConnectorConfig};
use crate::message::{EnvelopeRecipient, MailItem};
use crate::routing::mx::{Exchangers, MxResolver};
use crate::service::Service;
use crate::smtp::pool::Pool;
use crate::smtp::send::{Client, SendError, TlsMode};
use mta_agent_sdk::{AckStatus, Action, AgentClass, Event, SmtpResponse};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// What became of one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (handed to the next hop, which took responsibility).
    Delivered,
    /// Not now: try again later.
    Retry(SmtpResponse),
    /// Never: the sender gets a non-delivery report.
    Fail(SmtpResponse),
}

/// The outcome of every recipient of an item.
pub type Outcomes = Vec<(EnvelopeRecipient, Outcome)>;

fn reply(code: u16, enhanced: &str, text: &str) -> SmtpResponse {
    SmtpResponse::new(code, enhanced, text).expect("static reply is valid")
}

/// The same outcome for every recipient of `item`.
pub fn all(item: &MailItem, outcome: Outcome) -> Outcomes {
    item.envelope
        .recipients
        .iter()
        .map(|r| (r.clone(), outcome.clone()))
        .collect()
}

/// SMTP to `address` (Mailbox Transport or a smart host) for every recipient of `item`.
pub async fn smtp(
    pool: &Pool,
    address: &str,
    helo: &str,
    item: &MailItem,
    tls: TlsMode,
) -> Result<Outcomes, SendError> {
    let _slot = pool.slot(address).await;
    // A pooled connection may have been closed by the server meanwhile: then once more, fresh.
    let mut fresh_only = false;
    let (client, item, sent) = loop {
        let pooled = if fresh_only {
            None
        } else {
            pool.take(address, tls)
        };
        let reused = pooled.is_some();
        let mut client = match pooled {
            Some(c) => c,
            None => Client::connect_with(address, helo, Duration::from_secs(60), tls).await?,
        };
        // A message that needs SMTPUTF8 cannot go to a next hop without it (RFC 6531 3.2).
        if item.envelope.smtputf8 && !client.offers("SMTPUTF8") && needs_smtputf8(item) {
            pool.put(address, tls, client);
            return Ok(all(
                item,
                Outcome::Fail(reply(
                    553,
                    "5.6.7",
                    "The next hop does not support SMTPUTF8, which this message needs",
                )),
            ));
        }
        // Content conversion: a next hop without 8BITMIME gets 7-bit content (RFC 6152).
        let item = if !client.offers("8BITMIME") && !item.message.is_ascii() {
            match seven_bit(item) {
                Some(copy) => std::borrow::Cow::Owned(copy),
                None => {
                    pool.put(address, tls, client);
                    return Ok(all(
                        item,
                        Outcome::Fail(reply(554, "5.6.3", "The next hop does not accept 8-bit content and this message cannot be converted")),
                    ));
                }
            }
        } else {
            std::borrow::Cow::Borrowed(item)
        };
        let (params, rcpts) = parameters(&client, &item);
        let sent = client
            .send_mail(
                &item.envelope.from,
                &params,
                &rcpts,
                &item.message.to_bytes(),
            )
            .await;
        match sent {
            Err(SendError::Io(..)) if reused => fresh_only = true,
            sent => break (client, item, sent),
        }
    };
    let sent = match sent {
        Ok(sent) => {
            pool.put(address, tls, client);
            sent
        }
        Err(SendError::Rejected(_, r)) if r.is_permanent() => {
            client.quit().await;
            return Ok(all(&item, Outcome::Fail(r)));
        }
        Err(SendError::Rejected(_, r)) => {
            client.quit().await;
            return Ok(all(&item, Outcome::Retry(r)));
        }
        Err(e) => return Err(e),
    };
    let data = sent.data.clone();
    Ok(item
        .envelope
        .recipients
        .iter()
        .zip(sent.recipients)
        .map(|(r, (_, rcpt))| {
            let outcome = match (rcpt, &data) {
                (Err(reply), _) if reply.is_permanent() => Outcome::Fail(reply),
                (Err(reply), _) => Outcome::Retry(reply),
                (Ok(()), Some(d)) if d.is_success() => Outcome::Delivered,
                (Ok(()), Some(d)) if d.is_permanent() => Outcome::Fail(d.clone()),
                (Ok(()), Some(d)) => Outcome::Retry(d.clone()),
                (Ok(()), None) => Outcome::Retry(reply(451, "4.4.0", "Message data was not sent")),
            };
            (r.clone(), outcome)
        })
        .collect())
}

/// Whether the envelope or the header fields hold non-ASCII text (what SMTPUTF8 is for).
fn needs_smtputf8(item: &MailItem) -> bool {
    !item.envelope.from.is_ascii()
        || item
            .envelope
            .recipients
            .iter()
            .any(|r| !r.address.is_ascii())
        || item.message.fields().iter().any(|f| !f.value().is_ascii())
}

/// MAIL and RCPT parameters: the envelope's, where the next hop understands them (BODY with
/// 8BITMIME, SMTPUTF8, and RET, ENVID, NOTIFY, ORCPT with DSN).
pub(crate) fn parameters(client: &Client, item: &MailItem) -> (String, Vec<(String, String)>) {
    let mut params = String::new();
    if let Some(body) = &item.envelope.body_type {
        if client.offers("8BITMIME") {
            params.push_str(&format!(" BODY={body}"));
        }
    }
    if item.envelope.smtputf8 && client.offers("SMTPUTF8") {
        params.push_str(" SMTPUTF8");
    }
    let dsn = client.offers("DSN");
    if dsn {
        if let Some(ret) = &item.envelope.ret {
            params.push_str(&format!(" RET={ret}"));
        }
        if let Some(envid) = &item.envelope.envid {
            params.push_str(&format!(" ENVID={envid}"));
        }
    }
    let rcpts = item
        .envelope
        .recipients
        .iter()
        .map(|r| {
            let mut p = String::new();
            if dsn {
                if let Some(n) = &r.notify {
                    p.push_str(&format!(" NOTIFY={n}"));
                }
                if let Some(o) = &r.orcpt {
                    p.push_str(&format!(" ORCPT={o}"));
                }
            }
            (r.address.clone(), p)
        })
        .collect();
    (params, rcpts)
}

/// A copy of a single-part text message with its body quoted-printable encoded, so that it is
/// 7-bit; `None` for other messages (multipart or non-text 8-bit content is not converted).
fn seven_bit(item: &MailItem) -> Option<MailItem> {
    let headers_ascii = item.message.fields().iter().all(|f| f.value().is_ascii());
    let content_type = item
        .message
        .header("Content-Type")
        .unwrap_or_else(|| "text/plain".into());
    if !headers_ascii || !content_type.to_ascii_lowercase().starts_with("text/") {
        return None;
    }
    let mut copy = item.clone();
    copy.message.set_body(quoted_printable(item.message.body()));
    copy.message
        .set_header("Content-Transfer-Encoding", "quoted-printable")
        .ok()?;
    if copy.message.header("MIME-Version").is_none() {
        copy.message.set_header("MIME-Version", "1.0").ok()?;
    }
    copy.envelope.body_type = None;
    Some(copy)
}

/// Quoted-printable (RFC 2045 6.7), keeping CRLF line breaks, soft breaks at 76 columns.
fn quoted_printable(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 8);
    for line in body.split_inclusive(|b| *b == b'\n') {
        let (content, eol) = match line.strip_suffix(b"\r\n") {
            Some(c) => (c, true),
            None => match line.strip_suffix(b"\n") {
                Some(c) => (c, true),
                None => (line, false),
            },
        };
        let mut column = 0;
        for (i, &b) in content.iter().enumerate() {
            let last = i + 1 == content.len();
            let literal =
                ((b == b' ' || b == b'\t') && !last) || ((33..=126).contains(&b) && b != b'=');
            let piece: Vec<u8> = if literal {
                vec![b]
            } else {
                format!("={b:02X}").into_bytes()
            };
            if column + piece.len() > 75 {
                out.extend_from_slice(b"=\r\n");
                column = 0;
            }
            column += piece.len();
            out.extend_from_slice(&piece);
        }
        if eol {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Through a Send connector: its smart hosts in order until one answers, or, without smart
/// hosts, each recipient domain's mail exchangers from DNS.
pub async fn send_connector(
    pool: &Pool,
    connector: &SendConnectorConfig,
    helo: &str,
    item: &MailItem,
    mx: Option<&MxResolver>,
) -> Outcomes {
    if connector.smart_hosts.is_empty() {
        return match mx {
            Some(mx) => by_mx(pool, connector, helo, item, mx).await,
            None => all(
                item,
                Outcome::Retry(reply(451, "4.4.3", "No DNS resolver for MX routing")),
            ),
        };
    }
    first_answering(pool, connector, helo, item, &connector.smart_hosts).await
}

/// Tries `hosts` in order; the first that answers decides every recipient.
async fn first_answering(
    pool: &Pool,
    connector: &SendConnectorConfig,
    helo: &str,
    item: &MailItem,
    hosts: &[String],
) -> Outcomes {
    let mut last = String::new();
    for host in hosts {
        match smtp(pool, host, helo, item, connector.tls).await {
            Ok(outcomes) => return outcomes,
            Err(e) => {
                tracing::info!(message = "Next hop unavailable.", connector = %connector.name, host = %host, error = %e);
                last = e.to_string();
            }
        }
    }
    all(
        item,
        Outcome::Retry(reply(
            451,
            "4.4.1",
            &format!(
                "No host of send connector {} answered ({last})",
                connector.name
            ),
        )),
    )
}

/// One delivery per recipient domain, to its mail exchangers.
async fn by_mx(
    pool: &Pool,
    connector: &SendConnectorConfig,
    helo: &str,
    item: &MailItem,
    mx: &MxResolver,
) -> Outcomes {
    let mut domains: std::collections::BTreeMap<String, Vec<EnvelopeRecipient>> =
        Default::default();
    for r in &item.envelope.recipients {
        let domain = r
            .address
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_ascii_lowercase();
        domains.entry(domain).or_default().push(r.clone());
    }
    let mut outcomes = Vec::new();
    for (domain, recipients) in domains {
        let mut part = item.clone();
        part.envelope.recipients = recipients;
        match mx.exchangers(&domain, connector.port).await {
            Exchangers::Hosts(addrs) => {
                let hosts: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                outcomes.extend(first_answering(pool, connector, helo, &part, &hosts).await);
            }
            Exchangers::NoMail(why) => {
                let code = if why.contains("null MX") {
                    (556, "5.1.10")
                } else {
                    (550, "5.1.2")
                };
                outcomes.extend(all(&part, Outcome::Fail(reply(code.0, code.1, &why))));
            }
            Exchangers::Unavailable(why) => {
                outcomes.extend(all(&part, Outcome::Retry(reply(451, "4.4.3", &why))))
            }
        }
    }
    outcomes
}

/// Into a Foreign connector's drop directory, in replay format:
/// `{host}-{id}-{yyyyMMddHHmmssZ}.{priority}.eml` with leading X-Sender / X-Receiver fields.
pub fn foreign_connector(
    connector: &ForeignConnectorConfig,
    hostname: &str,
    item: &MailItem,
) -> Outcomes {
    let dir = &connector.drop_directory;
    if !dir.is_dir() {
        return all(
            item,
            Outcome::Retry(reply(
                451,
                "4.4.0",
                &format!("Drop directory {} is missing", dir.display()),
            )),
        );
    }
    let mut bytes = format!("X-Sender: <{}>\r\n", item.envelope.from).into_bytes();
    for r in &item.envelope.recipients {
        bytes.extend_from_slice(format!("X-Receiver: <{}>\r\n", r.address).as_bytes());
    }
    item.message.write_to(&mut bytes);
    if let Some(quota) = connector.quota_bytes {
        if directory_size(dir) + bytes.len() as u64 > quota {
            return all(
                item,
                Outcome::Retry(reply(452, "4.3.1", "Drop directory is over its quota")),
            );
        }
    }
    let stamp = compact_utc(std::time::SystemTime::now());
    let name = format!("{}-{}-{stamp}Z.0.eml", hostname, item.id);
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(&name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    match written {
        Ok(()) => all(item, Outcome::Delivered),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            all(
                item,
                Outcome::Retry(reply(
                    451,
                    "4.3.0",
                    &format!("Cannot write to the drop directory: {e}"),
                )),
            )
        }
    }
}

fn directory_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `yyyyMMddHHmmss` in UTC.
fn compact_utc(time: std::time::SystemTime) -> String {
    let text = crate::message::date::rfc2822(time); // "Wed, 25 Nov 2026 10:51:33 +0000"
    let parts: Vec<&str> = text.split_whitespace().collect();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| Some(m) == parts.get(2))
    .map_or(1, |i| i + 1);
    let day: u32 = parts.get(1).and_then(|d| d.parse().ok()).unwrap_or(1);
    format!(
        "{}{month:02}{day:02}{}",
        parts.get(3).unwrap_or(&"1970"),
        parts.get(4).unwrap_or(&"00:00:00").replace(':', "")
    )
}

/// Delivery Agent connectors: the agent serving each, and their connection limits.
pub struct AgentConnectors {
    agents: Option<Arc<AgentHost>>,
    limits: HashMap<String, Arc<Semaphore>>,
}

impl AgentConnectors {
    /// For the Transport service's agents and these connectors.
    pub fn new(
        agents: Option<Arc<AgentHost>>,
        connectors: &[DeliveryAgentConnectorConfig],
    ) -> Self {
        Self {
            agents,
            limits: connectors
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        Arc::new(Semaphore::new(
                            c.max_concurrent_connections.unwrap_or(5).max(1),
                        )),
                    )
                })
                .collect(),
        }
    }

    /// Delivers `item` through the delivery agent of `connector`'s protocol: OnOpenConnection
    /// (the agent must register the connection), OnDeliverMailItem (acks per item or
    /// recipient), OnCloseConnection.
    pub async fn deliver(
        &self,
        connector: &DeliveryAgentConnectorConfig,
        item: &MailItem,
    ) -> Outcomes {
        let nobody = || {
            all(
                item,
                Outcome::Retry(reply(451, "4.4.0", "No DeliveryAgent handled the queue")),
            )
        };
        let Some(host) = &self.agents else {
            return nobody();
        };
        let pipeline = host.pipeline();
        let Some(index) = pipeline.agents.iter().position(|a| {
            a.class == AgentClass::Delivery
                && a.delivery_protocol
                    .eq_ignore_ascii_case(&connector.delivery_protocol)
        }) else {
            return nobody();
        };
        let _permit = match self.limits.get(&connector.name) {
            Some(limit) => Some(Arc::clone(limit).acquire_owned().await),
            None => None,
        };
        let next_hop_domain = connector
            .address_spaces
            .first()
            .map(|s| {
                if s.space == "*" {
                    s.kind.clone()
                } else {
                    s.space.clone()
                }
            })
            .unwrap_or_default();
        let set = AgentSet::new(pipeline, AgentClass::Delivery).restricted_to(index);
        let context = |event: Event, with_item: bool| {
            let mut cx = CallContext::new(event, Service::Transport);
            cx.args = vec![("next_hop_domain", next_hop_domain.clone())];
            if with_item {
                cx.mail_item = Some(item.clone());
            }
            cx
        };
        let fault = |f: &crate::agents::Fault| {
            all(
                item,
                Outcome::Retry(reply(
                    451,
                    "4.4.0",
                    &format!("Delivery agent fault: {}", f.message),
                )),
            )
        };

        // OnOpenConnection
        let (set, cx) = match dispatch_blocking(
            set,
            Event::OnOpenConnection,
            context(Event::OnOpenConnection, false),
        )
        .await
        {
            Blocking::Done(set, cx, Ok(())) => (set, cx),
            Blocking::Done(_, _, Err(f)) => return fault(&f),
            Blocking::Abandoned(f) => return fault(&f),
        };
        if let Some(outcome) = queue_action(&cx.actions) {
            return all(item, outcome);
        }
        if !cx.asked(|a| matches!(a, Action::RegisterConnection { .. })) {
            return nobody();
        }

        // OnDeliverMailItem
        let (set, cx) = match dispatch_blocking(
            set,
            Event::OnDeliverMailItem,
            context(Event::OnDeliverMailItem, true),
        )
        .await
        {
            Blocking::Done(set, cx, Ok(())) => (set, cx),
            Blocking::Done(_, _, Err(f)) => return fault(&f),
            Blocking::Abandoned(f) => return fault(&f),
        };
        let mut outcomes: Vec<(EnvelopeRecipient, Option<Outcome>)> = item
            .envelope
            .recipients
            .iter()
            .map(|r| (r.clone(), None))
            .collect();
        let of = |status: AckStatus, response: &SmtpResponse| match status {
            AckStatus::Success => Outcome::Delivered,
            AckStatus::Retry => Outcome::Retry(response.clone()),
            AckStatus::Fail => Outcome::Fail(response.clone()),
        };
        for action in &cx.actions {
            match action {
                Action::AckRecipient {
                    recipient,
                    status,
                    response,
                } => {
                    for (r, o) in outcomes.iter_mut() {
                        if r.address.eq_ignore_ascii_case(recipient) && o.is_none() {
                            *o = Some(of(*status, response));
                        }
                    }
                }
                Action::AckMailItem { status, response } => {
                    for (_, o) in outcomes.iter_mut().filter(|(_, o)| o.is_none()) {
                        *o = Some(of(*status, response));
                    }
                }
                other => {
                    if let Some(outcome) = queue_action(std::slice::from_ref(other)) {
                        for (_, o) in outcomes.iter_mut().filter(|(_, o)| o.is_none()) {
                            *o = Some(outcome.clone());
                        }
                    }
                }
            }
        }
        let latency_ms = now_ms().saturating_sub(item.trace.received_ms);
        let result: Outcomes = outcomes
            .into_iter()
            .map(|(r, o)| {
                let outcome = o.unwrap_or_else(|| {
                    Outcome::Retry(reply(451, "4.4.0", "DeliveryAgent returned without processing message"))
                });
                if outcome == Outcome::Delivered {
                    tracing::info!(message = "Delivered by agent.", connector = %connector.name, recipient = %r.address, queue_id = %item.id, latency_ms);
                }
                (r, outcome)
            })
            .collect();

        // OnCloseConnection
        let _ = dispatch_blocking(
            set,
            Event::OnCloseConnection,
            context(Event::OnCloseConnection, false),
        )
        .await;
        result
    }
}

/// A FailQueue or DeferQueue action, as an outcome for what is left.
fn queue_action(actions: &[Action]) -> Option<Outcome> {
    actions.iter().find_map(|a| match a {
        Action::FailQueue(r) => Some(Outcome::Fail(r.clone())),
        Action::DeferQueue { response, .. } => Some(Outcome::Retry(response.clone())),
        _ => None,
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_printable_encodes_8bit_and_long_lines() {
        assert_eq!(
            quoted_printable("caf\u{e9} = ok \r\n".as_bytes()),
            b"caf=C3=A9 =3D ok=20\r\n"
        );
        let long = "x".repeat(100);
        let encoded = quoted_printable(long.as_bytes());
        assert!(encoded.split(|b| *b == b'\n').all(|l| l.len() <= 77));
        assert!(encoded.windows(3).any(|w| w == b"=\r\n"));
    }

    #[test]
    fn drop_file_names_use_compact_utc() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_795_603_893);
        assert_eq!(compact_utc(t), "20261125105133");
    }
}
