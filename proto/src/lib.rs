//! drover's wire API and the shared model every crate agrees on.
//!
//! - [`pb`]: the generated `drover.v1` gRPC types and services. They stay at the
//!   edge: the controller and droverctl convert to their own types.
//! - [`names`]: the name grammars (DNS-1123 labels and subdomains, label keys
//!   and values, port, environment variable and header names).
//! - [`selector`]: label and field selectors (`-l`, `--field-selector`),
//!   parsed by droverctl and evaluated by the controller.
//! - [`quantity`]: Kubernetes resource quantities (`500m`, `64Mi`).
//! - [`image`]: container image references (Docker's grammar).
//! - [`duration`] and [`timestamp`]: durations and times as people type and
//!   read them, one grammar and one format for every binary (formatting
//!   only: no clock is read here).
//! - the size limits and version every binary shares, and [`codec`], the
//!   gRPC codec of every service (prost's, with small starting buffers for
//!   agents' sessions).
//!
//! **What it may depend on.** Nothing of drover's, and no I/O: no files, no
//! sockets, no certificates, no clocks. Everything here is a pure function or
//! a plain type, so every other crate (`drover-manifest`, `drover-pki`, the
//! controller, the agent, droverctl) may depend on it. Only the generated
//! `pb` code pulls in tonic and prost.

pub mod codec;
pub mod duration;
pub mod image;
pub mod names;
pub mod quantity;
pub mod selector;
pub mod timestamp;

/// Generated `drover.v1` types, clients and servers.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("drover.v1");
}

impl std::fmt::Debug for pb::ConfigObject {
    /// Key names and sizes only: a Secret's values must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: std::collections::BTreeMap<&str, usize> = self
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), v.len()))
            .collect();
        f.debug_struct("ConfigObject")
            .field("kind", &self.kind())
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("data_sizes", &sizes)
            .field("version", &self.version)
            .finish()
    }
}

impl std::fmt::Debug for pb::ConfigRecord {
    /// Without the object's JSON: from RevealSecrets it holds values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigRecord")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("generation", &self.generation)
            .field("sizes", &self.sizes)
            .finish()
    }
}

impl std::fmt::Debug for pb::ManifestFile {
    /// Name and size only: a manifest may hold a Secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestFile")
            .field("name", &self.name)
            .field("bytes", &self.content.len())
            .finish()
    }
}

/// Largest Control request a controller accepts (an apply's files together).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Largest controller→agent session message (an assignment set): the
/// dispatcher encodes up to this and agents decode up to this, so a node with
/// many or large templates still gets its assignments.
pub const MAX_ASSIGNMENT_BYTES: usize = 64 * 1024 * 1024;

/// Largest raft batch a controller accepts from a peer (snapshots are
/// streamed apart, in [`SNAPSHOT_CHUNK_BYTES`] pieces).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Snapshot data per `InstallSnapshot` chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Largest snapshot a controller accepts from a peer.
pub const MAX_SNAPSHOT_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// The drover version every binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
