//! `droverctl cluster {status [-o json] | members | add --id N --address A | remove ID}`
//!
//! `status` asks one controller, which asks its peers; a member it could not
//! reach is listed with the reason instead of being left out.

use drover_proto::pb;
use serde_json::json;

use super::{print, Env};
use crate::cli::{ClusterAddArgs, ClusterCommand, ClusterRemoveArgs, StatusFormat};
use crate::config::normalize_server;
use crate::output::{self, Table};

/// A member whose applied index trails the leader's commit by more than this is `lagging`.
pub const LAG_THRESHOLD: u64 = 100;

pub async fn run(env: &Env, cmd: ClusterCommand) -> anyhow::Result<()> {
    let (mut client, _) = env.client()?;
    match cmd {
        ClusterCommand::Status(args) => {
            let status = client
                .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
                .await?;
            match args.output {
                Some(StatusFormat::Json) => print(&output::to_json(&status_json(&status))?),
                None => print(&status_text(&status)),
            }
        }
        ClusterCommand::Members => {
            let status = client
                .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
                .await?;
            print(&members_table(&status.members))
        }
        ClusterCommand::Add(ClusterAddArgs { id, address }) => {
            let address =
                normalize_server(&address).map_err(|e| anyhow::anyhow!("--address: {e}"))?;
            // The controller waits up to 20 s for the new member to catch up;
            // the first controller asked gets half the time (see Client::call).
            client.allow_at_least(std::time::Duration::from_secs(60));
            client
                .call(|mut c| {
                    let request = pb::AddMemberRequest {
                        id,
                        address: address.clone(),
                    };
                    async move { c.add_member(request).await }
                })
                .await?;
            print(&format!(
                "member {id} ({address}) added: it caught up as a learner and now votes\n"
            ))
        }
        ClusterCommand::Remove(ClusterRemoveArgs { id }) => {
            client
                .call(|mut c| async move { c.remove_member(pb::RemoveMemberRequest { id }).await })
                .await?;
            print(&format!("member {id} removed\n"))
        }
    }
}

/// `leader: 2   term: 7` and the member table.
pub fn status_text(s: &pb::ClusterStatusResponse) -> String {
    let leader = if s.leader_id == 0 {
        "none".to_string()
    } else {
        s.leader_id.to_string()
    };
    let leader_commit = leader_commit(s);
    let mut t = Table::new([
        "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "HEALTH",
    ]);
    for m in sorted(&s.members) {
        let known = |v: u64| {
            if m.reachable {
                v.to_string()
            } else {
                "-".into()
            }
        };
        t.push(vec![
            m.id.to_string(),
            m.address.clone(),
            if m.reachable && !m.role.is_empty() {
                m.role.clone()
            } else {
                "-".into()
            },
            known(m.term),
            known(m.commit_index),
            known(m.applied_index),
            health(m, leader_commit),
        ]);
    }
    format!("leader: {leader}   term: {}\n{}", s.term, t.render())
}

/// `ok`, `unreachable: <why>`, or `lagging` (applied trails the leader's commit by > 100).
pub fn health(m: &pb::MemberStatus, leader_commit: Option<u64>) -> String {
    if !m.reachable {
        let why = if m.error.trim().is_empty() {
            "no answer"
        } else {
            m.error.trim()
        };
        return format!("unreachable: {}", why.replace('\n', " "));
    }
    if !m.stalled.is_empty() {
        return format!("stalled: {}", m.stalled);
    }
    match leader_commit {
        Some(commit) if commit.saturating_sub(m.applied_index) > LAG_THRESHOLD => {
            "lagging".to_string()
        }
        _ => "ok".to_string(),
    }
}

fn leader_commit(s: &pb::ClusterStatusResponse) -> Option<u64> {
    s.members
        .iter()
        .find(|m| m.id == s.leader_id && m.reachable)
        .map(|m| m.commit_index)
}

fn sorted(members: &[pb::MemberStatus]) -> Vec<&pb::MemberStatus> {
    let mut v: Vec<_> = members.iter().collect();
    v.sort_by_key(|m| m.id);
    v
}

/// `ID   ADDRESS   VOTER`
pub fn members_table(members: &[pb::MemberStatus]) -> String {
    let mut t = Table::new(["ID", "ADDRESS", "VOTER"]);
    for m in sorted(members) {
        t.push(vec![
            m.id.to_string(),
            m.address.clone(),
            m.voter.to_string(),
        ]);
    }
    t.render()
}

/// `cluster status -o json`: every field, plus the computed health.
pub fn status_json(s: &pb::ClusterStatusResponse) -> serde_json::Value {
    let leader_commit = leader_commit(s);
    let members: Vec<_> = sorted(&s.members)
        .into_iter()
        .map(|m| {
            json!({
                "id": m.id,
                "address": m.address,
                "reachable": m.reachable,
                "error": m.error,
                "role": m.role,
                "term": m.term,
                "leaderId": m.leader_id,
                "commitIndex": m.commit_index,
                "appliedIndex": m.applied_index,
                "lastIndex": m.last_index,
                "snapshotIndex": m.snapshot_index,
                "stateHash": m.state_hash,
                "voter": m.voter,
                "uptimeMs": m.uptime_ms,
                "stalled": m.stalled,
                "health": health(m, leader_commit),
            })
        })
        .collect();
    json!({
        "leaderId": s.leader_id,
        "term": s.term,
        "answeredBy": s.answered_by,
        "members": members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, role: &str, commit: u64, applied: u64) -> pb::MemberStatus {
        pb::MemberStatus {
            id,
            address: format!("127.0.0.{id}:7001"),
            reachable: true,
            role: role.into(),
            term: 7,
            leader_id: 2,
            commit_index: commit,
            applied_index: applied,
            voter: true,
            ..Default::default()
        }
    }

    fn cluster() -> pb::ClusterStatusResponse {
        let mut down = member(3, "", 0, 0);
        down.reachable = false;
        down.error = "connection refused".into();
        pb::ClusterStatusResponse {
            leader_id: 2,
            term: 7,
            members: vec![
                member(2, "leader", 500, 500),
                member(1, "follower", 500, 350),
                down,
                member(4, "follower", 500, 420),
            ],
            answered_by: 1,
        }
    }

    #[test]
    fn status_shows_leader_term_and_each_members_health() {
        let expected = [
            "leader: 2   term: 7",
            "ID   ADDRESS          ROLE       TERM   COMMIT   APPLIED   HEALTH",
            "1    127.0.0.1:7001   follower   7      500      350       lagging",
            "2    127.0.0.2:7001   leader     7      500      500       ok",
            "3    127.0.0.3:7001   -          -      -        -         unreachable: connection refused",
            "4    127.0.0.4:7001   follower   7      500      420       ok",
        ];
        assert_eq!(status_text(&cluster()), expected.join("\n") + "\n");
    }

    #[test]
    fn without_a_leader_nobody_is_lagging() {
        let mut s = cluster();
        s.leader_id = 0;
        let text = status_text(&s);
        assert!(text.starts_with("leader: none   term: 7\n"), "{text}");
        assert!(!text.contains("lagging"), "{text}");
    }

    #[test]
    fn members_and_json() {
        assert_eq!(
            members_table(&cluster().members[..2]),
            "ID   ADDRESS          VOTER\n1    127.0.0.1:7001   true\n2    127.0.0.2:7001   true\n"
        );
        let v = status_json(&cluster());
        assert_eq!(v["leaderId"], 2);
        assert_eq!(v["members"][0]["health"], "lagging");
        assert_eq!(v["members"][2]["health"], "unreachable: connection refused");
    }
}
