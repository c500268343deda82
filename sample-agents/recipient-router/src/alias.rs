//! Recipient aliases: an alias table of `alias` parameters (`from=to`), applied where the host
//! would otherwise refuse or fail an address that is not a mailbox.
//!
//! The host checks a recipient only after the agents had their say (at RCPT TO, after
//! OnRcptCommand; in the categorizer, after OnResolvedMessage), so an alias only has to name a
//! mailbox, or an address the client may send to: the host's check applies to the new address.
//! Two factories share the table:
//! - `Mta.Samples.RecipientAliasFactory`, an SMTP receive agent: at OnRcptCommand it puts the
//!   alias's target in place of the recipient (`set_recipient`), so `RCPT TO:<sales@...>` is
//!   accepted for `alice@...` on the Front End or on Transport;
//! - `Mta.Samples.RecipientAliasRoutingFactory`, a routing agent: at OnResolvedMessage it
//!   replaces each aliased recipient of a mail item with its target, for mail that did not come
//!   through RCPT TO (the pickup and replay directories, agents' submissions).
//!
//! ```xml
//! <agent name="Aliases" baseType="SmtpReceiveAgent"
//!        classFactory="Mta.Samples.RecipientAliasFactory" assemblyPath="..." enabled="true">
//!   <parameter name="alias" value="sales@example.test=alice@example.test"/>
//!   <parameter name="alias" value="info@example.test=bob@example.test"/>
//! </agent>
//! ```

use mta_agent_sdk::prelude::*;

/// The alias table: each alias address (compared ignoring case) and the address it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasTable {
    entries: Vec<(String, String)>,
}

impl AliasTable {
    /// The table of the `alias` parameters (required, may be repeated), each `from=to`.
    pub fn from_parameters(parameters: &Parameters) -> Result<Self, AgentError> {
        let entries = parameters
            .get_all("alias")
            .map(|value| {
                let (from, to) = value
                    .split_once('=')
                    .map(|(f, t)| (f.trim(), t.trim()))
                    .filter(|(f, t)| f.contains('@') && t.contains('@'))
                    .ok_or_else(|| {
                        AgentError::msg(format!(
                            "parameter \"alias\" value {value:?}: expected from=to, two addresses such as sales@example.test=alice@example.test"
                        ))
                    })?;
                Ok((from.to_lowercase(), to.to_string()))
            })
            .collect::<Result<Vec<_>, AgentError>>()?;
        if entries.is_empty() {
            return Err(AgentError::msg(
                "missing required parameter \"alias\" (from=to, such as sales@example.test=alice@example.test)",
            ));
        }
        Ok(Self { entries })
    }

    /// The address `address` stands for, if it is an alias.
    pub fn resolve(&self, address: &str) -> Option<&str> {
        let address = address.to_lowercase();
        self.entries
            .iter()
            .find(|(from, _)| *from == address)
            .map(|(_, to)| to.as_str())
    }
}

/// The SMTP receive half: rewrites the recipient of RCPT TO.
#[derive(Clone, Debug)]
pub struct RecipientAlias {
    table: AliasTable,
}

#[agent]
impl SmtpReceiveAgent for RecipientAlias {
    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        Ok(Self {
            table: AliasTable::from_parameters(parameters)?,
        })
    }

    fn on_rcpt_command(&mut self, event: &mut RcptCommandEvent<'_>) -> AgentResult {
        if let Some(to) = self.table.resolve(&event.recipient()) {
            event.set_recipient(to)?;
        }
        Ok(())
    }
}

/// The routing half: replaces aliased recipients of a mail item at OnResolvedMessage.
#[derive(Clone, Debug)]
pub struct RecipientAliasRouting {
    table: AliasTable,
}

#[agent]
impl RoutingAgent for RecipientAliasRouting {
    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        Ok(Self {
            table: AliasTable::from_parameters(parameters)?,
        })
    }

    fn on_resolved_message(&mut self, event: &mut ResolvedMessageEvent<'_>) -> AgentResult {
        for recipient in event.mail_item().recipients() {
            if let Some(to) = self.table.resolve(&recipient.address) {
                let to = to.to_string();
                let mut item = event.mail_item();
                item.remove_recipient(&recipient.address);
                item.add_recipient(&to)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_agent_sdk::testing::{self, TestHost, TestMessage};
    use mta_agent_sdk::Action;

    const ALIASES: &[(&str, &str)] = &[
        ("alias", "sales@example.test=alice@example.test"),
        ("alias", "info@example.test = bob@example.test"),
    ];

    #[test]
    fn rcpt_to_an_alias_is_rewritten_to_its_target_and_others_are_left_alone() {
        let mut agent = testing::create::<RecipientAlias>(ALIASES).unwrap();
        for (rcpt, expected) in [
            ("Sales@Example.Test", Some("alice@example.test")),
            ("info@example.test", Some("bob@example.test")),
            ("carol@example.test", None),
        ] {
            let mut host = TestHost::smtp("192.0.2.1:1000").with_arg("recipient", rcpt);
            testing::run(&mut agent, Event::OnRcptCommand, &mut host).unwrap();
            let want: Vec<Action> = expected
                .map(|to| Action::SetRecipient(to.to_string()))
                .into_iter()
                .collect();
            assert_eq!(host.actions, want, "{rcpt}");
            assert_eq!(
                host.args.get("recipient").map(String::as_str),
                Some(expected.unwrap_or(rcpt)),
                "later agents see the new recipient"
            );
        }
    }

    #[test]
    fn routing_half_replaces_aliased_recipients_of_the_item() {
        let mut agent = testing::create::<RecipientAliasRouting>(ALIASES).unwrap();
        let message = TestMessage::parse(b"Subject: x\r\n\r\nbody\r\n").with_envelope(
            "sender@example.test",
            &["sales@example.test", "carol@example.test"],
        );
        let mut host = TestHost::for_message(message);
        testing::run(&mut agent, Event::OnResolvedMessage, &mut host).unwrap();
        let recipients: Vec<&str> = host
            .message()
            .unwrap()
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(recipients, ["carol@example.test", "alice@example.test"]);
    }

    #[test]
    fn refuses_a_missing_or_malformed_alias() {
        for (params, needle) in [
            (&[][..], "missing required parameter \"alias\""),
            (&[("alias", "sales@example.test")][..], "expected from=to"),
            (
                &[("alias", "sales=alice@example.test")][..],
                "expected from=to",
            ),
        ] {
            let error = testing::create::<RecipientAlias>(params).unwrap_err();
            assert!(error.to_string().contains(needle), "{params:?}: {error}");
        }
    }
}
