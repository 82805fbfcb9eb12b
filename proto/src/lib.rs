//! drover's wire API and manifest model.
//!
//! - [`pb`]: the generated `drover.v1` gRPC types and services. They stay at the
//!   edge: the controller and droverctl convert to their own types.
//! - [`manifest`]: the Kubernetes `apps/v1` Deployment subset drover accepts —
//!   parsing, strict decoding and validation with errors that name the file,
//!   document index and field path. droverctl runs it for early errors; the
//!   controller runs it again as the authority.
//! - [`duration`] and [`timestamp`]: durations and times as people type and
//!   read them, one grammar and one format for every binary.

pub mod duration;
pub mod manifest;
pub mod pki;
pub mod timestamp;

/// Generated `drover.v1` types, clients and servers.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("drover.v1");
}

/// Largest Control request a controller accepts (an apply's files together).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Largest raft batch a controller accepts from a peer (snapshots ride in these).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The drover version every binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
