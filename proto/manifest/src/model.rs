//! The Deployment model drover stores: the supported subset of Kubernetes
//! `apps/v1` Deployment, with defaults filled in and quantities normalised.
//!
//! It serialises (serde, JSON in the store and on the wire) in Kubernetes'
//! camelCase shape so that `droverctl get -o yaml` reads like kubectl's output.
//! Parsing user YAML does not go through these derives: the strict decoder in
//! `decode.rs` walks the document and reports field paths; these derives are for
//! drover's own, already validated, data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A validated Deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub metadata: ObjectMeta,
    pub spec: DeploymentSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    /// "default" when the manifest does not say.
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    /// Default 1.
    pub replicas: u32,
    pub selector: LabelSelector,
    /// Default 0.
    pub min_ready_seconds: u32,
    /// Default 10.
    pub revision_history_limit: u32,
    /// Default 600.
    pub progress_deadline_seconds: u32,
    pub strategy: Strategy,
    pub template: PodTemplate,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
}

/// `spec.strategy`. Default: RollingUpdate with maxSurge 25% and maxUnavailable 25%.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Strategy {
    #[serde(rename_all = "camelCase")]
    RollingUpdate {
        max_surge: IntOrPercent,
        max_unavailable: IntOrPercent,
    },
    Recreate,
}

/// `3` or `"25%"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrPercent {
    Int(u32),
    #[serde(with = "percent")]
    Percent(u32),
}

mod percent {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{p}%"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let s = String::deserialize(d)?;
        s.strip_suffix('%')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| D::Error::custom(format!("invalid percentage {s:?}")))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    pub metadata: TemplateMeta,
    pub spec: PodSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMeta {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Exactly one for now (multi-container replicas are refused).
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Always "Always" (the only supported value).
    pub restart_policy: String,
    /// Default 30.
    pub termination_grace_period_seconds: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    /// Kubernetes' default: Always for `:latest` or no tag, IfNotPresent otherwise.
    pub image_pull_policy: PullPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    /// Absent `value` means the empty string, as in Kubernetes.
    #[serde(default)]
    pub value: String,
    /// Where the value comes from instead of `value` (never both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    pub protocol: Protocol,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default)]
    pub requests: ResourceList,
    #[serde(default)]
    pub limits: ResourceList,
}

/// CPU in millicores and memory in bytes (milli-byte quantities rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub handler: ProbeHandler,
    /// Default 0.
    pub initial_delay_seconds: u32,
    /// Default 10.
    pub period_seconds: u32,
    /// Default 1.
    pub timeout_seconds: u32,
    /// Default 3.
    pub failure_threshold: u32,
    /// Default 1 (and must be 1 for liveness, as in Kubernetes).
    pub success_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeHandler {
    Exec {
        command: Vec<String>,
    },
    #[serde(rename_all = "camelCase")]
    HttpGet {
        path: String,
        port: PortRef,
        scheme: HttpScheme,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        http_headers: Vec<HttpHeader>,
    },
    TcpSocket {
        port: PortRef,
    },
}

/// A probe port: a number, or the `name` of one of the container's ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpScheme {
    #[default]
    Http,
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

impl PullPolicy {
    /// The Kubernetes spelling: `"Always"`, `"IfNotPresent"`, `"Never"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

impl Protocol {
    /// The Kubernetes spelling: `"TCP"`, `"UDP"`, `"SCTP"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl HttpScheme {
    /// The Kubernetes spelling: `"HTTP"`, `"HTTPS"`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpScheme::Http => "HTTP",
            HttpScheme::Https => "HTTPS",
        }
    }
}

// ----- configuration: env from objects and volumes ----------------------------

/// `env[].valueFrom`: one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EnvVarSource {
    ConfigMapKeyRef(KeyRef),
    SecretKeyRef(KeyRef),
    #[serde(rename_all = "camelCase")]
    FieldRef {
        field_path: FieldPathRef,
    },
}

/// A key of a named ConfigMap or Secret in the replica's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    pub name: String,
    pub key: String,
    /// Missing object or key: the variable is left out instead of the
    /// replica not starting.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// The replica fields `fieldRef` may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldPathRef {
    #[serde(rename = "metadata.name")]
    MetadataName,
    #[serde(rename = "metadata.namespace")]
    MetadataNamespace,
    #[serde(rename = "spec.nodeName")]
    SpecNodeName,
    #[serde(rename = "status.podIP")]
    StatusPodIp,
}

impl FieldPathRef {
    pub const ALL: [FieldPathRef; 4] = [
        FieldPathRef::MetadataName,
        FieldPathRef::MetadataNamespace,
        FieldPathRef::SpecNodeName,
        FieldPathRef::StatusPodIp,
    ];

    /// The Kubernetes spelling, `metadata.name`...
    pub fn as_str(self) -> &'static str {
        match self {
            FieldPathRef::MetadataName => "metadata.name",
            FieldPathRef::MetadataNamespace => "metadata.namespace",
            FieldPathRef::SpecNodeName => "spec.nodeName",
            FieldPathRef::StatusPodIp => "status.podIP",
        }
    }
}

/// `envFrom[]`: every key of an object as a variable, each name prefixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvFromSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    #[serde(flatten)]
    pub source: EnvFromRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EnvFromRef {
    ConfigMapRef(ObjectRef),
    SecretRef(ObjectRef),
}

/// A named ConfigMap or Secret in the replica's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// `spec.template.spec.volumes[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(flatten)]
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeSource {
    #[serde(rename_all = "camelCase")]
    EmptyDir {
        #[serde(default, skip_serializing_if = "StorageMedium::is_default")]
        medium: StorageMedium,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size_limit_bytes: Option<u64>,
    },
    HostPath {
        path: String,
        #[serde(
            default,
            rename = "type",
            skip_serializing_if = "HostPathType::is_default"
        )]
        kind: HostPathType,
    },
    ConfigMap(ProjectedObject),
    Secret(ProjectedObject),
}

/// Where an emptyDir lives: the node's disk, or memory (tmpfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum StorageMedium {
    #[default]
    #[serde(rename = "")]
    Disk,
    Memory,
}

impl StorageMedium {
    fn is_default(&self) -> bool {
        *self == StorageMedium::Disk
    }
}

/// `hostPath.type`: what must be at the path before the replica starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HostPathType {
    /// No check.
    #[default]
    #[serde(rename = "")]
    Unset,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

impl HostPathType {
    pub const ALL: [HostPathType; 8] = [
        HostPathType::Unset,
        HostPathType::DirectoryOrCreate,
        HostPathType::Directory,
        HostPathType::FileOrCreate,
        HostPathType::File,
        HostPathType::Socket,
        HostPathType::CharDevice,
        HostPathType::BlockDevice,
    ];

    fn is_default(&self) -> bool {
        *self == HostPathType::Unset
    }

    /// The Kubernetes spelling (`""` for no check).
    pub fn as_str(self) -> &'static str {
        match self {
            HostPathType::Unset => "",
            HostPathType::DirectoryOrCreate => "DirectoryOrCreate",
            HostPathType::Directory => "Directory",
            HostPathType::FileOrCreate => "FileOrCreate",
            HostPathType::File => "File",
            HostPathType::Socket => "Socket",
            HostPathType::CharDevice => "CharDevice",
            HostPathType::BlockDevice => "BlockDevice",
        }
    }
}

/// A `configMap` or `secret` volume: the object's keys as files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectedObject {
    /// `configMap.name` or `secret.secretName`.
    pub name: String,
    /// Only these keys, at these paths; empty: every key at its own name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    /// Default 0644 for configMap volumes, 0400 for secret volumes (agents
    /// never let a secret file be readable by others, whatever the mode).
    pub default_mode: u32,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyToPath {
    pub key: String,
    /// Relative, without `..`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// A container's `volumeMounts[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_path: String,
}

// ----- ConfigMap and Secret -------------------------------------------------

/// Kubernetes' size limit of one ConfigMap or Secret: its keys and values.
pub const MAX_CONFIG_OBJECT_BYTES: usize = 1024 * 1024;

/// A validated `v1` ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, Bytes>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub immutable: bool,
}

impl ConfigMap {
    /// Every key with its bytes (`data` as UTF-8, then `binaryData`).
    pub fn files(&self) -> BTreeMap<&str, &[u8]> {
        self.data
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .chain(self.binary_data.iter().map(|(k, v)| (k.as_str(), &v.0[..])))
            .collect()
    }
}

/// A validated `v1` Secret: `stringData` is merged into `data` (it wins), as
/// the Kubernetes API server does. Its `Debug` shows key names and sizes only.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub metadata: ObjectMeta,
    /// Default `Opaque`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, Bytes>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub immutable: bool,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: BTreeMap<&str, String> = self
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), format!("{} bytes", v.0.len())))
            .collect();
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type", &self.kind)
            .field("data", &sizes)
            .field("immutable", &self.immutable)
            .finish()
    }
}

/// Bytes that serialise as standard base64, as Kubernetes writes
/// `binaryData` and a Secret's `data`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        use base64::Engine;
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Bytes)
            .map_err(|_| serde::de::Error::custom("a value is not valid base64"))
    }
}

/// One object of a manifest file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Deployment(Box<Deployment>),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Service(Service),
}

impl Object {
    /// `Deployment`, `ConfigMap`, `Secret`, `Service`.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Deployment(_) => "Deployment",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Service(_) => "Service",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Deployment(d) => &d.metadata,
            Object::ConfigMap(c) => &c.metadata,
            Object::Secret(s) => &s.metadata,
            Object::Service(s) => &s.metadata,
        }
    }
}

/// The lowest and highest `nodePort` Kubernetes allocates (its default
/// `--service-node-port-range`).
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// A validated `v1` Service: the subset SPEC.md lists. The cluster IP and
/// node ports the controller allocates are kept beside it in the store, not
/// in here: this is what the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Default `ClusterIP`.
    #[serde(rename = "type")]
    pub kind: ServiceType,
    /// Never empty: a Service without a selector (endpoints managed by hand)
    /// is refused.
    pub selector: BTreeMap<String, String>,
    /// At least one; unique names, unique (port, protocol).
    pub ports: Vec<ServicePort>,
    pub cluster_ip: ClusterIp,
}

/// `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
}

impl ServiceType {
    /// As Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
        }
    }
}

/// `spec.clusterIP`: absent or `""` (allocate one), `None` (headless), or
/// an address the controller must honour or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ClusterIp {
    #[default]
    Allocate,
    Headless,
    Address(std::net::Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Required when the Service has more than one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// TCP or UDP.
    pub protocol: Protocol,
    pub port: u16,
    /// Default: `port`. A name is resolved per replica against its
    /// container's named ports.
    pub target_port: PortRef,
    /// Only for `type: NodePort`; `None`: the controller allocates one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

impl Service {
    /// Whether a pod template's labels select it into this Service.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.spec.selector.is_empty()
            && self
                .spec
                .selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
    }
}
