//! The gRPC services droverctl and peer controllers call.
//!
//! - [`control`]: `drover.v1.Control`, what droverctl speaks.
//! - [`peer`]: `drover.v1.Raft`, what controllers speak to each other.
//! - [`security`]: `drover.v1.Security`, join tokens and certificates;
//!   [`join_limit`] rate-limits its anonymous `Join` per peer address.
//! - `watch`: the Control API's `Watch` (`get KIND -w`), from the store's
//!   history of recent states.
//!
//! All of them reach the raft node and the store through a
//! [`crate::cluster::Cluster`]; none of them is used by the dispatcher or
//! the leader loops.

mod config;
pub mod control;
pub mod join_limit;
pub mod peer;
pub mod security;
mod services;
mod watch;
