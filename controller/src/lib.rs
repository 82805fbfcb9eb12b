//! drover-controller: one member of the raft-replicated control plane.
//!
//! ```text
//!  droverctl ──Control gRPC──▶ api ──write──▶ raft::Handle ──▶ raft::node (owns RawNode)
//!                               │                                  │   ▲
//!                               └──read (ReadIndex)────────────────┘   │ raft::transport
//!                                                                  ▼   │ (Raft gRPC to peers)
//!                                                     store (state machine in sled)
//! ```
//!
//! - [`raft`]: the raft member — sled-backed log storage, the task that drives
//!   `RawNode`, and the peer transport.
//! - [`store`]: the replicated state machine (deployments, members) kept in the
//!   same sled database; `apply` is deterministic.
//! - [`api`]: the gRPC services: `Control` for droverctl, `Raft` for peers.

pub mod api;
pub mod config;
pub mod dispatcher;
pub mod fixtures;
pub mod leader;
pub mod nodes;
pub mod orchestrator;
pub mod raft;
pub mod scheduler;
pub mod server;
pub mod store;
