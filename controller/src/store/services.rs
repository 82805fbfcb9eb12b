//! Services in the state machine: the commands that write them, and the
//! allocation of their cluster IPs and node ports (called from `command.rs`).
//!
//! Allocation happens inside the deterministic apply, so every member picks
//! the same address and a new leader never re-allocates:
//!
//! ```text
//!  cluster IP  = range.host(h mod hosts), h = fnv1a("ns/name"),  then the next free one
//!  node port   = 30000 + (h' mod 2768),   h' = fnv1a("ns/name/port/proto"), then the next free one
//! ```
//!
//! The range travels inside the command (the proposing controller's
//! `--service-cluster-ip-range`), not read from a flag here: members started
//! with different flags still agree. Addresses already given keep their
//! range; only new allocations and explicit `clusterIP`s are held to it.
//!
//! Rules (as Kubernetes has them): `clusterIP` is immutable once set (an
//! apply without one keeps the allocated address; headless stays headless);
//! an explicit address or `nodePort` that another Service holds is refused
//! naming the holder; a node port once allocated to a port stays with it
//! across applies. Cost: O(log n) per lookup in the `cluster_ips` and
//! `node_ports` indexes; a probe walks only taken neighbours.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use drover_manifest::{ClusterIp, Protocol, Service, ServiceType, NODE_PORT_RANGE};

use super::command::{ApplyOutcome, ObjectRef, WriteError};
use super::state::State;
use super::Store;

/// The default `--service-cluster-ip-range`, Kubernetes' own.
pub const DEFAULT_SERVICE_RANGE: &str = "10.96.0.0/16";

/// An IPv4 range for cluster IPs, `10.96.0.0/16`. Its network and broadcast
/// addresses are never handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceRange {
    network: u32,
    prefix: u8,
}

impl ServiceRange {
    /// How many addresses a Service can get: all but network and broadcast.
    pub fn hosts(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    /// The `i`-th host address (0-based), `i < hosts()`.
    fn host(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1 + i)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip > self.network && ip < self.network + self.hosts() + 1
    }
}

impl std::str::FromStr for ServiceRange {
    type Err = String;

    fn from_str(s: &str) -> Result<ServiceRange, String> {
        let bad = |why: &str| format!("invalid service range {s:?}: {why}");
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX, like 10.96.0.0/16"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| bad("the prefix length is not a number"))?;
        // /12 is Kubernetes' largest; /30 leaves two addresses.
        if !(12..=30).contains(&prefix) {
            return Err(bad("the prefix length must be between 12 and 30"));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(addr) & !mask != 0 {
            return Err(bad("host bits are set (use the network address)"));
        }
        Ok(ServiceRange {
            network: u32::from(addr),
            prefix,
        })
    }
}

impl std::fmt::Display for ServiceRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

impl TryFrom<String> for ServiceRange {
    type Error = String;
    fn try_from(s: String) -> Result<ServiceRange, String> {
        s.parse()
    }
}

impl From<ServiceRange> for String {
    fn from(r: ServiceRange) -> String {
        r.to_string()
    }
}

impl Default for ServiceRange {
    fn default() -> ServiceRange {
        ServiceRange {
            network: u32::from(Ipv4Addr::new(10, 96, 0, 0)),
            prefix: 16,
        }
    }
}

/// A Service as the store keeps it: the user's object and what was
/// allocated for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredService {
    pub service: Service,
    /// `None`: headless.
    pub cluster_ip: Option<Ipv4Addr>,
    /// Per port of `service.spec.ports`, in order: its node port, 0 for none.
    pub node_ports: Vec<u16>,
    pub generation: u64,
    pub created_unix_ms: i64,
    pub updated_unix_ms: i64,
}

impl StoredService {
    pub fn key(&self) -> ObjectRef {
        ObjectRef {
            namespace: self.service.metadata.namespace.clone(),
            name: self.service.metadata.name.clone(),
        }
    }
}

/// One applied Service's result: name, outcome, generation.
pub type ServiceResult = (ObjectRef, ApplyOutcome, u64);

/// 32-bit FNV-1a: a fixed, platform-independent hash (std's is randomised).
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn refused(t: &ObjectRef, path: &str, message: String) -> WriteError {
    WriteError::Service {
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        path: path.to_string(),
        message,
    }
}

/// Create or update `services`, allocating what they need from `range`.
/// Refused (the caller, `State::apply`, puts everything back) when an
/// address or node port is taken, outside its range, or would change.
pub(super) fn apply(
    state: &mut State,
    services: &[Service],
    range: &ServiceRange,
    now: i64,
) -> Result<Vec<ServiceResult>, WriteError> {
    let mut results = Vec::new();
    for s in services {
        let t = ObjectRef {
            namespace: s.metadata.namespace.clone(),
            name: s.metadata.name.clone(),
        };
        let old = state.service(&t.namespace, &t.name).cloned();
        let normalized = old.as_deref().map(|o| as_allocated(s, o));
        let s = normalized.as_ref().unwrap_or(s);
        if let Some(old) = &old {
            if old.service == *s {
                results.push((t, ApplyOutcome::Unchanged, old.generation));
                continue;
            }
            // Free what it held, so that it may keep it (and only it).
            state.remove_service(&t);
        }
        let cluster_ip = cluster_ip(state, s, old.as_deref(), range, &t)?;
        let node_ports = node_ports(state, s, old.as_deref(), &t)?;
        let (generation, created, outcome) = match &old {
            None => (1, now, ApplyOutcome::Created),
            Some(o) => (
                o.generation + 1,
                o.created_unix_ms,
                ApplyOutcome::Configured,
            ),
        };
        state.put_service(StoredService {
            service: s.clone(),
            cluster_ip,
            node_ports,
            generation,
            created_unix_ms: created,
            updated_unix_ms: now,
        });
        results.push((t, outcome, generation));
    }
    Ok(results)
}

/// `s` with what was allocated for `old` written back as "allocate": a
/// dump (`get svc -o yaml`, which shows the address and node ports) applies
/// unchanged, as with kubectl.
fn as_allocated(s: &Service, old: &StoredService) -> Service {
    let mut s = s.clone();
    if old.service.spec.cluster_ip == ClusterIp::Allocate
        && old
            .cluster_ip
            .is_some_and(|ip| s.spec.cluster_ip == ClusterIp::Address(ip))
    {
        s.spec.cluster_ip = ClusterIp::Allocate;
    }
    for p in &mut s.spec.ports {
        let allocated = old
            .service
            .spec
            .ports
            .iter()
            .zip(&old.node_ports)
            .find(|(o, _)| o.name == p.name && o.port == p.port && o.protocol == p.protocol);
        if let Some((o, n)) = allocated {
            if o.node_port.is_none() && p.node_port == Some(*n) {
                p.node_port = None;
            }
        }
    }
    s
}

fn cluster_ip(
    state: &State,
    s: &Service,
    old: Option<&StoredService>,
    range: &ServiceRange,
    t: &ObjectRef,
) -> Result<Option<Ipv4Addr>, WriteError> {
    const PATH: &str = "spec.clusterIP";
    let immutable = |from: &str, to: &str| {
        refused(
            t,
            PATH,
            format!(
                "is immutable: it is {from}, the manifest asks for {to}; delete the Service \
                 and apply it again to change it"
            ),
        )
    };
    let old_ip = old.map(|o| o.cluster_ip);
    match (s.spec.cluster_ip, old_ip) {
        (ClusterIp::Headless, None | Some(None)) => Ok(None),
        (ClusterIp::Headless, Some(Some(ip))) => Err(immutable(&ip.to_string(), "None")),
        (ClusterIp::Allocate, Some(None)) => Err(immutable("None (headless)", "an address")),
        (ClusterIp::Allocate, Some(Some(ip))) => Ok(Some(ip)),
        (ClusterIp::Address(want), Some(Some(ip))) if want == ip => Ok(Some(ip)),
        (ClusterIp::Address(want), Some(Some(ip))) => {
            Err(immutable(&ip.to_string(), &want.to_string()))
        }
        (ClusterIp::Address(want), Some(None)) => {
            Err(immutable("None (headless)", &want.to_string()))
        }
        (ClusterIp::Address(want), None) => {
            if !range.contains(want) {
                return Err(refused(
                    t,
                    PATH,
                    format!(
                        "{want} is outside the service range {range} (or is its network or \
                         broadcast address)"
                    ),
                ));
            }
            match state.cluster_ip_holder(want) {
                Some(holder) => Err(refused(
                    t,
                    PATH,
                    format!("{want} is already allocated to Service {holder}"),
                )),
                None => Ok(Some(want)),
            }
        }
        (ClusterIp::Allocate, None) => {
            let hosts = range.hosts();
            let start = fnv1a(&t.to_string()) % hosts;
            (0..hosts)
                .map(|i| range.host((start + i) % hosts))
                .find(|ip| state.cluster_ip_holder(*ip).is_none())
                .map(Some)
                .ok_or_else(|| {
                    refused(
                        t,
                        PATH,
                        format!("no address is free in the service range {range}"),
                    )
                })
        }
    }
}

fn node_ports(
    state: &State,
    s: &Service,
    old: Option<&StoredService>,
    t: &ObjectRef,
) -> Result<Vec<u16>, WriteError> {
    let mut out: Vec<u16> = Vec::with_capacity(s.spec.ports.len());
    if s.spec.kind != ServiceType::NodePort {
        return Ok(vec![0; s.spec.ports.len()]);
    }
    // A port keeps the node port it had, found by name, else by port and protocol.
    let kept = |p: &drover_manifest::ServicePort| -> Option<u16> {
        let old = old?;
        old.service
            .spec
            .ports
            .iter()
            .zip(&old.node_ports)
            .find(|(o, _)| match (&o.name, &p.name) {
                (Some(a), Some(b)) => a == b,
                _ => (o.port, o.protocol) == (p.port, p.protocol),
            })
            .map(|(_, n)| *n)
            .filter(|n| *n != 0)
    };
    let taken = |n: u16, out: &[u16]| state.node_port_holder(n).is_some() || out.contains(&n);
    let span = u32::from(NODE_PORT_RANGE.end() - NODE_PORT_RANGE.start()) + 1;
    for (i, p) in s.spec.ports.iter().enumerate() {
        let path = format!("spec.ports[{i}].nodePort");
        let port = match p.node_port.or_else(|| kept(p)) {
            Some(n) => {
                if let Some(holder) = state.node_port_holder(n) {
                    return Err(refused(
                        t,
                        &path,
                        format!("port {n} is already allocated to Service {holder}"),
                    ));
                }
                // Same number for TCP and UDP of one port is Kubernetes' DNS case.
                let same_port_other_protocol = s.spec.ports[..i]
                    .iter()
                    .zip(&out)
                    .any(|(q, m)| *m == n && q.port == p.port && q.protocol != p.protocol);
                if out.contains(&n) && !same_port_other_protocol {
                    return Err(refused(
                        t,
                        &path,
                        format!("port {n} is given to another port of this Service"),
                    ));
                }
                n
            }
            None => {
                let proto = match p.protocol {
                    Protocol::Udp => "udp",
                    _ => "tcp",
                };
                let start = fnv1a(&format!("{t}/{}/{proto}", p.port)) % span;
                (0..span)
                    .map(|k| NODE_PORT_RANGE.start() + ((start + k) % span) as u16)
                    .find(|n| !taken(*n, &out))
                    .ok_or_else(|| {
                        refused(t, &path, "no node port is free in 30000-32767".to_string())
                    })?
            }
        };
        out.push(port);
    }
    Ok(out)
}

/// Delete Services; with `ignore_not_found` false, one missing name
/// refuses the whole command.
pub(super) fn delete(
    state: &mut State,
    refs: &[ObjectRef],
    ignore_not_found: bool,
) -> Result<Vec<ObjectRef>, WriteError> {
    let mut deleted = Vec::new();
    for r in refs {
        if state.remove_service(r).is_some() {
            deleted.push(r.clone());
        } else if !ignore_not_found {
            return Err(WriteError::ServiceNotFound {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
            });
        }
    }
    Ok(deleted)
}

impl Store {
    /// Every Service, or those of one namespace, by namespace and name.
    pub fn services(&self, namespace: Option<&str>) -> Vec<StoredService> {
        self.snapshot()
            .services(namespace)
            .map(|s| StoredService::clone(s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, WriteResult};
    use drover_manifest::{ObjectMeta, PortRef, ServicePort, ServiceSpec};
    use std::collections::BTreeMap;

    fn service(name: &str, cluster_ip: ClusterIp, node_ports: &[Option<u16>]) -> Service {
        let kind = if node_ports.is_empty() {
            ServiceType::ClusterIP
        } else {
            ServiceType::NodePort
        };
        let ports = if node_ports.is_empty() {
            vec![port("http", 80, None)]
        } else {
            node_ports
                .iter()
                .enumerate()
                .map(|(i, n)| port(&format!("p{i}"), 80 + i as u16, *n))
                .collect()
        };
        Service {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                ..Default::default()
            },
            spec: ServiceSpec {
                kind,
                selector: BTreeMap::from([("app".to_string(), name.to_string())]),
                ports,
                cluster_ip,
            },
        }
    }

    fn port(name: &str, port: u16, node_port: Option<u16>) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            protocol: Protocol::Tcp,
            port,
            target_port: PortRef::Number(8080),
            node_port,
        }
    }

    fn apply_services(
        state: &mut State,
        index: u64,
        services: Vec<Service>,
    ) -> Result<WriteResult, WriteError> {
        let command = Command::ApplyConfig {
            deployments: vec![],
            config_maps: vec![],
            secrets: vec![],
            services,
            service_range: Some("10.96.0.0/28".parse().expect("range")),
            now_unix_ms: 1_000,
        };
        state.apply(index, 1, &command)
    }

    fn stored(state: &State, name: &str) -> StoredService {
        StoredService::clone(state.service("default", name).expect("stored"))
    }

    #[test]
    fn ranges_parse_and_refuse_with_the_reason() {
        let r: ServiceRange = "10.96.0.0/16".parse().expect("valid");
        assert_eq!(r.hosts(), 65_534);
        assert!(r.contains(Ipv4Addr::new(10, 96, 255, 254)));
        assert!(!r.contains(Ipv4Addr::new(10, 96, 0, 0)), "network address");
        assert!(!r.contains(Ipv4Addr::new(10, 96, 255, 255)), "broadcast");
        assert!(!r.contains(Ipv4Addr::new(10, 97, 0, 1)));
        for (bad, why) in [
            ("10.96.0.0", "expected ADDRESS/PREFIX"),
            ("10.96.0.1/16", "host bits are set"),
            ("10.96.0.0/8", "between 12 and 30"),
            ("10.96.0/16", "not an IPv4 address"),
        ] {
            let e = bad.parse::<ServiceRange>().expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn allocation_is_deterministic_and_stable_across_applies() {
        let mut a = State::default();
        let mut b = State::default();
        for state in [&mut a, &mut b] {
            apply_services(
                state,
                1,
                vec![service("web", ClusterIp::Allocate, &[None, None])],
            )
            .expect("applied");
        }
        let (sa, sb) = (stored(&a, "web"), stored(&b, "web"));
        assert_eq!(sa, sb, "two members allocate the same");
        let range: ServiceRange = "10.96.0.0/28".parse().expect("range");
        assert!(range.contains(sa.cluster_ip.expect("an address")));
        assert!(sa.node_ports.iter().all(|n| NODE_PORT_RANGE.contains(n)));
        assert_ne!(sa.node_ports[0], sa.node_ports[1]);
        // Re-applied with a changed label: same address and ports.
        let mut changed = service("web", ClusterIp::Allocate, &[None, None]);
        changed
            .metadata
            .labels
            .insert("tier".into(), "front".into());
        apply_services(&mut a, 2, vec![changed]).expect("applied");
        let again = stored(&a, "web");
        assert_eq!(
            (again.cluster_ip, &again.node_ports),
            (sa.cluster_ip, &sa.node_ports)
        );
        assert_eq!(again.generation, 2);
    }

    #[test]
    fn explicit_addresses_are_honoured_or_refused_naming_the_path() {
        let mut state = State::default();
        let ip = Ipv4Addr::new(10, 96, 0, 5);
        apply_services(
            &mut state,
            1,
            vec![service("a", ClusterIp::Address(ip), &[Some(30080)])],
        )
        .expect("applied");
        assert_eq!(stored(&state, "a").cluster_ip, Some(ip));
        assert_eq!(stored(&state, "a").node_ports, vec![30080]);
        let cases = [
            (
                service("b", ClusterIp::Address(ip), &[]),
                "service \"b\" in namespace \"default\": spec.clusterIP: 10.96.0.5 is already allocated to Service default/a",
            ),
            (
                service("b", ClusterIp::Address(Ipv4Addr::new(10, 0, 0, 1)), &[]),
                "service \"b\" in namespace \"default\": spec.clusterIP: 10.0.0.1 is outside the service range 10.96.0.0/28",
            ),
            (
                service("b", ClusterIp::Allocate, &[Some(30080)]),
                "service \"b\" in namespace \"default\": spec.ports[0].nodePort: port 30080 is already allocated to Service default/a",
            ),
            (
                service("a", ClusterIp::Address(Ipv4Addr::new(10, 96, 0, 6)), &[Some(30080)]),
                "service \"a\" in namespace \"default\": spec.clusterIP: is immutable: it is 10.96.0.5",
            ),
            (
                service("a", ClusterIp::Headless, &[]),
                "service \"a\" in namespace \"default\": spec.clusterIP: is immutable",
            ),
        ];
        for (s, expected) in cases {
            let before = state.clone();
            let e = apply_services(&mut state, 2, vec![s]).expect_err(expected);
            assert!(e.to_string().starts_with(expected), "{e}");
            assert_eq!(
                state.service_count(),
                before.service_count(),
                "nothing stored"
            );
            assert_eq!(stored(&state, "a"), stored(&before, "a"));
        }
    }

    #[test]
    fn a_full_range_is_refused_and_a_deleted_service_frees_its_address() {
        let mut state = State::default();
        // /28: 14 addresses.
        let many: Vec<Service> = (0..14)
            .map(|i| service(&format!("s{i}"), ClusterIp::Allocate, &[]))
            .collect();
        apply_services(&mut state, 1, many).expect("14 fit");
        let e = apply_services(
            &mut state,
            2,
            vec![service("one-more", ClusterIp::Allocate, &[])],
        )
        .expect_err("full");
        assert!(e.to_string().contains("no address is free"), "{e}");
        let freed = stored(&state, "s3").cluster_ip;
        let command = Command::DeleteServices {
            refs: vec![ObjectRef {
                namespace: "default".into(),
                name: "s3".into(),
            }],
            ignore_not_found: false,
        };
        state.apply(3, 1, &command).expect("deleted");
        apply_services(
            &mut state,
            4,
            vec![service("one-more", ClusterIp::Allocate, &[])],
        )
        .expect("fits now");
        assert_eq!(stored(&state, "one-more").cluster_ip, freed);
        assert!(state.indexes_match_records());
    }

    #[test]
    fn a_dump_with_the_allocated_address_and_ports_applies_unchanged() {
        let mut state = State::default();
        apply_services(
            &mut state,
            1,
            vec![service("web", ClusterIp::Allocate, &[None])],
        )
        .expect("applied");
        let first = stored(&state, "web");
        let mut dump = service(
            "web",
            ClusterIp::Address(first.cluster_ip.expect("ip")),
            &[],
        );
        dump.spec.kind = ServiceType::NodePort;
        dump.spec.ports = vec![port("p0", 80, Some(first.node_ports[0]))];
        let result = apply_services(&mut state, 2, vec![dump]).expect("applied");
        assert!(
            matches!(&result, WriteResult::AppliedConfig { services, .. } if services[0].1 == ApplyOutcome::Unchanged),
            "{result:?}"
        );
        assert_eq!(stored(&state, "web"), first);
    }

    #[test]
    fn a_snapshot_keeps_services_and_rebuilds_their_indexes() {
        let mut state = State::default();
        apply_services(
            &mut state,
            1,
            vec![
                service("web", ClusterIp::Allocate, &[Some(30080)]),
                service("h", ClusterIp::Headless, &[]),
            ],
        )
        .expect("applied");
        let restored = State::decode(&state.encode().expect("encodes")).expect("decodes");
        assert_eq!(restored, state);
        assert_eq!(restored.state_hash(), state.state_hash());
        assert!(restored.indexes_match_records());
        let web = stored(&state, "web");
        assert_eq!(
            restored.cluster_ip_holder(web.cluster_ip.expect("ip")),
            Some(&web.key())
        );
        assert_eq!(restored.node_port_holder(30080), Some(&web.key()));
        // A state without Services hashes as before they existed.
        assert!(
            !String::from_utf8_lossy(&State::default().encode().expect("encodes"))
                .contains("services")
        );
    }

    #[test]
    fn headless_services_get_no_address() {
        let mut state = State::default();
        apply_services(&mut state, 1, vec![service("h", ClusterIp::Headless, &[])])
            .expect("applied");
        assert_eq!(stored(&state, "h").cluster_ip, None);
    }
}
