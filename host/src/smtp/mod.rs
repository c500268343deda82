//! SMTP: the receive side shared by every listening service.

pub mod pool;
pub mod receive;
pub mod send;
pub mod stream;
