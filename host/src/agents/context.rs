//! The host's side of one agent event: [`CallContext`] implements the SDK's `EventHost` over the
//! session, the event's arguments and the mail item, and records what the agents asked for.
//!
//! The context owns what it exposes (it is moved to the agents' own threads for the call and
//! back), and checks every action against the event: an action the event does not allow is
//! refused with a message the agent sees as an error.

use crate::agents::dispatch::{EventContext, PendingCompletion};
use crate::agents::log::{AgentLog, CallLog};
use crate::message::{EnvelopeRecipient, MailItem, Message};
use crate::service::Service;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec, Tuple2};
use mta_agent_sdk::abi::{
    Completion, CompletionBox, Completion_TO, ContinuationBox, EventHost, FfiRecipient, FfiSession,
    HostAction, LogSinkBox, LogSink_TO, PropertyScope,
};
use mta_agent_sdk::{Action, Event};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Everything one event exposes to agents, and what they asked for.
#[derive(Debug)]
pub struct CallContext {
    /// The event.
    pub event: Event,
    /// The service raising it.
    pub service: Service,
    /// The SMTP session (SMTP receive events).
    pub session: Option<FfiSession>,
    /// Named arguments.
    pub args: Vec<(&'static str, String)>,
    /// The mail item, for events that carry one.
    pub mail_item: Option<MailItem>,
    /// The session's property bag.
    pub session_properties: BTreeMap<String, String>,
    /// Actions, in the order asked.
    pub actions: Vec<Action>,
    /// The log of the agent being called (set by the dispatcher before each call).
    agent_log: Option<Arc<AgentLog>>,
    /// The completion of the agent call that went async, until the dispatcher takes it.
    pending: Option<PendingCompletion>,
}

/// The host's end of an async call: passes the agent's continuation to the waiting dispatcher.
struct Completer(Mutex<Option<oneshot::Sender<ContinuationBox>>>);

impl Completion for Completer {
    fn complete(&self, continuation: ContinuationBox) {
        let sender = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(sender) = sender {
            // Nobody waits any more (abandoned past twice the time limit): dropped here.
            let _ = sender.send(continuation);
        }
    }
}

impl CallContext {
    /// A context for `event` in `service`.
    pub fn new(event: Event, service: Service) -> Self {
        Self {
            event,
            service,
            session: None,
            args: Vec::new(),
            mail_item: None,
            session_properties: BTreeMap::new(),
            actions: Vec::new(),
            agent_log: None,
            pending: None,
        }
    }

    /// The first reject asked for.
    pub fn rejection(&self) -> Option<&mta_agent_sdk::SmtpResponse> {
        self.actions.iter().find_map(|a| match a {
            Action::Reject(r) => Some(r),
            _ => None,
        })
    }

    /// Whether an agent asked for this (compared by kind).
    pub fn asked(&self, probe: impl Fn(&Action) -> bool) -> bool {
        self.actions.iter().any(probe)
    }

    fn item(&self) -> Option<&MailItem> {
        self.mail_item.as_ref()
    }

    fn item_mut(&mut self) -> Result<&mut MailItem, RString> {
        let event = self.event;
        self.mail_item
            .as_mut()
            .ok_or_else(|| RString::from(format!("{event} carries no mail item")))
    }
}

impl EventContext for CallContext {
    fn stops_event(&self) -> bool {
        self.asked(|a| matches!(a, Action::Reject(_) | Action::Disconnect))
    }

    fn traced(&self) -> Option<(&MailItem, &[Action])> {
        self.mail_item
            .as_ref()
            .map(|i| (i, self.actions.as_slice()))
    }

    fn enter_agent(&mut self, log: &Arc<AgentLog>) {
        self.agent_log = Some(Arc::clone(log));
    }

    fn take_pending(&mut self) -> Option<PendingCompletion> {
        self.pending.take()
    }
}

impl EventHost for CallContext {
    fn session(&self) -> ROption<FfiSession> {
        self.session.clone().into()
    }

    fn arg(&self, name: RStr<'_>) -> ROption<RString> {
        let found = self
            .args
            .iter()
            .find(|(n, _)| *n == name.as_str())
            .map(|(_, v)| RString::from(v.as_str()));
        // The mail item's envelope answers for itself at every event that carries one.
        let from_item = || match name.as_str() {
            "envid" => self
                .item()
                .and_then(|i| i.envelope.envid.as_deref())
                .map(RString::from),
            _ => None,
        };
        found.or_else(from_item).into()
    }

    fn act(&mut self, action: HostAction) -> RResult<(), RString> {
        let action = match Action::from_host(action) {
            Ok(a) => a,
            Err(e) => return RResult::RErr(e.into()),
        };
        if !action.is_allowed(self.event, self.service == Service::FrontEnd) {
            return RResult::RErr(
                format!(
                    "{action:?} is not available in {} in the {} service",
                    self.event, self.service
                )
                .into(),
            );
        }
        if let Action::SetRecipient(address) = &action {
            if let Err(e) = crate::smtp::address::check_mailbox(address) {
                return RResult::RErr(format!("{address:?} is not a mailbox address: {e}").into());
            }
            // Lower-priority agents of this event see the new recipient.
            match self.args.iter_mut().find(|(n, _)| *n == "recipient") {
                Some((_, value)) => value.clone_from(address),
                None => self.args.push(("recipient", address.clone())),
            }
        }
        if let Action::SetRoutingOverride {
            recipient, domain, ..
        } = &action
        {
            let Ok(item) = self.item_mut() else {
                return RResult::RErr("no mail item".into());
            };
            let Some(r) = item
                .envelope
                .recipients
                .iter_mut()
                .find(|r| r.address.eq_ignore_ascii_case(recipient))
            else {
                return RResult::RErr(format!("{recipient} is not a recipient").into());
            };
            r.routing_override = Some(domain.clone()).filter(|d| !d.is_empty());
        }
        self.actions.push(action);
        RResult::ROk(())
    }

    fn property(&self, scope: PropertyScope, key: RStr<'_>) -> ROption<RString> {
        let bag = match scope {
            PropertyScope::Session => Some(&self.session_properties),
            PropertyScope::MailItem => self.item().map(|i| &i.properties),
        };
        bag.and_then(|b| b.get(key.as_str()))
            .map(|v| RString::from(v.as_str()))
            .into()
    }

    fn set_property(&mut self, scope: PropertyScope, key: RStr<'_>, value: RStr<'_>) {
        let bag = match scope {
            PropertyScope::Session => Some(&mut self.session_properties),
            PropertyScope::MailItem => self.mail_item.as_mut().map(|i| &mut i.properties),
        };
        if let Some(bag) = bag {
            if value.is_empty() {
                bag.remove(key.as_str());
            } else {
                bag.insert(key.to_string(), value.to_string());
            }
        }
    }

    fn has_mail_item(&self) -> bool {
        self.mail_item.is_some()
    }

    fn mail_from(&self) -> RString {
        self.item()
            .map(|i| RString::from(i.envelope.from.as_str()))
            .unwrap_or_default()
    }

    fn set_mail_from(&mut self, address: RStr<'_>) -> RResult<(), RString> {
        let address = address.as_str();
        if !address.is_empty() {
            if let Err(e) = crate::smtp::address::check_mailbox(address) {
                return RResult::RErr(format!("{address:?} is not a mailbox address: {e}").into());
            }
        }
        self.item_mut()
            .map(|i| {
                i.envelope.from = address.to_string();
                i.envelope.smtputf8 |= !address.is_ascii();
            })
            .into()
    }

    fn recipients(&self) -> RVec<FfiRecipient> {
        let Some(item) = self.item() else {
            return RVec::new();
        };
        let s = |o: Option<String>| RString::from(o.unwrap_or_default());
        item.envelope
            .recipients
            .iter()
            .map(|r| FfiRecipient {
                address: r.address.as_str().into(),
                orcpt: s(r.orcpt.as_ref().map(ToString::to_string)),
                notify: s(r.notify.map(|n| n.to_string())),
                routing_override: s(r.routing_override.clone()),
            })
            .collect()
    }

    fn add_recipient(&mut self, address: RStr<'_>) -> RResult<(), RString> {
        let address = address.as_str().trim();
        if let Err(e) = crate::smtp::address::check_mailbox(address) {
            return RResult::RErr(format!("{address:?} is not a mailbox address: {e}").into());
        }
        self.item_mut()
            .map(|i| {
                if !i.has_recipient(address) {
                    i.envelope.recipients.push(EnvelopeRecipient::new(address));
                }
            })
            .into()
    }

    fn remove_recipient(&mut self, address: RStr<'_>) -> bool {
        let Ok(item) = self.item_mut() else {
            return false;
        };
        let before = item.envelope.recipients.len();
        item.envelope
            .recipients
            .retain(|r| !r.address.eq_ignore_ascii_case(address.as_str()));
        before != item.envelope.recipients.len()
    }

    fn headers(&self) -> RVec<Tuple2<RString, RString>> {
        let Some(item) = self.item() else {
            return RVec::new();
        };
        item.message
            .fields()
            .iter()
            .map(|f| Tuple2(RString::from(f.name()), RString::from(f.value())))
            .collect()
    }

    fn add_header(&mut self, name: RStr<'_>, value: RStr<'_>) -> RResult<(), RString> {
        match self.item_mut() {
            Ok(i) => i
                .message
                .add_header(name.as_str(), value.as_str())
                .map_err(RString::from)
                .into(),
            Err(e) => RResult::RErr(e),
        }
    }

    fn set_header(&mut self, name: RStr<'_>, value: RStr<'_>) -> RResult<(), RString> {
        match self.item_mut() {
            Ok(i) => i
                .message
                .set_header(name.as_str(), value.as_str())
                .map_err(RString::from)
                .into(),
            Err(e) => RResult::RErr(e),
        }
    }

    fn remove_header(&mut self, name: RStr<'_>) -> u32 {
        self.item_mut()
            .map(|i| i.message.remove_header(name.as_str()) as u32)
            .unwrap_or(0)
    }

    /// A spooled body is read back whole for the agent that asks for it (the agent runs on
    /// its own thread, so the read blocks nothing else).
    fn body(&self) -> RVec<u8> {
        self.item()
            .map(|i| RVec::from(read_back(i.message.body().to_vec())))
            .unwrap_or_default()
    }

    fn set_body(&mut self, body: RVec<u8>) -> RResult<(), RString> {
        if self.event == Event::OnEndOfHeaders {
            return RResult::RErr("the body has not arrived at OnEndOfHeaders".into());
        }
        self.item_mut()
            .map(|i| i.message.set_body(body.into_vec()))
            .into()
    }

    fn mime(&self) -> RVec<u8> {
        self.item()
            .map(|i| RVec::from(read_back(i.message.to_vec())))
            .unwrap_or_default()
    }

    fn set_mime(&mut self, mime: RVec<u8>) -> RResult<(), RString> {
        if self.event == Event::OnEndOfHeaders {
            return RResult::RErr("the body has not arrived at OnEndOfHeaders".into());
        }
        let message = Message::parse(&mime);
        if message.fields().is_empty() {
            return RResult::RErr("the new MIME has no header block".into());
        }
        self.item_mut().map(|i| i.message = message).into()
    }

    fn logger(&self) -> ROption<LogSinkBox> {
        self.agent_log
            .as_ref()
            .map(|log| {
                LogSink_TO::from_value(
                    CallLog {
                        log: Arc::clone(log),
                        event: self.event,
                        span: tracing::Span::current(),
                    },
                    TD_Opaque,
                )
            })
            .into()
    }

    fn begin_async(&mut self) -> ROption<CompletionBox> {
        let (sender, receiver) = oneshot::channel();
        self.pending = Some(PendingCompletion(receiver));
        ROption::RSome(Completion_TO::from_value(
            Completer(Mutex::new(Some(sender))),
            TD_Opaque,
        ))
    }
}

/// What an agent gets when a spooled body cannot be read back: nothing, and the log says why.
fn read_back(bytes: std::io::Result<Vec<u8>>) -> Vec<u8> {
    bytes.unwrap_or_else(|e| {
        tracing::error!(message = "Cannot read a spooled body back for an agent.", error = %e);
        Vec::new()
    })
}
