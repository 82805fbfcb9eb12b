//! The manifest parser from a user's side: real Kubernetes Deployment YAML
//! must parse unchanged, and every bad input must fail with an error naming
//! the file, document and field path, and never with a panic.

use std::collections::BTreeMap;
use std::path::Path;

use drover_manifest::quantity::{
    format_cpu_millis, format_memory_bytes, parse_cpu_millis, parse_memory_bytes, QuantityError,
};
use drover_manifest::{
    parse_files, render_kubernetes, Container, ContainerPort, Deployment, DeploymentSpec, EnvVar,
    HttpHeader, HttpScheme, IntOrPercent, LabelSelector, ManifestError, ObjectMeta, ParseOptions,
    Parsed, PodSpec, PodTemplate, PortRef, Probe, ProbeHandler, Protocol, PullPolicy, ResourceList,
    Resources, Strategy, TemplateMeta,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ----- helpers -------------------------------------------------------------

fn fixture(name: &str) -> (String, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/manifests")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (name.to_string(), text)
}

fn parse_with(name: &str, text: &str, opts: &ParseOptions) -> Result<Parsed, Vec<String>> {
    parse_files(&[(name.to_string(), text.to_string())], opts)
        .map_err(|errors| errors.0.iter().map(ManifestError::to_string).collect())
}

fn parse_ok(name: &str, text: &str) -> Parsed {
    parse_with(name, text, &ParseOptions::default())
        .unwrap_or_else(|errors| panic!("{name} should parse, got:\n{}", errors.join("\n")))
}

fn parse_fixture(name: &str) -> Parsed {
    let (name, text) = fixture(name);
    parse_ok(&name, &text)
}

fn errors_of(text: &str) -> Vec<String> {
    errors_with(text, &ParseOptions::default())
}

fn errors_with(text: &str, opts: &ParseOptions) -> Vec<String> {
    match parse_with("web.yaml", text, opts) {
        Ok(parsed) => panic!("expected errors, parsed {parsed:?}"),
        Err(errors) => errors,
    }
}

/// The one error `text` has.
fn error_of(text: &str) -> String {
    let errors = errors_of(text);
    assert_eq!(
        errors.len(),
        1,
        "expected one error, got:\n{}",
        errors.join("\n")
    );
    errors.into_iter().next().unwrap_or_default()
}

/// A valid Deployment to break in one place per test.
const WEB: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports:
        - containerPort: 80
        resources:
          limits:
            memory: 128Mi
";

/// [`WEB`] with `old` (which must occur exactly once) replaced by `new`.
fn web_with(old: &str, new: &str) -> String {
    assert_eq!(
        WEB.matches(old).count(),
        1,
        "{old:?} must occur once in WEB"
    );
    WEB.replace(old, new)
}

/// [`WEB`] with `lines` added to the container (indented 8 spaces).
fn web_container_with(lines: &str) -> String {
    let indented: String = lines.lines().map(|l| format!("        {l}\n")).collect();
    format!("{WEB}{indented}")
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ----- real manifests parse unchanged --------------------------------------

#[test]
fn nginx_with_resources_and_probes() {
    let parsed = parse_fixture("nginx.yaml");
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let expected = Deployment {
        metadata: ObjectMeta {
            name: "nginx-deployment".into(),
            namespace: "default".into(),
            labels: labels(&[("app", "nginx")]),
            annotations: BTreeMap::new(),
        },
        spec: DeploymentSpec {
            replicas: 3,
            selector: LabelSelector {
                match_labels: labels(&[("app", "nginx")]),
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
                    labels: labels(&[("app", "nginx")]),
                    annotations: BTreeMap::new(),
                },
                spec: PodSpec {
                    containers: vec![Container {
                        name: "nginx".into(),
                        image: "nginx:1.14.2".into(),
                        image_pull_policy: PullPolicy::IfNotPresent,
                        command: vec![],
                        args: vec![],
                        env: vec![],
                        env_from: vec![],
                        volume_mounts: vec![],
                        working_dir: None,
                        ports: vec![ContainerPort {
                            name: None,
                            container_port: 80,
                            host_port: None,
                            protocol: Protocol::Tcp,
                        }],
                        resources: Resources {
                            requests: ResourceList {
                                cpu_millis: Some(250),
                                memory_bytes: Some(64 << 20),
                            },
                            limits: ResourceList {
                                cpu_millis: Some(500),
                                memory_bytes: Some(128 << 20),
                            },
                        },
                        liveness_probe: Some(Probe {
                            handler: ProbeHandler::HttpGet {
                                path: "/healthz".into(),
                                port: PortRef::Number(80),
                                scheme: HttpScheme::Http,
                                http_headers: vec![HttpHeader {
                                    name: "Custom-Header".into(),
                                    value: "Awesome".into(),
                                }],
                            },
                            initial_delay_seconds: 3,
                            period_seconds: 3,
                            timeout_seconds: 1,
                            failure_threshold: 3,
                            success_threshold: 1,
                        }),
                        readiness_probe: Some(Probe {
                            handler: ProbeHandler::TcpSocket {
                                port: PortRef::Number(80),
                            },
                            initial_delay_seconds: 15,
                            period_seconds: 20,
                            timeout_seconds: 1,
                            failure_threshold: 3,
                            success_threshold: 1,
                        }),
                    }],
                    node_selector: BTreeMap::new(),
                    restart_policy: "Always".into(),
                    termination_grace_period_seconds: 30,
                    volumes: vec![],
                },
            },
        },
    };
    assert_eq!(parsed.deployments, vec![expected]);
}

#[test]
fn env_and_args() {
    let parsed = parse_fixture("env-args.yaml");
    let [d] = parsed.deployments.as_slice() else {
        panic!("{parsed:?}")
    };
    assert_eq!(d.metadata.namespace, "demo");
    assert_eq!(
        d.metadata.annotations,
        labels(&[("description", "Prints a greeting, then sleeps")])
    );
    let c = &d.spec.template.spec.containers[0];
    // Untagged: Kubernetes pulls it every time.
    assert_eq!(c.image_pull_policy, PullPolicy::Always);
    assert_eq!(c.command, strings(&["/usr/local/bin/bash", "-c"]));
    assert_eq!(
        c.args,
        strings(&["echo \"$(GREETING) $(HONORIFIC) $(NAME)\" && sleep 3600"])
    );
    let env: Vec<(&str, &str)> = c
        .env
        .iter()
        .map(|v| (v.name.as_str(), v.value.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("GREETING", "Warm greetings to"),
            ("HONORIFIC", "The Most Honorable"),
            ("NAME", "Kubernetes"),
            ("EMPTY", ""),
        ]
    );
    assert_eq!(c.working_dir.as_deref(), Some("/tmp"));
    let probe = c.liveness_probe.as_ref().map(|p| &p.handler);
    assert_eq!(
        probe,
        Some(&ProbeHandler::Exec {
            command: strings(&["cat", "/tmp/healthy"])
        })
    );
}

#[test]
fn rolling_update_with_percentages() {
    let parsed = parse_fixture("rolling-update.yaml");
    let [d] = parsed.deployments.as_slice() else {
        panic!("{parsed:?}")
    };
    assert_eq!(
        d.spec.strategy,
        Strategy::RollingUpdate {
            max_surge: IntOrPercent::Percent(30),
            max_unavailable: IntOrPercent::Percent(10),
        }
    );
    assert_eq!(
        (
            d.spec.replicas,
            d.spec.min_ready_seconds,
            d.spec.revision_history_limit,
            d.spec.progress_deadline_seconds
        ),
        (10, 5, 3, 120)
    );
    let pod = &d.spec.template.spec;
    assert_eq!(pod.node_selector, labels(&[("disktype", "ssd")]));
    assert_eq!(pod.termination_grace_period_seconds, 60);
    let c = &pod.containers[0];
    assert_eq!(c.image_pull_policy, PullPolicy::Always);
    assert_eq!(c.ports[0].name.as_deref(), Some("http"));
    assert_eq!(
        c.readiness_probe,
        Some(Probe {
            handler: ProbeHandler::HttpGet {
                path: "/".into(),
                port: PortRef::Name("http".into()),
                scheme: HttpScheme::Http,
                http_headers: vec![],
            },
            initial_delay_seconds: 0,
            period_seconds: 10,
            timeout_seconds: 2,
            failure_threshold: 5,
            success_threshold: 2,
        })
    );
}

#[test]
fn multi_document_file() {
    let parsed = parse_fixture("multi.yaml");
    let names: Vec<&str> = parsed
        .deployments
        .iter()
        .map(|d| d.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["redis-leader", "redis-follower"]);
    assert_eq!(parsed.deployments[0].spec.replicas, 1);
    assert_eq!(parsed.deployments[1].spec.strategy, Strategy::Recreate);
}

#[test]
fn document_indices_count_empty_documents() {
    // Documents: [0] leader (ended by `...`), [1] comment only, [2] follower, [3] empty.
    let (name, text) = fixture("multi.yaml");
    let broken = text.replace("replicas: 2", "replicas: -2");
    let errors = parse_with(&name, &broken, &ParseOptions::default()).unwrap_err();
    assert_eq!(
        errors,
        ["multi.yaml[2]: spec.replicas: must be greater than or equal to 0"]
    );
}

#[test]
fn flow_style_json_document() {
    let parsed = parse_fixture("flow.json");
    let [d] = parsed.deployments.as_slice() else {
        panic!("{parsed:?}")
    };
    assert_eq!(
        d.spec.strategy,
        Strategy::RollingUpdate {
            max_surge: IntOrPercent::Int(1),
            max_unavailable: IntOrPercent::Int(0),
        }
    );
    let c = &d.spec.template.spec.containers[0];
    // Quantities written as JSON numbers.
    assert_eq!(
        c.resources.limits,
        ResourceList {
            cpu_millis: Some(500),
            memory_bytes: Some(128 << 20),
        }
    );
    assert_eq!(c.args, strings(&["netexec", "--http-port=8080"]));
}

#[test]
fn kubectl_get_output_with_server_set_fields() {
    let parsed = parse_fixture("kubectl-get.yaml");
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let [d] = parsed.deployments.as_slice() else {
        panic!("{parsed:?}")
    };
    assert_eq!(d.metadata.name, "nginx-deployment");
    assert_eq!(d.spec.replicas, 3);
    assert_eq!(
        d.metadata
            .annotations
            .get("deployment.kubernetes.io/revision"),
        Some(&"1".to_string())
    );
    let c = &d.spec.template.spec.containers[0];
    assert_eq!(c.image_pull_policy, PullPolicy::IfNotPresent);
    assert_eq!(c.resources, Resources::default());
}

#[test]
fn kubernetes_defaults_are_accepted_only_as_defaults() {
    let (name, text) = fixture("kubectl-get.yaml");
    let changed = text.replace("dnsPolicy: ClusterFirst", "dnsPolicy: Default");
    assert_eq!(
        parse_with(&name, &changed, &ParseOptions::default()).unwrap_err(),
        [
            "kubectl-get.yaml[0]: spec.template.spec: field \"dnsPolicy\" is not supported by \
             drover (only its Kubernetes default \"ClusterFirst\" is accepted)"
        ]
    );
}

#[test]
fn yaml_niceties_are_fine() {
    // No final newline, comments everywhere, quoted keys, a merge key.
    let text = "\
# leading comment
apiVersion: apps/v1 # trailing comment
kind: \"Deployment\"
metadata: {name: web, labels: &labels {app: web}}
spec:
  selector: {matchLabels: *labels}
  template:
    metadata:
      labels:
        <<: *labels
        tier: front
    spec:
      containers: [{name: web, image: 'nginx:1.25'}]";
    let parsed = parse_ok("web.yaml", text);
    let [d] = parsed.deployments.as_slice() else {
        panic!("{parsed:?}")
    };
    assert_eq!(
        d.spec.template.metadata.labels,
        labels(&[("app", "web"), ("tier", "front")])
    );
}

#[test]
fn null_supported_fields_count_as_absent() {
    let text = web_with(
        "replicas: 2",
        "replicas: null\n  strategy: ~\n  minReadySeconds:",
    );
    let parsed = parse_ok("web.yaml", &text);
    let spec = &parsed.deployments[0].spec;
    assert_eq!(spec.replicas, 1);
    assert_eq!(
        spec.strategy,
        Strategy::RollingUpdate {
            max_surge: IntOrPercent::Percent(25),
            max_unavailable: IntOrPercent::Percent(25),
        }
    );
}

#[test]
fn every_supported_field_is_read() {
    let text = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: prod
  labels: {app: api}
  annotations: {drover.io/owner: team-a}
spec:
  replicas: 4
  selector: {matchLabels: {app: api}}
  minReadySeconds: 7
  revisionHistoryLimit: 2
  progressDeadlineSeconds: 90
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 2, maxUnavailable: 50%}}
  template:
    metadata:
      labels: {app: api, track: stable}
      annotations: {prometheus.io/scrape: 'true'}
    spec:
      nodeSelector: {zone: a}
      restartPolicy: Always
      terminationGracePeriodSeconds: 5
      containers:
      - name: api
        image: registry.example.com:5000/team/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
        imagePullPolicy: Never
        command: [/api]
        args: [--port, '8443']
        env: [{name: MODE, value: prod}]
        workingDir: /srv
        ports:
        - {name: https, containerPort: 8443, hostPort: 443, protocol: TCP}
        - {name: metrics, containerPort: 9090, protocol: UDP}
        resources:
          requests: {cpu: 0.25, memory: 1G}
          limits: {cpu: '2', memory: 2Gi}
        livenessProbe:
          httpGet:
            path: /live
            port: https
            scheme: HTTPS
            httpHeaders: [{name: X-Probe, value: live}]
          initialDelaySeconds: 1
          periodSeconds: 2
          timeoutSeconds: 3
          failureThreshold: 4
          successThreshold: 1
        readinessProbe:
          tcpSocket: {port: 8443}
          successThreshold: 3
";
    let parsed = parse_ok("api.yaml", text);
    let expected = Deployment {
        metadata: ObjectMeta {
            name: "api".into(),
            namespace: "prod".into(),
            labels: labels(&[("app", "api")]),
            annotations: labels(&[("drover.io/owner", "team-a")]),
        },
        spec: DeploymentSpec {
            replicas: 4,
            selector: LabelSelector {
                match_labels: labels(&[("app", "api")]),
            },
            min_ready_seconds: 7,
            revision_history_limit: 2,
            progress_deadline_seconds: 90,
            strategy: Strategy::RollingUpdate {
                max_surge: IntOrPercent::Int(2),
                max_unavailable: IntOrPercent::Percent(50),
            },
            template: PodTemplate {
                metadata: TemplateMeta {
                    labels: labels(&[("app", "api"), ("track", "stable")]),
                    annotations: labels(&[("prometheus.io/scrape", "true")]),
                },
                spec: PodSpec {
                    containers: vec![Container {
                        name: "api".into(),
                        image: "registry.example.com:5000/team/api@sha256:\
                                0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                            .into(),
                        image_pull_policy: PullPolicy::Never,
                        command: strings(&["/api"]),
                        args: strings(&["--port", "8443"]),
                        env: vec![EnvVar {
                            name: "MODE".into(),
                            value: "prod".into(),
                            value_from: None,
                        }],
                        env_from: vec![],
                        volume_mounts: vec![],
                        working_dir: Some("/srv".into()),
                        ports: vec![
                            ContainerPort {
                                name: Some("https".into()),
                                container_port: 8443,
                                host_port: Some(443),
                                protocol: Protocol::Tcp,
                            },
                            ContainerPort {
                                name: Some("metrics".into()),
                                container_port: 9090,
                                host_port: None,
                                protocol: Protocol::Udp,
                            },
                        ],
                        resources: Resources {
                            requests: ResourceList {
                                cpu_millis: Some(250),
                                memory_bytes: Some(1_000_000_000),
                            },
                            limits: ResourceList {
                                cpu_millis: Some(2000),
                                memory_bytes: Some(2 << 30),
                            },
                        },
                        liveness_probe: Some(Probe {
                            handler: ProbeHandler::HttpGet {
                                path: "/live".into(),
                                port: PortRef::Name("https".into()),
                                scheme: HttpScheme::Https,
                                http_headers: vec![HttpHeader {
                                    name: "X-Probe".into(),
                                    value: "live".into(),
                                }],
                            },
                            initial_delay_seconds: 1,
                            period_seconds: 2,
                            timeout_seconds: 3,
                            failure_threshold: 4,
                            success_threshold: 1,
                        }),
                        readiness_probe: Some(Probe {
                            handler: ProbeHandler::TcpSocket {
                                port: PortRef::Number(8443),
                            },
                            initial_delay_seconds: 0,
                            period_seconds: 10,
                            timeout_seconds: 1,
                            failure_threshold: 3,
                            success_threshold: 3,
                        }),
                    }],
                    node_selector: labels(&[("zone", "a")]),
                    restart_policy: "Always".into(),
                    termination_grace_period_seconds: 5,
                    volumes: vec![],
                },
            },
        },
    };
    assert_eq!(parsed.deployments, vec![expected]);
}

// ----- render and round trip -----------------------------------------------

#[test]
fn render_has_the_kubernetes_shape() {
    let parsed = parse_fixture("nginx.yaml");
    let rendered = render_kubernetes(&parsed.deployments[0]);
    assert_eq!(rendered["apiVersion"], "apps/v1");
    assert_eq!(rendered["kind"], "Deployment");
    assert_eq!(rendered["metadata"]["namespace"], "default");
    assert_eq!(rendered["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        rendered["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        "25%"
    );
    let container = &rendered["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["resources"]["requests"]["cpu"], "250m");
    assert_eq!(container["resources"]["limits"]["memory"], "128Mi");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], 80);
    assert_eq!(container["readinessProbe"]["tcpSocket"]["port"], 80);
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(container["ports"][0]["protocol"], "TCP");
}

#[test]
fn parse_of_render_is_identity() {
    for name in [
        "nginx.yaml",
        "env-args.yaml",
        "rolling-update.yaml",
        "multi.yaml",
        "flow.json",
        "kubectl-get.yaml",
    ] {
        for d in parse_fixture(name).deployments {
            let rendered = render_kubernetes(&d);
            let as_yaml = serde_norway::to_string(&rendered).unwrap_or_default();
            let as_json = rendered.to_string();
            for text in [as_yaml, as_json] {
                let again = parse_ok("rendered.yaml", &text);
                assert_eq!(again.deployments, vec![d.clone()], "{name}:\n{text}");
            }
        }
    }
}

// ----- kinds and versions --------------------------------------------------

#[test]
fn service_beside_a_deployment_parses_both() {
    let (name, text) = fixture("with-service.yaml");
    let parsed =
        parse_with(&name, &text, &ParseOptions::default()).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!((parsed.services.len(), parsed.deployments.len()), (1, 1));
}

#[test]
fn another_kind_beside_a_deployment_is_refused_naming_the_document() {
    let (name, text) = fixture("with-ingress.yaml");
    let errors = parse_with(&name, &text, &ParseOptions::default()).unwrap_err();
    assert_eq!(
        errors,
        [
            "with-ingress.yaml[0]: kind: Ingress \"web\" is not supported: drover applies \
             apps/v1 Deployment, v1 Service, v1 ConfigMap and v1 Secret (use \
             --skip-unsupported-kinds to skip other kinds)"
        ]
    );
}

#[test]
fn skip_unsupported_kinds_warns_once_per_document() {
    let (name, text) = fixture("with-ingress.yaml");
    let opts = ParseOptions {
        skip_unsupported_kinds: true,
        ..ParseOptions::default()
    };
    let parsed = parse_with(&name, &text, &opts).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(parsed.deployments.len(), 1);
    assert_eq!(parsed.deployments[0].metadata.name, "web");
    assert_eq!(
        parsed.warnings,
        [
            "with-ingress.yaml[0]: skipped Ingress \"web\" (drover applies apps/v1 Deployment, v1 \
          Service, v1 ConfigMap and v1 Secret)"
        ]
    );
}

#[test]
fn wrong_api_version() {
    for version in ["extensions/v1beta1", "apps/v1beta2"] {
        let text = web_with("apps/v1", version);
        assert_eq!(
            error_of(&text),
            format!(
                "web.yaml[0]: apiVersion: \"{version}\" is not supported for Deployment: use \
                 apiVersion: apps/v1"
            )
        );
    }
}

#[test]
fn missing_kind_and_api_version() {
    let text = WEB
        .replace("apiVersion: apps/v1\n", "")
        .replace("kind: Deployment\n", "");
    assert_eq!(error_of(&text), "web.yaml[0]: kind: missing required field");
    let text = WEB.replace("apiVersion: apps/v1\n", "");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: apiVersion: missing required field"
    );
}

#[test]
fn a_document_that_is_not_an_object() {
    assert_eq!(
        error_of("- just\n- a list\n"),
        "web.yaml[0]: expected a Kubernetes object (a mapping with apiVersion and kind), found a list"
    );
}

// ----- malformed and hostile YAML -----------------------------------------

#[test]
fn malformed_yaml_names_file_document_and_line() {
    let text = format!("{WEB}---\nkind: Deployment\nspec: [1, 2\n");
    // Lines count from the top of the file.
    assert_eq!(
        error_of(&text),
        "web.yaml[1]: invalid YAML: did not find expected ',' or ']' at line 26 column 1, while \
         parsing a flow sequence at line 25 column 7"
    );
}

#[test]
fn tabs_for_indentation_are_malformed() {
    let error = error_of("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n\tname: web\n");
    assert!(error.starts_with("web.yaml[0]: invalid YAML: "), "{error}");
}

#[test]
fn custom_tags_are_refused() {
    let text = web_with("replicas: 2", "replicas: !replicas 2");
    let error = error_of(&text);
    assert!(error.starts_with("web.yaml[0]: invalid YAML: "), "{error}");
    assert!(
        error.contains("YAML tag !replicas is not supported"),
        "{error}"
    );
}

#[test]
fn files_over_the_request_limit_are_refused() {
    let padding = format!("# {}\n", "x".repeat(77));
    let text = format!("{WEB}{}", padding.repeat(5 * 1024 * 1024 / padding.len()));
    assert!(text.len() > 5 * 1024 * 1024 - 100);
    let error = error_of(&text);
    assert_eq!(
        error,
        format!(
            "web.yaml: file is {} bytes, more than the {}-byte limit for one apply",
            text.len(),
            drover_proto::MAX_REQUEST_BYTES
        )
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let too_deep = "invalid YAML: recursion limit exceeded";
    for text in [
        "[".repeat(1_000),
        format!("{}x", "- ".repeat(50_000)),
        (0..2_000)
            .map(|depth| format!("{}k:\n", " ".repeat(depth)))
            .collect(),
    ] {
        let error = error_of(&text);
        assert!(
            error.starts_with(&format!("web.yaml[0]: {too_deep}")),
            "{error}"
        );
    }
}

#[test]
fn long_flow_nesting_is_refused_before_it_gets_slow() {
    // libyaml's scanner is quadratic in flow nesting: 100k levels would take hours.
    let expected = "web.yaml: a document has too many '[' and '{' for its length to be parsed \
                    safely; write large documents in block style (indentation) rather than flow \
                    style";
    for text in ["[".repeat(200_000), "{a: ".repeat(100_000)] {
        let started = std::time::Instant::now();
        assert_eq!(error_of(&text), expected);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
    // Many small flow collections in many documents are fine.
    let flow = r#"{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}"#;
    let many = vec![flow; 3_000].join("\n---\n");
    let errors = errors_of(&many);
    assert_eq!(errors.len(), drover_manifest::MAX_ERRORS + 1);
}

#[test]
fn errors_stop_at_the_cap() {
    let many = vec!["kind: Ingress"; 5_000].join("\n---\n");
    let errors = errors_of(&many);
    assert_eq!(errors.len(), drover_manifest::MAX_ERRORS + 1);
    assert_eq!(
        errors.last().map(String::as_str),
        Some("web.yaml[1000]: stopped after 1000 errors")
    );
}

#[test]
fn alias_bomb_is_an_error() {
    let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for level in 1..=9 {
        let previous = format!("*a{}", level - 1);
        let refs = [previous.as_str(); 9].join(", ");
        text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    let started = std::time::Instant::now();
    let error = error_of(&text);
    assert!(error.starts_with("web.yaml[0]: invalid YAML: "), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn wide_alias_fan_out_is_an_error() {
    // One big anchor referenced many times: linear in the file, quadratic once expanded.
    let anchor: Vec<String> = (0..20_000).map(|i| format!("k{i}: v")).collect();
    let text = format!(
        "base: &b {{{}}}\nrefs: [{}]\n",
        anchor.join(", "),
        vec!["*b"; 20_000].join(", ")
    );
    let error = error_of(&text);
    assert!(
        error.contains("too many YAML nodes") || error.contains("more text than it holds"),
        "{error}"
    );
}

/// Issue 12 item 7: a large anchored scalar referenced many times stays
/// under the node budget; the decoded size in bytes is bounded too.
#[test]
fn a_large_scalar_repeated_by_aliases_is_an_error() {
    let text = format!(
        "big: &b {}\nrefs: [{}]\n",
        "x".repeat(512 * 1024),
        vec!["*b"; 64].join(", ")
    );
    let started = std::time::Instant::now();
    let error = error_of(&text);
    assert!(error.contains("more text than it holds"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn random_input_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x0d20_7e12);
    let seeds: Vec<String> = [
        "nginx.yaml",
        "env-args.yaml",
        "rolling-update.yaml",
        "multi.yaml",
        "flow.json",
        "kubectl-get.yaml",
        "with-service.yaml",
        "with-ingress.yaml",
    ]
    .iter()
    .map(|name| fixture(name).1)
    .collect();
    const ALPHABET: &[u8] = b" \n\t:-[]{},&*!|>'\"#%@`?.0123456789aZ~<";
    for round in 0..1500 {
        let mut bytes = seeds[round % seeds.len()].clone().into_bytes();
        for _ in 0..rng.gen_range(1..8) {
            let at = rng.gen_range(0..=bytes.len());
            match rng.gen_range(0..4) {
                0 => bytes.insert(at, ALPHABET[rng.gen_range(0..ALPHABET.len())]),
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                2 => {
                    let len = rng.gen_range(0..40).min(bytes.len() - at);
                    let chunk: Vec<u8> = bytes[at..at + len].to_vec();
                    let to = rng.gen_range(0..=bytes.len());
                    bytes.splice(to..to, chunk);
                }
                _ => bytes.truncate(at),
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        for opts in [
            ParseOptions::default(),
            ParseOptions {
                lenient: true,
                skip_unsupported_kinds: true,
                max_replicas: 3,
                namespace: Some("fuzz".into()),
                enforce_namespace: true,
            },
        ] {
            if let Err(errors) = parse_files(&[("fuzz.yaml".to_string(), text.clone())], &opts) {
                for error in errors.0 {
                    assert_eq!(error.file, "fuzz.yaml");
                    assert!(!error.message.contains("drover bug"), "{error}\n{text}");
                }
            }
        }
    }
    for _ in 0..300 {
        let len = rng.gen_range(0..400);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let _ = parse_files(
            &[("noise.yaml".to_string(), text)],
            &ParseOptions::default(),
        );
    }
}

// ----- strict decoding -----------------------------------------------------

#[test]
fn duplicate_keys_are_refused() {
    let text = web_container_with("image: nginx:1.26");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.containers[0]: duplicate key \"image\""
    );
}

#[test]
fn duplicate_keys_are_refused_even_in_ignored_fields() {
    let text = format!("{WEB}status:\n  replicas: 1\n  replicas: 2\n");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: status: duplicate key \"replicas\""
    );
}

#[test]
fn unknown_field_is_refused() {
    let text = web_container_with("imagePullPolicey: Always");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.containers[0]: unknown field \"imagePullPolicey\" \
         (did you mean \"imagePullPolicy\"?)"
    );
    let text = format!("{WEB}foo: bar\n");
    assert_eq!(error_of(&text), "web.yaml[0]: unknown field \"foo\"");
}

#[test]
fn lenient_turns_unknown_fields_into_warnings() {
    let text = format!("{WEB}foo: bar\n").replace("  replicas: 2", "  replicas: 2\n  paused: true");
    let opts = ParseOptions {
        lenient: true,
        ..ParseOptions::default()
    };
    let parsed = parse_with("web.yaml", &text, &opts).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(parsed.deployments.len(), 1);
    assert_eq!(
        parsed.warnings,
        [
            "web.yaml[0]: spec: field \"paused\" is not supported by drover",
            "web.yaml[0]: unknown field \"foo\"",
        ],
        "warnings come in document order"
    );
}

#[test]
fn lenient_drops_a_probe_whose_only_handler_is_unsupported() {
    let text = web_container_with("readinessProbe: {grpc: {port: 80}, periodSeconds: 5}");
    let opts = ParseOptions {
        lenient: true,
        ..ParseOptions::default()
    };
    let parsed = parse_with("web.yaml", &text, &opts).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        parsed.warnings,
        [
            "web.yaml[0]: spec.template.spec.containers[0].readinessProbe: field \"grpc\" is not \
             supported by drover",
            "web.yaml[0]: spec.template.spec.containers[0].readinessProbe: probe ignored: drover \
             has no grpc probes",
        ]
    );
    let [d] = parsed.deployments.as_slice() else {
        panic!("{parsed:?}")
    };
    assert_eq!(d.spec.template.spec.containers[0].readiness_probe, None);
    assert_eq!(
        errors_of(&text),
        [
            "web.yaml[0]: spec.template.spec.containers[0].readinessProbe: field \"grpc\" is not \
             supported by drover"
        ]
    );
}

#[test]
fn unsupported_field_is_refused_even_when_null() {
    let text = format!("{WEB}      initContainers: null\n");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec: field \"initContainers\" is not supported by drover"
    );
    let text = format!("{WEB}      whatever: ~\n");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec: unknown field \"whatever\""
    );
}

#[test]
fn missing_image() {
    let text = web_with("        image: nginx:1.25\n", "");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.containers[0].image: missing required field"
    );
}

#[test]
fn null_required_fields() {
    let text = web_with("        image: nginx:1.25", "        image: ~");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.containers[0].image: missing required field"
    );
    let text = web_with(
        "  selector:\n    matchLabels:\n      app: web\n",
        "  selector: null\n",
    );
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.selector: missing required field"
    );
    let text = web_with("metadata:\n  name: web\n", "metadata:\n  name:\n");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: metadata.name: missing required field"
    );
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n";
    assert_eq!(
        errors_of(text),
        [
            "web.yaml[0]: spec.selector: missing required field",
            "web.yaml[0]: spec.template: missing required field",
        ]
    );
    let text = WEB.replace("      containers:", "      containers: null\n      old:");
    assert_eq!(
        errors_of(&text)[0],
        "web.yaml[0]: spec.template.spec: unknown field \"old\""
    );
    assert_eq!(
        errors_of(&text)[1],
        "web.yaml[0]: spec.template.spec.containers: missing required field"
    );
}

#[test]
fn two_containers_are_refused() {
    let text = format!("{WEB}      - name: sidecar\n        image: busybox:1.36\n");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.containers: drover runs one container per replica; \
         multi-container replicas are not supported yet"
    );
}

#[test]
fn wrong_types_are_refused_not_coerced() {
    let text = web_with("replicas: 2", "replicas: \"2\"");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.replicas: expected an integer, found a string (remove the quotes)"
    );
    let text = web_with("      app: web\n  template", "      app: 1.0\n  template");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.selector.matchLabels[app]: expected a string, found a number (quote it)"
    );
    let text = web_with("containerPort: 80", "containerPort: 80.5");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.containers[0].ports[0].containerPort: expected an \
         integer, found a fractional number"
    );
}

#[test]
fn all_errors_of_a_document_are_reported_in_order() {
    let text = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: Web
  namespace: Prod
spec:
  replicas: -1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        resources: {limits: {memory: 12XB, cpu: lots}}
        volumeDevices: []
";
    assert_eq!(
        errors_of(text),
        [
            "web.yaml[0]: metadata.name: invalid name \"Web\": a lowercase RFC 1123 subdomain \
             must consist of lower case alphanumeric characters, '-' or '.', and must start \
             and end with an alphanumeric character (e.g. 'example.com')",
            "web.yaml[0]: metadata.namespace: invalid namespace \"Prod\": a lowercase RFC 1123 \
             label must consist of lower case alphanumeric characters or '-', and must start \
             and end with an alphanumeric character (e.g. 'my-name' or '123-abc')",
            "web.yaml[0]: spec.replicas: must be greater than or equal to 0",
            "web.yaml[0]: spec.template.spec.containers[0].resources.limits.memory: invalid \
             quantity \"12XB\"",
            "web.yaml[0]: spec.template.spec.containers[0].resources.limits.cpu: invalid \
             quantity \"lots\"",
            "web.yaml[0]: spec.template.spec.containers[0]: field \"volumeDevices\" is not \
             supported by drover",
        ]
    );
}

#[test]
fn one_bad_document_fails_the_whole_call() {
    let bad = web_with("name: web\nspec", "name: api\nspec").replace("nginx:1.25", "'nginx:'");
    let text = format!(
        "{WEB}---\n{bad}---\n{}",
        WEB.replace("name: web\nspec", "name: db\nspec")
    );
    assert_eq!(
        errors_of(&text),
        [
            "web.yaml[1]: spec.template.spec.containers[0].image: invalid image reference \
             \"nginx:\": invalid tag \"\": a tag is 1 to 128 letters, digits, '_', '.' or '-', \
             not starting with '.' or '-'"
        ]
    );
}

#[test]
fn the_same_deployment_twice_is_refused() {
    let files = [
        ("a.yaml".to_string(), WEB.to_string()),
        ("b.yaml".to_string(), format!("---\n{WEB}")),
    ];
    let errors = parse_files(&files, &ParseOptions::default()).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "b.yaml[0]: metadata.name: Deployment \"default/web\" is already defined in a.yaml[0]"
    );
    // Another namespace is another Deployment.
    let other = WEB.replace("name: web\nspec", "name: web\n  namespace: staging\nspec");
    let files = [
        ("a.yaml".to_string(), WEB.to_string()),
        ("b.yaml".to_string(), other),
    ];
    assert!(parse_files(&files, &ParseOptions::default()).is_ok());
}

#[test]
fn dash_n_fills_in_a_missing_namespace_and_refuses_a_different_one() {
    let with_ns = |ns: &str| ParseOptions {
        namespace: Some(ns.to_string()),
        enforce_namespace: true,
        ..ParseOptions::default()
    };
    // No metadata.namespace: -n decides, as kubectl does.
    let parsed = parse_with("web.yaml", WEB, &with_ns("foo")).expect("applies into foo");
    assert_eq!(parsed.deployments[0].metadata.namespace, "foo");
    // The same namespace given twice is fine.
    let same = WEB.replace("name: web\nspec", "name: web\n  namespace: foo\nspec");
    let parsed = parse_with("web.yaml", &same, &with_ns("foo")).expect("same namespace");
    assert_eq!(parsed.deployments[0].metadata.namespace, "foo");
    // An explicit, different namespace is refused naming both.
    assert_eq!(
        errors_with(&same, &with_ns("bar")),
        [
            "web.yaml[0]: metadata.namespace: the namespace from the provided object \"foo\" \
          does not match the namespace \"bar\" given with -n; drop -n or pass -n foo"
        ]
    );
    // Without -n an unnamed namespace is still "default".
    assert_eq!(
        parse_ok("web.yaml", WEB).deployments[0].metadata.namespace,
        "default"
    );
    // A context's namespace is only a default: a manifest may name another.
    let context = ParseOptions {
        namespace: Some("team".into()),
        ..ParseOptions::default()
    };
    let parsed = parse_with("web.yaml", WEB, &context).expect("no namespace");
    assert_eq!(parsed.deployments[0].metadata.namespace, "team");
    let parsed = parse_with("web.yaml", &same, &context).expect("its own namespace");
    assert_eq!(parsed.deployments[0].metadata.namespace, "foo");
}

// ----- Kubernetes validation ---------------------------------------------

#[test]
fn invalid_names() {
    let long = "a".repeat(64);
    let cases = [
        (
            web_with("name: web\nspec", &format!("name: {long}\nspec")),
            format!(
                "web.yaml[0]: metadata.name: invalid name \"{long}\": must be no more than 63 \
                 characters (drover derives replica names from it)"
            ),
        ),
        (
            web_with("- name: web", "- name: web.1"),
            "web.yaml[0]: spec.template.spec.containers[0].name: invalid container name \
             \"web.1\": a lowercase RFC 1123 label must consist of lower case alphanumeric \
             characters or '-', and must start and end with an alphanumeric character (e.g. \
             'my-name' or '123-abc')"
                .to_string(),
        ),
        (
            web_container_with("env: [{name: 1BAD, value: x}]"),
            "web.yaml[0]: spec.template.spec.containers[0].env[0].name: invalid environment \
             variable name \"1BAD\": a valid environment variable name must consist of \
             alphabetic characters, digits, '_', '-' or '.', and must not start with a digit \
             (e.g. 'my.env-name' or 'MY_ENV.NAME')"
                .to_string(),
        ),
        (
            web_with(
                "- containerPort: 80",
                "- containerPort: 80\n          name: HTTP",
            ),
            "web.yaml[0]: spec.template.spec.containers[0].ports[0].name: invalid port name \
             \"HTTP\": must contain only lower case alphanumeric characters or '-' (e.g. 'http')"
                .to_string(),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error_of(&text), expected);
    }
}

#[test]
fn invalid_labels() {
    let text = web_with(
        "        app: web\n    spec",
        "        app: web\n        bad key: x\n        tier: -front\n    spec",
    );
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0]
            .starts_with("web.yaml[0]: spec.template.metadata.labels: invalid key \"bad key\": "),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with(
            "web.yaml[0]: spec.template.metadata.labels[tier]: invalid value \"-front\": "
        ),
        "{errors:?}"
    );
}

#[test]
fn negative_replicas() {
    let text = web_with("replicas: 2", "replicas: -3");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.replicas: must be greater than or equal to 0"
    );
}

#[test]
fn replicas_above_the_cap() {
    let text = web_with("replicas: 2", "replicas: 6");
    let opts = ParseOptions {
        max_replicas: 5,
        ..ParseOptions::default()
    };
    assert_eq!(
        errors_with(&text, &opts),
        ["web.yaml[0]: spec.replicas: must be less than or equal to 5, the cluster's replica cap"]
    );
    let text = web_with("replicas: 2", "replicas: 99999999999999999999");
    assert!(error_of(&text).starts_with("web.yaml[0]: spec.replicas: "));
}

#[test]
fn invalid_quantity() {
    let text = web_with("memory: 128Mi", "memory: 12XB");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.containers[0].resources.limits.memory: invalid quantity \"12XB\""
    );
    let text = web_with("memory: 128Mi", "memory: -1Gi");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.containers[0].resources.limits.memory: invalid quantity \"-1Gi\": must not be negative"
    );
    let text = web_with("memory: 128Mi", "nvidia.com/gpu: 1");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.containers[0].resources.limits: resource \
         \"nvidia.com/gpu\" is not supported by drover (only cpu and memory)"
    );
}

#[test]
fn requests_above_limits() {
    let text = web_with(
        "        resources:\n",
        "        resources:\n          requests: {memory: 256Mi}\n",
    );
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.containers[0].resources.requests.memory: must be less \
         than or equal to the memory limit (128Mi)"
    );
}

#[test]
fn selector_not_matching_template_labels() {
    let text = web_with("        app: web\n    spec", "        app: api\n    spec");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.selector: selector does not match template labels \
         (spec.template.metadata.labels lacks app=web)"
    );
    let text = web_with(
        "    matchLabels:\n      app: web\n",
        "    matchLabels: {}\n",
    );
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.selector.matchLabels: must not be empty: a Deployment finds its \
         replicas by these labels"
    );
}

#[test]
fn bad_image_references() {
    for (image, reason) in [
        ("Nginx:1.25", "repository name must be lowercase"),
        ("nginx@sha256:1234", "invalid digest \"sha256:1234\": expected sha256: and 64 lower-case hex digits"),
        ("nginx:-1", "invalid tag \"-1\": a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"),
        ("registry:port/app", "invalid registry host \"registry:port\""),
    ] {
        let text = web_with("image: nginx:1.25", &format!("image: \"{image}\""));
        assert_eq!(
            error_of(&text),
            format!(
                "web.yaml[0]: spec.template.spec.containers[0].image: invalid image reference \
                 \"{image}\": {reason}"
            )
        );
    }
}

#[test]
fn ports_out_of_range_and_duplicated() {
    let text = web_with("- containerPort: 80", "- containerPort: 70000");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.containers[0].ports[0].containerPort: must be between \
         1 and 65535, inclusive (got 70000)"
    );
    let text = web_with(
        "- containerPort: 80",
        "- {containerPort: 80, name: web}\n        - {containerPort: 80, protocol: UDP, name: web}\n        - containerPort: 80",
    );
    assert_eq!(
        errors_of(&text),
        [
            "web.yaml[0]: spec.template.spec.containers[0].ports[1].name: duplicate port name \
             \"web\" (also ports[0])",
            "web.yaml[0]: spec.template.spec.containers[0].ports[2].containerPort: duplicate \
             port 80/TCP (also ports[0])",
        ]
    );
}

#[test]
fn probe_thresholds_zero() {
    let text = web_container_with(
        "livenessProbe:\n  tcpSocket: {port: 80}\n  periodSeconds: 0\n  failureThreshold: 0",
    );
    assert_eq!(
        errors_of(&text),
        [
            "web.yaml[0]: spec.template.spec.containers[0].livenessProbe.periodSeconds: must be \
             greater than or equal to 1",
            "web.yaml[0]: spec.template.spec.containers[0].livenessProbe.failureThreshold: must \
             be greater than or equal to 1",
        ]
    );
    let text = web_container_with("livenessProbe:\n  exec: {command: [ls]}\n  successThreshold: 2");
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.containers[0].livenessProbe.successThreshold: must be 1 \
         for a liveness probe"
    );
}

#[test]
fn probe_handlers() {
    let none = web_container_with("readinessProbe: {periodSeconds: 5}");
    assert_eq!(
        error_of(&none),
        "web.yaml[0]: spec.template.spec.containers[0].readinessProbe: must specify one of \
         exec, httpGet or tcpSocket"
    );
    let two = web_container_with("readinessProbe: {tcpSocket: {port: 80}, exec: {command: [ls]}}");
    assert_eq!(
        error_of(&two),
        "web.yaml[0]: spec.template.spec.containers[0].readinessProbe: may specify only one of \
         exec, httpGet or tcpSocket"
    );
    let host = web_container_with("readinessProbe: {httpGet: {port: 80, host: example.com}}");
    assert_eq!(
        error_of(&host),
        "web.yaml[0]: spec.template.spec.containers[0].readinessProbe.httpGet: field \"host\" \
         is not supported by drover"
    );
    let unnamed = web_container_with("readinessProbe: {httpGet: {port: metrics}}");
    assert_eq!(
        error_of(&unnamed),
        "web.yaml[0]: spec.template.spec.containers[0].readinessProbe.httpGet.port: no \
         container port is named \"metrics\""
    );
    let quoted = web_container_with("readinessProbe: {tcpSocket: {port: \"80\"}}");
    assert_eq!(
        error_of(&quoted),
        "web.yaml[0]: spec.template.spec.containers[0].readinessProbe.tcpSocket.port: invalid \
         port \"80\": a port number must not be quoted"
    );
}

#[test]
fn strategy_rules() {
    let both_zero = web_with(
        "  replicas: 2",
        "  replicas: 2\n  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 0%}}",
    );
    assert_eq!(
        error_of(&both_zero),
        "web.yaml[0]: spec.strategy.rollingUpdate.maxUnavailable: may not be 0 when maxSurge is \
         0: the rollout could never make progress"
    );
    let recreate = web_with(
        "  replicas: 2",
        "  replicas: 2\n  strategy: {type: Recreate, rollingUpdate: {maxSurge: 1}}",
    );
    assert_eq!(
        error_of(&recreate),
        "web.yaml[0]: spec.strategy.rollingUpdate: may not be specified when strategy type is \
         \"Recreate\""
    );
    let over = web_with(
        "  replicas: 2",
        "  replicas: 2\n  strategy: {rollingUpdate: {maxSurge: 150%, maxUnavailable: 101%}}",
    );
    assert_eq!(
        error_of(&over),
        "web.yaml[0]: spec.strategy.rollingUpdate.maxUnavailable: must not be greater than 100%"
    );
    let unknown = web_with(
        "  replicas: 2",
        "  replicas: 2\n  strategy: {type: BlueGreen}",
    );
    assert_eq!(
        error_of(&unknown),
        "web.yaml[0]: spec.strategy.type: unsupported value \"BlueGreen\": supported values are \
         \"RollingUpdate\", \"Recreate\""
    );
}

#[test]
fn restart_policy_must_be_always() {
    let text = web_with(
        "      containers:",
        "      restartPolicy: OnFailure\n      containers:",
    );
    assert_eq!(
        error_of(&text),
        "web.yaml[0]: spec.template.spec.restartPolicy: unsupported value \"OnFailure\": a \
         Deployment's replicas always restart, so only \"Always\" is supported"
    );
}

#[test]
fn image_pull_policy_defaults_like_kubernetes() {
    let policy = |image: &str| {
        let parsed = parse_ok(
            "web.yaml",
            &web_with("image: nginx:1.25", &format!("image: {image}")),
        );
        parsed.deployments[0].spec.template.spec.containers[0].image_pull_policy
    };
    assert_eq!(policy("nginx"), PullPolicy::Always);
    assert_eq!(policy("nginx:latest"), PullPolicy::Always);
    assert_eq!(policy("localhost:5000/nginx"), PullPolicy::Always);
    assert_eq!(policy("nginx:1.25"), PullPolicy::IfNotPresent);
    assert_eq!(
        policy("nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
        PullPolicy::IfNotPresent
    );
}

// ----- quantities ------------------------------------------------------------

#[test]
fn cpu_quantities() {
    for (text, millis) in [
        ("500m", 500),
        (".5", 500),
        ("0.5", 500),
        ("+0.5", 500),
        ("2", 2000),
        ("2.", 2000),
        ("1e3", 1_000_000),
        ("1E3", 1_000_000),
        ("1e-3", 1),
        ("2k", 2_000_000),
        ("0.1", 100),
        ("0.0001", 1),
        ("1u", 1),
        ("100n", 1),
        ("0", 0),
        ("-0", 0),
        ("250m", 250),
        ("1.5", 1500),
    ] {
        assert_eq!(parse_cpu_millis(text), Ok(millis), "{text}");
    }
    for (text, error) in [
        ("", QuantityError::Syntax),
        (".", QuantityError::Syntax),
        ("1.2.3", QuantityError::Syntax),
        ("one", QuantityError::Syntax),
        ("1 m", QuantityError::Syntax),
        ("1mi", QuantityError::Syntax),
        ("1e", QuantityError::Syntax),
        ("-500m", QuantityError::Negative),
        ("100E", QuantityError::TooLarge),
    ] {
        assert_eq!(parse_cpu_millis(text), Err(error), "{text}");
    }
}

#[test]
fn memory_quantities() {
    for (text, bytes) in [
        ("64Mi", 64 << 20),
        ("1G", 1_000_000_000),
        ("1Gi", 1 << 30),
        ("128974848", 128_974_848),
        ("129e6", 129_000_000),
        ("123Mi", 123 << 20),
        ("100m", 1),
        ("1500m", 2),
        ("1.5Gi", 1_610_612_736),
        ("0.1Ki", 103),
        ("1Ei", 1 << 60),
        ("7Ei", 7 << 60),
    ] {
        assert_eq!(parse_memory_bytes(text), Ok(bytes), "{text}");
    }
    assert_eq!(parse_memory_bytes("12XB"), Err(QuantityError::Syntax));
    assert_eq!(parse_memory_bytes("8Ei"), Err(QuantityError::TooLarge));
    assert_eq!(
        parse_memory_bytes(&format!("1{}", "0".repeat(40))),
        Err(QuantityError::TooLarge)
    );
    assert_eq!(
        parse_memory_bytes(&format!("0.{}1", "0".repeat(60))),
        Ok(1),
        "tiny amounts round up to one byte"
    );
}

#[test]
fn quantity_formatting() {
    assert_eq!(format_cpu_millis(250), "250m");
    assert_eq!(format_cpu_millis(2000), "2");
    assert_eq!(format_cpu_millis(0), "0");
    assert_eq!(format_cpu_millis(1500), "1500m");
    assert_eq!(format_memory_bytes(64 << 20), "64Mi");
    assert_eq!(format_memory_bytes(1 << 30), "1Gi");
    assert_eq!(format_memory_bytes(1_000_000_000), "1G");
    assert_eq!(format_memory_bytes(1536), "1536");
    assert_eq!(format_memory_bytes(0), "0");
    assert_eq!(format_memory_bytes(1), "1");
    for bytes in [1, 999, 1024, 1000, 123_456_789, 5 << 40, u64::MAX >> 1] {
        assert_eq!(parse_memory_bytes(&format_memory_bytes(bytes)), Ok(bytes));
    }
    for millis in [1, 250, 1000, 123_456] {
        assert_eq!(parse_cpu_millis(&format_cpu_millis(millis)), Ok(millis));
    }
}

// ----- kind: List (kubectl's multi-object output) ------------------------------

const LIST_OF_TWO: &str = r#"apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web}
  spec:
    selector: {matchLabels: {app: web}}
    template:
      metadata: {labels: {app: web}}
      spec:
        containers: [{name: web, image: "busybox:1"}]
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: api, namespace: prod}
  spec:
    replicas: 2
    selector: {matchLabels: {app: api}}
    template:
      metadata: {labels: {app: api}}
      spec:
        containers: [{name: api, image: "busybox:1"}]
"#;

#[test]
fn a_list_applies_each_of_its_items() {
    let parsed = parse_ok("backup.yaml", LIST_OF_TWO);
    let names: Vec<(String, String, u32)> = parsed
        .deployments
        .iter()
        .map(|d| {
            (
                d.metadata.namespace.clone(),
                d.metadata.name.clone(),
                d.spec.replicas,
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("default".to_string(), "web".to_string(), 1),
            ("prod".to_string(), "api".to_string(), 2)
        ]
    );
    assert!(
        parse_ok("empty.yaml", "apiVersion: v1\nkind: List\nitems: []\n")
            .deployments
            .is_empty()
    );
}

#[test]
fn errors_inside_a_list_name_the_item() {
    let bad = LIST_OF_TWO.replace("replicas: 2", "replicas: [2]");
    assert_eq!(
        error_of(&bad),
        "web.yaml[0]: items[1].spec.replicas: expected an integer, found a list"
    );
    let twice = LIST_OF_TWO.replace("name: api, namespace: prod", "name: web");
    assert!(
        error_of(&twice).starts_with(
            "web.yaml[0]: items[1].metadata.name: Deployment \"default/web\" is already defined"
        ),
        "{}",
        error_of(&twice)
    );
    assert_eq!(
        error_of("apiVersion: v2\nkind: List\nitems: []\n"),
        "web.yaml[0]: apiVersion: a List must have apiVersion: v1"
    );
    assert_eq!(
        error_of("apiVersion: v1\nkind: List\nitems: {a: 1}\n"),
        "web.yaml[0]: items: expected a list of objects, found an object"
    );
    assert!(
        error_of("apiVersion: v1\nkind: List\nextra: 1\nitems: []\n")
            .starts_with("web.yaml[0]: extra: unknown field in a List")
    );
}
