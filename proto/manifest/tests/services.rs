//! `v1` Services from a user's side: the subset parses to what it says and
//! renders back to an object that re-applies unchanged, kubectl's own dump
//! of a Service applies, and every bad input is refused naming the file,
//! document and path.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use drover_manifest::{
    parse_files, render_service, service_env, ClusterIp, ManifestError, ParseOptions, Parsed,
    PortRef, Protocol, ServiceType,
};

fn parse(text: &str) -> Result<Parsed, Vec<String>> {
    parse_files(
        &[("svc.yaml".to_string(), text.to_string())],
        &ParseOptions::default(),
    )
    .map_err(|errors| errors.0.iter().map(ManifestError::to_string).collect())
}

fn parse_ok(text: &str) -> Parsed {
    parse(text).unwrap_or_else(|e| panic!("should parse, got:\n{}", e.join("\n")))
}

fn error_of(text: &str) -> String {
    match parse(text) {
        Ok(parsed) => panic!("expected an error, parsed {parsed:?}"),
        Err(errors) if errors.len() == 1 => errors.into_iter().next().unwrap_or_default(),
        Err(errors) => panic!("expected one error, got:\n{}", errors.join("\n")),
    }
}

/// A Service named `web` with `spec` lines (indented by two spaces).
fn service(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n{spec}")
}

const PORTS: &str = "  ports:\n  - port: 80\n";
const SELECTOR: &str = "  selector: {app: web}\n";

#[test]
fn a_minimal_service_gets_kubernetes_defaults() {
    let parsed = parse_ok(&service(&format!("{SELECTOR}{PORTS}")));
    let [s] = &parsed.services[..] else {
        panic!("one service expected: {parsed:?}");
    };
    assert_eq!(s.metadata.namespace, "default");
    assert_eq!(s.spec.kind, ServiceType::ClusterIP);
    assert_eq!(s.spec.cluster_ip, ClusterIp::Allocate);
    assert_eq!(
        s.spec.selector,
        BTreeMap::from([("app".to_string(), "web".to_string())])
    );
    let p = &s.spec.ports[0];
    assert_eq!((p.port, p.protocol), (80, Protocol::Tcp));
    assert_eq!(
        p.target_port,
        PortRef::Number(80),
        "targetPort defaults to port"
    );
    assert_eq!(p.node_port, None);
}

#[test]
fn every_supported_field_parses_and_renders_back() {
    let text = service(
        "  type: NodePort
  selector: {app: web, tier: front}
  clusterIP: 10.96.0.10
  sessionAffinity: None
  ports:
  - name: http
    port: 80
    targetPort: web-port
    nodePort: 30080
  - name: dns
    protocol: UDP
    port: 53
    targetPort: 5353
",
    );
    let parsed = parse_ok(&text);
    let s = &parsed.services[0];
    assert_eq!(s.spec.kind, ServiceType::NodePort);
    assert_eq!(
        s.spec.cluster_ip,
        ClusterIp::Address(Ipv4Addr::new(10, 96, 0, 10))
    );
    assert_eq!(
        s.spec.ports[0].target_port,
        PortRef::Name("web-port".into())
    );
    assert_eq!(s.spec.ports[0].node_port, Some(30080));
    assert_eq!(s.spec.ports[1].protocol, Protocol::Udp);
    // Rendered as the API server would show it (the second port got 31000),
    // it parses back to the same Service plus what was allocated.
    let rendered = render_service(s, Some(Ipv4Addr::new(10, 96, 0, 10)), &[30080, 0]);
    let again = parse_ok(&serde_json::to_string(&rendered).expect("json"));
    assert_eq!(&again.services[0], s);
}

#[test]
fn kubectls_dump_of_a_service_applies() {
    let dump = "\
apiVersion: v1
kind: Service
metadata:
  creationTimestamp: \"2024-01-01T00:00:00Z\"
  name: redis
  namespace: default
  resourceVersion: \"1234\"
  uid: 0b6f7f38-7f43-4b4e-8e0b-1f0f1f0f1f0f
spec:
  clusterIP: 10.96.12.7
  clusterIPs:
  - 10.96.12.7
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - port: 6379
    protocol: TCP
    targetPort: 6379
  selector:
    app: redis
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}
";
    let parsed = parse_ok(dump);
    assert_eq!(parsed.services[0].metadata.name, "redis");
}

#[test]
fn headless_services_parse() {
    let parsed = parse_ok(&service(&format!("{SELECTOR}{PORTS}  clusterIP: None\n")));
    assert_eq!(parsed.services[0].spec.cluster_ip, ClusterIp::Headless);
}

#[test]
fn a_file_with_a_deployment_and_its_service_parses_whole() {
    let text = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, image: drover/busybox:1}}]
---
{}",
        service(&format!("{SELECTOR}{PORTS}"))
    );
    let parsed = parse_ok(&text);
    assert_eq!((parsed.deployments.len(), parsed.services.len()), (1, 1));
}

#[test]
fn bad_services_are_refused_naming_the_path() {
    let cases: &[(String, &str)] = &[
        (
            service(PORTS),
            "svc.yaml[0]: spec.selector: missing required field",
        ),
        (
            service(&format!("  selector: {{}}\n{PORTS}")),
            "svc.yaml[0]: spec.selector: must not be empty",
        ),
        (
            service(SELECTOR),
            "svc.yaml[0]: spec.ports: missing required field",
        ),
        (
            service(&format!("{SELECTOR}  ports:\n  - port: 70000\n")),
            "svc.yaml[0]: spec.ports[0].port: must be between 1 and 65535",
        ),
        (
            service(&format!("{SELECTOR}  ports:\n  - port: 0\n")),
            "svc.yaml[0]: spec.ports[0].port: must be between 1 and 65535",
        ),
        (
            service(&format!(
                "{SELECTOR}  ports:\n  - {{name: a, port: 80}}\n  - {{name: a, port: 81}}\n"
            )),
            "svc.yaml[0]: spec.ports[1].name: duplicate port name \"a\"",
        ),
        (
            service(&format!(
                "{SELECTOR}  ports:\n  - {{name: a, port: 80}}\n  - {{port: 81}}\n"
            )),
            "svc.yaml[0]: spec.ports[1].name: required when the Service has more than one port",
        ),
        (
            service(&format!(
                "{SELECTOR}  ports:\n  - {{name: a, port: 80}}\n  - {{name: b, port: 80}}\n"
            )),
            "svc.yaml[0]: spec.ports[1]: duplicate port 80/TCP",
        ),
        (
            service(&format!(
                "  type: NodePort\n{SELECTOR}  ports:\n  - {{port: 80, nodePort: 8080}}\n"
            )),
            "svc.yaml[0]: spec.ports[0].nodePort: must be greater than or equal to 30000",
        ),
        (
            service(&format!(
                "  type: NodePort\n{SELECTOR}  ports:\n  - {{port: 80, nodePort: 40000}}\n"
            )),
            "svc.yaml[0]: spec.ports[0].nodePort: must be less than or equal to 32767",
        ),
        (
            service(&format!(
                "{SELECTOR}  ports:\n  - {{port: 80, nodePort: 30001}}\n"
            )),
            "svc.yaml[0]: spec.ports[0].nodePort: may be set only when spec.type is NodePort",
        ),
        (
            service(&format!("{SELECTOR}{PORTS}  clusterIP: 10.96.0\n")),
            "svc.yaml[0]: spec.clusterIP: invalid clusterIP \"10.96.0\"",
        ),
        (
            service(&format!(
                "  type: NodePort\n{SELECTOR}{PORTS}  clusterIP: None\n"
            )),
            "svc.yaml[0]: spec.clusterIP: a NodePort Service cannot be headless",
        ),
        (
            service(&format!("  type: LoadBalancer\n{SELECTOR}{PORTS}")),
            "svc.yaml[0]: spec.type: unsupported value \"LoadBalancer\"",
        ),
        (
            service(&format!(
                "{SELECTOR}  ports:\n  - {{port: 80, protocol: SCTP}}\n"
            )),
            "svc.yaml[0]: spec.ports[0].protocol: unsupported value \"SCTP\"",
        ),
        (
            service(&format!("{SELECTOR}{PORTS}  externalName: example.com\n")),
            "svc.yaml[0]: spec: field \"externalName\" is not supported by drover",
        ),
        (
            service(&format!("{SELECTOR}{PORTS}  sessionAffinity: ClientIP\n")),
            "svc.yaml[0]: spec.sessionAffinity: unsupported value \"ClientIP\"",
        ),
        (
            format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: 9web\nspec:\n{SELECTOR}{PORTS}"
            ),
            "svc.yaml[0]: metadata.name: invalid Service name \"9web\"",
        ),
    ];
    for (text, expected) in cases {
        let error = error_of(text);
        assert!(
            error.starts_with(expected),
            "for\n{text}\nexpected an error starting with\n  {expected}\ngot\n  {error}"
        );
    }
}

#[test]
fn service_env_follows_kubernetes_naming() {
    let parsed = parse_ok(&service(
        "  selector: {app: web}
  ports:
  - {name: http-alt, port: 8080}
  - {name: metrics, port: 9100}
",
    ));
    let mut s = parsed.services[0].clone();
    s.metadata.name = "my-web".into();
    let env = service_env(&s, Some(Ipv4Addr::new(10, 96, 0, 7)));
    let expected: BTreeMap<String, String> = [
        ("MY_WEB_SERVICE_HOST", "10.96.0.7"),
        ("MY_WEB_SERVICE_PORT", "8080"),
        ("MY_WEB_SERVICE_PORT_HTTP_ALT", "8080"),
        ("MY_WEB_SERVICE_PORT_METRICS", "9100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(env, expected);
    assert!(service_env(&s, None).is_empty(), "headless: no variables");
}
