//! The mta host: the services of the transport pipeline and the agent host that extends them.
//!
//! The binary (`mta`) is thin: [`cli`] parses the command line and calls into these modules.

pub mod agents;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod directories;
pub mod frontend;
pub mod fsutil;
pub mod logging;
pub mod mailbox;
pub mod message;
pub mod metrics;
pub mod net;
pub mod organization;
pub mod privileges;
pub mod reconfiguration;
pub mod routing;
pub mod server;
pub mod service;
pub mod smtp;
pub mod systemd;
pub mod tls;
pub mod tracking;
pub mod transport;
