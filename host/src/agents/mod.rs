//! The agent host: agents files, libraries, pipeline snapshots, live reload and dispatch.
//!
//! - [`file`] reads an agents file (Exchange's format) with positions;
//! - [`library`] loads agent libraries from shadow copies and checks their SDK;
//! - [`pipeline`] builds an immutable snapshot of a service's agents;
//! - [`reload`] swaps snapshots live when a file or library changes;
//! - [`canary`] judges canaries (a new version serving a share beside the current one);
//! - [`dispatch`] raises events to agents, containing faults and enforcing time limits;
//! - [`log`] writes agents' log lines into the host's log, rate-limited per agent;
//! - [`snapshot`] records the item as each agent left it, when the agents file asks for it;
//! - [`edit`] changes a file for the `mta agent` commands; [`status`] tells other processes
//!   what a running host has loaded.

pub mod canary;
pub mod context;
pub mod diagnostic;
pub mod dispatch;
pub mod edit;
pub mod file;
pub mod library;
pub mod log;
pub mod pipeline;
pub mod pool;
pub mod reload;
pub mod snapshot;
pub mod status;
pub mod strict_modes;

pub use diagnostic::Diagnostic;
pub use dispatch::{AgentSet, EventContext, Fault};
pub use library::Libraries;
pub use pipeline::Pipeline;
pub use reload::{AgentHost, ReloadController};
