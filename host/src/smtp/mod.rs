//! SMTP: the protocol, the receive side shared by every listening service, and the client.
//!
//! - [`session`] is the protocol as a sans-IO state machine, [`command`], [`address`],
//!   [`xtext`] and [`data`] its pure parts;
//! - [`receive`] is the listener and the tokio shell around a session;
//! - [`send`] is the client, [`pool`] keeps its idle connections.

pub mod address;
pub mod client_tls;
pub mod command;
pub mod data;
pub mod pool;
pub mod receive;
pub mod send;
pub mod session;
pub mod stream;
pub mod xtext;

use mta_agent_sdk::SmtpResponse;

/// A reply the host sends or records. It never fails: text from outside (a remote server, an
/// agent, a file) is cleaned up rather than refused (see [`SmtpResponse::sanitized`]).
pub fn reply(code: u16, enhanced: &str, text: &str) -> SmtpResponse {
    SmtpResponse::sanitized(code, enhanced, text)
}
