//! Connection filter: accepts or refuses SMTP clients by IP address at OnConnect, from lists of
//! address ranges.
//!
//! Parameters:
//! - `allow` (optional, may be repeated): an address range in CIDR notation (`192.0.2.0/24`,
//!   `2001:db8::/32`, `::1/128`) or a single address (`192.0.2.7`, `::1`);
//! - `deny` (optional, may be repeated): an address range, written the same way;
//! - `response` (optional, default `Connection refused by policy`): the text of the reply sent
//!   to a refused client, as `554 5.7.1 <response>`; an empty value means the default.
//!
//! At least one `allow` or `deny` must be given. Each parameter holds one range. Address bits
//! beyond the prefix length are ignored (`192.0.2.9/24` is `192.0.2.0/24`).
//!
//! The rule, for the client's address:
//! 1. a client in an `allow` range is accepted, whatever the `deny` ranges say;
//! 2. otherwise a client in a `deny` range is refused;
//! 3. otherwise, when `allow` ranges are given, the client is refused (it is in none of them);
//! 4. otherwise the client is accepted.
//!
//! So `deny` alone is a block list, `allow` alone is an allow list, and both together are a block
//! list with exceptions. A client connecting over IPv6 with an IPv4-mapped address
//! (`::ffff:192.0.2.7`) is matched as the IPv4 address. A session whose client address the host
//! could not give is in no range: it is refused when `allow` ranges are given, accepted otherwise.
//!
//! ```xml
//! <agent name="Connection filter" classFactory="Mta.Samples.ConnectionFilterFactory" ...>
//!   <parameter name="deny" value="198.51.100.0/24"/>
//!   <parameter name="allow" value="198.51.100.25"/>
//!   <parameter name="response" value="Your network may not send mail here"/>
//! </agent>
//! ```

use mta_agent_sdk::prelude::*;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The text of the reply to a refused client when no `response` parameter is given.
pub const DEFAULT_RESPONSE: &str = "Connection refused by policy";

/// The agent; one clone per SMTP session.
#[derive(Clone, Debug)]
pub struct ConnectionFilter {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    response: SmtpResponse,
}

impl ConnectionFilter {
    /// Whether a client at `ip` may connect (`None`: the address is unknown), by the rule of the
    /// crate documentation. An IPv4-mapped IPv6 address is matched as the IPv4 address.
    pub fn admits(&self, ip: Option<IpAddr>) -> bool {
        let ip = ip.map(|ip| ip.to_canonical());
        let within = |ranges: &[Cidr]| ip.is_some_and(|ip| ranges.iter().any(|r| r.contains(ip)));
        if within(&self.allow) {
            return true;
        }
        !within(&self.deny) && self.allow.is_empty()
    }
}

#[agent]
impl SmtpReceiveAgent for ConnectionFilter {
    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        let ranges = |name: &str| -> Result<Vec<Cidr>, AgentError> {
            parameters
                .get_all(name)
                .map(|value| {
                    Cidr::parse(value.trim()).map_err(|e| {
                        AgentError::msg(format!("parameter {name:?} value {value:?}: {e}"))
                    })
                })
                .collect()
        };
        let allow = ranges("allow")?;
        let deny = ranges("deny")?;
        if allow.is_empty() && deny.is_empty() {
            return Err(AgentError::msg(
                "give at least one \"allow\" or \"deny\" parameter (an address range such as 192.0.2.0/24)",
            ));
        }
        let text = Some(parameters.get_or("response", DEFAULT_RESPONSE))
            .filter(|t| !t.is_empty())
            .unwrap_or(DEFAULT_RESPONSE);
        let response = SmtpResponse::new(554, "5.7.1", text)
            .map_err(|e| AgentError::msg(format!("parameter \"response\" value {text:?}: {e}")))?;
        Ok(Self {
            allow,
            deny,
            response,
        })
    }

    fn on_connect(&mut self, event: &mut ConnectEvent<'_>) -> AgentResult {
        if !self.admits(event.session().remote_ip()) {
            event.reject(&self.response)?;
        }
        Ok(())
    }
}

export_agents!("Mta.Samples.ConnectionFilterFactory" => ConnectionFilter);

/// An address range: a network address and a prefix length, its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cidr {
    V4(u32, u8),
    V6(u128, u8),
}

impl Cidr {
    /// Parses `address/prefix` or a single `address` (the range of that one address).
    fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 or IPv6 address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|&n| n <= max).ok_or_else(|| {
                    format!("prefix length /{p} is over {max}, the maximum for this address")
                })?
            }
            Some(p) => return Err(format!("prefix length {p:?} is not a number of bits")),
        };
        Ok(match address {
            IpAddr::V4(a) => Self::V4(u32::from(a) & mask_v4(prefix), prefix),
            IpAddr::V6(a) => Self::V6(u128::from(a) & mask_v6(prefix), prefix),
        })
    }

    /// Whether `ip` is in the range; an IPv4 range never holds an IPv6 address and conversely.
    fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Self::V4(net, prefix), IpAddr::V4(a)) => u32::from(a) & mask_v4(prefix) == net,
            (Self::V6(net, prefix), IpAddr::V6(a)) => u128::from(a) & mask_v6(prefix) == net,
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::V4(net, prefix) => write!(f, "{}/{prefix}", Ipv4Addr::from(net)),
            Self::V6(net, prefix) => write!(f, "{}/{prefix}", Ipv6Addr::from(net)),
        }
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_agent_sdk::testing::{self, TestHost};
    use mta_agent_sdk::Action;

    /// Runs OnConnect for a client at `remote` and returns the reject, if any.
    fn connect(agent: &mut ConnectionFilter, remote: &str) -> Option<SmtpResponse> {
        let mut host = TestHost::smtp(remote);
        testing::run(agent, Event::OnConnect, &mut host).unwrap();
        assert!(host.actions.len() <= 1, "{:?}", host.actions);
        host.rejection().cloned()
    }

    #[test]
    fn deny_list_refuses_clients_in_its_ranges_with_554() {
        let mut agent = testing::create::<ConnectionFilter>(&[
            ("deny", "192.0.2.0/24"),
            ("deny", "198.51.100.7"),
        ])
        .unwrap();
        let reject = connect(&mut agent, "192.0.2.200:40000").unwrap();
        assert_eq!(reject.to_string(), "554 5.7.1 Connection refused by policy");
        assert!(connect(&mut agent, "198.51.100.7:25").is_some());
        assert_eq!(connect(&mut agent, "198.51.100.8:25"), None);
        assert_eq!(connect(&mut agent, "192.0.3.1:25"), None);
    }

    #[test]
    fn allow_ranges_are_exceptions_to_deny_ranges() {
        let mut agent = testing::create::<ConnectionFilter>(&[
            ("deny", "10.0.0.0/8"),
            ("allow", "10.1.2.0/24"),
        ])
        .unwrap();
        assert_eq!(connect(&mut agent, "10.1.2.3:1025"), None);
        assert!(connect(&mut agent, "10.1.3.3:1025").is_some());
    }

    #[test]
    fn allow_list_alone_refuses_everyone_else() {
        let mut agent = testing::create::<ConnectionFilter>(&[
            ("allow", "203.0.113.0/25"),
            ("allow", "::1"),
            ("response", "Only partners may connect"),
        ])
        .unwrap();
        assert_eq!(connect(&mut agent, "203.0.113.127:5000"), None);
        assert_eq!(connect(&mut agent, "[::1]:5000"), None);
        let reject = connect(&mut agent, "203.0.113.128:5000").unwrap();
        assert_eq!(reject.code(), 554);
        assert_eq!(reject.enhanced_code(), "5.7.1");
        assert_eq!(reject.text(), "Only partners may connect");
        assert!(connect(&mut agent, "[::2]:5000").is_some());
    }

    #[test]
    fn ipv6_ranges_and_ipv4_mapped_clients() {
        let mut agent = testing::create::<ConnectionFilter>(&[
            ("deny", "2001:db8::/32"),
            ("deny", "192.0.2.0/24"),
        ])
        .unwrap();
        assert!(connect(&mut agent, "[2001:db8:ffff::1]:25").is_some());
        assert_eq!(connect(&mut agent, "[2001:db9::1]:25"), None);
        assert!(connect(&mut agent, "[::ffff:192.0.2.5]:25").is_some());
        assert_eq!(connect(&mut agent, "[::ffff:192.0.3.5]:25"), None);
    }

    #[test]
    fn zero_prefix_covers_the_whole_family() {
        let mut agent =
            testing::create::<ConnectionFilter>(&[("deny", "0.0.0.0/0"), ("allow", "192.0.2.1")])
                .unwrap();
        assert!(connect(&mut agent, "8.8.8.8:25").is_some());
        assert_eq!(connect(&mut agent, "192.0.2.1:25"), None);
        // An IPv4 range holds no IPv6 client, and the reverse.
        let mut v4 = testing::create::<ConnectionFilter>(&[("deny", "0.0.0.0/0")]).unwrap();
        assert_eq!(connect(&mut v4, "[2001:db8::1]:25"), None);
        let mut v6 = testing::create::<ConnectionFilter>(&[("deny", "::/0")]).unwrap();
        assert!(connect(&mut v6, "[2001:db8::1]:25").is_some());
        assert_eq!(connect(&mut v6, "192.0.2.1:25"), None);
    }

    #[test]
    fn unknown_client_address_is_in_no_range() {
        let mut deny_only = testing::create::<ConnectionFilter>(&[("deny", "0.0.0.0/0")]).unwrap();
        assert_eq!(connect(&mut deny_only, "unknown"), None);
        let mut allow_only =
            testing::create::<ConnectionFilter>(&[("allow", "0.0.0.0/0")]).unwrap();
        assert!(connect(&mut allow_only, "unknown").is_some());
    }

    #[test]
    fn rejects_with_exactly_one_action() {
        let mut agent = testing::create::<ConnectionFilter>(&[("deny", "192.0.2.0/24")]).unwrap();
        let mut host = TestHost::smtp("192.0.2.1:25");
        testing::run(&mut agent, Event::OnConnect, &mut host).unwrap();
        assert_eq!(
            host.actions,
            [Action::Reject(
                SmtpResponse::new(554, "5.7.1", DEFAULT_RESPONSE).unwrap()
            )]
        );
    }

    #[test]
    fn invalid_ranges_name_the_parameter_and_value() {
        for (name, value) in [
            ("deny", "192.0.2.0/33"),
            ("deny", "300.1.1.1"),
            ("allow", "192.0.2.0/"),
            ("allow", "::1/129"),
            ("deny", "example.test"),
            ("deny", "192.0.2.0/24/8"),
            ("allow", "192.0.2.0/+8"),
            ("allow", "/24"),
        ] {
            let error = testing::create::<ConnectionFilter>(&[(name, value)]).unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains(&format!("{name:?}")) && message.contains(value),
                "{message}"
            );
        }
    }

    #[test]
    fn refuses_a_configuration_without_ranges_or_with_a_bad_response() {
        assert!(testing::create::<ConnectionFilter>(&[]).is_err());
        assert!(testing::create::<ConnectionFilter>(&[("response", "x")]).is_err());
        let error =
            testing::create::<ConnectionFilter>(&[("deny", "192.0.2.0/24"), ("response", "a\rb")])
                .unwrap_err();
        assert!(error.to_string().contains("\"response\""), "{error}");
    }

    #[test]
    fn values_may_carry_surrounding_blanks() {
        let mut agent = testing::create::<ConnectionFilter>(&[("deny", " 10.0.0.0/8 ")]).unwrap();
        assert!(connect(&mut agent, "10.9.9.9:25").is_some());
    }

    #[test]
    fn empty_response_means_the_default() {
        let mut agent =
            testing::create::<ConnectionFilter>(&[("deny", "192.0.2.0/24"), ("response", "")])
                .unwrap();
        assert_eq!(
            connect(&mut agent, "192.0.2.1:25").unwrap().text(),
            DEFAULT_RESPONSE
        );
    }

    #[test]
    fn ranges_parse_and_clear_host_bits() {
        let cases = [
            ("192.0.2.9/24", "192.0.2.0/24"),
            ("192.0.2.9", "192.0.2.9/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8::1/32", "2001:db8::/32"),
            ("::1", "::1/128"),
            ("::/0", "::/0"),
        ];
        for (text, expected) in cases {
            assert_eq!(Cidr::parse(text).unwrap().to_string(), expected, "{text}");
        }
        let range = Cidr::parse("192.0.2.128/25").unwrap();
        assert!(range.contains("192.0.2.128".parse().unwrap()));
        assert!(range.contains("192.0.2.255".parse().unwrap()));
        assert!(!range.contains("192.0.2.127".parse().unwrap()));
        let range = Cidr::parse("2001:db8::/127").unwrap();
        assert!(range.contains("2001:db8::1".parse().unwrap()));
        assert!(!range.contains("2001:db8::2".parse().unwrap()));
    }

    #[test]
    fn declares_only_connect() {
        assert_eq!(
            ConnectionFilter::EVENTS.iter().collect::<Vec<_>>(),
            [Event::OnConnect]
        );
    }
}
