//! `droverctl version [--client]`
//!
//! ```text
//! Client Version: v0.1.0
//! Server Version: v0.1.0 (controller 2 at 127.0.0.1:7001)
//! ```
//!
//! The client line is printed first, so it is there even when no controller
//! answers (then the command fails, unless `--client` said not to ask).

use drover_proto::pb;

use super::{print, Env};
use crate::cli::VersionArgs;

pub async fn run(env: &Env, args: VersionArgs) -> anyhow::Result<()> {
    print(&format!("Client Version: {}\n", v(drover_proto::VERSION)))?;
    if args.client {
        return Ok(());
    }
    let (mut client, _) = env.client()?;
    let answer = client
        .call(|mut c| async move { c.version(pb::VersionRequest {}).await })
        .await?;
    let server = client.server().unwrap_or("?").to_string();
    print(&server_line(&answer, &server))
}

/// `Server Version: v0.1.0 (controller 2 at 127.0.0.1:7001)`
pub fn server_line(answer: &pb::VersionResponse, server: &str) -> String {
    format!(
        "Server Version: {} (controller {} at {server})\n",
        v(&answer.version),
        answer.id
    )
}

/// `0.1.0` → `v0.1.0`; a version already starting with `v` is kept.
fn v(version: &str) -> String {
    if version.starts_with('v') {
        version.to_string()
    } else {
        format!("v{version}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_line_names_the_controller() {
        let answer = pb::VersionResponse {
            version: "0.1.0".into(),
            id: 2,
        };
        assert_eq!(
            server_line(&answer, "127.0.0.1:7001"),
            "Server Version: v0.1.0 (controller 2 at 127.0.0.1:7001)\n"
        );
        assert_eq!(v("v1.2.3"), "v1.2.3");
    }
}
