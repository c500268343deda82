//! DNS blocklist: refuses clients whose IP address a DNS blocklist lists (Exchange's IP Block
//! List providers), with an asynchronous handler.
//!
//! At OnConnect the agent asks `<reversed address>.<zone>` for A records on its own tokio
//! runtime and returns at once; the host waits for the answer without holding a thread, so a
//! slow DNS server costs sessions latency, never the host's agent threads. An answer in
//! 127.0.0.0/8 means listed: the connection is refused with `554 5.7.1`. No such name means not
//! listed. A DNS failure lets the client in (fail open) and logs a warning.
//!
//! Parameters: `zone` (required, e.g. `zen.spamhaus.org`), `server` (`ip:port` of the DNS
//! server to ask; the system's resolvers when absent), `text` (the refusal's text).

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::Resolver;
use mta_agent_sdk::prelude::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// The agent: one runtime and resolver shared by every session's instance.
#[derive(Clone)]
pub struct Dnsbl {
    shared: Arc<Shared>,
}

struct Shared {
    runtime: Option<tokio::runtime::Runtime>,
    resolver: Resolver<TokioRuntimeProvider>,
    zone: String,
    refusal: SmtpResponse,
}

impl Drop for Shared {
    /// The last pipeline using the agent is gone: stop the runtime without waiting for lookups
    /// in flight (their contexts are dropped, which the host sees as faults of calls it has
    /// already given up on or no longer waits for).
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The name to look up for `ip` under `zone`: the address's octets (IPv4) or nibbles (IPv6)
/// in reverse order, as every DNSBL expects.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let labels: Vec<String> = match ip {
        IpAddr::V4(v4) => v4.octets().iter().rev().map(u8::to_string).collect(),
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .rev()
            .flat_map(|b| [b & 0xf, b >> 4])
            .map(|n| format!("{n:x}"))
            .collect(),
    };
    format!("{}.{}.", labels.join("."), zone.trim_end_matches('.'))
}

fn resolver(server: Option<&str>) -> Result<Resolver<TokioRuntimeProvider>, AgentError> {
    let built = match server {
        None => Resolver::builder_tokio()?.build(),
        Some(server) => {
            let addr: SocketAddr = server
                .parse()
                .map_err(|_| AgentError::msg(format!("server {server:?} is not ip:port")))?;
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let servers = vec![NameServerConfig::new(addr.ip(), true, vec![udp, tcp])];
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioRuntimeProvider::default(),
            )
            .build()
        }
    };
    Ok(built?)
}

#[agent]
impl SmtpReceiveAgent for Dnsbl {
    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        let zone = parameters
            .require("zone")?
            .trim_end_matches('.')
            .to_string();
        let text = parameters.get_or("text", "Client address listed by a DNS blocklist");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dnsbl")
            .enable_all()
            .build()?;
        let resolver = {
            let _inside = runtime.enter();
            resolver(parameters.get("server"))?
        };
        Ok(Self {
            shared: Arc::new(Shared {
                runtime: Some(runtime),
                resolver,
                zone,
                refusal: SmtpResponse::new(554, "5.7.1", text)?,
            }),
        })
    }

    fn on_connect(&mut self, event: &mut ConnectEvent<'_>) -> AgentResult {
        let Some(ip) = event.session().remote_ip() else {
            return Ok(());
        };
        let Some(runtime) = &self.shared.runtime else {
            return Ok(());
        };
        let name = query_name(ip, &self.shared.zone);
        let context = event.async_context()?;
        let shared = Arc::clone(&self.shared);
        runtime.spawn(async move {
            let listed: Option<Ipv4Addr> = match shared.resolver.ipv4_lookup(name.as_str()).await {
                Ok(lookup) => lookup.answers().iter().find_map(|r| match &r.data {
                    RData::A(a) if a.0.octets()[0] == 127 => Some(a.0),
                    _ => None,
                }),
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => None,
                Err(e) => {
                    agent_warn!(context, "lookup of {name} failed, {ip} let in: {e}");
                    None
                }
            };
            match listed {
                Some(code) => agent_info!(context, "{ip} is listed in {} ({code})", shared.zone),
                None => agent_debug!(context, "{ip} is not listed in {}", shared.zone),
            }
            let refusal = shared.refusal.clone();
            context.complete(move |event| {
                if listed.is_some() {
                    event.reject(&refusal)?;
                }
                Ok(())
            });
        });
        Ok(())
    }
}

export_agents!("Samples.DnsblFactory" => Dnsbl);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_reverse_the_address() {
        assert_eq!(
            query_name("192.0.2.99".parse().unwrap(), "bl.example.test."),
            "99.2.0.192.bl.example.test."
        );
        let v6 = query_name("2001:db8::1".parse().unwrap(), "bl.example.test");
        assert!(v6.starts_with("1.0.0.0.0.0.0.0."), "{v6}");
        assert!(v6.ends_with(".8.b.d.0.1.0.0.2.bl.example.test."), "{v6}");
    }
}
