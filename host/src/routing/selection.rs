//! Connector selection for a recipient outside the organisation, exactly as seed 004
//! ("Connector selection in external message routing") describes it. A pure function over the
//! connectors and the topology, so every rule is table-tested.
//!
//! 1. Connectors whose size limit is below the message's size are eliminated.
//! 2. Of the rest, those enabled, in scope (a scoped connector only for servers of its site) and
//!    with an address space matching the recipient remain.
//! 3. The most specific address space wins (`marketing.contoso.com` over `*.contoso.com` over
//!    `*`); ties go to the lowest aggregate cost (site-link cost to the connector's nearest
//!    source server plus the address-space cost), then the fewest hops (this server, a server of
//!    this site, a server of another site), then the lowest connector name.
//!
//! No connector for an SMTP address: Unreachable. None for a non-SMTP address: NDR. Too large
//! for every connector that would otherwise match: NDR 5.3.4.

use super::address_space::{AddressSpace, RouteAddress, Specificity};
use super::topology::Topology;

/// What selection needs to know of a connector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Connector name (the last tie-break, and the identity of the delivery queue).
    pub name: String,
    /// Its address spaces with their costs.
    pub address_spaces: Vec<AddressSpace>,
    /// Largest message it takes, if limited.
    pub max_message_size: Option<u64>,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Scoped to the site of its source servers.
    pub scoped: bool,
    /// Servers that host it.
    pub source_servers: Vec<String>,
}

/// The outcome for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Deliver through the connector at this index.
    Connector(usize),
    /// No route for an SMTP address: park it in the Unreachable queue.
    Unreachable,
    /// No route for a non-SMTP address: non-delivery report (5.4.4).
    NoRoute,
    /// Too large for every connector that could route it: non-delivery report (5.3.4).
    TooLarge,
}

/// Selects the connector for `address`, a message of `size` bytes, from `local` server.
pub fn select(
    candidates: &[Candidate],
    topology: &Topology,
    address: &RouteAddress,
    size: u64,
) -> Selection {
    // Step 2 first, to know whether size alone eliminated every match (step 1's NDR).
    let matching: Vec<(usize, Specificity, u32)> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.enabled && in_scope(c, topology))
        .filter_map(|(i, c)| best_match(c, address).map(|(s, cost)| (i, s, cost)))
        .collect();
    if matching.is_empty() {
        return if address.is_smtp() {
            Selection::Unreachable
        } else {
            Selection::NoRoute
        };
    }
    // Step 1: size limits.
    let fitting: Vec<_> = matching
        .into_iter()
        .filter(|(i, ..)| {
            candidates[*i]
                .max_message_size
                .is_none_or(|max| size <= max)
        })
        .collect();
    if fitting.is_empty() {
        return Selection::TooLarge;
    }
    // Step 3: most specific, then aggregate cost, hop count, name.
    let best = fitting
        .into_iter()
        .map(|(i, specificity, cost)| {
            let c = &candidates[i];
            let (link_cost, hops) = topology.nearest(&c.source_servers);
            let aggregate = link_cost.saturating_add(cost);
            (
                std::cmp::Reverse(specificity),
                aggregate,
                hops,
                c.name.to_ascii_lowercase(),
                i,
            )
        })
        .min()
        .expect("not empty");
    Selection::Connector(best.4)
}

/// A scoped connector is visible only to servers in the site of one of its source servers.
fn in_scope(c: &Candidate, topology: &Topology) -> bool {
    !c.scoped
        || c.source_servers
            .iter()
            .any(|s| topology.site_of(s) == Some(topology.local_site()))
}

/// The connector's most specific matching address space, with that space's cost.
fn best_match(c: &Candidate, address: &RouteAddress) -> Option<(Specificity, u32)> {
    c.address_spaces
        .iter()
        .filter_map(|space| space.matches(address).map(|s| (s, space.cost)))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::topology::Topology;

    fn connector(name: &str, spaces: &[&str], sources: &[&str]) -> Candidate {
        Candidate {
            name: name.into(),
            address_spaces: spaces.iter().map(|s| s.parse().unwrap()).collect(),
            max_message_size: None,
            enabled: true,
            scoped: false,
            source_servers: sources.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Local server `mbx1` in site `A`; `mbx2` also in `A`; `mbx3` in `B` (link cost 10);
    /// `mbx4` in `C` (link A-C cost 5, so C is cheaper than B).
    fn topology() -> Topology {
        Topology::new(
            "mbx1",
            "A",
            &[("mbx2", "A"), ("mbx3", "B"), ("mbx4", "C")],
            &[(("A", "B"), 10), (("A", "C"), 5)],
        )
    }

    fn pick(connectors: &[Candidate], address: &str, size: u64) -> Selection {
        select(connectors, &topology(), &RouteAddress::parse(address), size)
    }

    fn named(connectors: &[Candidate], s: Selection) -> String {
        match s {
            Selection::Connector(i) => connectors[i].name.clone(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn the_rules_of_connector_selection() {
        // (rule proved, connectors, recipient, size, expected)
        let mut too_small = connector("Small", &["SMTP:*;1"], &["mbx1"]);
        too_small.max_message_size = Some(1000);
        let mut disabled = connector("Disabled", &["SMTP:contoso.com;1"], &["mbx1"]);
        disabled.enabled = false;
        let mut scoped_away = connector("Scoped B", &["SMTP:contoso.com;1"], &["mbx3"]);
        scoped_away.scoped = true;
        let mut scoped_here = connector("Scoped A", &["SMTP:*.contoso.com;1"], &["mbx2"]);
        scoped_here.scoped = true;
        let table: Vec<(&str, Vec<Candidate>, &str, u64, &str)> = vec![
            (
                "step 3: most specific address space (seed: marketing.contoso.com > *.contoso.com > *)",
                vec![
                    connector("Star", &["SMTP:*;1"], &["mbx1"]),
                    connector("Wild", &["SMTP:*.contoso.com;1"], &["mbx1"]),
                    connector("Exact", &["SMTP:marketing.contoso.com;1"], &["mbx1"]),
                ],
                "julia@marketing.contoso.com",
                10,
                "Exact",
            ),
            (
                "step 3: *.contoso.com beats * for another subdomain",
                vec![
                    connector("Star", &["SMTP:*;1"], &["mbx1"]),
                    connector("Wild", &["SMTP:*.contoso.com;1"], &["mbx1"]),
                    connector("Exact", &["SMTP:marketing.contoso.com;1"], &["mbx1"]),
                ],
                "ed@sales.contoso.com",
                10,
                "Wild",
            ),
            (
                "step 3: * for anything else",
                vec![
                    connector("Star", &["SMTP:*;1"], &["mbx1"]),
                    connector("Wild", &["SMTP:*.contoso.com;1"], &["mbx1"]),
                ],
                "x@fabrikam.com",
                10,
                "Star",
            ),
            (
                "step 1: a connector whose limit is below the size is eliminated",
                vec![too_small.clone(), connector("Big", &["SMTP:*;5"], &["mbx1"])],
                "x@fabrikam.com",
                5000,
                "Big",
            ),
            (
                "step 1: within the limit it competes normally (and wins on cost)",
                vec![too_small.clone(), connector("Big", &["SMTP:*;5"], &["mbx1"])],
                "x@fabrikam.com",
                500,
                "Small",
            ),
            (
                "step 1: too large for every matching connector is an NDR",
                vec![too_small.clone()],
                "x@fabrikam.com",
                5000,
                "TooLarge",
            ),
            (
                "step 2: disabled connectors are not considered",
                vec![disabled, connector("Star", &["SMTP:*;1"], &["mbx1"])],
                "x@contoso.com",
                10,
                "Star",
            ),
            (
                "step 2: a connector scoped to another site is invisible",
                vec![scoped_away, connector("Star", &["SMTP:*;1"], &["mbx1"])],
                "x@contoso.com",
                10,
                "Star",
            ),
            (
                "step 2: a connector scoped to this site is visible",
                vec![scoped_here, connector("Star", &["SMTP:*;1"], &["mbx1"])],
                "x@a.contoso.com",
                10,
                "Scoped A",
            ),
            (
                "step 2: only matching address spaces are considered",
                vec![connector("Fabrikam", &["SMTP:fabrikam.com;1"], &["mbx1"])],
                "x@contoso.com",
                10,
                "Unreachable",
            ),
            (
                "tie 1: lowest aggregate cost (address-space cost)",
                vec![
                    connector("Expensive", &["SMTP:*;20"], &["mbx1"]),
                    connector("Cheap", &["SMTP:*;3"], &["mbx1"]),
                ],
                "x@fabrikam.com",
                10,
                "Cheap",
            ),
            (
                "tie 1: lowest aggregate cost (site-link cost + address-space cost)",
                vec![
                    connector("Via B", &["SMTP:*;1"], &["mbx3"]),
                    connector("Via C", &["SMTP:*;1"], &["mbx4"]),
                ],
                "x@fabrikam.com",
                10,
                "Via C",
            ),
            (
                "tie 1: a cheaper remote connector beats an expensive local one",
                vec![
                    connector("Local", &["SMTP:*;20"], &["mbx1"]),
                    connector("Via C", &["SMTP:*;1"], &["mbx4"]),
                ],
                "x@fabrikam.com",
                10,
                "Via C",
            ),
            (
                "tie 2: equal cost, fewer hops: this server over a server of this site",
                vec![
                    connector("Same site", &["SMTP:*;1"], &["mbx2"]),
                    connector("This server", &["SMTP:*;1"], &["mbx1"]),
                ],
                "x@fabrikam.com",
                10,
                "This server",
            ),
            (
                "tie 2: equal cost, same site over another site",
                vec![
                    connector("Other site", &["SMTP:*;0"], &["mbx4"]),
                    connector("Same site", &["SMTP:*;5"], &["mbx2"]),
                ],
                "x@fabrikam.com",
                10,
                "Same site",
            ),
            (
                "tie 3: equal cost and hops, lowest name",
                vec![
                    connector("Bravo", &["SMTP:*;1"], &["mbx1"]),
                    connector("Alpha", &["SMTP:*;1"], &["mbx1"]),
                ],
                "x@fabrikam.com",
                10,
                "Alpha",
            ),
            (
                "non-SMTP address space: the Delivery Agent connector for MOBILE",
                vec![
                    connector("Star", &["SMTP:*;1"], &["mbx1"]),
                    connector("Text Messaging", &["MOBILE:*;1"], &["mbx1"]),
                ],
                "MOBILE:+15551234@sms.example",
                10,
                "Text Messaging",
            ),
            (
                "no connector for a non-SMTP address space: NDR",
                vec![connector("Star", &["SMTP:*;1"], &["mbx1"])],
                "FAX:+1555@fax",
                10,
                "NoRoute",
            ),
            (
                "no connector for an SMTP address: Unreachable",
                vec![],
                "x@fabrikam.com",
                10,
                "Unreachable",
            ),
        ];
        for (rule, connectors, address, size, expected) in table {
            let got = named(&connectors, pick(&connectors, address, size));
            assert_eq!(got, expected, "{rule}");
        }
    }
}
