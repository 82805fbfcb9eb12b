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
//! **Crates it may depend on:** `drover-proto` (wire types, names,
//! quantities), `drover-manifest` (the authority on manifests) and
//! `drover-pki` (certificates, the authorization layer); never the agent or
//! droverctl.
//!
//! **Modules, in layers.** A module uses only modules in layers below its own
//! (and `fixtures`, in tests); nothing uses a layer above it.
//!
//! ```text
//!  5  server                          wiring: sled, raft task, gRPC server, shutdown
//!     leader                          the loops only the leader runs
//!     renewal                         the controller renewing its own certificate
//!  any  metrics, usage, memory         process-wide: Prometheus families, agents' usage samples,
//!                                     giving freed memory back
//!  4  api  (control, peer, security)  gRPC services for droverctl and peers
//!     dispatcher                      agent sessions on the leader
//!  3  cluster  (+ cluster::wire)      the way into raft shared by services and loops
//!     orchestrator, scheduler, nodes  pure decisions over store objects
//!     endpoints                       which replicas each Service reaches
//!  2  raft  (storage, node, transport), config
//!  1  store  (objects, events, command)   the replicated state machine
//! ```
//!
//! - [`store`]: the replicated state machine (deployments, members, nodes,
//!   replicas, events, tokens) kept in the controller's sled database;
//!   `apply` is deterministic. It owns the model the other layers share,
//!   revision hashing ([`store::revision`]) included. Uses no other module.
//! - [`raft`]: the raft member — sled-backed log storage, the task that drives
//!   `RawNode`, and the peer transport. Uses `store`.
//! - [`config`]: the controller's settings from its command line. Uses `raft`.
//! - [`orchestrator`], [`scheduler`], [`nodes`]: pure decisions (replicas to
//!   create and remove, placements, node readiness). Use `store` only.
//! - [`endpoints`]: a Service's endpoints (ready replicas its selector
//!   matches, target ports resolved), a pure function. Uses `store` only.
//! - [`cluster`]: [`cluster::Cluster`], how services and loops commit writes
//!   and gate reads, the store/raft error → gRPC status mapping, and
//!   [`cluster::wire`], replica status between store and wire. Uses `raft`
//!   and `store`.
//! - [`dispatcher`]: agent sessions on the leader. Uses `cluster`, `store`.
//! - [`api`]: the gRPC services `Control`, `Raft` and `Security`. Uses
//!   `cluster`, `store`, `config` and `orchestrator` (rollout status).
//!   Services never call each other: what two of them share lives in
//!   `cluster`.
//! - [`leader`]: the orchestrator, scheduler and node-monitor loops. Uses
//!   `cluster`, `dispatcher` (heartbeats), the decision modules and `store`.
//! - [`renewal`]: the controller renewing its certificate through `Renew`
//!   on a member, publishing it to the listener and the peer clients. Uses
//!   `cluster`.
//! - [`metrics`]: the Prometheus registry every layer reports to with one
//!   line (a process-wide accessor), and the scrape that counts the state.
//!   Reads `store` and `raft` status at scrape time only.
//! - [`usage`]: the agents' latest CPU and memory samples, in the leader's
//!   memory (never replicated), for `droverctl top`. Uses nothing.
//! - [`memory`]: malloc's arenas limited at start and freed pages returned
//!   every few seconds. Uses nothing.
//! - [`server`]: wires everything together; the only module that uses all.
//! - [`fixtures`]: small valid objects and test databases, for tests only.

pub mod api;
pub mod cluster;
pub mod config;
pub mod dispatcher;
pub mod endpoints;
pub mod fixtures;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod nodes;
pub mod orchestrator;
pub mod raft;
pub mod renewal;
pub mod scheduler;
pub mod server;
pub mod stalls;
pub mod store;
pub mod usage;
