//! Test fixtures: small valid assignments, as a controller would send them.
//! Public so the integration tests in `agent/tests/` can use them too.

use std::collections::BTreeMap;

use drover_manifest::{Container, PodSpec, PodTemplate, PullPolicy, TemplateMeta};
use drover_proto::pb;

use crate::assignment::Assignment;

/// A replica of deployment `<replica up to the first '-'>`, revision `rev1`,
/// running `drover/busybox:1` with its default command.
pub fn assignment(replica: &str) -> Assignment {
    let deployment = replica.split('-').next().unwrap_or(replica).to_string();
    Assignment {
        replica: replica.to_string(),
        namespace: "default".into(),
        deployment: deployment.clone(),
        slot: replica
            .rsplit('-')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        revision: "rev1".into(),
        spec_hash: String::new(),
        template: std::sync::Arc::new(PodTemplate {
            metadata: TemplateMeta {
                labels: BTreeMap::from([("app".to_string(), deployment)]),
                ..Default::default()
            },
            spec: PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    image: "drover/busybox:1".into(),
                    image_pull_policy: PullPolicy::IfNotPresent,
                    ..Default::default()
                }],
                restart_policy: "Always".into(),
                termination_grace_period_seconds: 30,
                volumes: Vec::new(),
                ..Default::default()
            },
        }),
        template_json: "".into(),
        annotations: BTreeMap::new(),
        service_env: BTreeMap::new(),
        prepared: None,
    }
}

/// [`assignment`] running `command` (the container's `command`, Kubernetes-style).
pub fn with_command(replica: &str, command: &[&str]) -> Assignment {
    let mut a = assignment(replica);
    a.template_mut().spec.containers[0].command = command.iter().map(|s| s.to_string()).collect();
    a
}

/// The wire form of an assignment.
pub fn to_pb(a: &Assignment) -> pb::Assignment {
    pb::Assignment {
        replica: a.replica.clone(),
        namespace: a.namespace.clone(),
        deployment: a.deployment.clone(),
        slot: a.slot,
        revision: a.revision.clone(),
        template_json: serde_json::to_vec(&a.template).unwrap_or_default().into(),
        annotations: a.annotations.clone().into_iter().collect(),
        service_env: a.service_env.clone().into_iter().collect(),
        bound_at: 0,
    }
}
