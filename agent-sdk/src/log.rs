//! Logging from agents into the host's log.
//!
//! An agent has no logger of its own and needs none: every event (and every async context) hands
//! out a [`Logger`] whose lines cross the boundary to the host, which writes them into its log
//! with the agent's name, the service and the event as fields, and rate-limits them per agent.
//! `eprintln!` from an agent ends up in the host's stderr with none of that.
//!
//! ```
//! use mta_agent_sdk::prelude::*;
//!
//! #[derive(Clone)]
//! struct Audit;
//!
//! #[agent]
//! impl SmtpReceiveAgent for Audit {
//!     fn create(_: &Parameters) -> Result<Self, AgentError> { Ok(Audit) }
//!     fn on_mail_command(&mut self, event: &mut MailCommandEvent<'_>) -> AgentResult {
//!         agent_info!(event, "sender {} from {}", event.from(), event.session().remote_endpoint);
//!         Ok(())
//!     }
//! }
//! # use mta_agent_sdk::testing::{self, TestHost};
//! # let mut agent = testing::create::<Audit>(&[]).unwrap();
//! # let mut host = TestHost::smtp("192.0.2.1:5000").with_arg("from", "a@b.test");
//! # testing::run(&mut agent, Event::OnMailCommand, &mut host).unwrap();
//! # assert_eq!(host.log_lines(), [(LogLevel::Info, "sender a@b.test from 192.0.2.1:5000".to_string())]);
//! ```

use crate::abi::{EventHost, LogLevel, LogSinkBox};
use abi_stable::std_types::RStr;
use std::fmt;
use std::sync::Arc;

/// Where an agent's log lines go: the host's log, with the agent's name, service and event.
///
/// Cheap to clone, `Send` and `'static`: keep one in the task that completes an async handler.
/// Lines past the host's rate limit for this agent are dropped and counted (the host writes
/// one "suppressed" line for them), so logging in a loop cannot flood the host's log. A host
/// too old to take agent logs gets nothing.
#[derive(Clone, Default)]
pub struct Logger {
    sink: Option<Arc<LogSinkBox>>,
}

impl Logger {
    /// The log the host offers for this event (none from a host that predates agent logging).
    pub(crate) fn from_host(host: &(dyn EventHost + '_)) -> Self {
        Self {
            sink: host.logger().into_option().map(Arc::new),
        }
    }

    /// Whether a line at `level` would be written: the host's log filter lets it through.
    /// The logging macros ask first, so a disabled line costs no formatting.
    pub fn enabled(&self, level: LogLevel) -> bool {
        self.sink.as_ref().is_some_and(|s| s.enabled(level))
    }

    /// Writes a line at `level`. Prefer the macros ([`agent_info!`](crate::agent_info), ...),
    /// which skip the formatting of disabled lines.
    pub fn log(&self, level: LogLevel, message: fmt::Arguments<'_>) {
        let Some(sink) = &self.sink else { return };
        match message.as_str() {
            Some(text) => sink.log(level, RStr::from_str(text)),
            None => sink.log(level, RStr::from_str(&message.to_string())),
        }
    }

    /// Writes `message` at error level.
    pub fn error(&self, message: impl fmt::Display) {
        self.log_display(LogLevel::Error, message)
    }

    /// Writes `message` at warning level.
    pub fn warn(&self, message: impl fmt::Display) {
        self.log_display(LogLevel::Warn, message)
    }

    /// Writes `message` at info level.
    pub fn info(&self, message: impl fmt::Display) {
        self.log_display(LogLevel::Info, message)
    }

    /// Writes `message` at debug level.
    pub fn debug(&self, message: impl fmt::Display) {
        self.log_display(LogLevel::Debug, message)
    }

    /// Writes `message` at trace level.
    pub fn trace(&self, message: impl fmt::Display) {
        self.log_display(LogLevel::Trace, message)
    }

    fn log_display(&self, level: LogLevel, message: impl fmt::Display) {
        if self.enabled(level) {
            self.log(level, format_args!("{message}"))
        }
    }
}

impl fmt::Debug for Logger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logger")
            .field("connected", &self.sink.is_some())
            .finish()
    }
}

/// Logs a line at a given level: `agent_log!(event, LogLevel::Warn, "text {}", x)`. The first
/// argument is anything with a `logger()` method: an event, an async context or a [`Logger`].
/// The message is only formatted (and its arguments only evaluated) when the host would write it.
#[macro_export]
macro_rules! agent_log {
    ($target:expr, $level:expr, $($arg:tt)+) => {{
        let __logger: $crate::Logger = ($target).logger();
        let __level: $crate::LogLevel = $level;
        if __logger.enabled(__level) {
            __logger.log(__level, ::core::format_args!($($arg)+));
        }
    }};
}

/// Logs at error level: `agent_error!(event, "lookup failed: {e}")`. See [`agent_log!`].
#[macro_export]
macro_rules! agent_error {
    ($target:expr, $($arg:tt)+) => { $crate::agent_log!($target, $crate::LogLevel::Error, $($arg)+) };
}

/// Logs at warning level. See [`agent_log!`].
#[macro_export]
macro_rules! agent_warn {
    ($target:expr, $($arg:tt)+) => { $crate::agent_log!($target, $crate::LogLevel::Warn, $($arg)+) };
}

/// Logs at info level. See [`agent_log!`].
#[macro_export]
macro_rules! agent_info {
    ($target:expr, $($arg:tt)+) => { $crate::agent_log!($target, $crate::LogLevel::Info, $($arg)+) };
}

/// Logs at debug level. See [`agent_log!`].
#[macro_export]
macro_rules! agent_debug {
    ($target:expr, $($arg:tt)+) => { $crate::agent_log!($target, $crate::LogLevel::Debug, $($arg)+) };
}

/// Logs at trace level. See [`agent_log!`].
#[macro_export]
macro_rules! agent_trace {
    ($target:expr, $($arg:tt)+) => { $crate::agent_log!($target, $crate::LogLevel::Trace, $($arg)+) };
}

impl Logger {
    /// Itself, so the macros take a `Logger` as they take an event.
    pub fn logger(&self) -> Logger {
        self.clone()
    }
}
