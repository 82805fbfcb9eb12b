//! The raft member: sled-backed [`storage`], the synchronous [`core`] that
//! owns `RawNode`, the tokio [`node`] task that drives it, and the
//! [`transport`] that carries messages between members.

pub mod core;
pub mod node;
pub mod storage;
pub mod terms;
pub mod transport;
