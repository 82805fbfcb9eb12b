//! ConfigMaps, Secrets and volumes end to end, on both runtimes: a real
//! controller, a real agent, droverctl as a user types it.
//!
//! - a Deployment whose Secret is missing shows CreateContainerConfigError in
//!   `get replicas` and starts by itself once the Secret is applied;
//! - env values and mounted files arrive; a ConfigMap change reaches the
//!   mounted file within the bound docs/manifests.md states;
//! - `get secret -o yaml` shows base64, `describe` and `diff` no value;
//!   an immutable Secret refuses a change and nothing of that apply lands;
//! - the emptyDir is removed with the replica;
//! - a planted secret value is in no log line of any process of the run,
//!   no event and no `describe`.
//!
//! The Docker test is gated like the other Docker suites.

use std::path::Path;
use std::time::{Duration, Instant};

use drover_tests::cluster::{err, ok};
use drover_tests::docker::{available as docker_available, unique, Containers};
use drover_tests::Cluster;

const T: Duration = Duration::from_secs(90);

/// How long a ConfigMap change may take from `apply` returning to the
/// mounted file (docs/manifests.md says the same).
const UPDATE_BOUND: Duration = Duration::from_secs(5);

const PLANTED: &str = "planted-e2e-Secret-4711";

fn config_map(greeting: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\ndata:\n  greeting: {greeting}\n  app.properties: |\n    color=blue\n"
    )
}

fn secret(password: &str, immutable: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\nstringData:\n  password: {password}\nimmutable: {immutable}\n"
    )
}

/// The app: env from both kinds, both volumes and an emptyDir. `root` is
/// where the replica sees `/` ("" in a container; "." for a process, whose
/// mounts are under its working directory).
fn app(name: &str, root: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: drover/busybox:1
        command: ["sh", "-c", "echo app started; exec sleep 600"]
        env:
        - name: GREETING
          valueFrom:
            configMapKeyRef: {{name: app-config, key: greeting}}
        - name: DB_PASSWORD
          valueFrom:
            secretKeyRef: {{name: db, key: password}}
        - name: MY_NAME
          valueFrom:
            fieldRef: {{fieldPath: metadata.name}}
        volumeMounts:
        - {{name: config, mountPath: /etc/app}}
        - {{name: creds, mountPath: /run/db}}
        - {{name: scratch, mountPath: /data}}
      volumes:
      - name: config
        configMap: {{name: app-config}}
      - name: creds
        secret: {{secretName: db}}
      - name: scratch
        emptyDir: {{}}
# root: {root}
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.to_string_lossy().into_owned()
}

/// Every `*.log` under `dir`, concatenated.
fn all_logs(dir: &Path) -> String {
    let mut text = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                text.push_str(&String::from_utf8_lossy(
                    &std::fs::read(&path).unwrap_or_default(),
                ));
            }
        }
    }
    text
}

async fn scenario(c: &Cluster, name: &str, root: &str) {
    let dir = c.dir.path();
    let deployment = write(dir, "app.yaml", &app(name, root));
    let cm = write(dir, "cm.yaml", &config_map("hello"));
    let sec = write(dir, "secret.yaml", &secret(PLANTED, false));

    // 1. No Secret yet: the replica shows why it does not start.
    ok(&c.ctl().run(&["apply", "-f", &cm, "-f", &deployment]));
    let replica = c
        .wait_for("CreateContainerConfigError", T, || async {
            let out = c
                .ctl()
                .run(&["get", "replicas", "-l", &format!("app={name}")]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            match text.lines().nth(1) {
                Some(row) if row.contains("CreateContainerConfigError") => Ok(row
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string()),
                _ => Err(text),
            }
        })
        .await
        .expect("config error");
    let described = ok(&c.ctl().run(&["describe", "replica", &replica]));
    assert!(described.contains("secret \"db\" not found"), "{described}");

    // 2. The Secret arrives: it starts by itself.
    let applied = ok(&c.ctl().run(&["apply", "-f", &sec]));
    assert_eq!(applied, "secret/db created\n");
    c.wait_for("running", T, || c.running_replicas(name, 1))
        .await
        .expect("running");

    // 3. Values and files arrive.
    let exec = |script: &str| {
        ok(&c.ctl().run(&["exec", &replica, "--", "sh", "-c", script]))
            .trim()
            .to_string()
    };
    assert_eq!(
        exec("echo $GREETING $DB_PASSWORD $MY_NAME"),
        format!("hello {PLANTED} {replica}")
    );
    assert_eq!(
        exec(&format!(
            "cat {root}/etc/app/greeting {root}/run/db/password"
        )),
        format!("hello{PLANTED}")
    );

    // 4. A ConfigMap change reaches the mounted file within the bound.
    std::fs::write(&cm, config_map("bonjour")).expect("write");
    let changed = Instant::now();
    assert_eq!(
        ok(&c.ctl().run(&["apply", "-f", &cm])),
        "configmap/app-config configured\n"
    );
    c.wait_for("the new greeting in the file", UPDATE_BOUND, || async {
        let out = exec(&format!("cat {root}/etc/app/greeting"));
        if out == "bonjour" {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await
    .expect("updated within the bound");
    println!(
        "configmap change reached the mounted file {:?} after apply returned (bound {UPDATE_BOUND:?})",
        changed.elapsed()
    );

    // 5. What droverctl shows of the Secret.
    let yaml = ok(&c.ctl().run(&["get", "secret", "db", "-o", "yaml"]));
    let encoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(PLANTED)
    };
    assert!(yaml.contains(&format!("password: {encoded}")), "{yaml}");
    let table = ok(&c.ctl().run(&["get", "secrets"]));
    assert!(
        table.starts_with("NAME") && table.contains("db") && table.contains("Opaque"),
        "{table}"
    );
    let cms = ok(&c.ctl().run(&["get", "cm", "-o", "name"]));
    assert_eq!(cms, "configmap/app-config\n");
    let described = ok(&c.ctl().run(&["describe", "secret", "db"]));
    assert!(
        described.contains(&format!("password:  {} bytes", PLANTED.len())),
        "{described}"
    );
    std::fs::write(&sec, secret("another-value", false)).expect("write");
    let diff = c.ctl().run(&["diff", "-f", &sec]);
    let diff_text = String::from_utf8_lossy(&diff.stdout).into_owned();
    assert!(diff_text.contains("*** (after)"), "{diff_text}");
    assert!(!diff_text.contains("another-value") && !diff_text.contains(PLANTED));

    // 6. Immutable: a change is refused with a sentence, and nothing of the
    //    apply lands (the ConfigMap beside it keeps its value).
    std::fs::write(&sec, secret(PLANTED, true)).expect("write");
    ok(&c.ctl().run(&["apply", "-f", &sec]));
    let both = write(
        dir,
        "both.yaml",
        &format!("{}---\n{}", config_map("ciao"), secret("changed", true)),
    );
    let refused = err(&c.ctl().run(&["apply", "-f", &both]));
    assert!(
        refused.contains("Secret \"db\" in namespace \"default\" is immutable"),
        "{refused}"
    );
    assert!(!refused.contains("changed") && !refused.contains(PLANTED));
    let cm_yaml = ok(&c.ctl().run(&["get", "cm", "app-config", "-o", "yaml"]));
    assert!(cm_yaml.contains("greeting: bonjour"), "{cm_yaml}");

    // 7. The emptyDir goes with the replica.
    let agent = &c.agents[0];
    let volumes = agent
        .data_dir
        .join("volumes")
        .join(format!("default.{replica}"));
    assert!(volumes.join("scratch").is_dir(), "{}", volumes.display());
    ok(&c.ctl().run(&["delete", "deployment", name]));
    c.wait_for("volumes removed", T, || async {
        if volumes.exists() {
            Err(format!("{} still there", volumes.display()))
        } else {
            Ok(())
        }
    })
    .await
    .expect("volumes removed");
    ok(&c.ctl().run(&["delete", "secret", "db"]));
    ok(&c.ctl().run(&["delete", "-f", &cm]));
    assert_eq!(ok(&c.ctl().run(&["get", "cm", "-o", "name"])), "");

    // 8. The planted value: in no log of any process, no event, no describe.
    let events = ok(&c.ctl().run(&["get", "events"]));
    assert!(!events.contains(PLANTED), "{events}");
    assert!(!described.contains(PLANTED));
    let logs = all_logs(dir);
    assert!(
        logs.contains("replica started") || logs.contains("container"),
        "the logs were read"
    );
    assert!(!logs.contains(PLANTED), "a log holds the secret value");
    assert!(
        !logs.contains(&encoded),
        "a log holds the secret value (base64)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_end_to_end_with_the_process_runtime() {
    let c = Cluster::with_agents(1, "process", &["n1"])
        .await
        .expect("cluster");
    scenario(&c, "cfg", ".").await;
    let state = std::fs::read_to_string(c.agents[0].data_dir.join("process/state.json"))
        .unwrap_or_default();
    assert!(!state.contains(PLANTED), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_end_to_end_with_docker() {
    if !docker_available() {
        return;
    }
    let nodes = [unique("cfg")];
    let _containers = Containers(nodes.to_vec());
    let c = Cluster::with_agents(1, "docker", &nodes)
        .await
        .expect("cluster");
    scenario(&c, &unique("cfg"), "").await;
}

/// The workspace's root, where `deploy/examples` lives.
fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn logs_until(c: &Cluster, replica: &str, want: &str) -> String {
    c.wait_for(&format!("{want:?} in the logs of {replica}"), T, || async {
        let out = c.ctl().run(&["logs", replica]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(want) {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await
    .expect("logs")
}

/// `deploy/examples/shop.yaml` and `journal.yaml` do what their comments
/// say, with the process runtime and with Docker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_examples_work_as_documented() {
    let c = Cluster::with_agents(1, "process", &["n1"])
        .await
        .expect("cluster");
    examples(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_examples_work_as_documented_with_docker() {
    if !docker_available() {
        return;
    }
    let nodes = [unique("ex")];
    let _containers = Containers(nodes.to_vec());
    let c = Cluster::with_agents(1, "docker", &nodes)
        .await
        .expect("cluster");
    examples(&c).await;
}

async fn examples(c: &Cluster) {
    let node = c.agents[0].name.clone();
    let dir = c.dir.path();
    let shop = write(dir, "shop.yaml", &example("shop.yaml"));
    ok(&c.ctl().run(&["apply", "-f", &shop]));
    let replica = c
        .wait_for("shop running", T, || c.running_replicas("shop", 1))
        .await
        .expect("running")[0]
        .name
        .clone();
    let text = logs_until(c, &replica, "started 1 time(s)").await;
    assert!(
        text.contains(&format!("hello from {replica} on {node}")),
        "{text}"
    );
    assert!(text.contains("settings: color=blue currency=EUR"), "{text}");
    assert!(
        text.contains("db password: 16 characters (file: 16 bytes)"),
        "{text}"
    );
    assert!(!text.contains("change-me-please"));
    // A container restart keeps the emptyDir.
    ok(&c
        .ctl()
        .run(&["exec", &replica, "--", "sh", "-c", "kill $(cat data/pid)"]));
    let text = logs_until(c, &replica, "started 2 time(s)").await;
    assert!(text.contains("started 2 time(s)"), "{text}");
    // The replica's removal does not.
    let volumes = c.agents[0]
        .data_dir
        .join("volumes")
        .join(format!("default.{replica}"));
    assert!(volumes.join("data/starts").is_file());
    ok(&c.ctl().run(&["delete", "-f", &shop]));
    c.wait_for("emptyDir removed", T, || async {
        if volumes.exists() {
            Err("still there".to_string())
        } else {
            Ok(())
        }
    })
    .await
    .expect("removed");

    // hostPath data outlives a replica replaced on the same node.
    let host = dir.join("journal-on-host");
    let journal =
        example("journal.yaml").replace("/var/tmp/drover-journal", &host.to_string_lossy());
    let journal = write(dir, "journal.yaml", &journal);
    ok(&c.ctl().run(&["label", "node", &node, "journal=yes"]));
    ok(&c.ctl().run(&["apply", "-f", &journal]));
    let first = c
        .wait_for("journal running", T, || c.running_replicas("journal", 1))
        .await
        .expect("running")[0]
        .name
        .clone();
    logs_until(c, &first, &format!("started {first}")).await;
    ok(&c
        .ctl()
        .run(&["rollout", "restart", "deployment", "journal"]));
    let second = c
        .wait_for("a new journal replica", T, || async {
            let r = c.running_replicas("journal", 1).await?;
            match r.first() {
                Some(r) if r.name != first => Ok(r.name.clone()),
                _ => Err("the old one still runs".to_string()),
            }
        })
        .await
        .expect("replaced");
    let text = logs_until(c, &second, &format!("started {second}")).await;
    assert!(
        text.contains(&format!("started {first}\nstarted {second}")),
        "{text}"
    );
}
