//! The mta host: the services of the transport pipeline and the agent host that extends them.
//!
//! The binary (`mta`) is thin: [`cli`] parses the command line and calls into these modules.

pub mod agents;
pub mod cli;
pub mod config;
pub mod fsutil;
pub mod service;
