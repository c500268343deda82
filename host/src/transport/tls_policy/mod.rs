//! How TLS to a destination domain's mail exchangers is decided beyond the send connector's
//! own level: DANE ([`dane`]) where the domain's DNSSEC-authenticated TLSA records say which
//! certificate each exchanger has, else MTA-STS ([`mta_sts`]) where the domain publishes a
//! policy over HTTPS. DANE comes first (RFC 8461 2: a sender that does DANE uses it where
//! TLSA records exist). Both apply to MX routing only: a smart host is the connector's choice.

pub mod dane;
pub mod mta_sts;

use crate::routing::mx::MxResolver;
use crate::smtp::client_tls::TlsMode;
use dane::Tlsa;
use hickory_resolver::proto::rr::RecordType;
use mta_sts::{Mode, Policy};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A DNSSEC answer as kept: when, whether authenticated, its usable TLSA records.
type Cached = (Instant, bool, Vec<Tlsa>);

/// How long a DNSSEC answer is kept.
const ANSWER_TTL: Duration = Duration::from_secs(300);

/// What to do with one exchanger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostTls {
    /// The connector's own level.
    Connector,
    /// TLS with a certificate valid for the exchanger's name (MTA-STS enforce).
    Validated,
    /// TLS with a certificate matching these TLSA records (DANE).
    Dane(Arc<Vec<Tlsa>>),
    /// Not to be used (MTA-STS enforce does not name it).
    Skip,
}

impl HostTls {
    /// The TLS level to connect with, given the connector's.
    pub fn mode(&self, connector: TlsMode) -> TlsMode {
        match self {
            HostTls::Connector | HostTls::Skip => connector,
            HostTls::Validated => TlsMode::DomainValidation,
            HostTls::Dane(_) => TlsMode::Required,
        }
    }
}

/// The decisions of MTA-STS and DANE for the node's MX routing.
pub struct TlsPolicies {
    use_mta_sts: bool,
    use_dane: bool,
    sts_port: u16,
    /// The resolvers asked for DNSSEC-authenticated answers.
    servers: Vec<SocketAddr>,
    roots: Arc<rustls::RootCertStore>,
    cache_dir: PathBuf,
    policies: Mutex<HashMap<String, Policy>>,
    answers: Mutex<HashMap<(String, RecordType), Cached>>,
}

fn now_ms() -> u64 {
    crate::transport::delivery::now_ms()
}

impl TlsPolicies {
    /// For `config`'s `[routing]` settings; certificates of policy hosts are checked against
    /// `roots`.
    pub fn new(config: &crate::config::HostConfig, roots: Arc<rustls::RootCertStore>) -> Self {
        let servers = if config.routing.dns_servers.is_empty() {
            system_servers()
        } else {
            config
                .routing
                .dns_servers
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect()
        };
        Self {
            use_mta_sts: config.routing.mta_sts,
            use_dane: config.routing.dane,
            sts_port: config.routing.mta_sts_port,
            servers,
            roots,
            cache_dir: config.data_dir.join("queue").join("mta-sts"),
            policies: Mutex::new(HashMap::new()),
            answers: Mutex::new(HashMap::new()),
        }
    }

    /// How to treat each of `hosts` (exchanger names) of `domain`, reached at `port`; an error
    /// when the domain's policy allows none of them.
    pub async fn decide(
        &self,
        mx: &MxResolver,
        domain: &str,
        hosts: &[String],
        port: u16,
    ) -> Result<Vec<HostTls>, String> {
        let mut decided = vec![HostTls::Connector; hosts.len()];
        let mut dane_hosts = vec![false; hosts.len()];
        if self.use_dane && self.authentic(domain, RecordType::MX).await {
            for (i, host) in hosts.iter().enumerate() {
                let name = format!("_{port}._tcp.{}", host.trim_end_matches('.'));
                let records = self.tlsa(&name).await;
                if !records.is_empty() {
                    tracing::debug!(message = "DANE applies.", domain = %domain, exchanger = %host, records = records.len());
                    decided[i] = HostTls::Dane(Arc::new(records));
                    dane_hosts[i] = true;
                }
            }
        }
        if !self.use_mta_sts || dane_hosts.iter().all(|d| *d) {
            return Ok(decided);
        }
        let Some(policy) = self.policy(mx, domain).await else {
            return Ok(decided);
        };
        for (i, host) in hosts.iter().enumerate() {
            if dane_hosts[i] {
                continue;
            }
            let allowed = policy.allows(host);
            match policy.mode {
                Mode::Enforce => {
                    decided[i] = if allowed {
                        HostTls::Validated
                    } else {
                        tracing::warn!(message = "MTA-STS: the policy does not name this exchanger; skipped.", domain = %domain, exchanger = %host);
                        HostTls::Skip
                    }
                }
                Mode::Testing if !allowed => {
                    tracing::warn!(message = "MTA-STS (testing): the policy does not name this exchanger.", domain = %domain, exchanger = %host)
                }
                _ => {}
            }
        }
        if decided.iter().all(|d| *d == HostTls::Skip) {
            return Err(format!(
                "no mail exchanger of {domain} is one its MTA-STS policy names ({})",
                policy.mx.join(", ")
            ));
        }
        Ok(decided)
    }

    /// Whether the resolver authenticates `name`'s `rtype` answer.
    async fn authentic(&self, name: &str, rtype: RecordType) -> bool {
        self.answer(name, rtype).await.0
    }

    /// The usable TLSA records at `name`, when authenticated.
    async fn tlsa(&self, name: &str) -> Vec<Tlsa> {
        let (authentic, records) = self.answer(name, RecordType::TLSA).await;
        if authentic {
            records
        } else {
            Vec::new()
        }
    }

    async fn answer(&self, name: &str, rtype: RecordType) -> (bool, Vec<Tlsa>) {
        let key = (name.to_ascii_lowercase(), rtype);
        if let Some((at, authentic, records)) = self.lock_answers().get(&key) {
            if at.elapsed() < ANSWER_TTL {
                return (*authentic, records.clone());
            }
        }
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let (authentic, records) = match dane::query(&self.servers, &fqdn, rtype).await {
            Ok(answer) => (answer.authentic, dane::usable(&answer)),
            Err(e) => {
                tracing::debug!(message = "DNSSEC lookup failed.", name = %name, error = %e);
                (false, Vec::new())
            }
        };
        self.lock_answers()
            .insert(key, (Instant::now(), authentic, records.clone()));
        (authentic, records)
    }

    fn lock_answers(&self) -> std::sync::MutexGuard<'_, HashMap<(String, RecordType), Cached>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The domain's MTA-STS policy: cached while fresh and its TXT id unchanged, else fetched.
    async fn policy(&self, mx: &MxResolver, domain: &str) -> Option<Policy> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let now = now_ms();
        let cached = self.cached(&domain).filter(|p| p.fresh(now));
        let id = match mx.txt(&format!("_mta-sts.{domain}.")).await {
            Ok(records) => records.iter().find_map(|t| mta_sts::txt_id(t)),
            Err(_) => None,
        };
        let Some(id) = id else {
            // No record (or no answer): a fresh cached policy still holds (RFC 8461 5.1).
            return cached;
        };
        if let Some(p) = &cached {
            if p.id == id {
                return cached;
            }
        }
        let host = format!("mta-sts.{domain}.");
        let addresses: Vec<SocketAddr> = mx
            .addresses(&host)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.sts_port))
            .collect();
        match mta_sts::fetch(&domain, &addresses, std::sync::Arc::clone(&self.roots)).await {
            Ok(body) => match Policy::parse(&body, &id, now) {
                Ok(policy) => {
                    tracing::info!(message = "MTA-STS policy fetched.", domain = %domain, id = %id, mode = ?policy.mode, mx = %policy.mx.join(" "), max_age = policy.max_age);
                    self.keep(&domain, &policy);
                    Some(policy)
                }
                Err(e) => {
                    tracing::warn!(message = "MTA-STS policy unreadable.", domain = %domain, error = %e);
                    cached
                }
            },
            Err(e) => {
                tracing::warn!(message = "MTA-STS policy fetch failed.", domain = %domain, error = %e);
                cached
            }
        }
    }

    fn cached(&self, domain: &str) -> Option<Policy> {
        if let Some(p) = self
            .policies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(domain)
        {
            return Some(p.clone());
        }
        let text = std::fs::read(self.cache_dir.join(format!("{domain}.json"))).ok()?;
        let policy: Policy = serde_json::from_slice(&text).ok()?;
        self.policies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_string(), policy.clone());
        Some(policy)
    }

    fn keep(&self, domain: &str, policy: &Policy) {
        self.policies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_string(), policy.clone());
        if let Ok(json) = serde_json::to_vec_pretty(policy) {
            let _ = std::fs::create_dir_all(&self.cache_dir);
            let _ = crate::fsutil::replace(&self.cache_dir.join(format!("{domain}.json")), &json);
        }
    }
}

/// The name servers of /etc/resolv.conf (port 53).
fn system_servers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}
