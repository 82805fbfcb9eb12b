//! `droverctl token create [--role agent|controller] [--ttl 24h]`,
//! `droverctl token list`, `droverctl token revoke ID`.
//!
//! A token is printed once, on stdout alone, so `T=$(droverctl token create)`
//! works; the cluster keeps only its hash, so a lost token is revoked and
//! replaced, never shown again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_pki as pki;
use drover_proto::pb;
use drover_proto::pb::security_client::SecurityClient;
use tonic::transport::Channel;

use super::{print, Env};
use crate::cli::TokenCommand;
use crate::output::Table;

fn security_client(channel: Channel) -> SecurityClient<Channel> {
    SecurityClient::new(channel)
}

pub async fn run(env: &Env, cmd: TokenCommand) -> anyhow::Result<()> {
    let (mut client, _) = env.client()?;
    match cmd {
        TokenCommand::Create(args) => {
            let req = pb::CreateTokenRequest {
                role: args.role.clone(),
                ttl_seconds: args.ttl.as_secs(),
            };
            let resp = client
                .call_with(security_client, |mut c| {
                    let req = req.clone();
                    async move { c.create_token(req).await }
                })
                .await?;
            if let Some(info) = &resp.info {
                crate::print_note(&format!(
                    "join token {} for role {}, valid until {}\n",
                    info.id,
                    info.role,
                    time(info.expires_unix_ms)
                ));
            }
            print(&format!("{}\n", resp.token))
        }
        TokenCommand::List => {
            let resp = client
                .call_with(security_client, |mut c| async move {
                    c.list_tokens(pb::ListTokensRequest {}).await
                })
                .await?;
            print(&table(&resp.tokens, now_ms()))
        }
        TokenCommand::Revoke(args) => {
            let id = args.id.trim().to_ascii_lowercase();
            client
                .call_with(security_client, |mut c| {
                    let id = id.clone();
                    async move { c.revoke_token(pb::RevokeTokenRequest { id }).await }
                })
                .await?;
            print(&format!("token {id} revoked\n"))
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn time(unix_ms: i64) -> String {
    pki::rfc3339(UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64))
}

/// `ID  ROLE  CREATED  EXPIRES  STATUS`.
pub fn table(tokens: &[pb::JoinToken], now: i64) -> String {
    let mut t = Table::new(["ID", "ROLE", "CREATED", "EXPIRES", "STATUS"]);
    for k in tokens {
        let status = if k.revoked {
            "revoked"
        } else if k.expires_unix_ms <= now {
            "expired"
        } else {
            "active"
        };
        t.push(vec![
            k.id.clone(),
            k.role.clone(),
            time(k.created_unix_ms),
            time(k.expires_unix_ms),
            status.to_string(),
        ]);
    }
    t.render()
}
