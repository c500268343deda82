//! MTA-STS (RFC 8461): a domain announces with a TXT record at `_mta-sts.<domain>`
//! (`v=STSv1; id=...`) a policy served over HTTPS at
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt`, whose certificate must be valid for that
//! name. In `mode: enforce`, mail for the domain goes only to the exchangers its `mx:` patterns
//! name, over TLS with a certificate valid for the exchanger's name; in `mode: testing` a
//! failure is only logged. A policy is kept for its `max_age` (in memory and under
//! `<data_dir>/queue/mta-sts/`, so it survives a restart) and fetched again when the TXT
//! record's id changes.

use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The largest policy body taken (RFC 8461 3.3 suggests 64 KiB).
const MAX_POLICY: usize = 64 * 1024;

/// A policy's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deliver only as the policy says.
    Enforce,
    /// Log what the policy would refuse; deliver anyway.
    Testing,
    /// No policy (a domain withdrawing one).
    None,
}

/// A domain's policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The TXT record's id it was fetched for.
    pub id: String,
    /// Its mode.
    pub mode: Mode,
    /// Exchanger name patterns (`mx.example.com`, `*.example.com`).
    pub mx: Vec<String>,
    /// How long it may be kept, in seconds.
    pub max_age: u64,
    /// When it was fetched (ms since the epoch).
    pub fetched_ms: u64,
}

impl Policy {
    /// Parses a policy body (RFC 8461 3.2): `key: value` lines.
    pub fn parse(text: &str, id: &str, now_ms: u64) -> Result<Self, String> {
        let mut version = None;
        let mut mode = None;
        let mut mx = Vec::new();
        let mut max_age = None;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = Some(value.to_string()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(format!("unknown mode {other:?}")),
                    })
                }
                "mx" => mx.push(value.to_ascii_lowercase()),
                "max_age" => {
                    max_age = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| format!("max_age {value:?} is not a number"))?,
                    )
                }
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("not an STSv1 policy".into());
        }
        let mode = mode.ok_or("no mode")?;
        if mode != Mode::None && mx.is_empty() {
            return Err("no mx pattern".into());
        }
        Ok(Self {
            id: id.to_string(),
            mode,
            mx,
            max_age: max_age.ok_or("no max_age")?.min(31_557_600),
            fetched_ms: now_ms,
        })
    }

    /// Whether the exchanger `host` is one the policy names: exactly, or as `*.parent` for one
    /// more label (RFC 8461 4.1).
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => host == *pattern,
            })
    }

    /// Whether it may still be used at `now_ms`.
    pub fn fresh(&self, now_ms: u64) -> bool {
        now_ms
            < self
                .fetched_ms
                .saturating_add(self.max_age.saturating_mul(1000))
    }
}

/// The id of a `_mta-sts` TXT record (`v=STSv1; id=...`), if it is one.
pub fn txt_id(txt: &str) -> Option<String> {
    let mut fields = txt.split(';').map(str::trim);
    if fields.next()? != "v=STSv1" {
        return None;
    }
    fields
        .find_map(|f| f.strip_prefix("id="))
        .map(str::to_string)
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Fetches `https://mta-sts.<domain>/.well-known/mta-sts.txt` from `addresses` (the policy
/// host's addresses, at the port given), checking its certificate against `roots`.
pub async fn fetch(
    domain: &str,
    addresses: &[SocketAddr],
    roots: Arc<rustls::RootCertStore>,
) -> Result<String, String> {
    let host = format!("mta-sts.{domain}");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
    let mut last = format!("{host} has no address");
    for addr in addresses {
        match tokio::time::timeout(
            Duration::from_secs(15),
            get(&connector, name.clone(), *addr, &host),
        )
        .await
        {
            Ok(Ok(body)) => return Ok(body),
            Ok(Err(e)) => last = format!("{host} ({addr}): {e}"),
            Err(_) => last = format!("{host} ({addr}): timed out"),
        }
    }
    Err(last)
}

async fn get(
    connector: &tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    addr: SocketAddr,
    host: &str,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let request = format!(
        "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mta\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut limited = (&mut tls).take((MAX_POLICY + 16 * 1024) as u64);
    // A server that closes without close_notify still sent what it sent.
    let _ = limited.read_to_end(&mut raw).await;
    parse_response(&raw)
}

/// The body of an HTTP response (status 200, `text/plain`, no redirect followed).
fn parse_response(raw: &[u8]) -> Result<String, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response
        .parse(raw)
        .map_err(|e| format!("bad HTTP response: {e}"))?
    {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Err("incomplete HTTP response".into()),
    };
    if response.code != Some(200) {
        return Err(format!("HTTP status {:?}", response.code.unwrap_or(0)));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    if !header("content-type").is_some_and(|t| t.starts_with("text/plain")) {
        return Err("the policy is not text/plain".into());
    }
    let mut body = raw[head..].to_vec();
    if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let (at, size) = match httparse::parse_chunk_size(rest) {
                Ok(httparse::Status::Complete(pair)) => pair,
                _ => return Err("bad chunked body".into()),
            };
            if size == 0 {
                break;
            }
            let size = size as usize;
            let chunk = rest.get(at..at + size).ok_or("truncated chunked body")?;
            out.extend_from_slice(chunk);
            rest = rest.get(at + size + 2..).unwrap_or_default();
        }
        body = out;
    } else if let Some(len) = header("content-length").and_then(|l| l.trim().parse::<usize>().ok())
    {
        body.truncate(len);
    }
    if body.len() > MAX_POLICY {
        return Err("the policy is too large".into());
    }
    String::from_utf8(body).map_err(|_| "the policy is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_name_their_exchangers() {
        let p = Policy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.far.test\r\nmx: *.backup.far.test\r\nmax_age: 86400\r\n",
            "20260101",
            0,
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert!(p.allows("MAIL.far.test."));
        assert!(p.allows("b1.backup.far.test"));
        assert!(!p.allows("a.b1.backup.far.test"), "one label only");
        assert!(!p.allows("backup.far.test"));
        assert!(!p.allows("evil.test"));
        assert!(p.fresh(86_399_000) && !p.fresh(86_400_000));
        assert!(Policy::parse("version: STSv1\nmode: enforce\nmax_age: 1\n", "1", 0).is_err());
        assert!(Policy::parse("mode: enforce\nmx: a\nmax_age: 1\n", "1", 0).is_err());
        assert_eq!(txt_id("v=STSv1; id=abc123;").as_deref(), Some("abc123"));
        assert_eq!(txt_id("v=spf1 -all"), None);
    }

    #[test]
    fn only_a_plain_200_answer_is_a_policy() {
        let ok =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloextra";
        assert_eq!(parse_response(ok).unwrap(), "hello");
        let chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), "hello");
        let redirect = b"HTTP/1.1 301 Moved\r\nLocation: https://evil.test/\r\n\r\n";
        assert!(parse_response(redirect).is_err());
        let html = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\nx";
        assert!(parse_response(html).is_err());
    }
}
