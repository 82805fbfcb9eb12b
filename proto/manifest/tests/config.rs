//! ConfigMaps, Secrets, volumes and env from them, from a user's side: every
//! field parses to what it says and renders back to the same object, and
//! every bad input is refused naming the file, document and path — with a
//! Secret's values never in a message.

use std::path::Path;

use drover_manifest::{
    parse_files, render_config_map, render_kubernetes, render_secret, Bytes, EnvFromRef,
    EnvFromSource, EnvVarSource, FieldPathRef, HostPathType, KeyRef, KeyToPath, ManifestError,
    ObjectRef, ParseOptions, Parsed, ProjectedObject, StorageMedium, Volume, VolumeMount,
    VolumeSource,
};

fn parse(name: &str, text: &str) -> Result<Parsed, Vec<String>> {
    parse_files(
        &[(name.to_string(), text.to_string())],
        &ParseOptions::default(),
    )
    .map_err(|errors| errors.0.iter().map(ManifestError::to_string).collect())
}

fn parse_ok(text: &str) -> Parsed {
    parse("app.yaml", text).unwrap_or_else(|e| panic!("should parse, got:\n{}", e.join("\n")))
}

/// The one error `text` has.
fn error_of(text: &str) -> String {
    match parse("app.yaml", text) {
        Ok(parsed) => panic!("expected an error, parsed {parsed:?}"),
        Err(errors) if errors.len() == 1 => errors.into_iter().next().unwrap_or_default(),
        Err(errors) => panic!("expected one error, got:\n{}", errors.join("\n")),
    }
}

fn fixture() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/config-app.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A Deployment with `container` lines added to its container and `pod`
/// lines to its pod spec (each already indented).
fn deployment(container: &str, pod: &str) -> String {
    format!(
        "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
spec:
  selector:
    matchLabels: {{app: app}}
  template:
    metadata:
      labels: {{app: app}}
    spec:
      containers:
      - name: app
        image: drover/busybox:1
{container}{pod}"
    )
}

const CONTAINER: &str = "spec.template.spec.containers[0]";

#[test]
fn every_configuration_field_parses_to_what_it_says() {
    let parsed = parse_ok(&fixture());
    let [cm] = &parsed.config_maps[..] else {
        panic!("one ConfigMap: {parsed:?}")
    };
    assert_eq!(cm.metadata.name, "app-config");
    assert_eq!(cm.metadata.namespace, "default");
    assert_eq!(cm.data["greeting"], "hello");
    assert_eq!(cm.data["app.properties"], "color=blue\nsize=3\n");
    assert_eq!(cm.binary_data["logo.bin"], Bytes(vec![0, 1, 2, 255]));
    assert!(!cm.immutable);

    let [secret] = &parsed.secrets[..] else {
        panic!("one Secret: {parsed:?}")
    };
    assert_eq!(secret.kind, "kubernetes.io/basic-auth");
    assert!(secret.immutable);
    assert_eq!(secret.data["password"], Bytes(b"s3cr3t".to_vec()));
    // stringData wins over data, as the Kubernetes API server merges them.
    assert_eq!(secret.data["username"], Bytes(b"root".to_vec()));

    let [d] = &parsed.deployments[..] else {
        panic!("one Deployment: {parsed:?}")
    };
    let c = &d.spec.template.spec.containers[0];
    let sources: Vec<(&str, &EnvVarSource)> = c
        .env
        .iter()
        .map(|e| (e.name.as_str(), e.value_from.as_ref().expect("valueFrom")))
        .collect();
    let key = |name: &str, key: &str, optional| KeyRef {
        name: name.into(),
        key: key.into(),
        optional,
    };
    let field = |field_path| EnvVarSource::FieldRef { field_path };
    assert_eq!(
        sources,
        [
            (
                "GREETING",
                &EnvVarSource::ConfigMapKeyRef(key("app-config", "greeting", false))
            ),
            (
                "DB_PASSWORD",
                &EnvVarSource::SecretKeyRef(key("db", "password", false))
            ),
            (
                "FEATURE",
                &EnvVarSource::ConfigMapKeyRef(key("flags", "feature", true))
            ),
            ("POD_NAME", &field(FieldPathRef::MetadataName)),
            ("POD_NAMESPACE", &field(FieldPathRef::MetadataNamespace)),
            ("NODE_NAME", &field(FieldPathRef::SpecNodeName)),
            ("POD_IP", &field(FieldPathRef::StatusPodIp)),
        ]
    );
    assert_eq!(
        c.env_from,
        [
            EnvFromSource {
                prefix: String::new(),
                source: EnvFromRef::ConfigMapRef(ObjectRef {
                    name: "app-config".into(),
                    optional: false
                }),
            },
            EnvFromSource {
                prefix: "DB_".into(),
                source: EnvFromRef::SecretRef(ObjectRef {
                    name: "db".into(),
                    optional: true
                }),
            },
        ]
    );
    let mount = |name: &str, path: &str, read_only, sub_path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only,
        sub_path: sub_path.into(),
    };
    assert_eq!(
        c.volume_mounts,
        [
            mount("config", "/etc/shop", true, ""),
            mount("creds", "/run/secrets/db", false, ""),
            mount("scratch", "/data", false, ""),
            mount("cache", "/cache", false, ""),
            mount("host", "/var/lib/shop", false, "shop-data"),
        ]
    );
    let volume = |name: &str, source| Volume {
        name: name.into(),
        source,
    };
    assert_eq!(
        d.spec.template.spec.volumes,
        [
            volume(
                "config",
                VolumeSource::ConfigMap(ProjectedObject {
                    name: "app-config".into(),
                    items: vec![KeyToPath {
                        key: "app.properties".into(),
                        path: "conf/app.properties".into(),
                        mode: Some(0o600),
                    }],
                    default_mode: 0o644,
                    optional: false,
                })
            ),
            volume(
                "creds",
                VolumeSource::Secret(ProjectedObject {
                    name: "db".into(),
                    items: vec![],
                    default_mode: 0o400,
                    optional: true,
                })
            ),
            volume(
                "scratch",
                VolumeSource::EmptyDir {
                    medium: StorageMedium::Disk,
                    size_limit_bytes: None
                }
            ),
            volume(
                "cache",
                VolumeSource::EmptyDir {
                    medium: StorageMedium::Memory,
                    size_limit_bytes: Some(64 * 1024 * 1024)
                }
            ),
            volume(
                "host",
                VolumeSource::HostPath {
                    path: "/srv/shop".into(),
                    kind: HostPathType::DirectoryOrCreate
                }
            ),
        ]
    );
}

#[test]
fn rendered_objects_parse_back_to_themselves() {
    let parsed = parse_ok(&fixture());
    let mut docs = Vec::new();
    for c in &parsed.config_maps {
        docs.push(render_config_map(c));
    }
    for s in &parsed.secrets {
        docs.push(render_secret(s, false));
    }
    for d in &parsed.deployments {
        docs.push(render_kubernetes(d));
    }
    let text = docs
        .iter()
        .map(|d| serde_norway::to_string(d).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n");
    let again = parse_ok(&text);
    assert_eq!(again.config_maps, parsed.config_maps, "{text}");
    assert_eq!(again.secrets, parsed.secrets, "{text}");
    assert_eq!(again.deployments, parsed.deployments, "{text}");
    // The stored model (JSON) round-trips too, base64 included.
    for s in &parsed.secrets {
        let json = serde_json::to_string(s).expect("json");
        assert_eq!(
            &serde_json::from_str::<drover_manifest::Secret>(&json).expect("back"),
            s
        );
    }
}

#[test]
fn a_secret_shows_its_values_only_base64_and_masks_them_for_diff() {
    let parsed = parse_ok(&fixture());
    let secret = &parsed.secrets[0];
    let debug = format!("{secret:?}");
    assert!(
        !debug.contains("s3cr3t") && !debug.contains("czNjcjN0"),
        "{debug}"
    );
    assert!(
        debug.contains("password") && debug.contains("6 bytes"),
        "{debug}"
    );
    let shown = render_secret(secret, false);
    assert_eq!(shown["data"]["password"], "czNjcjN0");
    let masked = serde_json::to_string(&render_secret(secret, true)).expect("json");
    assert!(
        !masked.contains("czNjcjN0") && !masked.contains("s3cr3t"),
        "{masked}"
    );
    assert!(masked.contains("\"password\":\"***\""), "{masked}");
}

#[test]
fn configuration_objects_sit_beside_deployments_of_the_same_name() {
    let text = "\
apiVersion: v1
kind: ConfigMap
metadata: {name: app}
data: {a: b}
---
apiVersion: v1
kind: Secret
metadata: {name: app, namespace: prod}
stringData: {a: b}
";
    let parsed = parse_ok(&format!("{text}---\n{}", deployment("", "")));
    assert_eq!(parsed.config_maps.len(), 1);
    assert_eq!(parsed.secrets[0].metadata.namespace, "prod");
    assert_eq!(parsed.secrets[0].kind, "Opaque", "the default type");
    assert_eq!(parsed.deployments.len(), 1);
}

#[test]
fn a_bad_secret_fails_the_whole_file() {
    let text = format!(
        "{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\ndata: {{password: \"not base64!\"}}\n",
        deployment("", "")
    );
    let errors = parse("app.yaml", &text).expect_err("refused");
    assert_eq!(
        errors,
        [
            "app.yaml[1]: data[password]: the value is not valid base64 (standard alphabet, \
          padded); use stringData for plain text instead of data"
        ]
    );
    assert!(
        !errors[0].contains("not base64!"),
        "the value is never echoed"
    );
}

#[test]
fn bad_configuration_objects_are_refused_naming_the_path() {
    let cm = |body: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n{body}");
    let secret =
        |body: &str| format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\n{body}");
    let cases: Vec<(String, &str)> = vec![
        (
            cm("data: {\"../etc\": x}\n"),
            "app.yaml[0]: data: invalid key \"../etc\": must consist of alphanumeric characters, \
             '-', '_' or '.' (it becomes a file name)",
        ),
        (
            cm("data: {..hidden: x}\n"),
            "app.yaml[0]: data: invalid key \"..hidden\": must not be '.' or '..' or start with '..'",
        ),
        (
            cm("data: {port: 8080}\n"),
            "app.yaml[0]: data[port]: expected a string, found a number (quote it)",
        ),
        (
            cm("data: {a: x}\nbinaryData: {a: eA==}\n"),
            "app.yaml[0]: binaryData[a]: duplicate key \"a\": it is also in data",
        ),
        (
            cm("binaryData: {a: \"%%%\"}\n"),
            "app.yaml[0]: binaryData[a]: the value is not valid base64 (standard alphabet, \
             padded); use stringData for plain text instead of binaryData",
        ),
        (
            cm("immutable: yes please\n"),
            "app.yaml[0]: immutable: expected true or false, found a string",
        ),
        (
            cm("dataa: {}\n"),
            "app.yaml[0]: unknown field \"dataa\" (did you mean \"data\"?)",
        ),
        (
            "apiVersion: apps/v1\nkind: ConfigMap\nmetadata: {name: c}\n".to_string(),
            "app.yaml[0]: apiVersion: \"apps/v1\" is not supported for ConfigMap: use apiVersion: v1",
        ),
        (
            "kind: Secret\nmetadata: {name: s}\n".to_string(),
            "app.yaml[0]: apiVersion: missing required field",
        ),
        (
            secret("type: \"\"\n"),
            "app.yaml[0]: type: must be 1 to 253 characters",
        ),
        (
            secret("stringData: {\"a b\": x}\n"),
            "app.yaml[0]: stringData: invalid key \"a b\": must consist of alphanumeric \
             characters, '-', '_' or '.' (it becomes a file name)",
        ),
        (
            format!("{}---\n{}", cm("data: {a: x}\n"), cm("data: {a: y}\n")),
            "app.yaml[1]: metadata.name: ConfigMap \"default/c\" is already defined in app.yaml[0]",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error_of(&text), expected, "{text}");
    }
}

#[test]
fn objects_over_one_mebibyte_are_refused() {
    let big = "x".repeat(1024 * 1024);
    let text =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{big: {big}}}\n");
    assert_eq!(
        error_of(&text),
        "app.yaml[0]: the ConfigMap's keys and values take 1048579 bytes, more than the \
         1048576-byte limit of one object"
    );
    let text = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nstringData: {{big: {big}}}\n"
    );
    assert!(error_of(&text).contains("the Secret's keys and values take 1048579 bytes"));
    // Just under the limit is fine.
    let fits = "x".repeat(1024 * 1024 - 3);
    let text =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{big: {fits}}}\n");
    assert_eq!(
        parse_ok(&text).config_maps[0].data["big"].len(),
        1024 * 1024 - 3
    );
}

#[test]
fn bad_volumes_and_mounts_are_refused_naming_the_path() {
    let pod = "      volumes:\n";
    let cases: Vec<(String, String)> = vec![
        (
            deployment("        volumeMounts: [{name: data, mountPath: /data}]\n", ""),
            format!("app.yaml[0]: {CONTAINER}.volumeMounts[0].name: no volume named \"data\" in spec.template.spec.volumes"),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, emptyDir: {{}}}}\n      - {{name: a, emptyDir: {{}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[1].name: duplicate volume name \"a\" (also volumes[0])".into(),
        ),
        (
            deployment("        volumeMounts: [{name: a, mountPath: data}]\n", &format!("{pod}      - {{name: a, emptyDir: {{}}}}\n")),
            format!("app.yaml[0]: {CONTAINER}.volumeMounts[0].mountPath: invalid mount path \"data\": must be absolute"),
        ),
        (
            deployment(
                "        volumeMounts: [{name: a, mountPath: /data}, {name: b, mountPath: /data/}]\n",
                &format!("{pod}      - {{name: a, emptyDir: {{}}}}\n      - {{name: b, emptyDir: {{}}}}\n"),
            ),
            format!("app.yaml[0]: {CONTAINER}.volumeMounts[1].mountPath: duplicate mount path \"/data/\" (also volumeMounts[0])"),
        ),
        (
            deployment("        volumeMounts: [{name: a, mountPath: /data, subPath: ../etc}]\n", &format!("{pod}      - {{name: a, emptyDir: {{}}}}\n")),
            format!("app.yaml[0]: {CONTAINER}.volumeMounts[0].subPath: invalid subPath \"../etc\": must not contain '..'"),
        ),
        (
            deployment("        volumeMounts: [{name: a, mountPath: /data, subPath: /etc}]\n", &format!("{pod}      - {{name: a, emptyDir: {{}}}}\n")),
            format!("app.yaml[0]: {CONTAINER}.volumeMounts[0].subPath: invalid subPath \"/etc\": must be a relative path"),
        ),
        (
            deployment("        volumeMounts: [{name: a, mountPath: /data, mountPropagation: Bidirectional}]\n", &format!("{pod}      - {{name: a, emptyDir: {{}}}}\n")),
            format!("app.yaml[0]: {CONTAINER}.volumeMounts[0]: field \"mountPropagation\" is not supported by drover"),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, configMap: {{name: c, items: [{{key: \"a/b\", path: x}}]}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].configMap.items[0].key: invalid key \"a/b\": must consist of alphanumeric characters, '-', '_' or '.' (it becomes a file name)".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, configMap: {{name: c, items: [{{key: k, path: ../x}}]}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].configMap.items[0].path: invalid path \"../x\": must not contain '..'".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, secret: {{secretName: s, items: [{{key: k, path: /x}}]}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].secret.items[0].path: invalid path \"/x\": must be a relative path".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, secret: {{secretName: s, items: [{{key: k, path: x}}, {{key: l, path: x}}]}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].secret.items[1].path: duplicate path \"x\" (also items[0])".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, secret: {{secretName: s, defaultMode: 01777}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].secret.defaultMode: invalid mode \"01777\": must be a number between 0 and 0777 (octal) or 511 (decimal)".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, configMap: {{name: c, defaultMode: 512}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].configMap.defaultMode: must be less than or equal to 511".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, configMap: {{items: []}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].configMap.name: missing required field".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0]: must specify one of emptyDir, hostPath, configMap or secret (the volume types drover supports)".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, emptyDir: {{}}, hostPath: {{path: /x}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0]: may specify only one of emptyDir, hostPath, configMap or secret (the volume types drover supports)".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, persistentVolumeClaim: {{claimName: x}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0]: field \"persistentVolumeClaim\" is not supported by drover".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: Data, emptyDir: {{}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].name: invalid volume name \"Data\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name' or '123-abc')".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, emptyDir: {{medium: HugePages}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].emptyDir.medium: unsupported value \"HugePages\": supported values are \"\", \"Memory\"".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, emptyDir: {{sizeLimit: lots}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].emptyDir.sizeLimit: invalid quantity \"lots\"".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, hostPath: {{path: srv/data}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].hostPath.path: invalid path \"srv/data\": must be absolute".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, hostPath: {{path: /srv/../etc}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].hostPath.path: invalid path \"/srv/../etc\": must not contain '..'".into(),
        ),
        (
            deployment("", &format!("{pod}      - {{name: a, hostPath: {{path: /srv, type: Folder}}}}\n")),
            "app.yaml[0]: spec.template.spec.volumes[0].hostPath.type: unsupported value \"Folder\": supported values are \"\", \"DirectoryOrCreate\", \"Directory\", \"FileOrCreate\", \"File\", \"Socket\", \"CharDevice\", \"BlockDevice\"".into(),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error_of(&text), expected, "{text}");
    }
    // A ConfigMap volume's field on a secret volume: both halves said.
    let text = deployment(
        "",
        &format!("{pod}      - {{name: a, secret: {{name: s}}}}\n"),
    );
    assert_eq!(
        parse("app.yaml", &text).expect_err("refused"),
        [
            "app.yaml[0]: spec.template.spec.volumes[0].secret: unknown field \"name\"",
            "app.yaml[0]: spec.template.spec.volumes[0].secret.secretName: missing required field",
        ]
    );
}

#[test]
fn bad_env_sources_are_refused_naming_the_path() {
    let env = |lines: &str| deployment(&format!("        env:\n        - name: X\n{lines}"), "");
    let cases: Vec<(String, String)> = vec![
        (
            env("          value: a\n          valueFrom: {fieldRef: {fieldPath: metadata.name}}\n"),
            format!("app.yaml[0]: {CONTAINER}.env[0].valueFrom: may not be specified when `value` is not empty"),
        ),
        (
            env("          valueFrom: {}\n"),
            format!("app.yaml[0]: {CONTAINER}.env[0].valueFrom: must specify one of configMapKeyRef, secretKeyRef or fieldRef"),
        ),
        (
            env("          valueFrom: {fieldRef: {fieldPath: metadata.name}, secretKeyRef: {name: s, key: k}}\n"),
            format!("app.yaml[0]: {CONTAINER}.env[0].valueFrom: may specify only one of configMapKeyRef, secretKeyRef or fieldRef"),
        ),
        (
            env("          valueFrom: {fieldRef: {fieldPath: metadata.labels}}\n"),
            format!("app.yaml[0]: {CONTAINER}.env[0].valueFrom.fieldRef.fieldPath: unsupported value \"metadata.labels\": supported values are \"metadata.name\", \"metadata.namespace\", \"spec.nodeName\", \"status.podIP\""),
        ),
        (
            env("          valueFrom: {fieldRef: {apiVersion: v2, fieldPath: metadata.name}}\n"),
            format!("app.yaml[0]: {CONTAINER}.env[0].valueFrom.fieldRef: field \"apiVersion\" is not supported by drover (only its Kubernetes default \"v1\" is accepted)"),
        ),
        (
            env("          valueFrom: {resourceFieldRef: {resource: limits.cpu}}\n"),
            format!("app.yaml[0]: {CONTAINER}.env[0].valueFrom: field \"resourceFieldRef\" is not supported by drover"),
        ),
        (
            env("          valueFrom: {secretKeyRef: {name: s}}\n"),
            format!("app.yaml[0]: {CONTAINER}.env[0].valueFrom.secretKeyRef.key: missing required field"),
        ),
        (
            env("          valueFrom: {configMapKeyRef: {name: C, key: k}}\n"),
            format!("app.yaml[0]: {CONTAINER}.env[0].valueFrom.configMapKeyRef.name: invalid name \"C\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"),
        ),
        (
            env("          valueFrom: {configMapKeyRef: {name: c, key: \"a:b\"}}\n"),
            format!("app.yaml[0]: {CONTAINER}.env[0].valueFrom.configMapKeyRef.key: invalid key \"a:b\": must consist of alphanumeric characters, '-', '_' or '.' (it becomes a file name)"),
        ),
        (
            env("          valueFrom: {secretKeyRef: {name: s, key: k, optional: \"true\"}}\n"),
            format!("app.yaml[0]: {CONTAINER}.env[0].valueFrom.secretKeyRef.optional: expected true or false, found a string"),
        ),
        (
            deployment("        envFrom: [{configMapRef: {name: c}, secretRef: {name: s}}]\n", ""),
            format!("app.yaml[0]: {CONTAINER}.envFrom[0]: may specify only one of configMapRef or secretRef"),
        ),
        (
            deployment("        envFrom: [{prefix: X_}]\n", ""),
            format!("app.yaml[0]: {CONTAINER}.envFrom[0]: must specify one of configMapRef or secretRef"),
        ),
        (
            deployment("        envFrom: [{prefix: \"1=\", configMapRef: {name: c}}]\n", ""),
            format!("app.yaml[0]: {CONTAINER}.envFrom[0].prefix: invalid prefix \"1=\": {}", env_name_reason("1=")),
        ),
        (
            deployment("        envFrom: [{secretRef: {}}]\n", ""),
            format!("app.yaml[0]: {CONTAINER}.envFrom[0].secretRef.name: missing required field"),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error_of(&text), expected, "{text}");
    }
}

fn env_name_reason(name: &str) -> String {
    drover_proto::names::env_var_name(name).expect_err("invalid")
}

#[test]
fn file_modes_read_as_kubernetes_reads_them() {
    let volume = |mode: &str| {
        let text = deployment(
            "",
            &format!("      volumes:\n      - {{name: a, secret: {{secretName: s, defaultMode: {mode}}}}}\n"),
        );
        match &parse_ok(&text).deployments[0].spec.template.spec.volumes[0].source {
            VolumeSource::Secret(p) => p.default_mode,
            other => panic!("{other:?}"),
        }
    };
    // YAML 1.1 octal, as go-yaml (and so kubectl) reads `0644`, and decimal.
    assert_eq!(volume("0644"), 0o644);
    assert_eq!(volume("0400"), 0o400);
    assert_eq!(volume("420"), 0o644);
    assert_eq!(volume("0"), 0);
    // Absent: Kubernetes' 0644 for a ConfigMap, owner-only 0400 for a Secret.
    let text = deployment(
        "",
        "      volumes:\n      - {name: a, configMap: {name: c}}\n      - {name: b, secret: {secretName: s}}\n",
    );
    let parsed = parse_ok(&text);
    let volumes = &parsed.deployments[0].spec.template.spec.volumes;
    assert!(matches!(&volumes[0].source, VolumeSource::ConfigMap(p) if p.default_mode == 0o644));
    assert!(matches!(&volumes[1].source, VolumeSource::Secret(p) if p.default_mode == 0o400));
}

#[test]
fn templates_without_configuration_keep_their_stored_shape() {
    // Revisions are hashes of the stored template: a Deployment that uses
    // none of the new fields must serialise exactly as before them.
    let parsed = parse_ok(&deployment("        env: [{name: A, value: b}]\n", ""));
    let json = serde_json::to_string(&parsed.deployments[0].spec.template).expect("json");
    for field in ["volumes", "envFrom", "volumeMounts", "valueFrom"] {
        assert!(!json.contains(field), "{field} in {json}");
    }
}
