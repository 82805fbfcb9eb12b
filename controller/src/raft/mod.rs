//! The raft member: sled-backed [`storage`], the [`node`] task that owns
//! `RawNode`, and the [`transport`] that carries messages between members.

pub mod node;
pub mod storage;
pub mod transport;
