//! The organisation's directory: accepted domains and mailboxes, and the recipient rules that
//! follow from them (unknown users, no open relay).

use crate::config::OrganizationConfig;
use crate::smtp::reply;
use mta_agent_sdk::SmtpResponse;
use std::collections::HashSet;

/// Accepted domains and mailboxes.
#[derive(Clone, Debug)]
pub struct Organization {
    domains: Vec<String>,
    mailboxes: HashSet<String>,
}

/// What a recipient address is to us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecipientKind {
    /// A mailbox of ours: `local@domain`, lower-cased.
    Local(String),
    /// In an accepted domain but no such mailbox.
    UnknownLocal,
    /// Outside our domains: relaying.
    Remote,
}

impl Organization {
    /// From the host configuration: mailboxes exist in every accepted domain, and so does
    /// `postmaster` (RFC 5321 4.5.1), listed or not.
    pub fn new(config: &OrganizationConfig) -> Self {
        let mut mailboxes: HashSet<String> = config
            .mailboxes
            .iter()
            .map(|m| m.to_ascii_lowercase())
            .collect();
        mailboxes.insert("postmaster".into());
        Self {
            domains: config
                .accepted_domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            mailboxes,
        }
    }

    /// The mailbox names, sorted.
    pub fn mailboxes(&self) -> Vec<String> {
        let mut names: Vec<String> = self.mailboxes.iter().cloned().collect();
        names.sort();
        names
    }

    /// The postmaster's address, in the first accepted domain.
    pub fn postmaster(&self) -> String {
        format!(
            "postmaster@{}",
            self.domains
                .first()
                .map(String::as_str)
                .unwrap_or("localhost")
        )
    }

    /// The accepted domains.
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Whether `domain` is accepted.
    pub fn accepts_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.domains.contains(&domain)
    }

    /// Classifies a recipient. Relay tricks in the local part (`%`, `!`, `@`, quotes, source
    /// routes) never make a local address: they are unknown users.
    pub fn classify(&self, address: &str) -> RecipientKind {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return RecipientKind::UnknownLocal;
        };
        if !self.accepts_domain(domain) {
            return RecipientKind::Remote;
        }
        let local = local.to_ascii_lowercase();
        let tricky = local.is_empty()
            || local.contains(['%', '!', '@', '"', ':', ',', '\\'])
            || local.starts_with('@');
        if !tricky && self.mailboxes.contains(&local) {
            RecipientKind::Local(format!(
                "{local}@{}",
                domain.trim_end_matches('.').to_ascii_lowercase()
            ))
        } else {
            RecipientKind::UnknownLocal
        }
    }

    /// The RCPT rule: local mailboxes always; remote only when `may_relay`.
    pub fn check_recipient(&self, address: &str, may_relay: bool) -> Result<(), SmtpResponse> {
        match self.classify(address) {
            RecipientKind::Local(_) => Ok(()),
            RecipientKind::UnknownLocal => Err(reply(
                550,
                "5.1.1",
                "Recipient address rejected: user unknown",
            )),
            RecipientKind::Remote if may_relay => Ok(()),
            RecipientKind::Remote => Err(reply(550, "5.7.1", "Relaying denied")),
        }
    }

    /// The mailbox (local part) an address delivers to, if it is ours.
    pub fn mailbox_of(&self, address: &str) -> Option<String> {
        match self.classify(address) {
            RecipientKind::Local(full) => full.split('@').next().map(str::to_string),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_classified_and_relay_tricks_refused() {
        let org = Organization::new(&OrganizationConfig::default());
        let table: &[(&str, bool, Result<(), u16>)] = &[
            ("alice@example.test", false, Ok(())),
            ("ALICE@Example.Test.", false, Ok(())),
            ("nobody@example.test", false, Err(550)),
            ("bob@elsewhere.test", false, Err(550)),
            ("bob@elsewhere.test", true, Ok(())),
            ("bob%elsewhere.test@example.test", false, Err(550)),
            ("elsewhere.test!bob@example.test", false, Err(550)),
            ("\"bob@elsewhere.test\"@example.test", false, Err(550)),
        ];
        for (address, relay, expected) in table {
            let got = org.check_recipient(address, *relay).map_err(|r| r.code());
            assert_eq!(&got, expected, "{address} relay={relay}");
        }
        assert_eq!(
            org.check_recipient("x@elsewhere.test", false)
                .unwrap_err()
                .enhanced_code(),
            "5.7.1"
        );
    }
}
