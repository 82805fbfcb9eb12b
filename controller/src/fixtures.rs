//! Test fixtures: small valid objects, as the manifest parser would produce them.

use std::collections::BTreeMap;

use drover_proto::manifest::{
    Container, Deployment, DeploymentSpec, IntOrPercent, LabelSelector, ObjectMeta, PodSpec,
    PodTemplate, Strategy, TemplateMeta,
};

/// A minimal valid deployment, as the manifest parser would produce it.
pub fn deployment(name: &str, replicas: u32) -> Deployment {
    let labels: BTreeMap<String, String> = [("app".to_string(), name.to_string())].into();
    Deployment {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: labels.clone(),
            },
            min_ready_seconds: 0,
            revision_history_limit: 10,
            progress_deadline_seconds: 600,
            strategy: Strategy::RollingUpdate {
                max_surge: IntOrPercent::Percent(25),
                max_unavailable: IntOrPercent::Percent(25),
            },
            template: PodTemplate {
                metadata: TemplateMeta {
                    labels,
                    ..Default::default()
                },
                spec: PodSpec {
                    containers: vec![Container {
                        name: "main".into(),
                        image: "drover/busybox:1".into(),
                        ..Default::default()
                    }],
                    restart_policy: "Always".into(),
                    termination_grace_period_seconds: 30,
                    ..Default::default()
                },
            },
        },
    }
}
