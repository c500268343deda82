//! Address spaces (`type:space;cost`) and the addresses routing matches against them.

use std::str::FromStr;

/// An address as routing sees it: an address type (`SMTP`, or a non-SMTP type such as
/// `MOBILE`) and a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAddress {
    /// Upper-case address type.
    pub kind: String,
    /// Lower-case domain (for non-SMTP types, what follows `@`, possibly empty).
    pub domain: String,
}

impl RouteAddress {
    /// An SMTP recipient `local@domain`, or `TYPE:rest` for a non-SMTP address.
    pub fn parse(address: &str) -> Self {
        if let Some((kind, rest)) = address.split_once(':') {
            if !kind.is_empty()
                && kind.chars().all(|c| c.is_ascii_alphanumeric())
                && !kind.contains('@')
            {
                let domain = rest.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
                return Self {
                    kind: kind.to_ascii_uppercase(),
                    domain: domain.to_ascii_lowercase(),
                };
            }
        }
        Self {
            kind: "SMTP".into(),
            domain: address
                .rsplit_once('@')
                .map(|(_, d)| d)
                .unwrap_or("")
                .trim_end_matches('.')
                .to_ascii_lowercase(),
        }
    }

    /// The address routing uses for a recipient with a routing override: `TYPE:space` or a
    /// plain domain (SMTP), or a bare address type such as `MOBILE` (keeping the recipient's
    /// domain).
    pub fn with_override(recipient: &str, routing_domain: &str) -> Self {
        let own = Self::parse(recipient);
        if let Some((kind, space)) = routing_domain.split_once(':') {
            return Self {
                kind: kind.to_ascii_uppercase(),
                domain: space.to_ascii_lowercase(),
            };
        }
        if !routing_domain.contains('.')
            && routing_domain.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Self {
                kind: routing_domain.to_ascii_uppercase(),
                domain: own.domain,
            };
        }
        Self {
            kind: "SMTP".into(),
            domain: routing_domain.trim_end_matches('.').to_ascii_lowercase(),
        }
    }

    /// Whether this is an SMTP address.
    pub fn is_smtp(&self) -> bool {
        self.kind == "SMTP"
    }
}

/// How well an address space matches: `*` < `*.domain` (longer is better) < exact domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity(u8, usize);

/// One address space of a connector: `SMTP:*.contoso.com;10`, `MOBILE:*;1`, `fabrikam.com`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressSpace {
    /// Upper-case address type.
    pub kind: String,
    /// `*`, `*.domain` or `domain`, lower-case.
    pub space: String,
    /// Cost, 1 to 100 (0 allowed for tests of ties).
    pub cost: u32,
}

impl AddressSpace {
    /// How specifically this space matches `address`, if it does.
    pub fn matches(&self, address: &RouteAddress) -> Option<Specificity> {
        if self.kind != address.kind {
            return None;
        }
        if self.space == "*" {
            return Some(Specificity(0, 0));
        }
        if let Some(parent) = self.space.strip_prefix("*.") {
            let suffix = format!(".{parent}");
            return (address.domain.ends_with(&suffix) || address.domain == parent)
                .then_some(Specificity(1, parent.len()));
        }
        (address.domain == self.space).then_some(Specificity(2, self.space.len()))
    }
}

impl FromStr for AddressSpace {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (body, cost) = match s.rsplit_once(';') {
            Some((b, c)) => (
                b,
                c.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|c| *c <= 100)
                    .ok_or_else(|| format!("address space {s:?}: cost must be 0 to 100"))?,
            ),
            None => (s, 1),
        };
        let (kind, space) = match body.split_once(':') {
            Some((k, sp)) => (
                k.trim().to_ascii_uppercase(),
                sp.trim().to_ascii_lowercase(),
            ),
            None => ("SMTP".to_string(), body.trim().to_ascii_lowercase()),
        };
        if kind.is_empty() || space.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!(
                "address space {s:?}: expected type:space;cost such as SMTP:*.contoso.com;10"
            ));
        }
        let valid_wildcard = space == "*"
            || space
                .strip_prefix("*.")
                .is_some_and(|rest| !rest.contains('*'));
        if space.contains('*') && !valid_wildcard {
            return Err(format!("address space {s:?}: a wildcard is * or *.domain"));
        }
        Ok(Self { kind, space, cost })
    }
}

impl<'de> serde::Deserialize<'de> for AddressSpace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_and_matching() {
        let s: AddressSpace = "SMTP:*.contoso.com;10".parse().unwrap();
        assert_eq!(
            (s.kind.as_str(), s.space.as_str(), s.cost),
            ("SMTP", "*.contoso.com", 10)
        );
        let plain: AddressSpace = "fabrikam.com".parse().unwrap();
        assert_eq!((plain.kind.as_str(), plain.cost), ("SMTP", 1));
        assert!("SMTP:*;101".parse::<AddressSpace>().is_err());
        assert!("SMTP:a*b.com".parse::<AddressSpace>().is_err());
        let a = RouteAddress::parse("x@Marketing.Contoso.com");
        assert!(s.matches(&a).is_some());
        assert!(plain.matches(&a).is_none());
        let mobile = RouteAddress::with_override("bob@example.test", "MOBILE");
        assert_eq!(
            (mobile.kind.as_str(), mobile.domain.as_str()),
            ("MOBILE", "example.test")
        );
        let m: AddressSpace = "MOBILE:*".parse().unwrap();
        assert!(m.matches(&mobile).is_some());
        let smtp = RouteAddress::with_override("bob@example.test", "relay.example.net");
        assert_eq!(
            (smtp.kind.as_str(), smtp.domain.as_str()),
            ("SMTP", "relay.example.net")
        );
    }
}
