//! Sites, site links and servers: what aggregate cost and hop count are computed from.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The routing topology as this server sees it.
#[derive(Clone, Debug)]
pub struct Topology {
    local_server: String,
    local_site: String,
    servers: HashMap<String, String>,
    /// Least site-link cost from the local site to each reachable site.
    site_cost: HashMap<String, u32>,
}

impl Topology {
    /// `local` server in `site`; other `servers` with their sites; `links` between sites with
    /// their costs (undirected).
    pub fn new(
        local: &str,
        site: &str,
        servers: &[(&str, &str)],
        links: &[((&str, &str), u32)],
    ) -> Self {
        let mut map: HashMap<String, String> = servers
            .iter()
            .map(|(s, site)| (s.to_ascii_lowercase(), site.to_string()))
            .collect();
        map.insert(local.to_ascii_lowercase(), site.to_string());
        // Dijkstra over the site links from the local site.
        let mut graph: BTreeMap<&str, Vec<(&str, u32)>> = BTreeMap::new();
        for ((a, b), cost) in links {
            graph.entry(a).or_default().push((b, *cost));
            graph.entry(b).or_default().push((a, *cost));
        }
        let mut cost: HashMap<String, u32> = HashMap::from([(site.to_string(), 0)]);
        let mut frontier: BTreeSet<(u32, String)> = BTreeSet::from([(0, site.to_string())]);
        while let Some((c, s)) = frontier.pop_first() {
            if cost.get(&s).is_some_and(|best| *best < c) {
                continue;
            }
            for (next, link) in graph.get(s.as_str()).into_iter().flatten() {
                let total = c.saturating_add(*link);
                if cost.get(*next).is_none_or(|best| total < *best) {
                    cost.insert(next.to_string(), total);
                    frontier.insert((total, next.to_string()));
                }
            }
        }
        Self {
            local_server: local.to_ascii_lowercase(),
            local_site: site.to_string(),
            servers: map,
            site_cost: cost,
        }
    }

    /// This server's site.
    pub fn local_site(&self) -> &str {
        &self.local_site
    }

    /// The site of a server, if known.
    pub fn site_of(&self, server: &str) -> Option<&str> {
        self.servers
            .get(&server.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The best (site-link cost, hop count) to any of `sources`: hop count 0 for this server,
    /// 1 for a server of this site, 2 for another site. Unknown servers are unreachable.
    pub fn nearest(&self, sources: &[String]) -> (u32, u8) {
        sources
            .iter()
            .map(|s| {
                if s.eq_ignore_ascii_case(&self.local_server) {
                    return (0, 0);
                }
                match self.site_of(s) {
                    Some(site) if site == self.local_site => (0, 1),
                    Some(site) => (self.site_cost.get(site).copied().unwrap_or(u32::MAX / 2), 2),
                    None => (u32::MAX / 2, 3),
                }
            })
            .min()
            .unwrap_or((u32::MAX / 2, 3))
    }
}
