//! `lab up --apply`: wait until every deployment of the new lab is
//! available, or say which replicas are not and why.
//!
//! ```text
//!  poll (250 ms): list deployments + replicas ──▶ progress(summary) on change / every 10 s
//!     all available ──▶ Ok(addresses to curl)
//!     bound passed  ──▶ Err(NotAvailable: each replica not ready, with its reason)
//! ```
//!
//! The decisions ([`summary`], [`all_available`], [`stuck`], [`addresses`])
//! are pure functions of what the controllers answered.

use std::time::{Duration, Instant};

use drover_proto::pb;

use crate::{Lab, Role};

/// Deployments that did not become available within the bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAvailable {
    pub waited: Duration,
    /// `web: 0 of 3 available`, one per deployment not available.
    pub deployments: Vec<String>,
    /// `web-0-x7f2 on n1: CrashLoopBackOff: exit 127`, one per replica not ready.
    pub replicas: Vec<String>,
    /// The first replica not ready and its deployment, for the next commands.
    pub first: Option<(String, String)>,
}

impl std::fmt::Display for NotAvailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not available after {}s ({})",
            self.waited.as_secs(),
            self.deployments.join(", ")
        )?;
        for r in &self.replicas {
            write!(f, "\n  {r}")?;
        }
        Ok(())
    }
}

/// What the controllers answered in one poll.
pub struct Observed {
    pub deployments: Vec<pb::Deployment>,
    pub replicas: Vec<pb::Replica>,
}

/// `spec.replicas` of a deployment's stored model.
pub fn spec_replicas(spec_json: &str) -> u32 {
    serde_json::from_str::<serde_json::Value>(spec_json)
        .ok()
        .and_then(|v| v["spec"]["replicas"].as_u64())
        .unwrap_or(0) as u32
}

fn available(d: &pb::Deployment) -> u32 {
    d.status.as_ref().map_or(0, |s| s.available)
}

/// Every deployment has all its desired replicas available (and there is one).
pub fn all_available(o: &Observed) -> bool {
    !o.deployments.is_empty()
        && o.deployments
            .iter()
            .all(|d| available(d) >= spec_replicas(&d.spec_json))
}

/// `web 2/3 available, worker 1/1 available`.
pub fn summary(o: &Observed) -> String {
    if o.deployments.is_empty() {
        return "no deployment yet".into();
    }
    o.deployments
        .iter()
        .map(|d| {
            format!(
                "{} {}/{} available",
                d.name,
                available(d),
                spec_replicas(&d.spec_json)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a replica is not ready: its reason and exit code, or its state.
pub fn reason(r: &pb::Replica) -> String {
    let Some(s) = &r.status else {
        return if r.pending_reason.is_empty() {
            "Pending".into()
        } else {
            format!("Pending: {}", r.pending_reason)
        };
    };
    let state = match s.state() {
        pb::ReplicaState::Running => "Running, not ready",
        pb::ReplicaState::CrashLoopBackOff => "CrashLoopBackOff",
        pb::ReplicaState::Failed => "Failed",
        pb::ReplicaState::Terminating => "Terminating",
        pb::ReplicaState::Gone => "Gone",
        pb::ReplicaState::Pending | pb::ReplicaState::Unspecified => "Pending",
    };
    let mut out = if s.reason.is_empty() || s.reason == state {
        state.to_string()
    } else if s.state() == pb::ReplicaState::CrashLoopBackOff {
        // The reason is the last exit's (Error, OOMKilled): the loop is the news.
        state.to_string()
    } else {
        s.reason.clone()
    };
    if let Some(code) = s.last_exit_code {
        out.push_str(&format!(": exit {code}"));
    }
    // A crash loop's message repeats the back-off and exit code.
    if !s.message.is_empty() && s.state() != pb::ReplicaState::CrashLoopBackOff {
        out.push_str(&format!(" ({})", s.message));
    }
    out
}

fn ready(r: &pb::Replica) -> bool {
    r.status
        .as_ref()
        .is_some_and(|s| s.state() == pb::ReplicaState::Running && s.ready)
}

/// The answer after the bound: deployments not available, replicas not ready.
pub fn stuck(o: &Observed, waited: Duration) -> NotAvailable {
    let late: Vec<&pb::Deployment> = o
        .deployments
        .iter()
        .filter(|d| available(d) < spec_replicas(&d.spec_json))
        .collect();
    let mut replicas = Vec::new();
    let mut first = None;
    for r in &o.replicas {
        if ready(r) || !late.iter().any(|d| d.name == r.deployment) {
            continue;
        }
        let node = if r.node.is_empty() {
            "no node".to_string()
        } else {
            r.node.clone()
        };
        replicas.push(format!("{} on {node}: {}", r.name, reason(r)));
        first.get_or_insert((r.name.clone(), r.deployment.clone()));
    }
    NotAvailable {
        waited,
        deployments: if late.is_empty() {
            vec!["no deployment was applied".into()]
        } else {
            late.iter()
                .map(|d| {
                    format!(
                        "{}: {} of {} available",
                        d.name,
                        available(d),
                        spec_replicas(&d.spec_json)
                    )
                })
                .collect()
        },
        replicas,
        first,
    }
}

/// `http://IP:PORT/` for each ready replica's host port, on its host's
/// address (every agent is a host of its own, with its own Docker engine
/// for the Docker runtime; labs from before that published on this
/// machine's engine: loopback).
pub fn addresses(lab: &Lab, o: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    for r in o.replicas.iter().filter(|r| ready(r)) {
        let shared_engine =
            lab.runtime == "docker" && lab.agents().any(|h| h.name == r.node && h.engine.is_none());
        let ip = if shared_engine {
            "127.0.0.1".to_string()
        } else {
            match lab
                .hosts
                .iter()
                .find(|h| h.role == Role::Agent && h.name == r.node)
            {
                Some(h) => h.ip.clone(),
                None => continue,
            }
        };
        for port in &r.host_ports {
            let url = format!("http://{ip}:{port}/");
            if !out.contains(&url) {
                out.push(url);
            }
        }
    }
    out.sort();
    out
}

async fn observe(lab: &Lab) -> anyhow::Result<Observed> {
    let mut client = lab.client(lab.servers(), Duration::from_secs(3))?;
    let deployments = client
        .call(|mut c| async move {
            c.list_deployments(pb::ListDeploymentsRequest::default())
                .await
        })
        .await?
        .deployments;
    let replicas = client
        .call(|mut c| async move { c.list_replicas(pb::ListReplicasRequest::default()).await })
        .await?
        .replicas;
    Ok(Observed {
        deployments,
        replicas,
    })
}

/// Poll until every deployment is available (Ok: the addresses to curl) or
/// `limit` passes (Err: which replicas are not ready, and why). `progress`
/// gets the summary each time it changes.
pub async fn wait(
    lab: &Lab,
    limit: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<String>, NotAvailable> {
    let started = Instant::now();
    let mut last_line = String::new();
    let mut last_print = started;
    let mut last_seen = Observed {
        deployments: Vec::new(),
        replicas: Vec::new(),
    };
    loop {
        if let Ok(o) = observe(lab).await {
            let line = summary(&o);
            // On change, and every 10 s so a wait never looks hung.
            if line != last_line || last_print.elapsed() >= Duration::from_secs(10) {
                last_print = Instant::now();
                progress(&format!(
                    "waiting for {line} ({}s)",
                    started.elapsed().as_secs()
                ));
                last_line = line;
            }
            if all_available(&o) {
                return Ok(addresses(lab, &o));
            }
            last_seen = o;
        }
        if started.elapsed() >= limit {
            return Err(stuck(&last_seen, limit));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(name: &str, desired: u32, available: u32) -> pb::Deployment {
        pb::Deployment {
            name: name.into(),
            spec_json: format!(r#"{{"spec":{{"replicas":{desired}}}}}"#),
            status: Some(pb::DeploymentStatus {
                available,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn crashing(name: &str, node: &str, code: i64) -> pb::Replica {
        pb::Replica {
            name: name.into(),
            deployment: "web".into(),
            node: node.into(),
            status: Some(pb::ReplicaStatus {
                state: pb::ReplicaState::CrashLoopBackOff as i32,
                last_exit_code: Some(code),
                reason: "Error".into(),
                message: "back-off 8s restarting the container (exit code 127)".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn available_only_when_every_deployment_has_its_replicas() {
        let mut o = Observed {
            deployments: vec![deployment("web", 3, 2)],
            replicas: vec![],
        };
        assert!(!all_available(&o));
        assert_eq!(summary(&o), "web 2/3 available");
        o.deployments = vec![deployment("web", 3, 3)];
        assert!(all_available(&o));
        o.deployments.clear();
        assert!(!all_available(&o), "nothing applied is not success");
    }

    #[test]
    fn a_stuck_deployment_names_each_replica_with_its_reason() {
        let o = Observed {
            deployments: vec![deployment("web", 2, 0)],
            replicas: vec![
                crashing("web-a-0", "n1", 127),
                crashing("web-a-1", "n2", 127),
            ],
        };
        let stuck = stuck(&o, Duration::from_secs(60));
        assert_eq!(
            stuck.to_string(),
            "not available after 60s (web: 0 of 2 available)\n  \
             web-a-0 on n1: CrashLoopBackOff: exit 127\n  \
             web-a-1 on n2: CrashLoopBackOff: exit 127"
        );
        assert_eq!(stuck.first, Some(("web-a-0".into(), "web".into())));
    }

    #[test]
    fn an_unscheduled_replica_says_why() {
        let r = pb::Replica {
            name: "web-a-0".into(),
            pending_reason: "Unschedulable: no node has 4 CPUs free".into(),
            ..Default::default()
        };
        assert_eq!(
            reason(&r),
            "Pending: Unschedulable: no node has 4 CPUs free"
        );
    }
}
