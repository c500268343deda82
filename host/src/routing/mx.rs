//! Mail exchangers of a domain from DNS (RFC 5321 section 5): MX records by preference, the
//! domain's own address when it has none (implicit MX), and "no mail" for a null MX (RFC 7505).

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
}

/// A resolver for MX lookups.
pub struct MxResolver {
    resolver: Resolver<TokioRuntimeProvider>,
}

impl MxResolver {
    /// With these DNS servers (`ip:port`), or the system's configuration when empty.
    pub fn new(servers: &[String]) -> Result<Self, String> {
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
        Ok(Self { resolver })
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
        for name in names {
            match self.resolver.lookup_ip(name.as_str()).await {
                Ok(ips) => addrs.extend(
                    ips.iter()
                        .map(|ip: IpAddr| (name.clone(), SocketAddr::new(ip, port))),
                ),
                Err(e) => last_error = format!("{name}: {e}"),
            }
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
