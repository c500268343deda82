//! Mail exchangers of a domain from DNS (RFC 5321 section 5): MX records by preference, the
//! domain's own address when it has none (implicit MX), and "no mail" for a null MX (RFC 7505).
//!
//! An exchanger that is this host (its name, or one of its listen addresses) or whose address
//! is loopback, private, link-local or otherwise not a public unicast address is skipped: a
//! domain's DNS must not make this host deliver to itself or into the local network
//! (`[routing] refuse_private_mx`, on except in tests). When nothing is left, the domain's
//! mail fails with `5.4.4`.

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::Resolver;
use std::net::{IpAddr, SocketAddr};

/// What DNS says about delivering to a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exchangers {
    /// Hosts to try, in order (by MX preference, then as resolved): each exchanger's name and
    /// one of its addresses.
    Hosts(Vec<(String, SocketAddr)>),
    /// The domain does not exist, or publishes a null MX: never deliverable.
    NoMail(String),
    /// DNS did not answer: try again later.
    Unavailable(String),
    /// Every exchanger was refused (this host, or not a public address): never deliverable.
    Refused(String),
}

/// Which exchangers are refused.
#[derive(Clone, Debug, Default)]
pub struct MxPolicy {
    /// Refuse loopback, private and other non-public addresses, and this host.
    pub refuse_private: bool,
    /// This host's names (lower case, without the final dot).
    pub own_names: Vec<String>,
    /// This host's listen addresses.
    pub own_addresses: Vec<SocketAddr>,
}

impl MxPolicy {
    /// Why `name` at `addr` is refused, if it is.
    fn refuses(&self, name: &str, addr: SocketAddr) -> Option<&'static str> {
        if !self.refuse_private {
            return None;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.own_names.contains(&name) || self.own_addresses.contains(&addr) {
            return Some("this host");
        }
        (!is_public(addr.ip())).then_some("not a public address")
    }
}

/// Whether `ip` is a public unicast address (not loopback, private, link-local, shared,
/// documentation, multicast or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// A resolver for MX lookups.
pub struct MxResolver {
    resolver: Resolver<TokioRuntimeProvider>,
    policy: MxPolicy,
}

impl MxResolver {
    /// With these DNS servers (`ip:port`), or the system's configuration when empty.
    pub fn new(servers: &[String], policy: MxPolicy) -> Result<Self, String> {
        let resolver = if servers.is_empty() {
            Resolver::builder_tokio()
                .map_err(|e| format!("reading the system's DNS configuration: {e}"))?
                .build()
        } else {
            let mut name_servers = Vec::new();
            for s in servers {
                let addr: SocketAddr = s
                    .parse()
                    .map_err(|_| format!("DNS server {s:?} is not ip:port"))?;
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                name_servers.push(NameServerConfig::new(addr.ip(), true, vec![udp, tcp]));
            }
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], name_servers),
                TokioRuntimeProvider::default(),
            )
            .build()
        }
        .map_err(|e| format!("starting the DNS resolver: {e}"))?;
        Ok(Self { resolver, policy })
    }

    /// The TXT records at `name`, each joined from its strings.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        let lookup = self
            .resolver
            .txt_lookup(name)
            .await
            .map_err(|e| e.to_string())?;
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect())
    }

    /// The addresses of `name`.
    pub async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        Ok(self
            .resolver
            .lookup_ip(name)
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .collect())
    }

    /// The exchangers of `domain`, at `port`.
    pub async fn exchangers(&self, domain: &str, port: u16) -> Exchangers {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let hosts: Vec<(u16, String)> = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut mx: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(m) => Some((m.preference, m.exchange.to_utf8())),
                        _ => None,
                    })
                    .collect();
                mx.sort();
                mx
            }
            // NXDOMAIN is also "no records found": test it first.
            Err(e) if e.is_nx_domain() => {
                return Exchangers::NoMail(format!("domain {domain} does not exist"))
            }
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => return Exchangers::Unavailable(format!("MX lookup for {domain}: {e}")),
        };
        if hosts.len() == 1 && (hosts[0].1 == "." || hosts[0].1.is_empty()) {
            return Exchangers::NoMail(format!("domain {domain} accepts no mail (null MX)"));
        }
        let names: Vec<String> = if hosts.is_empty() {
            vec![fqdn]
        } else {
            hosts.into_iter().map(|(_, name)| name).collect()
        };
        let mut addrs = Vec::new();
        let mut last_error = String::new();
        let mut refused = Vec::new();
        for name in names {
            match self.resolver.lookup_ip(name.as_str()).await {
                Ok(ips) => {
                    for ip in ips.iter() {
                        let addr = SocketAddr::new(ip, port);
                        match self.policy.refuses(&name, addr) {
                            Some(why) => {
                                tracing::warn!(message = "Mail exchanger refused.", domain = %domain, exchanger = %name, address = %ip, reason = why);
                                refused
                                    .push(format!("{} {ip} ({why})", name.trim_end_matches('.')));
                            }
                            None => addrs.push((name.clone(), addr)),
                        }
                    }
                }
                Err(e) => last_error = format!("{name}: {e}"),
            }
        }
        if addrs.is_empty() && !refused.is_empty() && last_error.is_empty() {
            return Exchangers::Refused(format!(
                "the mail exchangers of {domain} are refused: {}",
                refused.join(", ")
            ));
        }
        if addrs.is_empty() {
            Exchangers::Unavailable(format!(
                "no address for the mail exchangers of {domain} ({last_error})"
            ))
        } else {
            Exchangers::Hosts(addrs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_of_other_hosts_are_exchangers() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "192.0.2.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "203.0.114.1", "2a00:1450::1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        let policy = MxPolicy {
            refuse_private: true,
            own_names: vec!["mx.example.test".into()],
            own_addresses: vec!["8.8.4.4:25".parse().unwrap()],
        };
        let public: SocketAddr = "8.8.8.8:25".parse().unwrap();
        assert_eq!(
            policy.refuses("MX.example.test.", public),
            Some("this host")
        );
        assert_eq!(
            policy.refuses("other.test", "8.8.4.4:25".parse().unwrap()),
            Some("this host")
        );
        assert_eq!(policy.refuses("other.test", public), None);
        let off = MxPolicy {
            refuse_private: false,
            ..policy
        };
        assert_eq!(
            off.refuses("mx.example.test", "127.0.0.1:25".parse().unwrap()),
            None
        );
    }
}
