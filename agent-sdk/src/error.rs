//! The error an agent returns from a handler or from `create`.

use std::fmt;

/// An agent's failure. The host treats it like a panic: a fault for this agent, which fails only
/// what the agent was doing, with a temporary error (451 4.3.0) or a deferral, so nothing is lost.
///
/// Any error type converts into it with `?`; [`AgentError::msg`] builds one from text.
///
/// ```
/// use mta_agent_sdk::AgentError;
///
/// fn port(text: &str) -> Result<u16, AgentError> {
///     Ok(text.parse::<u16>()?)
/// }
/// assert!(port("25").is_ok());
/// assert!(port("x").unwrap_err().to_string().contains("invalid digit"));
/// ```
pub struct AgentError(String);

impl AgentError {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl<E: std::error::Error> From<E> for AgentError {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self(message)
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentError({:?})", self.0)
    }
}

/// What every handler returns.
pub type AgentResult<T = ()> = Result<T, AgentError>;
