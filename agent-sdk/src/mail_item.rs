//! The mail item: envelope, header fields, body and raw MIME, and its property bag.

use crate::abi::{EventHost, FfiRecipient, PropertyScope};
use crate::AgentError;
use abi_stable::std_types::{RStr, RVec};

/// One envelope recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The address, `local@domain`.
    pub address: String,
    /// The DSN ORCPT parameter (RFC 3461), if the client gave one.
    pub orcpt: Option<String>,
    /// The DSN NOTIFY parameter (RFC 3461), if the client gave one.
    pub notify: Option<String>,
    /// The routing domain a routing agent chose for this recipient, if any.
    pub routing_override: Option<String>,
}

impl From<FfiRecipient> for Recipient {
    fn from(r: FfiRecipient) -> Self {
        let some = |s: abi_stable::std_types::RString| {
            if s.is_empty() {
                None
            } else {
                Some(s.into_string())
            }
        };
        Self {
            address: r.address.into_string(),
            orcpt: some(r.orcpt),
            notify: some(r.notify),
            routing_override: some(r.routing_override),
        }
    }
}

/// The message being received, categorized or delivered.
///
/// Changes take effect in the host at once: a header added at OnEndOfData is in the message that
/// is queued; a recipient removed at OnResolvedMessage is not routed.
pub struct MailItem<'e> {
    host: &'e mut (dyn EventHost + 'e),
}

impl<'e> MailItem<'e> {
    pub(crate) fn new(host: &'e mut (dyn EventHost + 'e)) -> Self {
        Self { host }
    }

    /// The envelope sender (MAIL FROM); empty for the null sender `<>`.
    pub fn from(&self) -> String {
        self.host.mail_from().into_string()
    }

    /// Replaces the envelope sender.
    pub fn set_from(&mut self, address: &str) -> Result<(), AgentError> {
        self.host
            .set_mail_from(RStr::from_str(address))
            .into_result()
            .map_err(AgentError::msg)
    }

    /// The envelope recipients.
    pub fn recipients(&self) -> Vec<Recipient> {
        self.host
            .recipients()
            .into_iter()
            .map(Recipient::from)
            .collect()
    }

    /// Adds an envelope recipient (expanding the recipient list).
    pub fn add_recipient(&mut self, address: &str) -> Result<(), AgentError> {
        self.host
            .add_recipient(RStr::from_str(address))
            .into_result()
            .map_err(AgentError::msg)
    }

    /// Removes an envelope recipient; `false` when it was not a recipient.
    pub fn remove_recipient(&mut self, address: &str) -> bool {
        self.host.remove_recipient(RStr::from_str(address))
    }

    /// The header fields, in order, with unfolded values.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.host
            .headers()
            .into_iter()
            .map(|pair| (pair.0.into_string(), pair.1.into_string()))
            .collect()
    }

    /// The value of the first header field of this name (names compare ignoring case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.host
            .headers()
            .into_iter()
            .find(|pair| pair.0.eq_ignore_ascii_case(name))
            .map(|pair| pair.1.into_string())
    }

    /// The values of every header field of this name, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.host
            .headers()
            .into_iter()
            .filter(|pair| pair.0.eq_ignore_ascii_case(name))
            .map(|pair| pair.1.into_string())
            .collect()
    }

    /// Appends a header field at the end of the header block.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), AgentError> {
        self.host
            .add_header(RStr::from_str(name), RStr::from_str(value))
            .into_result()
            .map_err(AgentError::msg)
    }

    /// Sets a header field: replaces the first of this name, removes the others, or appends it.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), AgentError> {
        self.host
            .set_header(RStr::from_str(name), RStr::from_str(value))
            .into_result()
            .map_err(AgentError::msg)
    }

    /// Removes every header field of this name; returns how many were removed.
    pub fn remove_header(&mut self, name: &str) -> usize {
        self.host.remove_header(RStr::from_str(name)) as usize
    }

    /// The `Subject` field.
    pub fn subject(&self) -> Option<String> {
        self.header("Subject")
    }

    /// The `Message-ID` field.
    pub fn message_id(&self) -> Option<String> {
        self.header("Message-ID")
    }

    /// The body: everything after the blank line that ends the header block.
    pub fn body(&self) -> Vec<u8> {
        self.host.body().into_vec()
    }

    /// Replaces the body, keeping the header block.
    pub fn set_body(&mut self, body: Vec<u8>) -> Result<(), AgentError> {
        self.host
            .set_body(RVec::from(body))
            .into_result()
            .map_err(AgentError::msg)
    }

    /// The whole message as raw MIME (header block, blank line, body), CRLF line ends.
    pub fn mime(&self) -> Vec<u8> {
        self.host.mime().into_vec()
    }

    /// Replaces the whole message; it must have a header block.
    pub fn set_mime(&mut self, mime: Vec<u8>) -> Result<(), AgentError> {
        self.host
            .set_mime(RVec::from(mime))
            .into_result()
            .map_err(AgentError::msg)
    }

    /// A property of the mail item's bag, shared by every agent along the pipeline.
    pub fn property(&self, key: &str) -> Option<String> {
        self.host
            .property(PropertyScope::MailItem, RStr::from_str(key))
            .into_option()
            .map(|v| v.into_string())
    }

    /// Sets a property of the mail item's bag; an empty value removes it.
    pub fn set_property(&mut self, key: &str, value: &str) {
        self.host.set_property(
            PropertyScope::MailItem,
            RStr::from_str(key),
            RStr::from_str(value),
        );
    }

    /// The DSN envelope id (ENVID), if the client gave one.
    pub fn envid(&self) -> Option<String> {
        arg(&*self.host, "envid")
    }
}

/// A named event argument, `None` when absent or empty.
pub(crate) fn arg(host: &(dyn EventHost + '_), name: &str) -> Option<String> {
    host.arg(RStr::from_str(name))
        .into_option()
        .map(|v| v.into_string())
        .filter(|v| !v.is_empty())
}
