//! Services end to end (stage 1 of issue 15: the object, its endpoints and
//! the service variables; the data path is not built yet, see
//! docs/services.md): a real controller, two real agents with the process
//! runtime, droverctl as a user types it.
//!
//! - a file with Deployments and Services applies whole; `get svc` shows an
//!   address from 10.96.0.0/16 and the allocated node port in kubectl's
//!   columns; `get svc -o yaml` re-applies unchanged;
//! - `get ep` lists the ready replicas with their node's address and the
//!   named target port resolved;
//! - a replica that fails its readiness probe leaves the endpoints and comes
//!   back when it passes; a replica whose host is lost leaves them;
//! - a replica created after the Service sees `BACKEND_SERVICE_HOST`,
//!   `BACKEND_SERVICE_PORT` and `BACKEND_SERVICE_PORT_HTTP`;
//! - a taken clusterIP refuses the whole file naming the path, nothing of it
//!   stored; `delete svc` and `delete -f` remove Services;
//! - `get svc -w` and `get ep -w` print each of those changes as it happens.

use std::path::Path;
use std::time::Duration;

use drover_tests::cluster::{err, ok, Running};
use drover_tests::Cluster;

const T: Duration = Duration::from_secs(90);

/// Backend (2 replicas, ready while `ready` exists in its working
/// directory), its Service by a named target port, a NodePort Service, and
/// a frontend that prints the service variables it was started with.
const APP: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: backend
spec:
  selector: {app: backend}
  ports:
  - {name: http, port: 80, targetPort: web}
---
apiVersion: v1
kind: Service
metadata:
  name: backend-np
spec:
  type: NodePort
  selector: {app: backend}
  ports:
  - {port: 8080, nodePort: 30080}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: backend
spec:
  replicas: 2
  selector:
    matchLabels: {app: backend}
  template:
    metadata:
      labels: {app: backend}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: backend
        image: drover/busybox:1
        command: ["sh", "-c", "touch ready; exec sleep 600"]
        ports:
        - {name: web, containerPort: 8080}
        readinessProbe:
          exec: {command: ["test", "-f", "ready"]}
          periodSeconds: 1
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: frontend
spec:
  selector:
    matchLabels: {app: frontend}
  template:
    metadata:
      labels: {app: frontend}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: frontend
        image: drover/busybox:1
        command: ["sh", "-c", "env | grep ^BACKEND_ | sort; exec sleep 600"]
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.to_string_lossy().into_owned()
}

/// `get ep NAME -o json` as sorted `ip:port` entries.
fn endpoints(c: &Cluster, name: &str) -> Vec<String> {
    let out = c.ctl().run(&["get", "ep", name, "-o", "json"]);
    let text = ok(&out);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut all = Vec::new();
    for subset in v["subsets"].as_array().into_iter().flatten() {
        let port = subset["ports"][0]["port"].as_u64().unwrap_or_default();
        for a in subset["addresses"].as_array().into_iter().flatten() {
            all.push(format!("{}:{port}", a["ip"].as_str().unwrap_or_default()));
        }
    }
    all.sort();
    all
}

/// The first line a watch printed after its first `skip` lines whose
/// whitespace-separated cells `matches` accepts.
async fn watch_line(
    c: &Cluster,
    watch: &Running,
    skip: usize,
    what: &str,
    matches: impl Fn(&[&str]) -> bool,
) -> String {
    c.wait_for(what, T, || async {
        let out = watch.output();
        out.lines()
            .skip(skip)
            .find(|l| matches(&l.split_whitespace().collect::<Vec<_>>()))
            .map(str::to_string)
            .ok_or(out)
    })
    .await
    .expect(what)
}

/// An `--output-watch-events` line of the backend's endpoints with `n` of them.
fn backend_endpoints(cells: &[&str], n: usize) -> bool {
    cells.len() >= 3
        && cells[1] == "backend"
        && cells[0] != "DELETED"
        && cells[2] != "<none>"
        && cells[2].split(',').count() == n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_endpoints_and_variables_with_the_process_runtime() {
    let mut c = Cluster::with_agents(1, "process", &["n1", "n2"])
        .await
        .expect("cluster");
    let dir = c.dir.path().to_path_buf();
    let app = write(&dir, "app.yaml", APP);
    let svc_watch = c
        .ctl()
        .spawn(&["get", "svc", "-w", "--output-watch-events"]);
    let ep_watch = c.ctl().spawn(&["get", "ep", "-w", "--output-watch-events"]);

    let applied = ok(&c.ctl().run(&["apply", "-f", &app]));
    for line in [
        "service/backend created",
        "service/backend-np created",
        "deployment.apps/backend created",
        "deployment.apps/frontend created",
    ] {
        assert!(applied.contains(line), "{applied}");
    }

    // kubectl's columns, an address from the default range, the node port.
    let table = ok(&c.ctl().run(&["get", "svc"]));
    let header = table.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ],
        "{table}"
    );
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} in\n{table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let backend = row("backend");
    let cluster_ip: std::net::Ipv4Addr = backend[2].parse().expect("an address");
    assert_eq!(cluster_ip.octets()[..2], [10, 96], "{table}");
    assert_eq!(
        backend[1..],
        ["ClusterIP", &backend[2], "<none>", "80/TCP", &backend[5]]
    );
    assert_eq!(row("backend-np")[4], "8080:30080/TCP", "{table}");

    // -o yaml re-applies unchanged (the allocated address included).
    let yaml = ok(&c.ctl().run(&["get", "svc", "backend", "-o", "yaml"]));
    assert!(yaml.contains(&format!("clusterIP: {cluster_ip}")), "{yaml}");
    let dumped = write(&dir, "dumped.yaml", &yaml);
    let again = ok(&c.ctl().run(&["apply", "-f", &dumped]));
    assert_eq!(again.trim(), "service/backend unchanged");
    assert_eq!(
        ok(&c.ctl().run(&["diff", "-f", &dumped])),
        "",
        "no difference"
    );
    let relabelled = write(
        &dir,
        "relabelled.yaml",
        &yaml.replace("app: backend", "app: other"),
    );
    let diff = c.ctl().run(&["diff", "-f", &relabelled]);
    assert_eq!(diff.status.code(), Some(1), "a change exits 1");
    assert!(
        String::from_utf8_lossy(&diff.stdout).contains("+    app: other"),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );

    // Both ready replicas, at their node's address, the named port resolved.
    c.wait_for("two endpoints", T, || async {
        let eps = endpoints(&c, "backend");
        let want = ["127.0.1.1:8080", "127.0.1.2:8080"];
        if eps.len() == 2 && eps.iter().all(|e| want.contains(&e.as_str())) {
            Ok(eps)
        } else {
            Err(format!("{eps:?}"))
        }
    })
    .await
    .expect("endpoints");
    let ep_table = ok(&c.ctl().run(&["get", "endpoints"]));
    assert!(
        ep_table.starts_with("NAME") && ep_table.contains("ENDPOINTS"),
        "{ep_table}"
    );
    let described = ok(&c.ctl().run(&["describe", "svc", "backend"]));
    for field in [
        "Selector:",
        "app=backend",
        "TargetPort:",
        "web/TCP",
        "Endpoints:",
    ] {
        assert!(described.contains(field), "{described}");
    }

    // Both watches saw the Services come and their endpoints fill.
    for (name, kind) in [("backend", "ClusterIP"), ("backend-np", "NodePort")] {
        watch_line(&c, &svc_watch, 0, "a service ADDED line", |cells| {
            cells.first() == Some(&"ADDED")
                && cells.get(1) == Some(&name)
                && cells.get(2) == Some(&kind)
        })
        .await;
    }
    watch_line(&c, &ep_watch, 0, "two backend endpoints", |cells| {
        backend_endpoints(cells, 2)
    })
    .await;

    // Readiness decides: an unready replica leaves, and comes back.
    let replicas = c.running_replicas("backend", 2).await.expect("replicas");
    let first = &replicas[0];
    let before_unready = ep_watch.output().lines().count();
    ok(&c.ctl().run(&["exec", &first.name, "--", "rm", "ready"]));
    c.wait_for("one endpoint while unready", T, || async {
        let eps = endpoints(&c, "backend");
        if eps.len() == 1 {
            Ok(())
        } else {
            Err(format!("{eps:?}"))
        }
    })
    .await
    .expect("unready replica left");
    ok(&c.ctl().run(&["exec", &first.name, "--", "touch", "ready"]));
    c.wait_for("two endpoints again", T, || async {
        let eps = endpoints(&c, "backend");
        if eps.len() == 2 {
            Ok(())
        } else {
            Err(format!("{eps:?}"))
        }
    })
    .await
    .expect("ready again");
    let unready = watch_line(
        &c,
        &ep_watch,
        before_unready,
        "one endpoint while unready",
        |cells| cells.first() == Some(&"MODIFIED") && backend_endpoints(cells, 1),
    )
    .await;
    let after_unready = before_unready
        + ep_watch
            .output()
            .lines()
            .skip(before_unready)
            .position(|l| l == unready)
            .unwrap_or_default();
    watch_line(
        &c,
        &ep_watch,
        after_unready + 1,
        "two endpoints again",
        |cells| cells.first() == Some(&"MODIFIED") && backend_endpoints(cells, 2),
    )
    .await;

    // The frontend, created after the Service, got its variables.
    let frontend = c.running_replicas("frontend", 1).await.expect("frontend");
    let logs = c
        .wait_for("service variables in the frontend's output", T, || async {
            let out = c.ctl().run(&["logs", &frontend[0].name]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.contains("BACKEND_SERVICE_HOST") {
                Ok(text)
            } else {
                Err(text)
            }
        })
        .await
        .expect("logs");
    for line in [
        format!("BACKEND_SERVICE_HOST={cluster_ip}"),
        "BACKEND_SERVICE_PORT=80".to_string(),
        "BACKEND_SERVICE_PORT_HTTP=80".to_string(),
        "BACKEND_NP_SERVICE_PORT=8080".to_string(),
    ] {
        assert!(logs.lines().any(|l| l == line), "{line} in:\n{logs}");
    }

    // A taken address refuses the whole file, naming the path; nothing lands.
    let taken = write(
        &dir,
        "taken.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: other}}\nspec:\n  selector: {{app: other}}\n  clusterIP: {cluster_ip}\n  ports: [{{port: 80}}]\n---\n{}",
            drover_tests::cluster::manifest("other", 1)
        ),
    );
    let refused = err(&c.ctl().run(&["apply", "-f", &taken]));
    assert!(
        refused.contains(&format!(
            "service \"other\" in namespace \"default\": spec.clusterIP: {cluster_ip} is already allocated to Service default/backend"
        )),
        "{refused}"
    );
    assert_eq!(
        ok(&c.ctl().run(&["get", "deploy", "-o", "name"]))
            .lines()
            .count(),
        2,
        "the deployment beside the refused Service was not stored"
    );

    // A lost host's replica leaves the endpoints (agent n1 is 127.0.1.1, n2 127.0.1.2).
    let replicas = c.running_replicas("backend", 2).await.expect("replicas");
    let lost = if replicas[0].node == "n1" { 0 } else { 1 };
    c.kill_agent_host(lost);
    let lost_ip = format!("127.0.1.{}:", lost + 1);
    c.wait_for("no endpoint on the lost host", T, || async {
        let eps = endpoints(&c, "backend");
        if eps.iter().any(|e| e.starts_with(&lost_ip)) {
            Err(format!("{eps:?}"))
        } else {
            Ok(())
        }
    })
    .await
    .expect("lost host left");

    // Delete by name and by file.
    assert_eq!(
        ok(&c.ctl().run(&["delete", "svc", "backend-np"])).trim(),
        "service \"backend-np\" deleted"
    );
    let gone = ok(&c.ctl().run(&["delete", "-f", &app, "--ignore-not-found"]));
    assert!(gone.contains("service \"backend\" deleted"), "{gone}");
    for name in ["backend-np", "backend"] {
        watch_line(&c, &svc_watch, 0, "a service DELETED line", |cells| {
            cells.first() == Some(&"DELETED") && cells.get(1) == Some(&name)
        })
        .await;
    }
    watch_line(
        &c,
        &ep_watch,
        0,
        "the endpoints DELETED with their Service",
        |cells| cells.first() == Some(&"DELETED") && cells.get(1) == Some(&"backend"),
    )
    .await;
    assert_eq!(ok(&c.ctl().run(&["get", "svc", "-o", "name"])), "");
    let missing = err(&c.ctl().run(&["delete", "svc", "backend"]));
    assert!(missing.contains("not found"), "{missing}");
}

/// ListServices and ListEndpoints page like ListReplicas (`limit`,
/// `continue_token`, key order, a sentence for a token no controller gave),
/// and droverctl reads every page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_service_lists_come_in_pages_and_droverctl_reads_them_all() {
    use drover_proto::pb;
    let c = Cluster::start(1).await.expect("cluster");
    let leader = c.wait_for_leader(T).await.expect("leader");
    let mut api = c.client(leader).await.expect("client");
    let total = 1_203;
    let file: String = (0..total)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i:04}}}\nspec:\n  selector: {{app: a{i}}}\n  ports:\n  - {{port: 80}}\n---\n"
            )
        })
        .collect();
    let dir = tempfile::tempdir().expect("tmp");
    let path = write(dir.path(), "many.yaml", &file);
    ok(&c.ctl().run(&["apply", "-f", &path]));

    for of_endpoints in [false, true] {
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut token = String::new();
        loop {
            let page = list(
                &mut api,
                of_endpoints,
                pb::ListConfigRequest {
                    limit: 500,
                    continue_token: token.clone(),
                    ..Default::default()
                },
            )
            .await
            .expect("page")
            .into_inner();
            sizes.push(page.objects.len());
            seen.extend(page.objects.into_iter().map(|o| o.name));
            if page.continue_token.is_empty() {
                break;
            }
            token = page.continue_token;
        }
        assert_eq!(sizes, [500, 500, 203]);
        assert_eq!(seen.len(), total);
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "each once, in key order"
        );
        // A page in one namespace, filtered by name, still pages.
        let page = list(
            &mut api,
            of_endpoints,
            pb::ListConfigRequest {
                namespace: "default".into(),
                names: vec!["svc-0001".into(), "svc-0900".into()],
                limit: 1,
                ..Default::default()
            },
        )
        .await
        .expect("page")
        .into_inner();
        assert_eq!(page.objects.len(), 1);
        assert_eq!(page.objects[0].name, "svc-0001");
        let rest = list(
            &mut api,
            of_endpoints,
            pb::ListConfigRequest {
                namespace: "default".into(),
                names: vec!["svc-0001".into(), "svc-0900".into()],
                limit: 1,
                continue_token: page.continue_token,
                ..Default::default()
            },
        )
        .await
        .expect("page")
        .into_inner();
        assert_eq!(rest.objects.len(), 1);
        assert_eq!(rest.objects[0].name, "svc-0900");
        let refused = list(
            &mut api,
            of_endpoints,
            pb::ListConfigRequest {
                limit: 10,
                continue_token: "not a token".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("continue token"),
            "{}",
            refused.message()
        );
    }

    // droverctl reads every page: a row per Service under one header.
    for kind in ["svc", "ep"] {
        let out = ok(&c.ctl().run(&["get", kind]));
        assert_eq!(out.lines().count(), total + 1, "get {kind}");
    }
}

/// `ListServices`, or `ListEndpoints` with `of_endpoints`.
async fn list(
    api: &mut drover_proto::pb::control_client::ControlClient<tonic::transport::Channel>,
    of_endpoints: bool,
    request: drover_proto::pb::ListConfigRequest,
) -> Result<tonic::Response<drover_proto::pb::ListConfigResponse>, tonic::Status> {
    if of_endpoints {
        api.list_endpoints(request).await
    } else {
        api.list_services(request).await
    }
}
