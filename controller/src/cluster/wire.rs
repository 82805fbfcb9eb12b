//! Replica status between the wire (the agent protocol, droverctl's
//! `get`/`describe`) and the store.

use drover_proto::pb;
use drover_proto::pb::ReplicaState;

use crate::store::objects::parse_agent_id;
use drover_manifest::Protocol;

use crate::store::objects::PublishedPort;
use crate::store::{ObjectRef, ReplicaObserved, ReplicaPhase, ReplicaRecord};

/// An agent's report, as the store keeps it; `None` for an id that is not
/// `<namespace>.<name>`.
pub fn observed_from_pb(s: &pb::ReplicaStatus) -> Option<(ObjectRef, ReplicaObserved)> {
    let (namespace, name) = parse_agent_id(&s.replica)?;
    let phase = match s.state() {
        ReplicaState::Running => ReplicaPhase::Running,
        ReplicaState::CrashLoopBackOff => ReplicaPhase::CrashLoopBackOff,
        ReplicaState::Failed => ReplicaPhase::Failed,
        ReplicaState::Terminating => ReplicaPhase::Terminating,
        ReplicaState::Gone => ReplicaPhase::Gone,
        ReplicaState::Pending | ReplicaState::Unspecified => ReplicaPhase::Pending,
    };
    Some((
        ObjectRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        },
        ReplicaObserved {
            phase,
            ready: s.ready,
            restarts: s.restarts,
            last_exit_code: s.last_exit_code,
            reason: s.reason.clone(),
            message: s.message.clone(),
            container_id: s.container_id.clone(),
            image: s.image.clone(),
            started_unix_ms: s.started_unix_ms,
            finished_unix_ms: s.finished_unix_ms,
            next_restart_unix_ms: s.next_restart_unix_ms,
            reported_unix_ms: 0,
            node: String::new(),
            ready_since_unix_ms: 0,
            published_ports: s
                .published_ports
                .iter()
                .filter_map(published_from_pb)
                .collect(),
        },
    ))
}

/// A stored replica's last report from its current node, in wire form
/// (Pending when its node has not reported yet; Terminating from the moment
/// it was removed from its deployment until its node reports it gone).
pub fn observed_to_pb(r: &ReplicaRecord) -> pb::ReplicaStatus {
    let none = ReplicaObserved::default();
    let o = r.current_status().unwrap_or(&none);
    let state = match o.phase {
        _ if r.is_terminating() => ReplicaState::Terminating,
        ReplicaPhase::Pending => ReplicaState::Pending,
        ReplicaPhase::Running => ReplicaState::Running,
        ReplicaPhase::CrashLoopBackOff => ReplicaState::CrashLoopBackOff,
        ReplicaPhase::Failed => ReplicaState::Failed,
        ReplicaPhase::Terminating => ReplicaState::Terminating,
        ReplicaPhase::Gone => ReplicaState::Gone,
    };
    pb::ReplicaStatus {
        replica: r.agent_id(),
        state: state as i32,
        ready: o.ready,
        restarts: o.restarts,
        last_exit_code: o.last_exit_code,
        reason: o.reason.clone(),
        message: o.message.clone(),
        container_id: o.container_id.clone(),
        image: o.image.clone(),
        started_unix_ms: o.started_unix_ms,
        finished_unix_ms: o.finished_unix_ms,
        next_restart_unix_ms: o.next_restart_unix_ms,
        revision: r.revision.clone(),
        published_ports: o
            .published_ports
            .iter()
            .map(|p| pb::PublishedPort {
                container_port: u32::from(p.container_port),
                protocol: p.protocol.as_str().to_string(),
                host_port: u32::from(p.host_port),
            })
            .collect(),
    }
}

/// A published port from an agent; `None` for a port out of range or an
/// unknown protocol (the agent never sends one).
fn published_from_pb(p: &pb::PublishedPort) -> Option<PublishedPort> {
    let port = |n: u32| u16::try_from(n).ok().filter(|n| *n != 0);
    let protocol = match p.protocol.as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => return None,
    };
    Some(PublishedPort {
        container_port: port(p.container_port)?,
        protocol,
        host_port: port(p.host_port)?,
    })
}
