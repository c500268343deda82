//! Routing: address spaces, the topology of sites and servers, and connector selection.

pub mod address_space;
pub mod selection;
pub mod topology;
