//! Mutual TLS and authorisation, end to end: who may call what, refused with
//! one sentence that says what to fix, and nothing written when refused.
//!
//! ```text
//!  droverctl / raw gRPC clients ──(no cert | wrong CA | expired | viewer | agent)──▶ controller
//!  agent cert for n1 ──Dispatcher.Session as "n2"──▶ refused (NodeRestriction)
//!  admin cert ──Raft.Step(crafted bytes)──▶ refused before the protobuf 2 decoder
//! ```

use std::time::{Duration, SystemTime};

use drover_pki::{self as pki, Identity, Role, Security, TlsDir, TlsMaterial};
use drover_proto::pb;
use drover_proto::pb::dispatcher_client::DispatcherClient;
use drover_proto::pb::raft_client::RaftClient;
use drover_tests::cluster::{connect, err, manifest, names, ok, Options};
use drover_tests::Cluster;
use tonic::Code;

const T: Duration = Duration::from_secs(30);

fn as_holder(dir: &TlsDir) -> Security {
    Security::tls(TlsMaterial::read_dir(dir).expect("credentials"))
}

/// A channel to the first controller, as the holder of `dir`'s certificate.
async fn channel_to_first_controller(c: &Cluster, dir: &TlsDir) -> tonic::transport::Channel {
    as_holder(dir)
        .endpoint(&c.controllers[0].address, &pki::Server::Controller)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

fn write_manifest(c: &Cluster, name: &str) -> String {
    let path = c.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, manifest(name, 1)).expect("manifest");
    path.display().to_string()
}

fn one_line(stderr: &str) {
    assert_eq!(stderr.lines().count(), 1, "one sentence expected: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_droverctl_is_refused_and_nothing_is_written() {
    let c = Cluster::start(1).await.expect("cluster");
    let pki = c.pki.as_ref().expect("a secure cluster");
    let file = write_manifest(&c, "web");
    let ctl = c.ctl();

    // Nothing configured at all.
    let e = err(&ctl.with_credentials(vec![]).run(&["apply", "-f", &file]));
    one_line(&e);
    assert!(e.contains("--ca, --cert and --key"), "{e}");

    // The CA but no client certificate: the controller refuses the call.
    let ca_only = vec!["--ca".to_string(), pki.ca_cert().display().to_string()];
    let e = err(&ctl.with_credentials(ca_only).run(&["apply", "-f", &file]));
    one_line(&e);
    assert!(e.contains("needs a client certificate"), "{e}");

    // A certificate from another CA: the controller's certificate does not
    // check out against it (and ours would not against the cluster's).
    let other = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(drover_tests::bin("droverctl"))
        .args(["pki", "init", "--dir"])
        .arg(other.path().join("pki"))
        .args(["--controller", "x=127.0.0.1"])
        .output()
        .expect("pki init");
    assert!(out.status.success(), "{out:?}");
    let foreign = TlsDir::new(other.path().join("pki/admin-admin"));
    let e = err(&ctl.as_identity(&foreign).run(&["apply", "-f", &file]));
    one_line(&e);
    assert!(e.contains("not signed by"), "{e}");

    // An expired certificate is caught before connecting.
    let expired = TlsDir::new(c.dir.path().join("expired"));
    let issued = pki
        .ca
        .issue(&pki::CertRequest {
            identity: Identity::new(Role::Admin, "late"),
            hosts: vec![],
            validity: Duration::from_secs(1),
        })
        .expect("issue");
    expired
        .write(pki.ca.cert_pem(), &issued, None)
        .expect("write");
    let not_after = pki::cert_info(&issued.cert_pem).expect("info").not_after;
    c.wait_for("the certificate to expire", T, || async {
        if SystemTime::now() > not_after {
            Ok(())
        } else {
            Err("still valid".to_string())
        }
    })
    .await
    .expect("expiry");
    let e = err(&ctl.as_identity(&expired).run(&["apply", "-f", &file]));
    one_line(&e);
    assert!(e.contains("expired") && e.contains("pki client"), "{e}");

    // None of it reached the store.
    let mut admin = c.client(0).await.expect("admin client");
    assert!(names(&mut admin, false).await.expect("list").is_empty());
    // And the admin's own droverctl works.
    ok(&ctl.run(&["apply", "-f", &file]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_only_and_agents_cannot_use_the_control_api() {
    let c = Cluster::start(1).await.expect("cluster");
    let pki = c.pki.as_ref().expect("a secure cluster");
    let file = write_manifest(&c, "web");
    ok(&c.ctl().run(&["apply", "-f", &file]));

    let viewer = c
        .ctl()
        .as_identity(&pki.client(Role::Viewer, "ann").expect("viewer"));
    assert!(ok(&viewer.run(&["get", "deployments"])).contains("web"));
    ok(&viewer.run(&["describe", "deployment", "web"]));
    ok(&viewer.run(&["cluster", "status"]));
    for args in [
        vec!["apply", "-f", file.as_str()],
        vec!["delete", "deployment", "web"],
        vec!["scale", "deployment/web", "--replicas", "3"],
    ] {
        let e = err(&viewer.run(&args));
        one_line(&e);
        assert!(e.contains("viewer \"ann\" may not call"), "{args:?}: {e}");
    }

    // Nor may a viewer mint join tokens.
    let e = err(&viewer.run(&["token", "create"]));
    one_line(&e);
    assert!(e.contains("may not call CreateToken"), "{e}");

    // An agent's certificate opens no Control call, not even a read.
    let agent_dir = pki.client(Role::Agent, "n1").expect("agent cert");
    let mut as_agent = connect(&c.controllers[0].address, &as_holder(&agent_dir))
        .await
        .expect("TLS works");
    let refused = names(&mut as_agent, false).await.expect_err("refused");
    let status = refused.downcast_ref::<tonic::Status>().expect("a status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Still one deployment with one replica: nothing the viewer tried landed.
    let mut admin = c.client(0).await.expect("admin");
    let d = admin
        .get_deployment(pb::GetDeploymentRequest {
            namespace: "default".into(),
            name: "web".into(),
            read: None,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(d.generation, 1, "the viewer changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_cannot_speak_for_another_node() {
    let c = Cluster::start(1).await.expect("cluster");
    let pki = c.pki.as_ref().expect("a secure cluster");
    let n1 = pki.client(Role::Agent, "n1").expect("cert");
    let channel = channel_to_first_controller(&c, &n1).await;
    let mut dispatcher = DispatcherClient::new(channel);
    let hello = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            node: "n2".into(),
            address: "127.0.1.9:7101".into(),
            runtime: "sim".into(),
            incarnation: "x".into(),
            ..Default::default()
        })),
    };
    let refused = dispatcher
        .session(tokio_stream::iter(vec![hello]))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("agent \"n1\"") && refused.message().contains("\"n2\""),
        "{}",
        refused.message()
    );
    let nodes = c.ctl().run(&["get", "nodes", "-o", "name"]);
    assert_eq!(ok(&nodes).trim(), "", "no node registered");

    // A real agent with its own certificate registers fine.
    let mut c = c;
    c.start_agent("n1", "sim", &[]).expect("agent");
    c.wait_for("n1 Ready", T, || async {
        let out = ok(&c.ctl().run(&["get", "nodes"]));
        if out.contains("n1") && out.contains("Ready") {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await
    .expect("n1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_raft_bytes_from_a_non_controller_never_reach_the_log() {
    let c = Cluster::start(1).await.expect("cluster");
    let pki = c.pki.as_ref().expect("a secure cluster");
    let before = c.member_status(0).await.expect("status");
    // Bytes that would make rust-protobuf 2 recurse deeply: nested groups.
    // 0x0b: field 1, start group.
    let crafted = vec![0x0bu8; 100_000];
    let batch = || pb::RaftBatch {
        from: 99,
        from_address: "127.0.0.99:1".into(),
        messages: vec![crafted.clone(), b"\x08\x01garbage".to_vec()],
    };
    let admin = pki.client(Role::Admin, "mallory").expect("cert");
    let no_cert = Security::tls(TlsMaterial {
        identity: None,
        ..TlsMaterial::read_dir(&admin).expect("material")
    });
    for (who, security) in [("an admin", as_holder(&admin)), ("no certificate", no_cert)] {
        let channel = security
            .endpoint(&c.controllers[0].address, &pki::Server::Controller)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut raft = RaftClient::new(channel);
        let refused = raft.step(batch()).await.expect_err("refused");
        assert!(
            matches!(
                refused.code(),
                Code::PermissionDenied | Code::Unauthenticated
            ),
            "{who}: {refused:?}"
        );
        let refused = raft
            .forward(pb::ForwardRequest {
                write: br#"{"Command":{"Delete":{}}}"#.to_vec(),
            })
            .await
            .expect_err("refused");
        assert!(
            matches!(
                refused.code(),
                Code::PermissionDenied | Code::Unauthenticated
            ),
            "{who}: {refused:?}"
        );
    }
    let after = c.member_status(0).await.expect("status");
    assert_eq!(
        (after.last_index, after.term, &after.state_hash),
        (before.last_index, before.term, &before.state_hash),
        "the raft log and state are unchanged"
    );
    let log = std::fs::read_to_string(&c.controllers[0].log).expect("log");
    assert!(
        log.contains("refused a call") && log.contains("/drover.v1.Raft/Step"),
        "the refusal is logged"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_cluster_works_only_with_insecure_clients() {
    let c = Cluster::start_with(
        1,
        Options {
            insecure: true,
            ..Options::default()
        },
    )
    .await
    .expect("cluster");
    let file = write_manifest(&c, "web");
    ok(&c.ctl().run(&["apply", "-f", &file]));
    let log = std::fs::read_to_string(&c.controllers[0].log).expect("log");
    assert!(log.contains("--insecure"), "a start-up warning: {log}");

    // A TLS client against the plaintext controller says what is wrong.
    let secure = Cluster::start(1).await.expect("secure cluster");
    let admin = &secure.pki.as_ref().expect("pki").admin;
    let e = err(&c.ctl().as_identity(admin).run(&["get", "deployments"]));
    one_line(&e);
    assert!(e.contains("TLS"), "{e}");
    // And a plaintext client against the TLS controller too.
    let e = err(&secure
        .ctl()
        .with_credentials(vec!["--insecure".into()])
        .run(&["get", "deployments"]));
    one_line(&e);
    assert!(e.contains("TLS"), "{e}");
}

#[test]
fn a_controller_without_tls_flags_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(drover_tests::bin("drover-controller"))
        .args(["--id", "1", "--peers", "1=127.0.0.1:1", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--tls-dir") && stderr.contains("--insecure"),
        "{stderr}"
    );
}

async fn node_ready(c: &Cluster, node: &str) -> Result<(), String> {
    let out = c.ctl().run(&["get", "nodes"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let ready = text
        .lines()
        .any(|l| l.split_whitespace().take(2).eq([node, "Ready"]));
    if ready {
        Ok(())
    } else {
        Err(text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_joins_with_a_token_and_a_revoked_token_lets_nobody_else_in() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::start(1).await.expect("cluster");
    let ca = c.pki.as_ref().expect("pki").ca_cert().display().to_string();
    let out = c
        .ctl()
        .run(&["token", "create", "--role", "agent", "--ttl", "1h"]);
    let token = ok(&out).trim().to_string();
    assert!(token.starts_with("drover-1-"), "{token}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains(&token),
        "the token is printed once, on stdout"
    );

    // The first agent joins: it has no certificate, only the token and the CA.
    let join_flag = format!("--join-token={token}");
    let ca_flag = format!("--ca={ca}");
    let first = c
        .start_agent("j1", "sim", &[&join_flag, &ca_flag])
        .expect("agent");
    c.wait_for("j1 Ready", T, || node_ready(&c, "j1"))
        .await
        .expect("j1 joined");
    let tls = TlsDir::new(c.agents[first].data_dir.join("tls"));
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&tls.key()), 0o600);
    assert_eq!(mode(&tls.path), 0o700);
    // Issue 12 item 12: the whole data dir is the agent's alone.
    assert_eq!(mode(&c.agents[first].data_dir), 0o700);
    let cert = std::fs::read_to_string(tls.cert()).expect("cert");
    assert_eq!(
        pki::cert_info(&cert).expect("info").identity,
        Some(Identity::new(Role::Agent, "j1"))
    );

    // Revoke it.
    let list = ok(&c.ctl().run(&["token", "list"]));
    let id = list
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("a token row")
        .to_string();
    assert!(list.contains("active"), "{list}");
    assert!(
        !list.contains(&token[20..]),
        "no secret in the list: {list}"
    );
    assert_eq!(
        ok(&c.ctl().run(&["token", "revoke", &id])),
        format!("token {id} revoked\n")
    );
    assert!(ok(&c.ctl().run(&["token", "list"])).contains("revoked"));

    // A second agent with the revoked token is refused, with a sentence.
    let out = std::process::Command::new(drover_tests::bin("drover-agent"))
        .args([
            "--name",
            "j2",
            "--controllers",
            &c.servers(),
            "--runtime",
            "sim",
        ])
        .arg("--data-dir")
        .arg(c.dir.path().join("agent-j2"))
        .args(["--listen", "127.0.1.200:0", &join_flag, &ca_flag])
        .env("DROVER_LOG", "error")
        .output()
        .expect("agent runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("revoked"), "{stderr}");
    assert!(!stderr.contains(&token), "no token in the error: {stderr}");
    assert!(node_ready(&c, "j2").await.is_err(), "j2 never registered");

    // An expired token is refused too.
    let short = ok(&c.ctl().run(&["token", "create", "--ttl", "1s"]))
        .trim()
        .to_string();
    let expiry = SystemTime::now() + Duration::from_secs(1);
    c.wait_for("the token to expire", T, || async {
        if SystemTime::now() > expiry {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await
    .expect("expired");
    let out = std::process::Command::new(drover_tests::bin("drover-agent"))
        .args([
            "--name",
            "j3",
            "--controllers",
            &c.servers(),
            "--runtime",
            "sim",
        ])
        .arg("--data-dir")
        .arg(c.dir.path().join("agent-j3"))
        .args(["--listen", "127.0.1.202:0", &ca_flag])
        .arg(format!("--join-token={short}"))
        .env("DROVER_LOG", "error")
        .output()
        .expect("agent runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expired"), "{stderr}");

    // A CA file that is not the token's is caught before any connection.
    let other = pki::Ca::generate("other").expect("ca").0;
    let other_ca = c.dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, other.cert_pem()).expect("write");
    let out = std::process::Command::new(drover_tests::bin("drover-agent"))
        .args([
            "--name",
            "j4",
            "--controllers",
            &c.servers(),
            "--runtime",
            "sim",
        ])
        .arg("--data-dir")
        .arg(c.dir.path().join("agent-j4"))
        .args(["--listen", "127.0.1.203:0", &join_flag])
        .arg(format!("--ca={}", other_ca.display()))
        .env("DROVER_LOG", "error")
        .output()
        .expect("agent runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not the one the join token was made for"),
        "{stderr}"
    );

    // The first keeps working with its certificate, across a restart without the token.
    c.restart_agent(first, &[]).expect("restart");
    c.wait_for("j1 Ready again", T, || node_ready(&c, "j1"))
        .await
        .expect("j1 back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificates_are_renewed_before_they_expire() {
    let mut c = Cluster::start_with(
        1,
        Options {
            extra_args: vec!["--node-cert-validity".into(), "6s".into()],
            ..Options::default()
        },
    )
    .await
    .expect("cluster");
    let ca = c.pki.as_ref().expect("pki").ca_cert().display().to_string();
    let token = ok(&c.ctl().run(&["token", "create"])).trim().to_string();
    let join_flag = format!("--join-token={token}");
    let ca_flag = format!("--ca={ca}");
    let i = c
        .start_agent("r1", "sim", &[&join_flag, &ca_flag])
        .expect("agent");
    c.wait_for("r1 Ready", T, || node_ready(&c, "r1"))
        .await
        .expect("joined");
    let tls = TlsDir::new(c.agents[i].data_dir.join("tls"));
    let first = pki::cert_info(&std::fs::read_to_string(tls.cert()).expect("cert"))
        .expect("info")
        .not_after;
    // Two renewals: the second one authenticates with the first renewed
    // certificate, after the joined one has expired.
    let log = c.agents[i].log.clone();
    c.wait_for("two renewals", T, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            match text.matches("renewed the node certificate").count() {
                n if n >= 2 => Ok(()),
                n => Err(format!("{n} renewals")),
            }
        }
    })
    .await
    .expect("renewed");
    let now = pki::cert_info(&std::fs::read_to_string(tls.cert()).expect("cert"))
        .expect("info")
        .not_after;
    assert!(now > first, "the certificate on disk is a newer one");
    assert!(
        SystemTime::now() > first,
        "the joined certificate has expired by now"
    );
    node_ready(&c, "r1").await.expect("still Ready");
}

/// Every file under `dir` whose name ends with `.key`.
fn key_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            key_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "key") {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_key_material_appears_in_any_log() {
    let mut c = Cluster::start(3).await.expect("cluster");
    let ca = c.pki.as_ref().expect("pki").ca_cert().display().to_string();
    let token = ok(&c.ctl().run(&["token", "create"])).trim().to_string();
    let join_flag = format!("--join-token={token}");
    let ca_flag = format!("--ca={ca}");
    c.start_agent("g1", "process", &[&join_flag, &ca_flag])
        .expect("agent");
    c.start_agent("g2", "sim", &[]).expect("agent");
    for n in ["g1", "g2"] {
        c.wait_for("Ready", T, || node_ready(&c, n)).await.expect(n);
    }
    let file = write_manifest(&c, "web");
    ok(&c.ctl().run(&["apply", "-f", &file]));
    ok(&c.ctl().run(&["scale", "deployment/web", "--replicas", "2"]));
    // A refused join with a tampered token is logged too, without the token.
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('0') { '1' } else { '0' });
    let out = std::process::Command::new(drover_tests::bin("drover-agent"))
        .args([
            "--name",
            "g3",
            "--controllers",
            &c.servers(),
            "--runtime",
            "sim",
        ])
        .arg("--data-dir")
        .arg(c.dir.path().join("agent-g3"))
        .args(["--listen", "127.0.1.201:0", &ca_flag])
        .arg(format!("--join-token={tampered}"))
        .output()
        .expect("agent runs");
    assert_eq!(out.status.code(), Some(1));
    let ctl_out = c.ctl().run(&["token", "list"]);

    let mut keys = Vec::new();
    key_files(c.dir.path(), &mut keys);
    assert!(keys.len() >= 6, "keys found: {keys:?}");
    // The secret part of the token, and every line of every key's PEM body.
    let secret = token.rsplit('-').next().expect("secret").to_string();
    let mut needles = vec![token.clone(), tampered.clone(), secret];
    for k in &keys {
        let pem = std::fs::read_to_string(k).expect("key");
        needles.extend(
            pem.lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(str::to_string),
        );
    }
    let mut logs: Vec<(String, String)> = std::fs::read_dir(c.dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            (e.path().display().to_string(), text)
        })
        .collect();
    logs.push((
        "g3 stderr".into(),
        String::from_utf8_lossy(&out.stderr).into(),
    ));
    logs.push((
        "token list".into(),
        String::from_utf8_lossy(&ctl_out.stdout).into(),
    ));
    assert!(logs.len() >= 5, "{} logs", logs.len());
    for (name, text) in &logs {
        assert!(!text.contains("PRIVATE KEY"), "{name} holds a private key");
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "{name} holds secret material"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_joins_with_a_controller_token() {
    let mut c = Cluster::start(1).await.expect("cluster");
    let ca = c.pki.as_ref().expect("pki").ca_cert().display().to_string();
    let token = ok(&c.ctl().run(&["token", "create", "--role", "controller"]))
        .trim()
        .to_string();
    let first = c.controllers[0].address.clone();
    let joiner = c
        .spawn_joiner_with(
            2,
            &[
                format!("--join-token={token}"),
                format!("--ca={ca}"),
                format!("--join-via={first}"),
            ],
        )
        .expect("joiner");
    // First the certificate (a join needs a quorum to read the token), then
    // the membership change.
    let tls = TlsDir::new(c.dir.path().join("tls-controller-2"));
    c.wait_for("the joiner's certificate", T, || async {
        if tls.has_identity() {
            Ok(())
        } else {
            Err("none yet".to_string())
        }
    })
    .await
    .expect("certificate");
    let address = c.controllers[joiner].address.clone();
    ok(&c
        .ctl_at(0)
        .run(&["cluster", "add", "--id", "2", "--address", &address]));
    c.wait_converged(T).await.expect("the new member caught up");
    let cert = std::fs::read_to_string(tls.cert()).expect("cert");
    assert_eq!(
        pki::cert_info(&cert).expect("info").identity,
        Some(Identity::new(Role::Controller, "2"))
    );
    assert!(!tls.can_sign(), "a joined controller gets no CA key");
    // It serves droverctl like any member.
    let mut client = c.client(joiner).await.expect("client");
    assert!(names(&mut client, false).await.expect("list").is_empty());
    let log = std::fs::read_to_string(&c.controllers[joiner].log).expect("log");
    assert!(!log.contains(&token), "no token in the joiner's log");
}

/// A certificate signed by the cluster CA for an agent role but carrying the
/// controllers' DNS name: what the CA used to hand an agent asking for it.
fn forged_agent_cert_named_controller(pki_dir: &std::path::Path) -> (String, String) {
    let root = TlsDir::new(pki_dir);
    let ca_pem = std::fs::read_to_string(root.ca_cert()).expect("ca");
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(root.ca_key()).expect("key"))
        .expect("ca key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![
        pki::CONTROLLER_SERVER_NAME.to_string(),
        "n1.agent.drover".to_string(),
    ])
    .expect("params");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "drover://agent/n1".try_into().expect("uri"),
    ));
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

/// Item 1: an agent cannot become a controller in clients' eyes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_obtain_or_pass_for_a_controller_certificate() {
    let mut c = Cluster::start(1).await.expect("cluster");
    // Renew serves the agents of registered nodes.
    c.start_agent("n1", "sim", &[]).expect("agent");
    c.wait_for("n1 Ready", T, || node_ready(&c, "n1"))
        .await
        .expect("n1");
    let pki = c.pki.as_ref().expect("a secure cluster");
    let n1 = pki.client(Role::Agent, "n1").expect("cert");

    // The agent renews asking for the controllers' name: it gets only its own.
    let channel = channel_to_first_controller(&c, &n1).await;
    let mut security = pb::security_client::SecurityClient::new(channel);
    for address in ["controller.drover:1", "evil.example:1", "[::]:1"] {
        let (csr, _key) = pki::new_csr(&Identity::new(Role::Agent, "n1")).expect("csr");
        let resp = security
            .renew(pb::RenewRequest {
                csr_pem: csr,
                address: address.into(),
            })
            .await
            .expect("renewed")
            .into_inner();
        let der = pem_der(&resp.cert_pem);
        for name in ["controller.drover", "evil.example"] {
            assert!(
                !der.windows(name.len()).any(|w| w == name.as_bytes()),
                "{address}: the certificate names {name}"
            );
        }
        assert_eq!(
            pki::cert_info(&resp.cert_pem).expect("info").identity,
            Some(Identity::new(Role::Agent, "n1"))
        );
        assert!(!pki::Server::Controller.accepts(pki::identity_of(&der).as_ref()));
    }

    // And a CA-signed certificate with the controllers' DNS name but an
    // agent's role is refused by every client that dials a controller.
    let (cert, key) = forged_agent_cert_named_controller(&pki.dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let server_config = {
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")];
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
        let mut cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(
            std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider()),
        )
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        std::sync::Arc::new(cfg)
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    drop(tls);
                }
            });
        }
    });
    let refused = as_holder(&pki.admin)
        .endpoint(&address, &pki::Server::Controller)
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect_err("a client refuses an agent posing as a controller");
    let chain = error_chain(&refused);
    assert!(chain.contains("not a controller's"), "{chain}");

    // droverctl says so in one sentence.
    let mut ctl = c.ctl();
    ctl.server = address;
    let e = err(&ctl.run(&["get", "deployments"]));
    one_line(&e);
    assert!(e.contains("not a controller's"), "{e}");
}

fn pem_der(pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    tokio_rustls::rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a certificate")
        .to_vec()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Item 2: a controller certificate is a peer's, not an admin's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_certificate_cannot_mint_admins_or_speak_for_other_members() {
    let c = Cluster::start(1).await.expect("cluster");
    let pki = c.pki.as_ref().expect("a secure cluster");
    let raft_as = |dir: TlsDir| {
        let address = c.controllers[0].address.clone();
        async move {
            let channel = as_holder(&dir)
                .endpoint(&address, &pki::Server::Controller)
                .expect("endpoint")
                .connect()
                .await
                .expect("connect");
            RaftClient::new(channel)
        }
    };
    let admin_token = serde_json::json!({"Command": {"CreateToken": {"token": {
        "id": "0badc0de", "role": "admin", "secret_sha256": "ab".repeat(32),
        "created_unix_ms": 0, "expires_unix_ms": 4_000_000_000_000i64, "revoked": false,
    }}}});
    let forward = || pb::ForwardRequest {
        write: serde_json::to_vec(&admin_token).expect("json"),
    };

    // A member's own certificate forwards the write: the state machine refuses it.
    let mut member = raft_as(pki.client(Role::Controller, "1").expect("cert")).await;
    let answer = member
        .forward(forward())
        .await
        .expect("the write is proposed")
        .into_inner();
    let result = String::from_utf8_lossy(&answer.result).into_owned();
    assert!(
        result.contains("TokenRole"),
        "refused by the state machine: {result}"
    );
    let tokens = ok(&c.ctl().run(&["token", "list"]));
    assert!(!tokens.contains("0badc0de"), "no admin token: {tokens}");

    // A controller certificate that is no member is refused outright.
    let mut stranger = raft_as(pki.client(Role::Controller, "9").expect("cert")).await;
    let refused = stranger.forward(forward()).await.expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("current members"),
        "{}",
        refused.message()
    );
    let before = c.member_status(0).await.expect("status");
    // MsgHeartbeat (8) to 1 from 9.
    let heartbeat = vec![0x08u8, 0x08, 0x10, 0x01, 0x18, 0x09];
    let refused = stranger
        .step(pb::RaftBatch {
            from: 9,
            from_address: "127.0.0.99:1".into(),
            messages: vec![heartbeat.clone()],
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // A member may not speak in another member's name.
    let as_two = vec![0x08u8, 0x08, 0x10, 0x01, 0x18, 0x02];
    let refused = member
        .step(pb::RaftBatch {
            from: 2,
            from_address: "127.0.0.99:1".into(),
            messages: vec![as_two.clone()],
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // The same on the stream members use: a stranger is refused, and so is
    // a member's batch in another member's name (the stream ends).
    let batch = |from: u64, message: &[u8]| pb::RaftBatch {
        from,
        from_address: "127.0.0.99:1".into(),
        messages: vec![message.to_vec()],
    };
    let refused = stranger
        .step_stream(tokio_stream::iter([batch(9, &heartbeat)]))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = member
        .step_stream(tokio_stream::iter([batch(2, &as_two)]))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("as member 2"),
        "{}",
        refused.message()
    );

    // Local-only types are dropped, and so is a relayed write (MsgPropose,
    // 2) that holds no entry (it would panic raft-rs), an entry that is not
    // a drover command, or a configuration change (entry type 1), which
    // would skip the membership checks.
    let propose = vec![0x08u8, 0x02, 0x10, 0x01, 0x18, 0x01];
    let not_a_command = vec![
        0x08u8, 0x02, 0x10, 0x01, 0x18, 0x01, 0x3a, 0x05, 0x22, 0x03, b'a', b'b', b'c',
    ];
    let conf_change = vec![
        0x08u8, 0x02, 0x10, 0x01, 0x18, 0x01, 0x3a, 0x06, 0x08, 0x01, 0x22, 0x02, 0x08, 0x00,
    ];
    let hup = vec![0x10u8, 0x01, 0x18, 0x01];
    member
        .step(pb::RaftBatch {
            from: 1,
            from_address: c.controllers[0].address.clone(),
            messages: vec![propose, not_a_command, conf_change, hup],
        })
        .await
        .expect("accepted and dropped");
    let after = c
        .member_status(0)
        .await
        .expect("the controller still answers");
    assert_eq!(
        (after.last_index, after.term, &after.state_hash),
        (before.last_index, before.term, &before.state_hash),
        "nothing was written"
    );
    let log = std::fs::read_to_string(&c.controllers[0].log).expect("log");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("local-only"), "the drop is logged");
    assert_eq!(
        log.matches("dropped a relayed write").count(),
        3,
        "each refused relayed write is logged: {log}"
    );
}

/// Item 3: an agent token makes new nodes only, and agents cannot claim
/// admin-only labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_token_cannot_take_a_registered_name_or_reserved_labels() {
    let mut c = Cluster::start(1).await.expect("cluster");
    c.start_agent("n2", "sim", &[]).expect("agent");
    c.wait_for("n2 Ready", T, || node_ready(&c, "n2"))
        .await
        .expect("n2");
    let pki = c.pki.as_ref().expect("a secure cluster");
    let token = ok(&c.ctl().run(&["token", "create"])).trim().to_string();
    let anonymous = Security::tls(TlsMaterial {
        identity: None,
        ..TlsMaterial::read_dir(&pki.admin).expect("material")
    });
    let channel = anonymous
        .endpoint(&c.controllers[0].address, &pki::Server::Controller)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut security = pb::security_client::SecurityClient::new(channel);
    let join = |node: &str| {
        let (csr, _key) = pki::new_csr(&Identity::new(Role::Agent, node)).expect("csr");
        pb::JoinRequest {
            token: token.clone(),
            node: node.into(),
            csr_pem: csr,
            address: "127.0.1.77:7101".into(),
        }
    };
    let refused = security.join(join("n2")).await.expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("already registered"),
        "{}",
        refused.message()
    );
    // A new name joins with the same token.
    let joined = security.join(join("n3")).await.expect("a new node joins");
    assert_eq!(
        pki::cert_info(&joined.into_inner().cert_pem)
            .expect("info")
            .identity,
        Some(Identity::new(Role::Agent, "n3"))
    );

    // An agent reporting a reserved label is refused; nothing registers.
    let n4 = pki.client(Role::Agent, "n4").expect("cert");
    let channel = channel_to_first_controller(&c, &n4).await;
    let hello = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            node: "n4".into(),
            address: "127.0.1.9:7101".into(),
            runtime: "sim".into(),
            incarnation: "x".into(),
            labels: [(
                "node-restriction.drover.io/pool".to_string(),
                "secure".to_string(),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        })),
    };
    let refused = DispatcherClient::new(channel)
        .session(tokio_stream::iter(vec![hello]))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("reserved"),
        "{}",
        refused.message()
    );
    let nodes = ok(&c.ctl().run(&["get", "nodes", "-o", "name"]));
    assert!(!nodes.contains("n4"), "{nodes}");
}

/// Item 10: a refused join never logs the name it was given unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_join_does_not_log_an_unchecked_node_name() {
    let c = Cluster::start(1).await.expect("cluster");
    let pki = c.pki.as_ref().expect("a secure cluster");
    let anonymous = Security::tls(TlsMaterial {
        identity: None,
        ..TlsMaterial::read_dir(&pki.admin).expect("material")
    });
    let channel = anonymous
        .endpoint(&c.controllers[0].address, &pki::Server::Controller)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut security = pb::security_client::SecurityClient::new(channel);
    let fingerprint = pki::ca_fingerprint(pki.ca.cert_pem()).expect("fingerprint");
    // A well-formed token nobody created, and a name forging a log line.
    let token = format!("drover-1-{fingerprint}-0123abcd-{}", "7".repeat(48));
    let node = "x\n2026-01-01T00:00:00Z INFO forged line".to_string();
    let refused = security
        .join(pb::JoinRequest {
            token,
            node,
            csr_pem: String::new(),
            address: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let log = std::fs::read_to_string(&c.controllers[0].log).expect("log");
    assert!(!log.contains("forged line"), "{log}");
}

/// Issue 12 item 6 (part): a client that opens TCP and never finishes its
/// TLS handshake is dropped, not kept forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_dropped_after_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let c = Cluster::start(1).await.expect("cluster");
    let mut tcp = tokio::net::TcpStream::connect(&c.controllers[0].address)
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        pki::TLS_HANDSHAKE_TIMEOUT + Duration::from_secs(5),
        tcp.read(&mut buf),
    )
    .await
    .expect("the controller closes a silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The controller still serves everyone else.
    c.member_status(0).await.expect("status");
}

/// Issue 12 item 4 (the controllers' side): a current member renews its
/// controller certificate; a controller certificate of no member cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_renews_its_controller_certificate_and_a_stranger_cannot() {
    let c = Cluster::start(1).await.expect("cluster");
    let pki = c.pki.as_ref().expect("a secure cluster");
    let renew_as = |name: &str| {
        let dir = pki.client(Role::Controller, name).expect("cert");
        let address = c.controllers[0].address.clone();
        async move {
            let channel = as_holder(&dir)
                .endpoint(&address, &pki::Server::Controller)
                .expect("endpoint")
                .connect()
                .await
                .expect("connect");
            let (csr, _key) = pki::new_csr(&Identity::new(Role::Controller, "x")).expect("csr");
            pb::security_client::SecurityClient::new(channel)
                .renew(pb::RenewRequest {
                    csr_pem: csr,
                    address: "127.0.0.1:1".into(),
                })
                .await
        }
    };
    let renewed = renew_as("1").await.expect("a member renews").into_inner();
    assert_eq!(
        pki::cert_info(&renewed.cert_pem).expect("info").identity,
        Some(Identity::new(Role::Controller, "1"))
    );
    let refused = renew_as("9").await.expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}

/// Issue 12 item 3: a node name is freed by `droverctl delete node` (a Ready
/// node is refused without `--force`), and reserved labels are admins' to set:
/// a nodeSelector on one places only on the node an admin labelled, and an
/// agent reporting it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_node_frees_its_name_and_reserved_labels_are_admin_only() {
    let mut c = Cluster::start(1).await.expect("cluster");
    c.start_agent("n1", "sim", &[]).expect("agent");
    let n2 = c.start_agent("n2", "sim", &[]).expect("agent");
    for n in ["n1", "n2"] {
        c.wait_for("Ready", T, || node_ready(&c, n)).await.expect(n);
    }
    // An agent claiming the reserved label never registers.
    let n3 = c
        .start_agent(
            "n3",
            "sim",
            &["--labels", "node-restriction.drover.io/pool=secure"],
        )
        .expect("agent");
    let log = c.agents[n3].log.clone();
    c.wait_for("n3 refused", T, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("reserved prefix") {
                Ok(())
            } else {
                Err(text)
            }
        }
    })
    .await
    .expect("refused");
    c.kill_agent(n3);

    // An admin sets it on n1: a workload pinned to it runs on n1 only.
    assert_eq!(
        ok(&c.ctl().run(&[
            "label",
            "node",
            "n1",
            "node-restriction.drover.io/pool=secure"
        ])),
        "node/n1 labeled\n"
    );
    let pinned = manifest("pinned", 3).replace(
        "    spec:\n      containers:",
        "    spec:\n      nodeSelector:\n        node-restriction.drover.io/pool: secure\n      containers:",
    );
    let file = c.dir.path().join("pinned.yaml");
    std::fs::write(&file, pinned).expect("manifest");
    ok(&c.ctl().run(&["apply", "-f", &file.display().to_string()]));
    let placed = c
        .wait_for("pinned running", T, || c.placement("pinned", 3))
        .await
        .expect("placed");
    assert_eq!(
        placed.into_iter().collect::<Vec<_>>(),
        [("n1".to_string(), 3)]
    );
    let nodes = ok(&c.ctl().run(&["get", "nodes", "-o", "name"]));
    assert_eq!(nodes, "node/n1\nnode/n2\n");

    // A Ready node is not deleted without --force; nothing changes.
    let e = err(&c.ctl().run(&["delete", "node", "n2"]));
    one_line(&e);
    assert!(e.contains("is Ready") && e.contains("--force"), "{e}");
    node_ready(&c, "n2").await.expect("n2 still there");

    // Its agent stops: while n2 is registered, a token cannot take the name.
    c.kill_agent(n2);
    c.wait_for("n2 NotReady", T, || async {
        match node_ready(&c, "n2").await {
            Ok(()) => Err("still Ready".to_string()),
            Err(_) => Ok(()),
        }
    })
    .await
    .expect("NotReady");
    let token = ok(&c.ctl().run(&["token", "create"])).trim().to_string();
    let pki = c.pki.as_ref().expect("a secure cluster");
    let ca_pem = pki.ca.cert_pem().to_string();
    let anonymous = Security::tls(TlsMaterial {
        identity: None,
        ..TlsMaterial::read_dir(&pki.admin).expect("material")
    });
    let channel = anonymous
        .endpoint(&c.controllers[0].address, &pki::Server::Controller)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut security = pb::security_client::SecurityClient::new(channel);
    let join = || {
        let (csr, _key) = pki::new_csr(&Identity::new(Role::Agent, "n2")).expect("csr");
        pb::JoinRequest {
            token: token.clone(),
            node: "n2".into(),
            csr_pem: csr,
            address: "127.0.1.78:7101".into(),
        }
    };
    let refused = security.join(join()).await.expect_err("refused");
    assert!(
        refused.message().contains("droverctl delete node"),
        "{}",
        refused.message()
    );

    // The old host's certificate renews while n2 is registered (NotReady
    // or not), and no longer once it is deleted.
    let old_host = TlsDir::new(c.agents[n2].data_dir.join("tls"));
    let renew = || {
        let old_host = old_host.clone();
        let address = c.controllers[0].address.clone();
        async move {
            let channel = as_holder(&old_host)
                .endpoint(&address, &pki::Server::Controller)
                .expect("endpoint")
                .connect()
                .await
                .expect("connect");
            let (csr, _key) = pki::new_csr(&Identity::new(Role::Agent, "n2")).expect("csr");
            pb::security_client::SecurityClient::new(channel)
                .renew(pb::RenewRequest {
                    csr_pem: csr,
                    address: String::new(),
                })
                .await
        }
    };
    renew().await.expect("a registered node renews");

    // Deleted, the name is free: the same token now joins as n2.
    assert_eq!(
        ok(&c.ctl().run(&["delete", "node", "n2"])),
        "node \"n2\" deleted\n"
    );
    let refused = renew().await.expect_err("a deleted node does not renew");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("registered node"),
        "{}",
        refused.message()
    );
    assert_eq!(
        ok(&c.ctl().run(&["get", "nodes", "-o", "name"])),
        "node/n1\n"
    );
    // The old host's certificate is revoked: its agent, started again,
    // is refused with a sentence and registers nothing.
    c.restart_agent(n2, &[]).expect("old agent");
    let old_log = c.agents[n2].log.clone();
    c.wait_for("the old certificate refused", T, || {
        let log = old_log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("was revoked when the node was deleted") {
                Ok(())
            } else {
                Err(text)
            }
        }
    })
    .await
    .expect("refused");
    c.kill_agent(n2);
    assert_eq!(
        ok(&c.ctl().run(&["get", "nodes", "-o", "name"])),
        "node/n1\n"
    );
    // A new host joins as n2 with the token, and its agent registers.
    let (csr, key_pem) = pki::new_csr(&Identity::new(Role::Agent, "n2")).expect("csr");
    let joined = security
        .join(pb::JoinRequest {
            csr_pem: csr,
            ..join()
        })
        .await
        .expect("n2 joins again")
        .into_inner();
    assert_eq!(
        pki::cert_info(&joined.cert_pem).expect("info").identity,
        Some(Identity::new(Role::Agent, "n2"))
    );
    let new_host = TlsDir::new(c.dir.path().join("n2-rebuilt-tls"));
    new_host
        .write(
            &ca_pem,
            &pki::Issued {
                cert_pem: joined.cert_pem,
                key_pem,
            },
            None,
        )
        .expect("write");
    let dir_flag = new_host.path.display().to_string();
    c.start_agent("n2", "sim", &["--tls-dir", &dir_flag])
        .expect("new agent");
    c.wait_for("the rebuilt n2 Ready", T, || node_ready(&c, "n2"))
        .await
        .expect("n2 back");
    // An unknown name: one sentence; --ignore-not-found succeeds quietly.
    let e = err(&c.ctl().run(&["delete", "node", "n9"]));
    one_line(&e);
    assert!(e.contains("not found"), "{e}");
    assert_eq!(
        ok(&c.ctl().run(&["delete", "node", "n9", "--ignore-not-found"])),
        ""
    );
}

/// Issue 12 item 6: anonymous `Join` calls are rate-limited per peer address
/// and bounded in size; a flood from one address is refused with a sentence
/// while an agent joining from elsewhere gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_flood_from_one_address_is_refused_while_others_join() {
    let mut c = Cluster::start(1).await.expect("cluster");
    let pki = c.pki.as_ref().expect("a secure cluster");
    let anonymous = Security::tls(TlsMaterial {
        identity: None,
        ..TlsMaterial::read_dir(&pki.admin).expect("material")
    });
    let from = |ip: [u8; 4]| {
        anonymous
            .endpoint(&c.controllers[0].address, &pki::Server::Controller)
            .expect("endpoint")
            .local_address(Some(std::net::IpAddr::from(ip)))
    };
    let mut flood = pb::security_client::SecurityClient::new(
        from([127, 0, 0, 99]).connect().await.expect("connect"),
    );
    let fingerprint = pki::ca_fingerprint(pki.ca.cert_pem()).expect("fingerprint");
    let forged = pb::JoinRequest {
        token: format!("drover-1-{fingerprint}-0123abcd-{}", "7".repeat(48)),
        node: "flood".into(),
        csr_pem: String::new(),
        address: String::new(),
    };
    let mut limited = Vec::new();
    for _ in 0..60 {
        let refused = flood.join(forged.clone()).await.expect_err("refused");
        match refused.code() {
            Code::PermissionDenied => {}
            Code::ResourceExhausted => limited.push(refused.message().to_string()),
            other => panic!("{other:?}: {}", refused.message()),
        }
    }
    assert!(
        limited.len() >= 60 - 25,
        "at most the burst (and what a second earns back) gets through: {} limited",
        limited.len()
    );
    assert!(
        limited[0].starts_with("too many join attempts from 127.0.0.99")
            && limited[0].contains("retry in"),
        "{}",
        limited[0]
    );
    assert_eq!(limited[0].lines().count(), 1);

    // An oversized request is refused before it is decoded.
    let mut big = pb::security_client::SecurityClient::new(
        from([127, 0, 0, 98]).connect().await.expect("connect"),
    );
    let refused = big
        .join(pb::JoinRequest {
            csr_pem: "x".repeat(1 << 20),
            ..forged.clone()
        })
        .await
        .expect_err("too large");
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");

    // Meanwhile a real agent joins with a token (from 127.0.0.1).
    let ca = pki.ca_cert().display().to_string();
    let token = ok(&c.ctl().run(&["token", "create"])).trim().to_string();
    c.start_agent(
        "j1",
        "sim",
        &[&format!("--join-token={token}"), &format!("--ca={ca}")],
    )
    .expect("agent");
    c.wait_for("j1 Ready", T, || node_ready(&c, "j1"))
        .await
        .expect("j1 joined");
    // The flood wrote nothing and logged one line, not one per call.
    let nodes = ok(&c.ctl().run(&["get", "nodes", "-o", "name"]));
    assert_eq!(nodes, "node/j1\n");
    let log = std::fs::read_to_string(&c.controllers[0].log).expect("log");
    assert_eq!(
        log.matches("refusing joins from an address that exceeded its rate")
            .count(),
        1,
        "{log}"
    );
}

/// VmRSS of a process, in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Issue 12 item 5: a replica writes 1 GiB of log; `droverctl logs` streams
/// all of it (the agent keeps it: `--log-max-size 512m --log-max-file 2`) while
/// the agent's memory stays flat, and the files on disk stay within the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_log_streams_with_flat_agent_memory() {
    const GIB: u64 = 1 << 30;
    let mut c = Cluster::start(1).await.expect("cluster");
    let agent = c
        .start_agent(
            "big",
            "process",
            &["--log-max-size", "512m", "--log-max-file", "2"],
        )
        .expect("agent");
    c.wait_for("big Ready", T, || node_ready(&c, "big"))
        .await
        .expect("Ready");
    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: chatty
spec:
  replicas: 1
  selector:
    matchLabels:
      app: chatty
  template:
    metadata:
      labels:
        app: chatty
    spec:
      containers:
      - name: main
        image: none
        command: ["sh", "-c", "yes {line} | head -c {GIB}; exec sleep 3600"]
"#,
        line = "0123456789".repeat(10),
    );
    let file = c.dir.path().join("chatty.yaml");
    std::fs::write(&file, manifest).expect("manifest");
    ok(&c.ctl().run(&["apply", "-f", &file.display().to_string()]));
    let replica = c
        .wait_for("chatty running", T, || c.running_replicas("chatty", 1))
        .await
        .expect("running")
        .remove(0)
        .name;
    let logs_dir = c.agents[agent].data_dir.join("process/logs");
    let on_disk = || -> (u64, usize) {
        let mut total = (0, 0);
        for e in std::fs::read_dir(&logs_dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().contains(".stdout") {
                total.0 += e.metadata().map(|m| m.len()).unwrap_or(0);
                total.1 += 1;
            }
        }
        total
    };
    let started = std::time::Instant::now();
    c.wait_for("1 GiB of log", Duration::from_secs(60), || async {
        match on_disk() {
            (GIB, _) => Ok(()),
            (n, _) => Err(format!("{n} bytes")),
        }
    })
    .await
    .expect("written");
    let written = started.elapsed();
    assert_eq!(on_disk().1, 2, "two files of at most 512 MiB");

    let pid = c.agents[agent].pid().expect("agent pid");
    let before = rss_bytes(pid).expect("rss");
    let mut child = c
        .ctl()
        .command(&["logs", &replica])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("droverctl logs");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 1 << 20];
        let (mut total, mut last) = (0u64, Vec::new());
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return (total, last),
                Ok(n) => {
                    total += n as u64;
                    // The last 16 bytes of the stream, however it was cut.
                    last.extend_from_slice(&buf[..n]);
                    let cut = last.len().saturating_sub(16);
                    last.drain(..cut);
                }
            }
        }
    });
    let streaming = std::time::Instant::now();
    let mut peak = before;
    while !reader.is_finished() {
        if let Some(rss) = rss_bytes(pid) {
            peak = peak.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (received, last) = reader.join().expect("reader");
    let took = streaming.elapsed();
    let status = child.wait().expect("droverctl exits");
    assert!(status.success(), "droverctl logs: {status}");
    eprintln!(
        "1 GiB log: written in {written:?}; streamed in {took:?} ({:.0} MiB/s); agent RSS {} MiB before, {} MiB at peak",
        received as f64 / (1 << 20) as f64 / took.as_secs_f64(),
        before >> 20,
        peak >> 20
    );
    assert_eq!(received, GIB, "all of it");
    // `yes` repeats LINE\n; head cut it at 1 GiB.
    let pattern = format!("{}\n", "0123456789".repeat(10)).into_bytes();
    let want: Vec<u8> = (GIB - 16..GIB)
        .map(|p| pattern[(p % pattern.len() as u64) as usize])
        .collect();
    assert_eq!(last, want, "the last bytes written");
    assert!(
        peak.saturating_sub(before) < 100 << 20,
        "agent RSS grew from {} MiB to {} MiB while streaming",
        before >> 20,
        peak >> 20
    );
}

/// Issue 12 item 4: a controller that joined with a token (no CA key)
/// renews its own certificate through a member before it expires, and serves,
/// forwards and speaks raft with the renewed one without a restart: after its
/// joined certificate has expired, a restarted peer (new connections both
/// ways) and droverctl still reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_controller_renews_its_certificate_and_keeps_serving() {
    let mut c = Cluster::start_with(
        1,
        Options {
            extra_args: vec!["--node-cert-validity".into(), "6s".into()],
            ..Options::default()
        },
    )
    .await
    .expect("cluster");
    let ca = c.pki.as_ref().expect("pki").ca_cert().display().to_string();
    let token = ok(&c.ctl().run(&["token", "create", "--role", "controller"]))
        .trim()
        .to_string();
    let first = c.controllers[0].address.clone();
    let joiner = c
        .spawn_joiner_with(
            2,
            &[
                format!("--join-token={token}"),
                format!("--ca={ca}"),
                format!("--join-via={first}"),
            ],
        )
        .expect("joiner");
    let tls = TlsDir::new(c.dir.path().join("tls-controller-2"));
    c.wait_for("the joiner's certificate", T, || async {
        if tls.has_identity() {
            Ok(())
        } else {
            Err("none yet".to_string())
        }
    })
    .await
    .expect("certificate");
    let joined = pki::cert_info(&std::fs::read_to_string(tls.cert()).expect("cert"))
        .expect("info")
        .not_after;
    let address = c.controllers[joiner].address.clone();
    ok(&c
        .ctl_at(0)
        .run(&["cluster", "add", "--id", "2", "--address", &address]));
    c.wait_converged(T).await.expect("the new member caught up");

    // Two renewals: the second authenticates with the first renewed
    // certificate, after the joined one has expired.
    let log = c.controllers[joiner].log.clone();
    c.wait_for("two renewals", T, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            match text.matches("renewed the controller certificate").count() {
                n if n >= 2 => Ok(()),
                n => Err(format!("{n} renewals")),
            }
        }
    })
    .await
    .expect("renewed");
    assert!(SystemTime::now() > joined, "the joined certificate expired");
    let now = pki::cert_info(&std::fs::read_to_string(tls.cert()).expect("cert")).expect("info");
    assert!(now.not_after > joined);
    assert_eq!(now.identity, Some(Identity::new(Role::Controller, "2")));
    assert!(!tls.can_sign(), "still no CA key");

    // New connections everywhere: controller 1 restarts, so raft both ways
    // and forwarded writes use fresh TLS handshakes, which an expired
    // certificate would fail.
    c.stop(0).expect("stop");
    c.restart(0).expect("restart");
    let file = write_manifest(&c, "after-renewal");
    c.wait_for("a write through the joiner", T, || async {
        let out = c.ctl_at(joiner).run(&["apply", "-f", &file]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
    .await
    .expect("forwarded and committed");
    c.wait_converged(T).await.expect("both members applied it");
    let mut client = c
        .client(joiner)
        .await
        .expect("droverctl reaches the joiner");
    assert_eq!(
        names(&mut client, false).await.expect("list"),
        ["after-renewal"]
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("serving with the renewed certificate"),
        "{text}"
    );
}
