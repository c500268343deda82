//! Unit-test agents with `cargo test`, without a host.
//!
//! [`TestHost`] plays the host's part for one event: it holds a session, event arguments and a
//! [`TestMessage`], applies the agent's edits to the message, and records every [`Action`] the
//! agent asked for. [`run`] sends the event through the same glue the host uses (so a panic shows
//! up as a fault, and an event the agent did not declare is skipped, exactly as in the host).
//!
//! ```
//! use mta_agent_sdk::prelude::*;
//! use mta_agent_sdk::testing::{self, TestHost, TestMessage};
//!
//! #[derive(Clone)]
//! struct Stamp;
//!
//! #[agent]
//! impl SmtpReceiveAgent for Stamp {
//!     fn create(_: &Parameters) -> Result<Self, AgentError> { Ok(Stamp) }
//!     fn on_end_of_data(&mut self, event: &mut EndOfDataEvent<'_>) -> AgentResult {
//!         event.mail_item().add_header("X-Stamp", "yes")
//!     }
//! }
//!
//! let mut agent = testing::create::<Stamp>(&[]).unwrap();
//! let message = TestMessage::parse(b"Subject: hi\r\n\r\nbody\r\n");
//! let mut host = TestHost::smtp("192.0.2.7:4000").with_message(message);
//! testing::run(&mut agent, Event::OnEndOfData, &mut host).unwrap();
//! assert_eq!(host.message().unwrap().header("X-Stamp"), Some("yes"));
//! ```

use crate::abi::{
    EventHost, FfiRecipient, FfiSession, HostAction, LogLevel, LogSink, LogSinkBox, LogSink_TO,
    PropertyScope,
};
use crate::export::{run_through_glue, Exportable};
use crate::mail_item::Recipient;
use crate::smtp_receive::SmtpSession;
use crate::{Action, AgentError, Event, Parameters, SmtpResponse};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec, Tuple2};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub use crate::export::Exportable as Agent;

/// Builds an agent from parameters, as the host does when it loads the pipeline.
pub fn create<A: Exportable>(parameters: &[(&str, &str)]) -> Result<A, AgentError> {
    A::create(&Parameters::from_pairs(parameters.iter().copied()))
}

/// Runs one event through the agent, through the boundary's glue. `Err` is the fault the host
/// would see: the agent's error text, or `agent panicked at FILE:LINE:COL: ...`. A handler that
/// went async is waited for: `run` returns after its completion ran.
///
/// ```
/// use mta_agent_sdk::prelude::*;
/// use mta_agent_sdk::testing::{self, TestHost};
///
/// #[derive(Clone)]
/// struct Broken;
///
/// #[agent]
/// impl SmtpReceiveAgent for Broken {
///     fn create(_: &Parameters) -> Result<Self, AgentError> { Ok(Broken) }
///     fn on_helo_command(&mut self, _: &mut HeloCommandEvent<'_>) -> AgentResult {
///         panic!("no HELO today")
///     }
/// }
///
/// let mut agent = testing::create::<Broken>(&[]).unwrap();
/// let fault = testing::run(&mut agent, Event::OnHeloCommand, &mut TestHost::smtp("192.0.2.1:1"));
/// let fault = fault.unwrap_err();
/// assert!(fault.starts_with("agent panicked at "), "{fault}");
/// assert!(fault.ends_with(": no HELO today"), "{fault}");
/// ```
pub fn run<A: Exportable>(agent: &mut A, event: Event, host: &mut TestHost) -> Result<(), String> {
    host.event = Some(event);
    let result = run_through_glue(agent, event, host);
    host.event = None;
    result
}

/// A message for tests: envelope, header fields, body and a property bag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestMessage {
    /// Envelope sender.
    pub from: String,
    /// Envelope recipients.
    pub recipients: Vec<Recipient>,
    /// Header fields, in order, values unfolded.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// The mail item's property bag.
    pub properties: BTreeMap<String, String>,
}

impl TestMessage {
    /// Parses raw MIME into header fields and body (CRLF or LF line ends).
    pub fn parse(raw: &[u8]) -> Self {
        let (head, body) = split_message(raw);
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in String::from_utf8_lossy(head).lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = headers.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        Self {
            headers,
            body: body.to_vec(),
            ..Self::default()
        }
    }

    /// Sets the envelope.
    pub fn with_envelope(mut self, from: &str, recipients: &[&str]) -> Self {
        self.from = from.to_string();
        self.recipients = recipients
            .iter()
            .map(|r| Recipient {
                address: r.to_string(),
                orcpt: None,
                notify: None,
                routing_override: None,
            })
            .collect();
        self
    }

    /// The first value of a header field.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The message as raw MIME with CRLF line ends.
    pub fn to_mime(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn split_message(raw: &[u8]) -> (&[u8], &[u8]) {
    for (i, w) in raw.windows(2).enumerate() {
        if w == b"\n\n" {
            return (&raw[..i + 1], &raw[i + 2..]);
        }
        if w == b"\n\r" && raw.get(i + 2) == Some(&b'\n') {
            return (&raw[..i + 1], &raw[i + 3..]);
        }
    }
    (raw, &[])
}

/// The host's part for one event, in memory.
#[derive(Clone, Debug, Default)]
pub struct TestHost {
    /// The session SMTP receive events see.
    pub session: SmtpSession,
    /// Event arguments (`domain`, `from`, `recipient`, `reason`, `next_hop_domain`, ...).
    pub args: BTreeMap<String, String>,
    /// The mail item, for events that carry one.
    pub message: Option<TestMessage>,
    /// The session's property bag.
    pub session_properties: BTreeMap<String, String>,
    /// Every action the agent asked for, in order.
    pub actions: Vec<Action>,
    /// The event being run (set by [`run`]): actions it does not allow are refused, as the
    /// host refuses them.
    pub event: Option<Event>,
    /// Every line the agent logged, at every level, shared with the loggers it handed out
    /// (lines logged from an async task land here too).
    pub log: Arc<Mutex<Vec<(LogLevel, String)>>>,
}

/// The harness's log: keeps every line, rate-limits nothing.
struct TestLog(Arc<Mutex<Vec<(LogLevel, String)>>>);

impl LogSink for TestLog {
    fn enabled(&self, _: LogLevel) -> bool {
        true
    }

    fn log(&self, level: LogLevel, message: RStr<'_>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((level, message.to_string()));
    }
}

impl TestHost {
    /// A host for SMTP receive events of a session from `remote_endpoint`.
    pub fn smtp(remote_endpoint: &str) -> Self {
        Self {
            session: SmtpSession {
                id: 1,
                remote_endpoint: remote_endpoint.to_string(),
                local_endpoint: "127.0.0.1:25".to_string(),
                external: true,
                service: "transport".to_string(),
                ..SmtpSession::default()
            },
            ..Self::default()
        }
    }

    /// A host for routing or delivery events of `message`.
    pub fn for_message(message: TestMessage) -> Self {
        Self {
            message: Some(message),
            ..Self::default()
        }
    }

    /// Adds an event argument.
    pub fn with_arg(mut self, name: &str, value: &str) -> Self {
        self.args.insert(name.to_string(), value.to_string());
        self
    }

    /// Sets the mail item.
    pub fn with_message(mut self, message: TestMessage) -> Self {
        self.message = Some(message);
        self
    }

    /// The mail item, as the agent left it.
    pub fn message(&self) -> Option<&TestMessage> {
        self.message.as_ref()
    }

    /// The lines the agent logged so far, in order.
    pub fn log_lines(&self) -> Vec<(LogLevel, String)> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The response of the agent's reject, if it rejected.
    pub fn rejection(&self) -> Option<&SmtpResponse> {
        self.actions.iter().find_map(|a| match a {
            Action::Reject(r) => Some(r),
            _ => None,
        })
    }

    fn message_mut(&mut self) -> Result<&mut TestMessage, RString> {
        self.message
            .as_mut()
            .ok_or_else(|| RString::from("this event carries no mail item"))
    }
}

impl EventHost for TestHost {
    fn session(&self) -> ROption<FfiSession> {
        let s = &self.session;
        ROption::RSome(FfiSession {
            id: s.id,
            remote_endpoint: s.remote_endpoint.as_str().into(),
            local_endpoint: s.local_endpoint.as_str().into(),
            helo_domain: s.helo_domain.as_str().into(),
            tls: s.tls,
            authenticated_as: s.authenticated_as.as_deref().unwrap_or("").into(),
            external: s.external,
            service: s.service.as_str().into(),
        })
    }

    fn arg(&self, name: RStr<'_>) -> ROption<RString> {
        self.args
            .get(name.as_str())
            .map(|v| v.as_str().into())
            .into()
    }

    fn act(&mut self, action: HostAction) -> RResult<(), RString> {
        let action = match Action::from_host(action) {
            Ok(a) => a,
            Err(e) => return RResult::RErr(e.into()),
        };
        if let Some(event) = self.event {
            if !action.is_allowed(event, self.session.service == "frontend") {
                return RResult::RErr(format!("{action:?} is not available in {event}").into());
            }
        }
        if let Action::SetRecipient(address) = &action {
            // Lower-priority agents see the new recipient, as in the host.
            self.args.insert("recipient".to_string(), address.clone());
        }
        if let Action::SetRoutingOverride {
            recipient, domain, ..
        } = &action
        {
            if let Some(message) = self.message.as_mut() {
                for r in &mut message.recipients {
                    if r.address.eq_ignore_ascii_case(recipient) {
                        r.routing_override = Some(domain.clone()).filter(|d| !d.is_empty());
                    }
                }
            }
        }
        self.actions.push(action);
        RResult::ROk(())
    }

    fn property(&self, scope: PropertyScope, key: RStr<'_>) -> ROption<RString> {
        let bag = match scope {
            PropertyScope::Session => Some(&self.session_properties),
            PropertyScope::MailItem => self.message.as_ref().map(|m| &m.properties),
        };
        bag.and_then(|b| b.get(key.as_str()))
            .map(|v| v.as_str().into())
            .into()
    }

    fn set_property(&mut self, scope: PropertyScope, key: RStr<'_>, value: RStr<'_>) {
        let bag = match scope {
            PropertyScope::Session => Some(&mut self.session_properties),
            PropertyScope::MailItem => self.message.as_mut().map(|m| &mut m.properties),
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
        self.message.is_some()
    }

    fn mail_from(&self) -> RString {
        self.message
            .as_ref()
            .map(|m| m.from.as_str())
            .unwrap_or("")
            .into()
    }

    fn set_mail_from(&mut self, address: RStr<'_>) -> RResult<(), RString> {
        self.message_mut()
            .map(|m| m.from = address.to_string())
            .into()
    }

    fn recipients(&self) -> RVec<FfiRecipient> {
        let Some(message) = &self.message else {
            return RVec::new();
        };
        message
            .recipients
            .iter()
            .map(|r| FfiRecipient {
                address: r.address.as_str().into(),
                orcpt: r.orcpt.as_deref().unwrap_or("").into(),
                notify: r.notify.as_deref().unwrap_or("").into(),
                routing_override: r.routing_override.as_deref().unwrap_or("").into(),
            })
            .collect()
    }

    fn add_recipient(&mut self, address: RStr<'_>) -> RResult<(), RString> {
        let text = address.as_str().trim();
        if text.is_empty() || !text.contains('@') || text.contains(['<', '>', ' ', '\r', '\n']) {
            return RResult::RErr(format!("{text:?} is not a mailbox address").into());
        }
        self.message_mut()
            .map(|m| {
                m.recipients.push(Recipient {
                    address: address.to_string(),
                    orcpt: None,
                    notify: None,
                    routing_override: None,
                })
            })
            .into()
    }

    fn remove_recipient(&mut self, address: RStr<'_>) -> bool {
        let Ok(message) = self.message_mut() else {
            return false;
        };
        let before = message.recipients.len();
        message
            .recipients
            .retain(|r| !r.address.eq_ignore_ascii_case(address.as_str()));
        message.recipients.len() != before
    }

    fn headers(&self) -> RVec<Tuple2<RString, RString>> {
        let Some(message) = &self.message else {
            return RVec::new();
        };
        message
            .headers
            .iter()
            .map(|(n, v)| Tuple2(n.as_str().into(), v.as_str().into()))
            .collect()
    }

    fn add_header(&mut self, name: RStr<'_>, value: RStr<'_>) -> RResult<(), RString> {
        if let Err(e) = check_field(name.as_str(), value.as_str()) {
            return RResult::RErr(e.into());
        }
        self.message_mut()
            .map(|m| m.headers.push((name.to_string(), value.to_string())))
            .into()
    }

    fn set_header(&mut self, name: RStr<'_>, value: RStr<'_>) -> RResult<(), RString> {
        if let Err(e) = check_field(name.as_str(), value.as_str()) {
            return RResult::RErr(e.into());
        }
        self.message_mut()
            .map(|m| {
                match m
                    .headers
                    .iter()
                    .position(|(n, _)| n.eq_ignore_ascii_case(name.as_str()))
                {
                    Some(first) => {
                        m.headers[first].1 = value.to_string();
                        let mut i = 0;
                        m.headers.retain(|(n, _)| {
                            i += 1;
                            i - 1 == first || !n.eq_ignore_ascii_case(name.as_str())
                        });
                    }
                    None => m.headers.push((name.to_string(), value.to_string())),
                }
            })
            .into()
    }

    fn remove_header(&mut self, name: RStr<'_>) -> u32 {
        let Ok(message) = self.message_mut() else {
            return 0;
        };
        let before = message.headers.len();
        message
            .headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_str()));
        (before - message.headers.len()) as u32
    }

    fn body(&self) -> RVec<u8> {
        self.message
            .as_ref()
            .map(|m| m.body.clone())
            .unwrap_or_default()
            .into()
    }

    fn set_body(&mut self, body: RVec<u8>) -> RResult<(), RString> {
        if self.event == Some(Event::OnEndOfHeaders) {
            return RResult::RErr("the body has not arrived at OnEndOfHeaders".into());
        }
        self.message_mut().map(|m| m.body = body.into_vec()).into()
    }

    fn mime(&self) -> RVec<u8> {
        self.message
            .as_ref()
            .map(TestMessage::to_mime)
            .unwrap_or_default()
            .into()
    }

    fn set_mime(&mut self, mime: RVec<u8>) -> RResult<(), RString> {
        if self.event == Some(Event::OnEndOfHeaders) {
            return RResult::RErr("the body has not arrived at OnEndOfHeaders".into());
        }
        self.message_mut()
            .map(|m| {
                let parsed = TestMessage::parse(&mime);
                m.headers = parsed.headers;
                m.body = parsed.body;
            })
            .into()
    }

    fn logger(&self) -> ROption<LogSinkBox> {
        ROption::RSome(LogSink_TO::from_value(
            TestLog(Arc::clone(&self.log)),
            TD_Opaque,
        ))
    }

    // No `begin_async`: the harness, like a host without async support, lets the SDK wait for
    // the completion on the calling thread, so `run` returns once the handler has completed.
}

/// The rule the host applies to header edits: a field name of printable ASCII without colon or
/// space, and a value without bare line breaks.
fn check_field(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(format!("invalid header field name {name:?}"));
    }
    if value.contains(['\r', '\n']) {
        return Err(format!("header field {name} value must be one line"));
    }
    Ok(())
}
