//! Talking to a cluster being started, shared by the lab and the test
//! harness: connect to one controller, ask its member status, wait for an
//! agreed leader and for Ready nodes, create a join token.
//!
//! ```text
//!  wait_for_leader: every 25 ms ask each address for its own member status
//!      ──▶ one says "leader" and every other answer has the same leader and term
//!  wait_for_nodes:  every 200 ms list nodes (any address) ──▶ n Ready
//! ```
//!
//! Addresses that do not answer are skipped: a stopped controller is not a
//! reason to wait.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use drover_client::Client;
use drover_pki::{self as pki, Security};
use drover_proto::pb;
use drover_proto::pb::control_client::ControlClient;
use drover_proto::pb::security_client::SecurityClient;
use tonic::transport::Channel;

/// A Control client for one controller, as the holder of `security`.
pub async fn connect(address: &str, security: &Security) -> anyhow::Result<ControlClient<Channel>> {
    let channel = security
        .endpoint(address, &pki::Server::Controller)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connecting to {address}"))?;
    Ok(ControlClient::new(channel))
}

/// The controller at `address`, as it reports itself.
pub async fn member_status(address: &str, security: &Security) -> anyhow::Result<pb::MemberStatus> {
    let mut c = connect(address, security).await?;
    let s = tokio::time::timeout(
        Duration::from_secs(3),
        c.cluster_status(pb::ClusterStatusRequest {}),
    )
    .await
    .map_err(|_| anyhow!("controller {address} did not answer status in 3s"))??
    .into_inner();
    s.members
        .into_iter()
        .find(|m| m.id == s.answered_by)
        .ok_or_else(|| anyhow!("controller {address} did not report itself"))
}

/// The leader's id, once one of `addresses` is leader and every other one
/// that answers agrees on it and its term.
pub fn agreed_leader(views: &[pb::MemberStatus]) -> Option<u64> {
    let leader = views.iter().find(|s| s.role == "leader")?;
    views
        .iter()
        .all(|s| s.leader_id == leader.id && s.term == leader.term)
        .then_some(leader.id)
}

/// Wait until the controllers at `addresses` agree on a leader; its id.
pub async fn wait_for_leader(
    addresses: &[String],
    security: &Security,
    limit: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + limit;
    let mut last = String::from("no answer yet");
    loop {
        let mut views = Vec::new();
        for address in addresses {
            match member_status(address, security).await {
                Ok(s) => views.push(s),
                Err(e) => last = format!("{e:#}"),
            }
        }
        if let Some(id) = agreed_leader(&views) {
            return Ok(id);
        }
        if !views.is_empty() {
            last = "no agreed leader".into();
        }
        if Instant::now() > deadline {
            bail!(
                "the controllers elected no leader within {}s ({last})",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Wait until `n` nodes are Ready (asked of any of `addresses`).
pub async fn wait_for_nodes(
    addresses: &[String],
    security: &Security,
    n: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut ready = 0;
    while Instant::now() < deadline {
        let mut client = Client::new(
            addresses.to_vec(),
            Some(Duration::from_secs(3)),
            security.clone(),
        );
        if let Ok(resp) = client
            .call(|mut c| async move { c.list_nodes(pb::ListNodesRequest::default()).await })
            .await
        {
            ready = resp.nodes.iter().filter(|n| n.condition == "Ready").count();
            if ready >= n {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "only {ready} of {n} agents became Ready within {}s",
        limit.as_secs()
    )
}

/// A join token for `role` (`agent` or `controller`), valid for a day.
pub async fn create_token(
    addresses: &[String],
    security: &Security,
    role: &str,
) -> anyhow::Result<String> {
    let mut client = Client::new(
        addresses.to_vec(),
        Some(Duration::from_secs(10)),
        security.clone(),
    );
    let role = role.to_string();
    let resp = client
        .call_with(SecurityClient::new, |mut c| {
            let role = role.clone();
            async move {
                c.create_token(pb::CreateTokenRequest {
                    role,
                    ttl_seconds: 24 * 3600,
                })
                .await
            }
        })
        .await
        .with_context(|| format!("creating a {role} join token"))?;
    Ok(resp.token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, role: &str, leader_id: u64, term: u64) -> pb::MemberStatus {
        pb::MemberStatus {
            id,
            role: role.into(),
            leader_id,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn a_leader_counts_once_every_answer_agrees() {
        assert_eq!(agreed_leader(&[]), None);
        let agreed = [
            member(1, "follower", 2, 3),
            member(2, "leader", 2, 3),
            member(3, "follower", 2, 3),
        ];
        assert_eq!(agreed_leader(&agreed), Some(2));
        let stale = [member(1, "follower", 3, 2), member(2, "leader", 2, 3)];
        assert_eq!(agreed_leader(&stale), None);
        let none = [member(1, "candidate", 0, 4)];
        assert_eq!(agreed_leader(&none), None);
    }
}
