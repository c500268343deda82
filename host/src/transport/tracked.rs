//! Tracking records of the categorizer: what routing agents did to a message's recipients
//! (RESOLVE, EXPAND, REDIRECT) and which actions they took (AGENTINFO).

use crate::message::{EnvelopeRecipient, MailItem};
use crate::service::Service;
use crate::tracking::{EventId, Record};
use mta_agent_sdk::{Action, Event};

/// Records how `event`'s agents changed the recipients from `before` to `item`'s.
pub(super) fn recipient_changes(before: &[EnvelopeRecipient], item: &MailItem, event: Event) {
    let after = &item.envelope.recipients;
    let had = |list: &[EnvelopeRecipient], a: &str| {
        list.iter().any(|r| r.address.eq_ignore_ascii_case(a))
    };
    let removed: Vec<&str> = before
        .iter()
        .filter(|r| !had(after, &r.address))
        .map(|r| r.address.as_str())
        .collect();
    let added: Vec<&str> = after
        .iter()
        .filter(|r| !had(before, &r.address))
        .map(|r| r.address.as_str())
        .collect();
    if !added.is_empty() {
        let (id, detail) = if removed.len() == 1 && added.len() == 1 {
            (
                EventId::Redirect,
                format!("{event}: redirected from {}", removed[0]),
            )
        } else if removed.is_empty() {
            (EventId::Expand, format!("{event}: recipients added"))
        } else {
            (
                EventId::Expand,
                format!("{event}: expanded from {}", removed.join(", ")),
            )
        };
        Record::item(id, Service::Transport, item)
            .to(added.iter().copied())
            .detail(detail)
            .write();
    }
    for r in after {
        let old = before
            .iter()
            .find(|b| b.address.eq_ignore_ascii_case(&r.address));
        if let (Some(domain), Some(old)) = (&r.routing_override, old) {
            if old.routing_override.as_ref() != Some(domain) {
                Record::item(EventId::Resolve, Service::Transport, item)
                    .to([r.address.as_str()])
                    .detail(format!("{event}: routed as {domain}"))
                    .write();
            }
        }
    }
}

/// Records the actions `event`'s agents asked for, if any.
pub(super) fn agent_actions(item: &MailItem, event: Event, actions: &[Action]) {
    let names: Vec<&str> = actions.iter().map(action_name).collect();
    if names.is_empty() {
        return;
    }
    Record::item(EventId::Agentinfo, Service::Transport, item)
        .detail(format!("{event}: {}", names.join(", ")))
        .write();
}

fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Reject(_) => "reject",
        Action::Disconnect => "disconnect",
        Action::Discard => "discard",
        Action::Quarantine(_) => "quarantine",
        Action::SetBanner(_) => "set banner",
        Action::DisableStartTls => "disable STARTTLS",
        Action::Defer { .. } => "defer",
        Action::Delete => "delete",
        Action::Fork(_) => "fork",
        Action::SetRoutingOverride { .. } => "set routing override",
        Action::SubmitMessage { .. } => "submit message",
        Action::SetRecipient(_) => "set recipient",
        _ => "other",
    }
}
