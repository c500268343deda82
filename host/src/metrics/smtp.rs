//! The receive side of SMTP: sessions, TLS handshakes, and every refusal it answers.
//!
//! Refusals are counted from the replies as they are written ([`Smtp::replies`]): whatever
//! refused (the session's rules, an agent, back pressure, the next hop through a Front End), the
//! client saw a 4xx or 5xx reply, and that is what is counted, by its code and enhanced code.

use super::ServiceLabel;
use crate::service::Service;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    service: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    service: &'static str,
    code: u16,
    enhanced: String,
}

/// The SMTP receive metrics.
pub struct Smtp {
    sessions: Family<ServiceLabel, Counter>,
    open: Family<ServiceLabel, Gauge>,
    handshakes: Family<HandshakeLabels, Counter>,
    rejections: Family<RejectionLabels, Counter>,
}

/// An open session: counted in `mta_smtp_sessions_open` until dropped.
pub struct OpenSession(Gauge);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Smtp {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let this = Self {
            sessions: Family::default(),
            open: Family::default(),
            handshakes: Family::default(),
            rejections: Family::default(),
        };
        registry.register(
            "smtp_sessions",
            "SMTP sessions accepted, by service (own-service sockets included)",
            this.sessions.clone(),
        );
        registry.register(
            "smtp_sessions_open",
            "SMTP sessions open now, by service",
            this.open.clone(),
        );
        registry.register(
            "smtp_tls_handshakes",
            "STARTTLS handshakes, by service and result (ok, failed)",
            this.handshakes.clone(),
        );
        registry.register(
            "smtp_rejections",
            "Negative replies (4xx, 5xx) sent to SMTP clients, by service, reply code and enhanced status code",
            this.rejections.clone(),
        );
        this
    }

    /// A session of `service` begins; it ends when the returned value is dropped.
    pub fn session(&self, service: Service) -> OpenSession {
        let label = ServiceLabel {
            service: service.as_str(),
        };
        self.sessions.get_or_create(&label).inc();
        let open = self.open.get_or_create_owned(&label);
        open.inc();
        OpenSession(open)
    }

    /// A STARTTLS handshake ended.
    pub fn handshake(&self, service: Service, ok: bool) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                service: service.as_str(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// Counts the negative replies in `output` (what a session is about to write).
    pub fn replies(&self, service: Service, output: &[u8]) {
        for (code, enhanced) in negative_replies(output) {
            self.rejections
                .get_or_create(&RejectionLabels {
                    service: service.as_str(),
                    code,
                    enhanced: enhanced.to_string(),
                })
                .inc();
        }
    }
}

/// The code and enhanced code (empty when there is none) of each final line of a 4xx or 5xx
/// reply in `output`. A multi-line reply counts once, at its last line (`550 ` not `550-`).
fn negative_replies(output: &[u8]) -> impl Iterator<Item = (u16, &str)> {
    output.split(|b| *b == b'\n').filter_map(|line| {
        let head = line.get(..4)?;
        if !matches!(head[0], b'4' | b'5') || head[3] != b' ' {
            return None;
        }
        let code: u16 = std::str::from_utf8(&head[..3]).ok()?.parse().ok()?;
        let rest = std::str::from_utf8(&line[4..]).unwrap_or("");
        let word = rest.split_ascii_whitespace().next().unwrap_or("");
        let enhanced = if is_enhanced(word) { word } else { "" };
        Some((code, enhanced))
    })
}

/// `class.subject.detail` (RFC 3463).
fn is_enhanced(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_final_lines_of_negative_replies_count() {
        let output = b"250-mx.example.test\r\n250 SIZE 1000\r\n550-5.1.1 no\r\n550 5.1.1 No such user\r\n452 4.3.1 Insufficient system resources\r\n354 Go ahead\r\n500 Syntax error\r\n";
        let found: Vec<(u16, &str)> = negative_replies(output).collect();
        assert_eq!(found, [(550, "5.1.1"), (452, "4.3.1"), (500, "")]);
    }
}
