//! The kubectl verbs scripts lean on (issue 21), run as a script runs them:
//! droverctl commands against real controllers and agents (process runtime),
//! checking exit codes and the text a script would read, never a table
//! parsed with awk.
//!
//! - `wait`: conditions, jsonpath, `-l`, `--all`, `--for=delete`, a timeout's one sentence
//! - output: `-o jsonpath` (ranges, filters, `{"\n"}`), `-o custom-columns`, `--no-headers`, `-o name`
//! - selectors: `-l` equality and set-based, `--field-selector`, bad ones refused
//! - `delete` waits until the hosts run no replica of the deployment
//! - `rollout restart`, `set image`, `set env`, `label`, `annotate`, `patch`,
//!   `edit` are writes with revisions and events like `apply`'s, and a
//!   concurrent write is never lost
//! - `api-resources`, `explain`
//! - the failure-injection script of `docs/scripts.md`, extracted from the
//!   page and run exactly as printed (needs root, as the lab does)

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use drover_tests::cluster::{err, ok};
use drover_tests::{bin, Cluster, Ctl};

fn manifest(name: &str, replicas: u32, tier: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app: {name}
    tier: {tier}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
        tier: {tier}
    spec:
      containers:
      - name: main
        image: drover/busybox:1
        command: ["sh", "-c", "while true; do sleep 1; done"]
        resources:
          requests:
            cpu: 100m
            memory: 16Mi
"#
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `droverctl apply -f -` with `text`.
fn apply(ctl: &Ctl, text: &str) -> String {
    ok(&ctl.run_with_stdin(&["apply", "-f", "-"], Some(text.as_bytes())))
}

/// Replica processes of `deployment` (namespace default) running under `dir`:
/// the process runtime gives each replica a working dir `.../work/default.<replica>`.
fn replica_processes(dir: &Path, deployment: &str) -> Vec<String> {
    let needle = format!("/work/default.{deployment}-");
    drover_lab::sys::cwds_under(dir)
        .into_iter()
        .map(|(_, cwd)| cwd.to_string_lossy().into_owned())
        .filter(|cwd| cwd.contains(&needle))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_waits_selects_and_reads_fields_without_tables() {
    let mut c = Cluster::with_agents(1, "process", &["n1", "n2"])
        .await
        .expect("cluster");
    let ctl = c.ctl();
    apply(&ctl, &manifest("web", 3, "front"));
    apply(&ctl, &manifest("worker", 1, "back"));

    // wait: a condition on a named deployment, then on selected ones, then nodes.
    let out = ctl.run(&[
        "wait",
        "--for=condition=Available",
        "deployment/web",
        "--timeout=60s",
    ]);
    assert_eq!(ok(&out), "deployment.apps/web condition met\n");
    let out = ctl.run(&[
        "wait",
        "deployment",
        "-l",
        "app=worker",
        "--for",
        "jsonpath={.status.readyReplicas}=1",
        "--timeout",
        "60s",
    ]);
    assert_eq!(ok(&out), "deployment.apps/worker condition met\n");
    let out = ctl.run(&["wait", "node", "--all", "--for=condition=Ready"]);
    assert_eq!(ok(&out), "node/n1 condition met\nnode/n2 condition met\n");
    let out = ctl.run(&[
        "wait",
        "replicas",
        "-l",
        "app=web",
        "--for=condition=Ready",
        "--timeout=60s",
    ]);
    assert_eq!(ok(&out).lines().count(), 3);

    // -o jsonpath: a field, a range with literals, a filter.
    let out = ctl.run(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    assert_eq!(ok(&out), "3");
    let out = ctl.run(&[
        "get",
        "replicas",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.labels.app}{"\t"}{.status.state}{"\n"}{end}"#,
    ]);
    let mut rows: Vec<String> = ok(&out).lines().map(String::from).collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            "web\tRunning",
            "web\tRunning",
            "web\tRunning",
            "worker\tRunning"
        ]
    );
    let out = ctl.run(&[
        "get",
        "deploy",
        "-o",
        r#"jsonpath={.items[?(@.metadata.labels.tier=="back")].metadata.name}"#,
    ]);
    assert_eq!(ok(&out), "worker");

    // -o custom-columns and --no-headers.
    let out = ctl.run(&[
        "get",
        "deploy",
        "-o",
        "custom-columns=NAME:.metadata.name,READY:.status.readyReplicas,TIER:.metadata.labels.tier",
    ]);
    assert_eq!(
        ok(&out),
        "NAME     READY   TIER\nweb      3       front\nworker   1       back\n"
    );
    let out = ctl.run(&["get", "deploy", "--no-headers"]);
    let text = ok(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.starts_with("web "), "{text}");

    // -l, equality and set-based, evaluated by the controller.
    let out = ctl.run(&["get", "replicas", "-l", "app=web", "-o", "name"]);
    let names = ok(&out);
    assert_eq!(names.lines().count(), 3, "{names}");
    assert!(
        names.lines().all(|l| l.starts_with("replica/web-")),
        "{names}"
    );
    let out = ctl.run(&[
        "get",
        "replicas",
        "-l",
        "app in (web,worker),tier!=front",
        "-o",
        "name",
    ]);
    let names = ok(&out);
    assert_eq!(names.lines().count(), 1, "{names}");
    assert!(names.starts_with("replica/worker-"), "{names}");
    let out = ctl.run(&["get", "deploy", "-l", "!tier", "-o", "name"]);
    assert_eq!(ok(&out), "");
    assert!(
        stderr(&out).contains("No resources found"),
        "{}",
        stderr(&out)
    );

    // --field-selector: every replica listed for n1 is on n1, and the two
    // nodes together hold all four.
    let mut total = 0;
    for node in ["n1", "n2"] {
        let out = ctl.run(&[
            "get",
            "replicas",
            "--field-selector",
            &format!("spec.nodeName={node},status.state=Running"),
            "-o",
            r#"jsonpath={range .items[*]}{.spec.nodeName}{"\n"}{end}"#,
        ]);
        let text = ok(&out);
        assert!(text.lines().all(|l| l == node), "{text}");
        total += text.lines().count();
    }
    assert_eq!(total, 4);

    // Bad input: one sentence, exit 1.
    let out = ctl.run(&["get", "replicas", "-l", "env in a,b"]);
    let e = err(&out);
    assert!(
        e.contains("label selector") && e.contains("parentheses"),
        "{e}"
    );
    let out = ctl.run(&["get", "nodes", "--field-selector", "spec.nodeName=n1"]);
    let e = err(&out);
    assert!(
        e.contains("field selector \"spec.nodeName\" is not supported for nodes"),
        "{e}"
    );

    // A timeout says what was waited for and what it is now.
    let out = ctl.run(&[
        "wait",
        "deploy/web",
        "--for=jsonpath={.status.readyReplicas}=5",
        "--timeout=1s",
    ]);
    assert_eq!(
        err(&out),
        "error: timed out after 1s waiting for jsonpath={.status.readyReplicas}=5 on deployment.apps/web: {.status.readyReplicas} is \"3\", not \"5\"\n"
    );
    let out = ctl.run(&["wait", "deploy/nope", "--for=condition=Available"]);
    assert!(err(&out).contains("deployment \"nope\" not found"));

    // delete waits until no host runs a replica of it.
    assert!(!replica_processes(c.dir.path(), "worker").is_empty());
    let out = ctl.run(&["delete", "deployment", "-l", "app=worker"]);
    assert_eq!(ok(&out), "deployment.apps \"worker\" deleted\n");
    assert_eq!(
        replica_processes(c.dir.path(), "worker"),
        Vec::<String>::new(),
        "delete returned while replicas still ran (delete waits until ListReplicas lists none: \
         the controller must keep a removed replica, Terminating, until its agent reports it gone)"
    );
    let out = ctl.run(&["get", "replicas", "-l", "app=worker", "-o", "name"]);
    assert_eq!(ok(&out), "");
    let out = ctl.run(&["wait", "deploy/worker", "--for=delete", "--timeout=5s"]);
    assert_eq!(ok(&out), "deployment.apps/worker condition met\n");

    // --wait=false returns at once; wait --for=delete then waits for the rest.
    let out = ctl.run(&["delete", "deploy/web", "--wait=false", "-o", "name"]);
    assert_eq!(ok(&out), "deployment.apps/web\n");
    let out = ctl.run(&["wait", "deploy/web", "--for=delete", "--timeout=60s"]);
    assert_eq!(ok(&out), "deployment.apps/web condition met\n");
    assert_eq!(
        replica_processes(c.dir.path(), "web"),
        Vec::<String>::new(),
        "wait --for=delete returned while replicas still ran (see the delete check above)"
    );

    // Nodes: an admin's labels select nodes and place replicas, and outlive
    // the agent's restart; annotations show in -o jsonpath.
    let out = ctl.run(&["label", "node", "n1", "zone=a"]);
    assert_eq!(ok(&out), "node/n1 labeled\n");
    let out = ctl.run(&["annotate", "nodes", "--all", "owner=ops", "-o", "name"]);
    assert_eq!(ok(&out), "node/n1\nnode/n2\n");
    let out = ctl.run(&["label", "node", "n1", "zone=b"]);
    assert_eq!(
        err(&out),
        "error: label \"zone\" already has a value (a), and --overwrite is false\n"
    );
    c.restart_agent(0, &["--cpu", "4", "--memory", "4Gi"])
        .expect("restart n1's agent");
    let out = ctl.run(&["wait", "node/n1", "--for=condition=Ready", "--timeout=60s"]);
    ok(&out);
    let out = ctl.run(&["get", "nodes", "-l", "zone=a", "-o", "name"]);
    assert_eq!(
        ok(&out),
        "node/n1\n",
        "the label outlived the agent's restart"
    );
    let owner = ctl.run(&[
        "get",
        "node",
        "n2",
        "-o",
        "jsonpath={.metadata.annotations.owner}",
    ]);
    assert_eq!(ok(&owner), "ops");
    let pinned = manifest("pinned", 2, "front").replace(
        "    spec:\n      containers:",
        "    spec:\n      nodeSelector:\n        zone: a\n      containers:",
    );
    apply(&ctl, &pinned);
    ok(&ctl.run(&[
        "wait",
        "deploy/pinned",
        "--for=condition=Available",
        "--timeout=60s",
    ]));
    let nodes = ok(&ctl.run(&[
        "get",
        "replicas",
        "-l",
        "app=pinned",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]));
    assert_eq!(nodes, "n1 n1");
    let out = ctl.run(&["label", "node", "n1", "zone-"]);
    assert_eq!(ok(&out), "node/n1 labeled\n");
    let out = ctl.run(&["get", "nodes", "-l", "zone", "-o", "name"]);
    assert_eq!(ok(&out), "");
}

/// The generation of `web`: it grows with every stored change.
/// `delete --grace-period=N`: replicas whose template gives them 60 s (and
/// which ignore SIGTERM) are given N instead, and `delete` (which waits)
/// returns once they are gone from their host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_a_grace_period_stops_replicas_with_it() {
    let c = Cluster::with_agents(1, "process", &["n1"])
        .await
        .expect("cluster");
    let ctl = c.ctl();
    apply(
        &ctl,
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: stubborn
spec:
  replicas: 2
  selector:
    matchLabels:
      app: stubborn
  template:
    metadata:
      labels:
        app: stubborn
    spec:
      terminationGracePeriodSeconds: 60
      containers:
      - name: main
        image: drover/busybox:1
        command: ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]
"#,
    );
    ok(&ctl.run(&[
        "wait",
        "--for=condition=Available",
        "deployment/stubborn",
        "--timeout=60s",
    ]));
    assert!(replica_processes(c.dir.path(), "stubborn").len() >= 2);
    // A restart leaves the old replicas terminating with their 60 s; the
    // delete's grace period reaches those too. (`-o name` for scripts.)
    assert_eq!(
        ok(&ctl.run(&["rollout", "restart", "deployment/stubborn", "-o", "name"])),
        "deployment.apps/stubborn\n"
    );
    assert_eq!(ok(&ctl.run(&["cordon", "n1", "-o", "name"])), "node/n1\n");

    let out = ctl.run(&[
        "delete",
        "deployment",
        "stubborn",
        "--grace-period=1",
        "--timeout=30s",
    ]);
    assert!(
        out.status.success(),
        "gone well before the template's 60 s: {}",
        stderr(&out)
    );
    assert!(
        replica_processes(c.dir.path(), "stubborn").is_empty(),
        "no replica process left"
    );
    let e = stderr(&ctl.run(&["delete", "deployment", "x", "--grace-period=0"]));
    assert!(e.contains("--grace-period=0 needs --force"), "{e}");
}

fn generation(ctl: &Ctl) -> String {
    ok(&ctl.run(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.generation}",
    ]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_without_a_file_are_applies_with_revisions_and_lose_nothing() {
    let c = Cluster::with_agents(1, "process", &["n1"])
        .await
        .expect("cluster");
    let ctl = c.ctl();
    apply(&ctl, &manifest("web", 2, "front"));
    ok(&ctl.run(&["rollout", "status", "deploy/web", "--timeout=60s"]));
    let first = generation(&ctl);

    // rollout restart: a new revision, every replica replaced.
    let before = ok(&ctl.run(&["get", "replicas", "-l", "app=web", "-o", "name"]));
    let out = ctl.run(&["rollout", "restart", "deployment/web"]);
    assert_eq!(ok(&out), "deployment.apps/web restarted\n");
    ok(&ctl.run(&["rollout", "status", "deploy/web", "--timeout=60s"]));
    let after = ok(&ctl.run(&[
        "get",
        "replicas",
        "-l",
        "app=web",
        "--field-selector",
        "status.state=Running",
        "-o",
        "name",
    ]));
    assert_eq!(after.lines().count(), 2, "{after}");
    for name in before.lines() {
        assert!(!after.contains(name), "{name} was not replaced: {after}");
    }
    let restarted_at = ok(&ctl.run(&[
        "get",
        "deploy",
        "web",
        "-o",
        r"jsonpath={.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}",
    ]));
    assert!(restarted_at.ends_with('Z'), "{restarted_at}");
    let history = ok(&ctl.run(&["rollout", "history", "deploy/web"]));
    assert!(history.contains("\n2 "), "{history}");
    assert_ne!(generation(&ctl), first);

    // set env and set image: new revisions, visible in the template.
    let out = ctl.run(&["set", "env", "deploy/web", "MODE=fast", "-o", "name"]);
    assert_eq!(ok(&out), "deployment.apps/web\n");
    let env = ok(&ctl.run(&[
        "get",
        "deploy",
        "web",
        "-o",
        r#"jsonpath={.spec.template.spec.containers[0].env[?(@.name=="MODE")].value}"#,
    ]));
    assert_eq!(env, "fast");
    ok(&ctl.run(&["rollout", "status", "deploy/web", "--timeout=60s"]));
    let out = ctl.run(&["set", "image", "deployment/web", "main=drover/busybox:1"]);
    assert_eq!(ok(&out), "deployment.apps/web image updated (no change)\n");
    let out = ctl.run(&["set", "image", "deployment/web", "nope=drover/busybox:1"]);
    assert!(err(&out).contains("has no container named \"nope\""));

    // label / annotate: KEY=VALUE, KEY-, --overwrite.
    let out = ctl.run(&["label", "deploy", "web", "canary=yes"]);
    assert_eq!(ok(&out), "deployment.apps/web labeled\n");
    let out = ctl.run(&["label", "deploy", "web", "canary=no"]);
    assert_eq!(
        err(&out),
        "error: label \"canary\" already has a value (yes), and --overwrite is false\n"
    );
    ok(&ctl.run(&["label", "deploy", "web", "canary=no", "--overwrite"]));
    let out = ctl.run(&["get", "deploy", "-l", "canary=no", "-o", "name"]);
    assert_eq!(ok(&out), "deployment.apps/web\n");
    ok(&ctl.run(&["label", "deploy/web", "canary-"]));
    let out = ctl.run(&["get", "deploy", "-l", "canary", "-o", "name"]);
    assert_eq!(ok(&out), "");
    ok(&ctl.run(&["annotate", "deploy/web", "owner=team a"]));
    let owner = ok(&ctl.run(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.annotations.owner}",
    ]));
    assert_eq!(owner, "team a");

    // patch: merge and json.
    let out = ctl.run(&["patch", "deploy/web", "-p", r#"{"spec":{"replicas":3}}"#]);
    assert_eq!(ok(&out), "deployment.apps/web patched\n");
    let out = ctl.run(&[
        "patch",
        "deploy/web",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/minReadySeconds","value":1}]"#,
    ]);
    assert_eq!(ok(&out), "deployment.apps/web patched\n");
    let spec = ok(&ctl.run(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.replicas} {.spec.minReadySeconds}",
    ]));
    assert_eq!(spec, "3 1");
    let out = ctl.run(&["patch", "deploy/web", "-p", r#"{"spec":{"replicas":"x"}}"#]);
    let e = err(&out);
    assert!(e.contains("spec.replicas"), "{e}");
    assert_eq!(
        ok(&ctl.run(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])),
        "3",
        "a refused patch changes nothing"
    );

    // edit: the editor is a script; a bad edit reopens it with the error on top.
    let dir = tempfile::tempdir().expect("tmp");
    let editor = dir.path().join("editor.sh");
    let seen = dir.path().join("seen");
    std::fs::write(
        &editor,
        format!(
            "#!/bin/sh\n\
             cat \"$1\" >> {seen}\n\
             if grep -q 'The edit was refused' \"$1\"; then\n\
               sed -i 's/replicas: many$/replicas: 7/' \"$1\"\n\
             else\n\
               sed -i 's/replicas: 3$/replicas: many/' \"$1\"\n\
             fi\n",
            seen = seen.display()
        ),
    )
    .expect("editor");
    let status = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&editor)
        .status()
        .expect("chmod");
    assert!(status.success());
    let out = std::process::Command::new(bin("droverctl"))
        .args(["--server", &ctl.server])
        .args(&ctl.credentials)
        .args(["edit", "deployment/web"])
        .env("EDITOR", &editor)
        .env("HOME", dir.path())
        .env("DROVERCONFIG", dir.path().join("config.yaml"))
        .env_remove("KUBE_EDITOR")
        .env_remove("DROVER_SERVER")
        .output()
        .expect("edit runs");
    assert_eq!(ok(&out), "deployment.apps/web edited\n");
    let shown = std::fs::read_to_string(&seen).expect("the editor ran");
    assert!(
        shown.contains("# Please edit the deployment below. The edit was refused:")
            && shown.contains("spec.replicas"),
        "{shown}"
    );
    assert_eq!(
        ok(&ctl.run(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])),
        "7"
    );

    // Two writers at once: each read-modify-write lands, none is lost.
    let a = ctl.spawn(&["label", "deploy/web", "a=1"]);
    let b = ctl.spawn(&["annotate", "deploy/web", "b=2"]);
    let d = ctl.spawn(&["set", "env", "deploy/web", "C=3"]);
    for mut p in [a, b, d] {
        let status = loop {
            if let Some(s) = p.exited() {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "{}", p.output());
    }
    let all = ok(&ctl.run(&[
        "get",
        "deploy",
        "web",
        "-o",
        r#"jsonpath={.metadata.labels.a} {.metadata.annotations.b} {.spec.template.spec.containers[0].env[?(@.name=="C")].value}"#,
    ]));
    assert_eq!(all, "1 2 3");

    let history = ok(&ctl.run(&["rollout", "history", "deploy/web"]));
    assert!(
        history.contains("\n4 "),
        "restart, set env and C=3 made revisions: {history}"
    );
}

#[test]
fn api_resources_and_explain_read_the_parsers_schema() {
    let ctl = |args: &[&str]| {
        std::process::Command::new(bin("droverctl"))
            .args(args)
            .env_remove("DROVER_SERVER")
            .output()
            .expect("droverctl runs")
    };
    let out = ctl(&["api-resources", "--no-headers", "-o", "wide"]);
    let text = ok(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with("deployments ") && l.contains("apps/v1") && l.contains("wait")),
        "{text}"
    );
    let out = ctl(&["explain", "deployment.spec.strategy"]);
    let text = ok(&out);
    assert!(text.contains("rollingUpdate"), "{text}");
    let out = ctl(&["explain", "deployment.spec.template.spec.containers"]);
    let text = ok(&out);
    assert!(
        text.contains("readinessProbe") && text.contains("image"),
        "{text}"
    );
    let out = ctl(&["explain", "deployment.spec.nope"]);
    assert_eq!(err(&out), "error: field \"nope\" of spec does not exist\n");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The code block after the marker in docs/scripts.md, exactly as printed.
fn docs_script() -> String {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/scripts.md");
    let doc = std::fs::read_to_string(&page).expect("docs/scripts.md");
    let (_, after) = doc
        .split_once("<!-- the test suite runs the next code block -->")
        .expect("the marker before the script");
    let (_, block) = after.split_once("```bash\n").expect("a bash block");
    let (script, _) = block.split_once("\n```").expect("the block's end");
    format!("{script}\n")
}

#[test]
fn failure_injection_script_in_the_docs_passes() {
    if !is_root() {
        eprintln!("skipped: the lab needs root (network namespaces)");
        return;
    }
    let script = docs_script();
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("failure-injection.sh"), &script).expect("script");
    let bin_dir = bin("droverctl")
        .parent()
        .expect("the binaries' dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .arg("failure-injection.sh")
        .current_dir(dir.path())
        .env("PATH", path)
        .env("HOME", dir.path())
        .env("DROVERCONFIG", dir.path().join("config.yaml"))
        .env("LAB", dir.path().join("lab"))
        .env_remove("DROVER_SERVER")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "the docs' script failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("failure injection: PASS\n"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !dir.path().join("lab").exists(),
        "the script's trap ran lab down"
    );
}
