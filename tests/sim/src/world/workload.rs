//! The clients' writes, drawn from the seed.
//!
//! ```text
//!   op ─▶ new deployment (Apply)          35%  (always for the first 3 ops)
//!         Scale of an earlier one to 0-3  25%
//!         template change (Apply)         20%  new image and env, maxSurge and
//!                                              maxUnavailable (or Recreate) drawn
//!         Delete of an earlier one         8%
//!         maintenance of node n4          12%  Drain, Cordon or uncordon; only
//!                                              with 4 agents and while faults run
//! ```
//!
//! Targets are deployments some op created (the write may still be refused:
//! not committed yet, or deleted). A deployment once asked to be deleted is
//! never applied again, so the clients' checks can tell what must be there:
//! every deployment not in [`World::deleting`] that an acknowledged write
//! touched holds at least the generation that write returned.
//!
//! Only n4 is ever cordoned, and only with 4 agents: a host-port deployment
//! has at most 3 replicas, one per node, so 3 schedulable nodes always fit
//! it once the faults stop.

use drover_controller::fixtures;
use drover_controller::store::{Command, ObjectRef, Write, WriteResult};
use drover_manifest::{ContainerPort, EnvVar, IntOrPercent, Protocol, Strategy};
use rand::Rng;

use super::World;

/// The node that maintenance ops cordon and drain.
const MAINTAINED: &str = "n4";

impl World {
    /// The write for client op `op`, sent to member `m`; `proposed[op]`
    /// becomes the name of the deployment it is about. Stamped with `m`'s
    /// clock, as the API server stamps a write (rollouts' progress deadlines
    /// are measured from it on the leader's clock).
    pub(super) fn command_for(&mut self, op: u64, m: usize) -> Write {
        let now_unix_ms = self.unix_ms(m);
        let roll = if op <= 3 {
            0
        } else {
            self.rng.gen_range(0..100)
        };
        let earlier = self.earlier_deployment();
        match (roll, earlier) {
            (35..=59, Some(target)) => {
                self.proposed.insert(op, target.clone());
                // At most 3: a deployment with a host port fits once per
                // node, on the 3 or 4 nodes once the faults stop (not while
                // some are down: then a replica waits, unschedulable).
                Write::Command(Command::Scale {
                    target: ObjectRef {
                        namespace: "default".into(),
                        name: target,
                    },
                    replicas: self.rng.gen_range(0..4),
                    now_unix_ms,
                })
            }
            (60..=79, Some(target)) if !self.deleting.contains(&target) => {
                self.proposed.insert(op, target.clone());
                self.count("template change");
                let d = self.deployment(&target, op);
                Write::Command(Command::Apply {
                    deployments: vec![d],
                    now_unix_ms,
                })
            }
            (80..=87, Some(target)) => {
                self.proposed.insert(op, target.clone());
                self.deleting.insert(target.clone());
                self.count("delete");
                Write::Command(Command::Delete {
                    refs: vec![ObjectRef {
                        namespace: "default".into(),
                        name: target,
                    }],
                    ignore_not_found: self.rng.gen_bool(0.5),
                    now_unix_ms,
                    grace_period_seconds: None,
                })
            }
            (88..=99, _) if self.chaos && self.agents.len() == 4 => {
                self.proposed.insert(op, MAINTAINED.into());
                let node = MAINTAINED.to_string();
                match self.rng.gen_range(0..3) {
                    0 => {
                        self.count("drain");
                        Write::Command(Command::Drain { node, now_unix_ms })
                    }
                    kind => {
                        let cordoned = kind == 1;
                        self.count(if cordoned { "cordon" } else { "uncordon" });
                        Write::Command(Command::Cordon {
                            node,
                            cordoned,
                            now_unix_ms,
                        })
                    }
                }
            }
            _ => {
                let name = format!("op-{op}");
                self.creates.insert(op);
                if self.rng.gen_bool(0.25) {
                    // Its own host port: two such deployments never compete.
                    self.host_ports.insert(op, 20_000 + (op % 40_000) as u16);
                }
                let d = self.deployment(&name, op);
                Write::Command(Command::Apply {
                    deployments: vec![d],
                    now_unix_ms,
                })
            }
        }
    }

    /// A deployment some earlier op created, if any.
    fn earlier_deployment(&mut self) -> Option<String> {
        if self.creates.is_empty() {
            return None;
        }
        let i = self.rng.gen_range(0..self.creates.len());
        self.creates.iter().nth(i).map(|op| format!("op-{op}"))
    }

    /// Deployment `name` as op `op` writes it: 0-3 replicas, a template of
    /// its own (image and env name the op), a strategy drawn from the seed,
    /// and the host port its creator gave it.
    fn deployment(&mut self, name: &str, op: u64) -> drover_manifest::Deployment {
        let mut d = fixtures::deployment(name, self.rng.gen_range(0..4));
        let container = &mut d.spec.template.spec.containers[0];
        container.image = format!("drover/busybox:{op}");
        container.env = vec![EnvVar {
            name: "OP".into(),
            value: op.to_string(),
            value_from: None,
        }];
        let port = name
            .strip_prefix("op-")
            .and_then(|n| n.parse::<u64>().ok())
            .and_then(|creator| self.host_ports.get(&creator).copied());
        if let Some(port) = port {
            container.ports = vec![ContainerPort {
                name: None,
                container_port: port,
                host_port: Some(port),
                protocol: Protocol::Tcp,
            }];
        }
        d.spec.strategy = if self.rng.gen_bool(0.15) {
            Strategy::Recreate
        } else {
            // A host-port replica's successor needs a node without it: with
            // every node holding one, only maxUnavailable >= 1 lets the
            // rollout move (Kubernetes' hostPort deadlock otherwise).
            let least_unavailable = u32::from(port.is_some());
            let mut bound = |least: u32| match self.rng.gen_range(0..3) {
                0 => IntOrPercent::Percent([25, 50, 100][self.rng.gen_range(0..3)]),
                _ => IntOrPercent::Int(self.rng.gen_range(least..=2)),
            };
            let max_surge = bound(0);
            let max_unavailable = match bound(least_unavailable) {
                IntOrPercent::Percent(_) if least_unavailable > 0 => IntOrPercent::Int(1),
                other => other,
            };
            Strategy::RollingUpdate {
                max_surge,
                max_unavailable,
            }
        };
        d
    }

    /// An acknowledged write's lower bounds: `(op, deployment, generation)`
    /// for each deployment it created, changed or scaled.
    pub(super) fn acknowledge(&mut self, op: u64, result: &WriteResult) {
        match result {
            WriteResult::Applied(applied) => {
                for (target, _, generation) in applied {
                    self.acked.push((op, target.name.clone(), *generation));
                }
            }
            WriteResult::Scaled { generation, .. } => {
                let name = self.proposed.get(&op).cloned().unwrap_or_default();
                self.acked.push((op, name, *generation));
            }
            // Whatever an acknowledged create says, its deployment exists.
            _ if self.creates.contains(&op) => {
                let name = self.proposed.get(&op).cloned().unwrap_or_default();
                self.acked.push((op, name, 1));
            }
            _ => {}
        }
    }

    /// Whether `state` holds what the acknowledged writes `acked` say must
    /// be there: each deployment not asked to be deleted, at least at the
    /// generation its write returned. `None` when it does.
    pub(super) fn missing_write(
        &self,
        state: &drover_controller::store::State,
        acked: &[(u64, String, u64)],
    ) -> Option<String> {
        acked.iter().find_map(|(op, name, generation)| {
            if self.deleting.contains(name) {
                return None;
            }
            match state.deployment("default", name) {
                Some(d) if d.generation >= *generation => None,
                Some(d) => Some(format!(
                    "op {op} ({name} at generation {generation}; it holds generation {})",
                    d.generation
                )),
                None => Some(format!("op {op} ({name})")),
            }
        })
    }
}
