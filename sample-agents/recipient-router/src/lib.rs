//! Recipient router: at OnResolvedMessage, sends every recipient whose address matches a pattern
//! through another routing domain (for example the `MOBILE` address space of a Delivery Agent
//! connector), optionally to given hosts.
//!
//! Parameters:
//! - `pattern` (required, may be repeated): a glob over the recipient address, compared ignoring
//!   case, where `*` matches any run of characters (none included) and every other character
//!   matches itself: `*@mobile.example.test`, `+1*@sms.example.test`, `alerts-*@*`. A recipient
//!   is routed when it matches any of the patterns;
//! - `routing_domain` (required): the routing domain given to matching recipients, such as
//!   `MOBILE`;
//! - `host` (optional, may be repeated): the hosts passed with each override, in order;
//! - `fork` (optional, `true` or `false`, default `false`): when some but not all recipients
//!   match, first fork the mail item so that the matching recipients travel in a copy of their
//!   own (the others go on in another copy, categorized after this one). This is the text
//!   messaging pattern: a separate item for the `MOBILE` address space.
//!
//! The agent overrides the routing of every matching recipient, replacing an override an earlier
//! agent may have set, and leaves the other recipients alone. It then sets the mail-item
//! property `recipient-router.overridden` ([`OVERRIDDEN_PROPERTY`]) to the number of recipients
//! it overrode, `0` included, so later agents can see what it did.
//!
//! The same library holds an alias table (module [`alias`]): `Mta.Samples.RecipientAliasFactory`
//! (SMTP receive, at OnRcptCommand) and `Mta.Samples.RecipientAliasRoutingFactory` (routing, at
//! OnResolvedMessage).
//!
//! ```xml
//! <agent name="SMS router" classFactory="Mta.Samples.RecipientRouterFactory" ...>
//!   <parameter name="pattern" value="+1*@sms.example.test"/>
//!   <parameter name="pattern" value="*@mobile.example.test"/>
//!   <parameter name="routing_domain" value="MOBILE"/>
//!   <parameter name="host" value="gateway1.example.test"/>
//! </agent>
//! ```

use mta_agent_sdk::prelude::*;

/// The mail-item property that receives the number of recipients overridden.
pub const OVERRIDDEN_PROPERTY: &str = "recipient-router.overridden";

/// The agent; one clone per mail item.
#[derive(Clone, Debug)]
pub struct RecipientRouter {
    patterns: Vec<Glob>,
    routing_domain: String,
    hosts: Vec<String>,
    fork: bool,
}

impl RecipientRouter {
    /// Whether `address` matches one of the `pattern` parameters.
    pub fn matches(&self, address: &str) -> bool {
        let address = address.to_lowercase();
        self.patterns.iter().any(|p| p.matches(&address))
    }
}

#[agent]
impl RoutingAgent for RecipientRouter {
    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        let patterns = parameters
            .get_all("pattern")
            .map(|value| match value.trim() {
                "" => Err(AgentError::msg("parameter \"pattern\" is empty")),
                text => Ok(Glob::new(text)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if patterns.is_empty() {
            return Err(AgentError::msg(
                "missing required parameter \"pattern\" (a recipient glob such as *@mobile.example.test)",
            ));
        }
        let routing_domain = parameters.require("routing_domain")?.trim().to_string();
        if routing_domain.is_empty() {
            return Err(AgentError::msg("parameter \"routing_domain\" is empty"));
        }
        let fork = parameters.parse::<bool>("fork")?.unwrap_or(false);
        let hosts = parameters
            .get_all("host")
            .map(|value| match value.trim() {
                "" => Err(AgentError::msg("parameter \"host\" is empty")),
                host if host.contains(char::is_whitespace) => Err(AgentError::msg(format!(
                    "parameter \"host\" value {value:?}: a host name holds no blanks"
                ))),
                host => Ok(host.to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            patterns,
            routing_domain,
            hosts,
            fork,
        })
    }

    fn on_resolved_message(&mut self, event: &mut ResolvedMessageEvent<'_>) -> AgentResult {
        let hosts: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        let mut recipients = event.mail_item().recipients();
        if self.fork {
            let matching: Vec<String> = recipients
                .iter()
                .filter(|r| self.matches(&r.address))
                .map(|r| r.address.clone())
                .collect();
            if !matching.is_empty() && matching.len() < recipients.len() {
                let keep: Vec<&str> = matching.iter().map(String::as_str).collect();
                event.fork(&keep)?;
                recipients.retain(|r| self.matches(&r.address));
            }
        }
        let mut overridden = 0usize;
        for recipient in recipients.iter().filter(|r| self.matches(&r.address)) {
            event.set_routing_override(&recipient.address, &self.routing_domain, &hosts)?;
            overridden += 1;
        }
        event
            .mail_item()
            .set_property(OVERRIDDEN_PROPERTY, &overridden.to_string());
        Ok(())
    }
}

pub mod alias;

export_agents!(
    "Mta.Samples.RecipientRouterFactory" => RecipientRouter,
    "Mta.Samples.RecipientAliasFactory" => alias::RecipientAlias,
    "Mta.Samples.RecipientAliasRoutingFactory" => alias::RecipientAliasRouting,
);

/// A glob where `*` matches any run of characters; held lowercased, split at the stars.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Glob {
    /// The literal pieces between stars: one more than there are stars.
    pieces: Vec<String>,
}

impl Glob {
    fn new(pattern: &str) -> Self {
        Self {
            pieces: pattern
                .to_lowercase()
                .split('*')
                .map(str::to_string)
                .collect(),
        }
    }

    /// Whether `text` (already lowercased) matches. The first piece anchors at the start, the
    /// last at the end, and the middle ones are found leftmost-first in between, which finds a
    /// match whenever there is one.
    fn matches(&self, text: &str) -> bool {
        let Some((first, rest)) = self.pieces.split_first() else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return text == first;
        };
        let Some(mut remaining) = text.strip_prefix(first.as_str()) else {
            return false;
        };
        for piece in middle {
            match remaining.find(piece.as_str()) {
                Some(at) => remaining = &remaining[at + piece.len()..],
                None => return false,
            }
        }
        remaining.ends_with(last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_agent_sdk::testing::{self, TestHost, TestMessage};
    use mta_agent_sdk::Action;

    fn host_for(recipients: &[&str]) -> TestHost {
        let message = TestMessage::parse(b"Subject: route me\r\n\r\nbody\r\n")
            .with_envelope("sender@example.test", recipients);
        TestHost::for_message(message)
    }

    fn overrides(host: &TestHost) -> Vec<(String, Option<String>)> {
        host.message()
            .unwrap()
            .recipients
            .iter()
            .map(|r| (r.address.clone(), r.routing_override.clone()))
            .collect()
    }

    #[test]
    fn overrides_matching_recipients_with_domain_and_hosts() {
        let mut agent = testing::create::<RecipientRouter>(&[
            ("pattern", "*@mobile.example.test"),
            ("pattern", "+1*@sms.example.test"),
            ("routing_domain", "MOBILE"),
            ("host", "gw1.example.test"),
            ("host", "gw2.example.test"),
        ])
        .unwrap();
        let mut host = host_for(&[
            "alice@Mobile.Example.Test",
            "bob@example.test",
            "+15551234@sms.example.test",
            "+445551234@sms.example.test",
        ]);
        testing::run(&mut agent, Event::OnResolvedMessage, &mut host).unwrap();

        let hosts = vec![
            "gw1.example.test".to_string(),
            "gw2.example.test".to_string(),
        ];
        assert_eq!(
            host.actions,
            [
                Action::SetRoutingOverride {
                    recipient: "alice@Mobile.Example.Test".into(),
                    domain: "MOBILE".into(),
                    hosts: hosts.clone(),
                },
                Action::SetRoutingOverride {
                    recipient: "+15551234@sms.example.test".into(),
                    domain: "MOBILE".into(),
                    hosts,
                },
            ]
        );
        let mobile = Some("MOBILE".to_string());
        assert_eq!(
            overrides(&host),
            [
                ("alice@Mobile.Example.Test".to_string(), mobile.clone()),
                ("bob@example.test".to_string(), None),
                ("+15551234@sms.example.test".to_string(), mobile),
                ("+445551234@sms.example.test".to_string(), None),
            ]
        );
        let message = host.message().unwrap();
        assert_eq!(
            message
                .properties
                .get(OVERRIDDEN_PROPERTY)
                .map(String::as_str),
            Some("2")
        );
    }

    #[test]
    fn no_hosts_when_none_are_configured() {
        let mut agent = testing::create::<RecipientRouter>(&[
            ("pattern", "*@pager.example.test"),
            ("routing_domain", "PAGER"),
        ])
        .unwrap();
        let mut host = host_for(&["ops@pager.example.test"]);
        testing::run(&mut agent, Event::OnResolvedMessage, &mut host).unwrap();
        assert_eq!(
            host.actions,
            [Action::SetRoutingOverride {
                recipient: "ops@pager.example.test".into(),
                domain: "PAGER".into(),
                hosts: vec![],
            }]
        );
        assert_eq!(
            host.message().unwrap().recipients[0]
                .routing_override
                .as_deref(),
            Some("PAGER")
        );
    }

    #[test]
    fn counts_zero_and_acts_on_nothing_when_no_recipient_matches() {
        let mut agent = testing::create::<RecipientRouter>(&[
            ("pattern", "*@mobile.example.test"),
            ("routing_domain", "MOBILE"),
        ])
        .unwrap();
        let mut host = host_for(&["a@example.test", "b@mobile.example.test.evil"]);
        testing::run(&mut agent, Event::OnResolvedMessage, &mut host).unwrap();
        assert!(host.actions.is_empty(), "{:?}", host.actions);
        assert!(overrides(&host).iter().all(|(_, o)| o.is_none()));
        let message = host.message().unwrap();
        assert_eq!(
            message
                .properties
                .get(OVERRIDDEN_PROPERTY)
                .map(String::as_str),
            Some("0")
        );
    }

    #[test]
    fn globs_match_whole_addresses_ignoring_case() {
        let glob = |p: &str, text: &str| Glob::new(p).matches(&text.to_lowercase());
        assert!(glob("*@mobile.example.test", "x@MOBILE.example.test"));
        assert!(glob("*@mobile.example.test", "@mobile.example.test"));
        assert!(!glob("*@mobile.example.test", "x@mobile.example.test.org"));
        assert!(!glob("*@mobile.example.test", "x@sub.mobile.example.testx"));
        assert!(glob("+1*@sms.example.test", "+1555@sms.example.test"));
        assert!(!glob("+1*@sms.example.test", "x+1555@sms.example.test"));
        assert!(glob("alerts-*@*", "alerts-disk@ops.example.test"));
        assert!(!glob("alerts-*@*", "alerts-disk.ops.example.test"));
        assert!(glob("a*b*c", "abc"));
        assert!(glob("a*b*c", "a-b-b-c-c"));
        assert!(!glob("a*b*c", "a-c-b"));
        assert!(glob("*", ""));
        assert!(glob("**", "anything"));
        assert!(glob("exact@example.test", "EXACT@example.test"));
        assert!(!glob("exact@example.test", "exact@example.test2"));
        // Overlapping first and last pieces must not share characters.
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("ab*ba", "abba"));
        // Only `*` is special.
        assert!(!glob("a?c@x", "abc@x"));
        assert!(glob("a?c@x", "a?c@x"));
    }

    #[test]
    fn refuses_incomplete_configuration() {
        let missing_pattern =
            testing::create::<RecipientRouter>(&[("routing_domain", "MOBILE")]).unwrap_err();
        assert!(
            missing_pattern.to_string().contains("\"pattern\""),
            "{missing_pattern}"
        );
        let missing_domain =
            testing::create::<RecipientRouter>(&[("pattern", "*@x.test")]).unwrap_err();
        assert!(
            missing_domain.to_string().contains("\"routing_domain\""),
            "{missing_domain}"
        );
        for bad in [
            [("pattern", ""), ("routing_domain", "MOBILE"), ("host", "h")],
            [
                ("pattern", "*@x.test"),
                ("routing_domain", " "),
                ("host", "h"),
            ],
            [
                ("pattern", "*@x.test"),
                ("routing_domain", "MOBILE"),
                ("host", ""),
            ],
            [
                ("pattern", "*@x.test"),
                ("routing_domain", "MOBILE"),
                ("host", "a b"),
            ],
        ] {
            assert!(testing::create::<RecipientRouter>(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn declares_only_resolved_message() {
        assert_eq!(
            RecipientRouter::EVENTS.iter().collect::<Vec<_>>(),
            [Event::OnResolvedMessage]
        );
    }
}

#[cfg(test)]
mod fork_tests {
    use super::*;
    use mta_agent_sdk::testing::{self, TestHost, TestMessage};
    use mta_agent_sdk::Action;

    #[test]
    fn fork_splits_matching_recipients_into_their_own_item() {
        let mut agent = testing::create::<RecipientRouter>(&[
            ("pattern", "*@mobile.example.test"),
            ("routing_domain", "MOBILE"),
            ("fork", "true"),
        ])
        .unwrap();
        let message = TestMessage::parse(b"Subject: s\r\n\r\nx").with_envelope(
            "a@example.test",
            &["+1555@mobile.example.test", "bob@example.test"],
        );
        let mut host = TestHost::for_message(message);
        testing::run(&mut agent, Event::OnResolvedMessage, &mut host).unwrap();
        assert_eq!(
            host.actions[0],
            Action::Fork(vec!["+1555@mobile.example.test".into()])
        );
        assert!(
            matches!(&host.actions[1], Action::SetRoutingOverride { recipient, domain, .. }
            if recipient == "+1555@mobile.example.test" && domain == "MOBILE")
        );
        assert_eq!(host.actions.len(), 2, "bob is not overridden");
    }
}
