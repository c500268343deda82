//! What every event offers, whatever its class: the host link, action requests and submission.

use crate::abi::{EventHost, FfiResponse, HostAction};
use crate::{AgentError, Logger, SmtpResponse};
use abi_stable::std_types::{RString, RVec};

/// The host side of one event, shared by the event types of all classes.
pub(crate) struct Source<'a> {
    pub(crate) host: &'a mut (dyn EventHost + 'a),
    /// Asked of the host once per handler, when the agent first logs.
    logger: std::cell::OnceCell<Logger>,
    /// Whether the handler took its async context (once only).
    pub(crate) went_async: bool,
}

impl<'a> Source<'a> {
    pub(crate) fn new(host: &'a mut (dyn EventHost + 'a)) -> Self {
        Self {
            host,
            logger: std::cell::OnceCell::new(),
            went_async: false,
        }
    }

    pub(crate) fn logger(&self) -> Logger {
        self.logger
            .get_or_init(|| Logger::from_host(&*self.host))
            .clone()
    }

    pub(crate) fn act(&mut self, action: HostAction) -> Result<(), AgentError> {
        self.host.act(action).into_result().map_err(AgentError::msg)
    }

    pub(crate) fn arg(&self, name: &str) -> Option<String> {
        crate::mail_item::arg(&*self.host, name)
    }

    pub(crate) fn submit(
        &mut self,
        from: &str,
        recipients: &[&str],
        mime: Vec<u8>,
    ) -> Result<(), AgentError> {
        self.act(HostAction::SubmitMessage {
            from: from.into(),
            recipients: recipients.iter().map(|r| RString::from(*r)).collect(),
            mime: RVec::from(mime),
        })
    }
}

/// Checks that a response can reject (4xx or 5xx) and converts it for the boundary.
pub(crate) fn rejection(response: &SmtpResponse) -> Result<FfiResponse, AgentError> {
    if response.is_success() || response.code() / 100 == 3 {
        return Err(AgentError::msg(format!(
            "a reject needs a 4xx or 5xx response, got {response}"
        )));
    }
    Ok(FfiResponse::from(response))
}
