//! Delivery to each kind of next hop, reporting an outcome per recipient:
//! - Mailbox Transport delivery over SMTP;
//! - a Send connector's smart hosts over SMTP (tried in order);
//! - a Delivery Agent connector (see [`super::agent_connector`]);
//! - a Foreign connector's drop directory, in replay format.

use crate::config::{ForeignConnectorConfig, SendConnectorConfig};
use crate::message::{Envelope, EnvelopeRecipient, MailItem};
use crate::routing::mx::{Exchangers, MxResolver};
use crate::smtp::pool::Pool;
use crate::smtp::reply;
use crate::smtp::send::{Client, Protocol, SendError, Sent, TlsMode};
use crate::transport::tls_policy::{HostTls, TlsPolicies};
use mta_agent_sdk::SmtpResponse;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Why a recipient waits or failed: the reply, and which host gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    /// The reply (the remote server's own, or this host's).
    pub response: SmtpResponse,
    /// The remote MTA that answered (a report's Remote-MTA), when it was not this host.
    pub remote_mta: Option<String>,
    /// The status to report when it is not the reply's own (4.4.7 for an expired message,
    /// whose reply is the last one the next hop gave).
    pub status: Option<String>,
    /// When to try again, if the next hop said (a delivery agent's `defer_queue`).
    pub retry_after: Option<Duration>,
}

impl Diagnosis {
    /// This host's own reply for a message that ran out of time: reported as 4.4.7, a
    /// persistent transient failure (RFC 3463), whatever the reply's own code.
    pub fn expired(response: SmtpResponse) -> Self {
        Self {
            status: Some("4.4.7".into()),
            ..Self::local(response)
        }
    }

    /// This host's own reply.
    pub fn local(response: SmtpResponse) -> Self {
        Self {
            response,
            remote_mta: None,
            status: None,
            retry_after: None,
        }
    }

    /// A remote host's reply.
    pub fn remote(response: SmtpResponse, host: Option<&str>) -> Self {
        Self {
            response,
            remote_mta: host.map(str::to_string),
            status: None,
            retry_after: None,
        }
    }

    /// The enhanced status code to report.
    pub fn status(&self) -> &str {
        self.status
            .as_deref()
            .unwrap_or_else(|| self.response.enhanced_code())
    }
}

/// What became of one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (handed to the next hop, which took responsibility).
    Delivered,
    /// Taken by an SMTP or LMTP server: its reply, and which server (for the tracking log).
    Sent(Diagnosis),
    /// Not now: try again later.
    Retry(Diagnosis),
    /// Never: the sender gets a non-delivery report.
    Fail(Diagnosis),
}

impl Outcome {
    /// A retry for this host's own reason.
    pub fn retry(code: u16, enhanced: &str, text: &str) -> Self {
        Outcome::Retry(Diagnosis::local(reply(code, enhanced, text)))
    }

    /// A failure for this host's own reason.
    pub fn fail(code: u16, enhanced: &str, text: &str) -> Self {
        Outcome::Fail(Diagnosis::local(reply(code, enhanced, text)))
    }

    /// A remote server's refusal: permanent (5xx) fails, anything else waits.
    fn refused(response: SmtpResponse, host: Option<&str>) -> Self {
        let diagnosis = Diagnosis::remote(response, host);
        if diagnosis.response.is_permanent() {
            Outcome::Fail(diagnosis)
        } else {
            Outcome::Retry(diagnosis)
        }
    }
}

/// The outcome of every recipient of an item.
pub type Outcomes = Vec<(EnvelopeRecipient, Outcome)>;

/// The same outcome for every recipient of `item`.
pub fn all(item: &MailItem, outcome: Outcome) -> Outcomes {
    item.envelope
        .recipients
        .iter()
        .map(|r| (r.clone(), outcome.clone()))
        .collect()
}

/// Where an SMTP or LMTP delivery goes.
pub struct Target<'a> {
    /// `host:port` to connect to.
    pub address: &'a str,
    /// The host's name, for a report's Remote-MTA (`None` for this host's own services).
    pub name: Option<&'a str>,
    /// STARTTLS.
    pub tls: TlsMode,
    /// The name its certificate must carry (and the SNI): the connector's `tls_domain`, or
    /// the host's name.
    pub tls_name: Option<&'a str>,
    /// SMTP or LMTP.
    pub protocol: Protocol,
    /// DANE: the exchanger's TLSA records and the names a DANE-TA chain may be for.
    pub dane: Option<(Arc<Vec<super::tls_policy::dane::Tlsa>>, Vec<String>)>,
}

/// SMTP (or LMTP) to `target` for every recipient of `item`, in as many transactions as the
/// server's recipient limit needs. `Err` when no transaction could even start (the host is
/// unreachable), so the caller may try another host.
pub async fn smtp(
    pool: &Pool,
    target: &Target<'_>,
    helo: &str,
    item: &MailItem,
) -> Result<Outcomes, SendError> {
    let _slot = pool.slot(target.address).await;
    let mut outcomes: Outcomes = Vec::new();
    let mut pending: Vec<EnvelopeRecipient> = item.envelope.recipients.clone();
    while !pending.is_empty() {
        let mut part = item.clone();
        part.envelope.recipients = std::mem::take(&mut pending);
        let (client, part, sent) = match one_transaction(pool, target, helo, part).await {
            Ok(Attempt::Sent(pair, sent)) => {
                let (client, part) = *pair;
                (client, part, sent)
            }
            Ok(Attempt::Decided(more)) => {
                outcomes.extend(more);
                break;
            }
            Err(e) if outcomes.is_empty() => return Err(e),
            Err(e) => {
                let waiting = Outcome::Retry(Diagnosis::remote(
                    reply(451, "4.4.2", &format!("Connection lost: {e}")),
                    target.name,
                ));
                outcomes.extend(part_of(&item.envelope.recipients, &outcomes, waiting));
                break;
            }
        };
        let sent = match sent {
            Ok(sent) => {
                pool.put(target.address, target.tls, client);
                sent
            }
            Err(SendError::Rejected(_, r)) => {
                client.quit().await;
                outcomes.extend(all(&part, Outcome::refused(r, target.name)));
                break;
            }
            Err(e) => {
                let waiting = Outcome::Retry(Diagnosis::remote(
                    reply(451, "4.4.2", &format!("Connection lost: {e}")),
                    target.name,
                ));
                outcomes.extend(all(&part, waiting));
                break;
            }
        };
        let mut again = Vec::new();
        for (r, result) in part.envelope.recipients.iter().zip(sent.recipients) {
            match result {
                Ok(response) => outcomes.push((
                    r.clone(),
                    Outcome::Sent(Diagnosis::remote(
                        response,
                        Some(target.name.unwrap_or(target.address)),
                    )),
                )),
                Err(refusal) if refusal.too_many_recipients() => {
                    again.push((r.clone(), refusal.response))
                }
                Err(refusal) => {
                    outcomes.push((r.clone(), Outcome::refused(refusal.response, target.name)))
                }
            }
        }
        if again.len() == part.envelope.recipients.len() {
            // No progress at all: wait for a retry instead of looping.
            outcomes.extend(again.into_iter().map(|(r, response)| {
                (r, Outcome::Retry(Diagnosis::remote(response, target.name)))
            }));
            break;
        }
        pending = again.into_iter().map(|(r, _)| r).collect();
    }
    Ok(outcomes)
}

/// The recipients of `all_recipients` without an outcome yet, each with `outcome`.
fn part_of(all_recipients: &[EnvelopeRecipient], decided: &Outcomes, outcome: Outcome) -> Outcomes {
    all_recipients
        .iter()
        .filter(|r| !decided.iter().any(|(d, _)| d.address == r.address))
        .map(|r| (r.clone(), outcome.clone()))
        .collect()
}

/// What one attempt at a transaction came to.
enum Attempt {
    /// The transaction ran (or failed once started): the client, the item as sent, the result.
    Sent(Box<(Client, MailItem)>, Result<Sent, SendError>),
    /// Decided without a transaction (the next hop cannot take this content).
    Decided(Outcomes),
}

/// One transaction of `item` to `target`, on a pooled connection or a new one. A pooled
/// connection may have been closed by the server meanwhile: then once more, fresh.
async fn one_transaction(
    pool: &Pool,
    target: &Target<'_>,
    helo: &str,
    item: MailItem,
) -> Result<Attempt, SendError> {
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only {
            None
        } else {
            pool.take(target.address, target.tls)
        };
        let reused = pooled.is_some();
        let mut client = match pooled {
            Some(c) => c,
            None => {
                Client::connect_with(
                    target.address,
                    helo,
                    (pool.connect_timeout(), Duration::from_secs(60)),
                    &crate::smtp::send::TlsTarget {
                        mode: target.tls,
                        name: target.tls_name.or(target.name).map(str::to_string),
                        roots: pool.roots(),
                        dane: target.dane.clone(),
                    },
                    target.protocol,
                )
                .await?
            }
        };
        // A message that needs SMTPUTF8 cannot go to a next hop without it (RFC 6531 3.2).
        if item.envelope.smtputf8 && !client.offers("SMTPUTF8") && needs_smtputf8(&item) {
            pool.put(target.address, target.tls, client);
            return Ok(Attempt::Decided(all(
                &item,
                Outcome::fail(
                    553,
                    "5.6.7",
                    "The next hop does not support SMTPUTF8, which this message needs",
                ),
            )));
        }
        // Content conversion: a next hop without 8BITMIME gets 7-bit content (RFC 6152).
        let part = if !client.offers("8BITMIME") && !item.message.is_ascii() {
            let (copy, spool) = (item.clone(), pool.spool().cloned());
            let converted = tokio::task::spawn_blocking(move || seven_bit(&copy, spool.as_ref()))
                .await
                .ok()
                .flatten();
            match converted {
                Some(copy) => copy,
                None => {
                    pool.put(target.address, target.tls, client);
                    return Ok(Attempt::Decided(all(
                        &item,
                        Outcome::fail(554, "5.6.3", "The next hop does not accept 8-bit content and this message cannot be converted"),
                    )));
                }
            }
        } else {
            item.clone()
        };
        let (params, rcpts) = parameters(&client, &part);
        let sent = client
            .transaction(&part.envelope.from, &params, &rcpts, &part.message)
            .await;
        match sent {
            Err(SendError::Io(..)) if reused => fresh_only = true,
            sent => return Ok(Attempt::Sent(Box::new((client, part)), sent)),
        }
    }
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

/// MAIL parameters, encoded for the wire: the envelope's, where the next hop understands them
/// (BODY with 8BITMIME, SMTPUTF8, and RET and ENVID with DSN). ENVID is xtext-encoded again
/// here: what a client sent never reaches a command line as it came.
pub fn mail_parameters(client: &Client, envelope: &Envelope) -> String {
    let mut params = String::new();
    if let Some(body) = envelope.body_type {
        if client.offers("8BITMIME") {
            params.push_str(&format!(" BODY={}", body.as_str()));
        }
    }
    if envelope.smtputf8 && client.offers("SMTPUTF8") {
        params.push_str(" SMTPUTF8");
    }
    if client.offers("DSN") {
        if let Some(ret) = envelope.ret {
            params.push_str(&format!(" RET={}", ret.as_str()));
        }
        if let Some(envid) = &envelope.envid {
            params.push_str(&format!(" ENVID={}", crate::smtp::xtext::encode(envid)));
        }
    }
    params
}

/// RCPT parameters, encoded for the wire: NOTIFY and ORCPT (xtext) to a next hop with DSN.
pub fn rcpt_parameters(client: &Client, recipient: &EnvelopeRecipient) -> String {
    let mut p = String::new();
    if client.offers("DSN") {
        if let Some(n) = &recipient.notify {
            p.push_str(&format!(" NOTIFY={n}"));
        }
        if let Some(o) = &recipient.orcpt {
            p.push_str(&format!(" ORCPT={}", o.to_xtext()));
        }
    }
    p
}

/// The MAIL parameters and each recipient with its RCPT parameters.
fn parameters(client: &Client, item: &MailItem) -> (String, Vec<(String, String)>) {
    let rcpts = item
        .envelope
        .recipients
        .iter()
        .map(|r| (r.address.clone(), rcpt_parameters(client, r)))
        .collect();
    (mail_parameters(client, &item.envelope), rcpts)
}

/// A copy of a single-part text message with its body quoted-printable encoded, so that it is
/// 7-bit; `None` for other messages (multipart or non-text 8-bit content is not converted). A
/// spooled body is converted a piece at a time into a new spool file in `spool`. Blocking.
fn seven_bit(
    item: &MailItem,
    spool: Option<&crate::message::body::SpoolPlace>,
) -> Option<MailItem> {
    let headers_ascii = item.message.fields().iter().all(|f| f.value().is_ascii());
    let content_type = item
        .message
        .header("Content-Type")
        .unwrap_or_else(|| "text/plain".into());
    if !headers_ascii || !content_type.to_ascii_lowercase().starts_with("text/") {
        return None;
    }
    let mut copy = item.clone();
    let mut encoder = QuotedPrintable::default();
    let mut body = crate::message::body::BodyBuilder::new(spool.cloned());
    let mut out = Vec::new();
    item.message
        .body()
        .for_each_chunk(|chunk| {
            out.clear();
            encoder.push(chunk, &mut out);
            body.push(&out)
        })
        .ok()?;
    out.clear();
    encoder.finish(&mut out);
    body.push(&out).ok()?;
    copy.message.set_content(body.finish().ok()?);
    copy.message
        .set_header("Content-Transfer-Encoding", "quoted-printable")
        .ok()?;
    if copy.message.header("MIME-Version").is_none() {
        copy.message.set_header("MIME-Version", "1.0").ok()?;
    }
    copy.envelope.body_type = None;
    Some(copy)
}

/// Quoted-printable (RFC 2045 6.7), keeping CRLF line breaks (a bare LF becomes one too),
/// soft breaks at 76 columns; a piece at a time. A white space byte is held until the next
/// byte shows whether it ends its line (then it is encoded), and a CR until the next shows
/// whether it ends the line.
#[derive(Default)]
struct QuotedPrintable {
    column: usize,
    /// A space or tab not yet known to be last on its line.
    space: Option<u8>,
    /// A CR not yet known to be part of CRLF.
    cr: bool,
}

impl QuotedPrintable {
    fn emit(&mut self, b: u8, literal: bool, out: &mut Vec<u8>) {
        let width = if literal { 1 } else { 3 };
        if self.column + width > 75 {
            out.extend_from_slice(b"=\r\n");
            self.column = 0;
        }
        self.column += width;
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(format!("={b:02X}").as_bytes());
        }
    }

    /// What is held is content with more content after it: the space was not last on its
    /// line, and the CR did not end it.
    fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some(space) = self.space.take() {
            self.emit(space, true, out);
        }
        if std::mem::take(&mut self.cr) {
            self.emit(b'\r', false, out);
        }
    }

    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        out.reserve(bytes.len() + bytes.len() / 4);
        for &b in bytes {
            match b {
                b'\n' => {
                    // The line ends (a CR held was its CRLF): a held space was last on it.
                    if let Some(space) = self.space.take() {
                        self.emit(space, false, out);
                    }
                    self.cr = false;
                    out.extend_from_slice(b"\r\n");
                    self.column = 0;
                }
                b'\r' => {
                    if self.cr {
                        self.flush(out);
                    }
                    self.cr = true;
                }
                b' ' | b'\t' => {
                    self.flush(out);
                    self.space = Some(b);
                }
                _ => {
                    self.flush(out);
                    self.emit(b, (33..=126).contains(&b) && b != b'=', out);
                }
            }
        }
    }

    /// The body ended without a line break: a CR held is content; a space held, last.
    fn finish(mut self, out: &mut Vec<u8>) {
        if self.cr {
            self.flush(out);
        } else if let Some(space) = self.space.take() {
            self.emit(space, false, out);
        }
    }
}

/// Through a Send connector: its smart hosts in order until one answers, or, without smart
/// hosts, each recipient domain's mail exchangers from DNS.
pub async fn send_connector(
    pool: &Pool,
    connector: &SendConnectorConfig,
    helo: &str,
    item: &MailItem,
    mx: Option<(&MxResolver, &TlsPolicies)>,
) -> Outcomes {
    if connector.smart_hosts.is_empty() {
        return match mx {
            Some((mx, policies)) => by_mx(pool, connector, helo, item, mx, policies).await,
            None => all(
                item,
                Outcome::retry(451, "4.4.3", "No DNS resolver for MX routing"),
            ),
        };
    }
    let hosts: Vec<(String, String)> = connector
        .smart_hosts
        .iter()
        .map(|h| {
            let name = h.rsplit_once(':').map_or(h.as_str(), |(name, _)| name);
            (name.trim_matches(['[', ']']).to_string(), h.clone())
        })
        .collect();
    let hosts: Vec<(String, String, HostTls)> = hosts
        .into_iter()
        .map(|(n, a)| (n, a, HostTls::Connector))
        .collect();
    first_answering(pool, connector, helo, item, &hosts, None).await
}

/// Tries `hosts` (name, address) in order; the first that answers decides every recipient.
async fn first_answering(
    pool: &Pool,
    connector: &SendConnectorConfig,
    helo: &str,
    item: &MailItem,
    hosts: &[(String, String, HostTls)],
    domain: Option<&str>,
) -> Outcomes {
    let mut last: Option<(String, SendError)> = None;
    for (name, address, host_tls) in hosts {
        if *host_tls == HostTls::Skip {
            continue;
        }
        let target = Target {
            address,
            name: Some(name),
            tls: host_tls.mode(connector.tls),
            // A policy's check is against the exchanger's own name.
            tls_name: match host_tls {
                HostTls::Connector => connector.tls_domain.as_deref(),
                _ => None,
            },
            protocol: Protocol::Smtp,
            dane: match host_tls {
                HostTls::Dane(records) => Some((
                    Arc::clone(records),
                    std::iter::once(name.clone())
                        .chain(domain.map(str::to_string))
                        .collect(),
                )),
                _ => None,
            },
        };
        match smtp(pool, &target, helo, item).await {
            Ok(outcomes) => return outcomes,
            Err(e) => {
                tracing::info!(message = "Next hop unavailable.", connector = %connector.name, host = %address, error = %e);
                last = Some((name.clone(), e));
            }
        }
    }
    let diagnosis = match last {
        // The host's own refusal (a 421 or 554 greeting, a refused EHLO) is what the report
        // and the queue should show; as no host took the message, it waits either way.
        Some((name, SendError::Rejected(_, response))) => Diagnosis::remote(response, Some(&name)),
        other => Diagnosis::local(reply(
            451,
            "4.4.1",
            &format!(
                "No host of send connector {} answered ({})",
                connector.name,
                other.map(|(_, e)| e.to_string()).unwrap_or_default()
            ),
        )),
    };
    all(item, Outcome::Retry(diagnosis))
}

/// One delivery per recipient domain, to its mail exchangers.
async fn by_mx(
    pool: &Pool,
    connector: &SendConnectorConfig,
    helo: &str,
    item: &MailItem,
    mx: &MxResolver,
    policies: &TlsPolicies,
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
            Exchangers::Hosts(hosts) => {
                let names: Vec<String> = hosts
                    .iter()
                    .map(|(name, _)| name.trim_end_matches('.').to_string())
                    .collect();
                let decided = match policies.decide(mx, &domain, &names, connector.port).await {
                    Ok(decided) => decided,
                    Err(why) => {
                        outcomes.extend(all(&part, Outcome::retry(451, "4.7.5", &why)));
                        continue;
                    }
                };
                let hosts: Vec<(String, String, HostTls)> = hosts
                    .into_iter()
                    .zip(names)
                    .zip(decided)
                    .map(|(((_, addr), name), tls)| (name, addr.to_string(), tls))
                    .collect();
                outcomes.extend(
                    first_answering(pool, connector, helo, &part, &hosts, Some(&domain)).await,
                );
            }
            Exchangers::NoMail(why) => {
                let code = if why.contains("null MX") {
                    (556, "5.1.10")
                } else {
                    (550, "5.1.2")
                };
                outcomes.extend(all(&part, Outcome::fail(code.0, code.1, &why)));
            }
            Exchangers::Refused(why) => {
                outcomes.extend(all(&part, Outcome::fail(554, "5.4.4", &why)))
            }
            Exchangers::Unavailable(why) => {
                outcomes.extend(all(&part, Outcome::retry(451, "4.4.3", &why)))
            }
        }
    }
    outcomes
}

/// Into a Foreign connector's drop directory, in replay format:
/// `{host}-{id}-{yyyyMMddHHmmssZ}.{priority}.eml` with leading X-Sender / X-Receiver fields,
/// whose parameters are encoded as in MAIL FROM and RCPT TO.
pub fn foreign_connector(
    connector: &ForeignConnectorConfig,
    hostname: &str,
    item: &MailItem,
) -> Outcomes {
    let dir = &connector.drop_directory;
    if !dir.is_dir() {
        return all(
            item,
            Outcome::retry(
                451,
                "4.4.0",
                &format!("Drop directory {} is missing", dir.display()),
            ),
        );
    }
    let envelope = replay_envelope(item);
    let size = (envelope.len() + item.message.len()) as u64;
    if let Some(quota) = connector.quota_bytes {
        if directory_size(dir) + size > quota {
            return all(
                item,
                Outcome::retry(452, "4.3.1", "Drop directory is over its quota"),
            );
        }
    }
    let stamp = compact_utc(std::time::SystemTime::now());
    let name = format!("{}-{}-{stamp}Z.0.eml", hostname, item.id);
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::io::BufWriter::with_capacity(64 * 1024, std::fs::File::create(&tmp)?);
        f.write_all(envelope.as_bytes())?;
        item.message.write_to(&mut f)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, dir.join(&name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    match written {
        Ok(()) => all(item, Outcome::Delivered),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            all(
                item,
                Outcome::retry(
                    451,
                    "4.3.0",
                    &format!("Cannot write to the drop directory: {e}"),
                ),
            )
        }
    }
}

/// The leading X-Sender and X-Receiver fields of a replay file.
fn replay_envelope(item: &MailItem) -> String {
    let envelope = &item.envelope;
    let mut out = format!("X-Sender: <{}>", envelope.from);
    if let Some(ret) = envelope.ret {
        out.push_str(&format!(" RET={}", ret.as_str()));
    }
    if let Some(envid) = &envelope.envid {
        out.push_str(&format!(" ENVID={}", crate::smtp::xtext::encode(envid)));
    }
    if let Some(body) = envelope.body_type {
        out.push_str(&format!(" BODY={}", body.as_str()));
    }
    if envelope.smtputf8 {
        out.push_str(" SMTPUTF8");
    }
    out.push_str("\r\n");
    for r in &envelope.recipients {
        out.push_str(&format!("X-Receiver: <{}>", r.address));
        if let Some(n) = &r.notify {
            out.push_str(&format!(" NOTIFY={n}"));
        }
        if let Some(o) = &r.orcpt {
            out.push_str(&format!(" ORCPT={}", o.to_xtext()));
        }
        out.push_str("\r\n");
    }
    out
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

/// The queue a copy waits in: its next hop, and for a Send connector that delivers by MX, the
/// recipient domain (each destination domain has its own queue, so one slow domain holds up
/// only its own mail).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    /// The next hop.
    pub hop: crate::routing::NextHop,
    /// The destination domain, for MX delivery.
    pub domain: Option<String>,
}

impl QueueKey {
    /// The queue's name, as logs and `mta queue list` show it (`delivery-send-Internet`,
    /// `delivery-send-Internet/far.test`).
    pub fn name(&self) -> String {
        match &self.domain {
            Some(d) => format!("{}/{d}", self.hop.queue_name()),
            None => self.hop.queue_name(),
        }
    }

    /// The directory its items are kept in (one per next hop).
    pub fn dir_name(&self) -> String {
        self.hop.queue_name()
    }

    /// The key of a queued item, from its trace.
    pub fn of(item: &MailItem) -> Option<Self> {
        let hop = item
            .trace
            .next_hop
            .as_deref()
            .and_then(crate::routing::NextHop::from_key)?;
        Some(Self {
            hop,
            domain: item.trace.next_hop_domain.clone(),
        })
    }
}

/// Delivers a copy to its next hop, whatever its kind.
pub struct Deliverer {
    config: crate::config::HostConfig,
    /// Idle connections to next hops, reused.
    pool: Arc<Pool>,
    /// For send connectors without smart hosts.
    mx: Option<MxResolver>,
    /// DANE and MTA-STS for MX routing.
    policies: TlsPolicies,
    agent_connectors: Arc<super::agent_connector::AgentConnectors>,
    send_limits: std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>,
}

/// What one attempt came to.
pub struct Attempted {
    /// Each recipient's outcome.
    pub outcomes: Outcomes,
    /// A delivery agent failed its whole queue with this reply: what waits in it fails.
    pub queue_failed: Option<SmtpResponse>,
    /// Messages a delivery agent submitted.
    pub submitted: Vec<MailItem>,
}

/// Which mail exchangers MX routing refuses (this host, non-public addresses).
fn mx_policy(config: &crate::config::HostConfig) -> crate::routing::mx::MxPolicy {
    let mut own_names = vec![config.hostname.trim_end_matches('.').to_ascii_lowercase()];
    if let Some(server) = &config.routing.server {
        own_names.push(server.to_ascii_lowercase());
    }
    crate::routing::mx::MxPolicy {
        refuse_private: config.routing.refuse_private_mx,
        own_names,
        own_addresses: [&config.frontend, &config.transport, &config.mailbox]
            .iter()
            .filter_map(|l| l.listen.parse().ok())
            .collect(),
    }
}

impl Deliverer {
    /// For `config`'s connectors and the Transport service's agents. Starts timers (idle
    /// connections), so it must be called inside the tokio runtime.
    pub fn new(
        config: &crate::config::HostConfig,
        agents: Option<Arc<crate::agents::AgentHost>>,
    ) -> Self {
        let roots = crate::smtp::client_tls::roots_with(config.tls.ca_file.as_deref())
            .unwrap_or_else(|e| {
                tracing::error!(message = "Cannot read the CA file; Mozilla's roots only.", error = %e);
                crate::smtp::client_tls::bundled_roots()
            });
        Self {
            agent_connectors: super::agent_connector::AgentConnectors::new(
                agents,
                &config.delivery_agent_connectors,
            ),
            send_limits: config
                .send_connectors
                .iter()
                .map(|c| {
                    let n = c.max_concurrent_connections.unwrap_or(20).max(1);
                    (c.name.clone(), Arc::new(tokio::sync::Semaphore::new(n)))
                })
                .collect(),
            pool: Pool::new(
                Duration::from_millis(config.routing.idle_connection_ms.max(1)),
                Some(config.spool_place(crate::service::Service::Transport)),
                Duration::from_millis(config.routing.connect_timeout_ms.max(1)),
                Arc::clone(&roots),
            ),
            policies: TlsPolicies::new(config, roots),
            mx: config
                .send_connectors
                .iter()
                .any(|c| c.smart_hosts.is_empty())
                .then(|| MxResolver::new(&config.routing.dns_servers, mx_policy(config)))
                .and_then(|r| r.map_err(|e| tracing::error!(message = "No DNS resolver; MX routing will retry.", error = %e)).ok()),
            config: config.clone(),
        }
    }

    /// Whether a Send connector delivers by MX (one queue per destination domain).
    pub fn by_mx(&self, connector: &str) -> bool {
        self.config
            .send_connectors
            .iter()
            .any(|c| c.name == connector && c.smart_hosts.is_empty())
    }

    /// How many copies of one queue are delivered at once.
    pub fn concurrency(&self, hop: &crate::routing::NextHop) -> usize {
        use crate::routing::NextHop;
        match hop {
            NextHop::Mailbox => 20,
            NextHop::Send(name) => self
                .config
                .send_connectors
                .iter()
                .find(|c| &c.name == name)
                .and_then(|c| c.max_concurrent_connections)
                .unwrap_or(20)
                .max(1),
            NextHop::Agent(name) => self
                .config
                .delivery_agent_connectors
                .iter()
                .find(|c| &c.name == name)
                .and_then(|c| c.max_concurrent_connections)
                .unwrap_or(5)
                .max(1),
            NextHop::Foreign(_) => 4,
        }
    }

    /// One attempt at delivering `item` to its next hop.
    pub async fn attempt(&self, key: &QueueKey, item: &MailItem) -> Attempted {
        use crate::routing::NextHop;
        let plain = |outcomes| Attempted {
            outcomes,
            queue_failed: None,
            submitted: Vec::new(),
        };
        let gone = |name: &str| {
            plain(all(
                item,
                Outcome::retry(451, "4.4.0", &format!("Connector {name} no longer exists")),
            ))
        };
        match &key.hop {
            NextHop::Mailbox => {
                let address = self.config.node_address(crate::service::Service::Mailbox);
                let target = Target {
                    address: &address,
                    name: None,
                    tls: TlsMode::None,
                    tls_name: None,
                    dane: None,
                    protocol: Protocol::Lmtp,
                };
                plain(
                    smtp(&self.pool, &target, &self.config.hostname, item)
                        .await
                        .unwrap_or_else(|e| {
                            all(
                                item,
                                Outcome::retry(
                                    451,
                                    "4.4.1",
                                    &format!("Mailbox Transport unavailable: {e}"),
                                ),
                            )
                        }),
                )
            }
            NextHop::Send(name) => {
                let Some(c) = self.config.send_connectors.iter().find(|c| &c.name == name) else {
                    return gone(name);
                };
                // Per-connector concurrency, across its destination domains.
                let _permit = match self.send_limits.get(name) {
                    Some(limit) => Some(Arc::clone(limit).acquire_owned().await),
                    None => None,
                };
                plain(
                    send_connector(
                        &self.pool,
                        c,
                        &self.config.hostname,
                        item,
                        self.mx.as_ref().map(|mx| (mx, &self.policies)),
                    )
                    .await,
                )
            }
            NextHop::Agent(name) => {
                let Some(c) = self
                    .config
                    .delivery_agent_connectors
                    .iter()
                    .find(|c| &c.name == name)
                else {
                    return gone(name);
                };
                let d = self.agent_connectors.deliver(c, item).await;
                Attempted {
                    outcomes: d.outcomes,
                    queue_failed: d.queue_failed,
                    submitted: d.submitted,
                }
            }
            NextHop::Foreign(name) => {
                let Some(c) = self
                    .config
                    .foreign_connectors
                    .iter()
                    .find(|c| &c.name == name)
                else {
                    return gone(name);
                };
                let (c, hostname, copy) = (c.clone(), self.config.hostname.clone(), item.clone());
                plain(
                    tokio::task::spawn_blocking(move || foreign_connector(&c, &hostname, &copy))
                        .await
                        .unwrap_or_default(),
                )
            }
        }
    }

    /// Closes idle outbound connections (at a stop).
    pub fn close_idle(&self) {
        self.pool.close_all();
    }
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

    /// The encoder over a whole body.
    fn quoted_printable(body: &[u8]) -> Vec<u8> {
        let (mut qp, mut out) = (QuotedPrintable::default(), Vec::new());
        qp.push(body, &mut out);
        qp.finish(&mut out);
        out
    }

    /// Line by line, as a reference for the encoder.
    /// Quoted-printable (RFC 2045 6.7), keeping CRLF line breaks, soft breaks at 76 columns.
    fn quoted_printable_by_lines(body: &[u8]) -> Vec<u8> {
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

    proptest::proptest! {
        #[test]
        fn quoted_printable_in_pieces_is_quoted_printable_by_lines(
            parts in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(b"\r\n".to_vec()), proptest::strategy::Just(b"\n".to_vec()),
                proptest::strategy::Just(b"\r".to_vec()), proptest::strategy::Just(b" ".to_vec()),
                proptest::strategy::Just(b"\t".to_vec()), proptest::strategy::Just(b"=".to_vec()),
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..90),
            ], 0..30),
            cut in 1usize..40,
        ) {
            let body: Vec<u8> = parts.concat();
            let (mut qp, mut out) = (QuotedPrintable::default(), Vec::new());
            for piece in body.chunks(cut) {
                qp.push(piece, &mut out);
            }
            qp.finish(&mut out);
            proptest::prop_assert_eq!(out, quoted_printable_by_lines(&body));
        }
    }

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
