//! Mailbox Transport: delivery into mailboxes (Maildir) and submission from their outboxes.

pub mod delivery;
pub mod store;
pub mod submission;
