//! The fields of each Kubernetes object drover reads, as the strict decoder
//! sorts them: the ones drover supports, the ones the server sets (skipped),
//! the ones accepted only at their Kubernetes default, and the real
//! Kubernetes fields drover lacks. Any other key is unknown, and gets a "did
//! you mean" hint when it is close to a supported one.

use super::document::Node;

/// The keys of one kind of object, sorted by how the decoder treats them.
pub(crate) struct Schema {
    /// Handed to the object's decoder (unless null: null counts as absent).
    pub(crate) supported: &'static [&'static str],
    /// Set by the server; skipped.
    pub(crate) server_set: &'static [&'static str],
    /// Kubernetes fields drover lacks, accepted only when they hold exactly
    /// the value Kubernetes defaults them to (as `kubectl get -o yaml` prints).
    pub(crate) defaulted: &'static [(&'static str, KubernetesDefault)],
    /// Kubernetes fields drover lacks.
    pub(crate) unsupported: &'static [&'static str],
}

/// The value Kubernetes gives a field drover lacks.
pub(crate) enum KubernetesDefault {
    Str(&'static str),
    Bool(bool),
    EmptyObject,
}

impl KubernetesDefault {
    pub(crate) fn matches(&self, node: &Node) -> bool {
        match (self, node) {
            (_, Node::Null) => true,
            (KubernetesDefault::Str(expected), Node::Str(s)) => s == expected,
            (KubernetesDefault::Bool(expected), Node::Bool(b)) => b == expected,
            (KubernetesDefault::EmptyObject, Node::Map(entries)) => entries.is_empty(),
            _ => false,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            KubernetesDefault::Str(s) => format!("{s:?}"),
            KubernetesDefault::Bool(b) => b.to_string(),
            KubernetesDefault::EmptyObject => "{}".to_string(),
        }
    }
}

pub(crate) const DOCUMENT: Schema = Schema {
    supported: &["apiVersion", "kind", "metadata", "spec"],
    server_set: &["status"],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const OBJECT_META: Schema = Schema {
    supported: &["name", "namespace", "labels", "annotations"],
    server_set: &[
        "creationTimestamp",
        "uid",
        "resourceVersion",
        "generation",
        "managedFields",
        "selfLink",
    ],
    defaulted: &[],
    unsupported: &[
        "generateName",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "ownerReferences",
        "finalizers",
    ],
};

pub(crate) const DEPLOYMENT_SPEC: Schema = Schema {
    supported: &[
        "replicas",
        "selector",
        "template",
        "strategy",
        "minReadySeconds",
        "revisionHistoryLimit",
        "progressDeadlineSeconds",
    ],
    server_set: &[],
    defaulted: &[],
    unsupported: &["paused"],
};

pub(crate) const LABEL_SELECTOR: Schema = Schema {
    supported: &["matchLabels"],
    server_set: &[],
    defaulted: &[],
    unsupported: &["matchExpressions"],
};

pub(crate) const STRATEGY: Schema = Schema {
    supported: &["type", "rollingUpdate"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const ROLLING_UPDATE: Schema = Schema {
    supported: &["maxSurge", "maxUnavailable"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const POD_TEMPLATE: Schema = Schema {
    supported: &["metadata", "spec"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const TEMPLATE_META: Schema = Schema {
    supported: &["labels", "annotations"],
    server_set: &["creationTimestamp"],
    defaulted: &[],
    unsupported: &[
        "name",
        "namespace",
        "generateName",
        "uid",
        "resourceVersion",
        "generation",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "ownerReferences",
        "finalizers",
        "managedFields",
        "selfLink",
    ],
};

pub(crate) const POD_SPEC: Schema = Schema {
    supported: &[
        "containers",
        "nodeSelector",
        "restartPolicy",
        "terminationGracePeriodSeconds",
        "volumes",
    ],
    server_set: &[],
    defaulted: &[
        ("dnsPolicy", KubernetesDefault::Str("ClusterFirst")),
        ("schedulerName", KubernetesDefault::Str("default-scheduler")),
        ("securityContext", KubernetesDefault::EmptyObject),
    ],
    unsupported: &[
        "initContainers",
        "ephemeralContainers",
        "activeDeadlineSeconds",
        "serviceAccountName",
        "serviceAccount",
        "automountServiceAccountToken",
        "nodeName",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "shareProcessNamespace",
        "imagePullSecrets",
        "hostname",
        "subdomain",
        "affinity",
        "tolerations",
        "hostAliases",
        "priorityClassName",
        "priority",
        "dnsConfig",
        "readinessGates",
        "runtimeClassName",
        "enableServiceLinks",
        "preemptionPolicy",
        "overhead",
        "topologySpreadConstraints",
        "setHostnameAsFQDN",
        "os",
        "hostUsers",
        "schedulingGates",
        "resourceClaims",
        "resources",
    ],
};

pub(crate) const CONTAINER: Schema = Schema {
    supported: &[
        "name",
        "image",
        "imagePullPolicy",
        "command",
        "args",
        "env",
        "envFrom",
        "volumeMounts",
        "workingDir",
        "ports",
        "resources",
        "livenessProbe",
        "readinessProbe",
    ],
    server_set: &[],
    defaulted: &[
        (
            "terminationMessagePath",
            KubernetesDefault::Str("/dev/termination-log"),
        ),
        ("terminationMessagePolicy", KubernetesDefault::Str("File")),
    ],
    unsupported: &[
        "volumeDevices",
        "startupProbe",
        "lifecycle",
        "securityContext",
        "stdin",
        "stdinOnce",
        "tty",
        "resizePolicy",
        "restartPolicy",
    ],
};

pub(crate) const ENV_VAR: Schema = Schema {
    supported: &["name", "value", "valueFrom"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const ENV_VAR_SOURCE: Schema = Schema {
    supported: &["configMapKeyRef", "secretKeyRef", "fieldRef"],
    server_set: &[],
    defaulted: &[],
    unsupported: &["resourceFieldRef", "fileKeyRef"],
};

/// `configMapKeyRef` and `secretKeyRef`.
pub(crate) const KEY_SELECTOR: Schema = Schema {
    supported: &["name", "key", "optional"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const OBJECT_FIELD_SELECTOR: Schema = Schema {
    supported: &["fieldPath"],
    server_set: &[],
    defaulted: &[("apiVersion", KubernetesDefault::Str("v1"))],
    unsupported: &[],
};

pub(crate) const ENV_FROM_SOURCE: Schema = Schema {
    supported: &["prefix", "configMapRef", "secretRef"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

/// `envFrom[].configMapRef` and `secretRef`.
pub(crate) const ENV_SOURCE_REF: Schema = Schema {
    supported: &["name", "optional"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const VOLUME: Schema = Schema {
    supported: &["name", "emptyDir", "hostPath", "configMap", "secret"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[
        "persistentVolumeClaim",
        "projected",
        "downwardAPI",
        "ephemeral",
        "csi",
        "nfs",
        "iscsi",
        "image",
        "gitRepo",
        "awsElasticBlockStore",
        "gcePersistentDisk",
        "azureDisk",
        "azureFile",
        "cephfs",
        "cinder",
        "fc",
        "flexVolume",
        "flocker",
        "glusterfs",
        "photonPersistentDisk",
        "portworxVolume",
        "quobyte",
        "rbd",
        "scaleIO",
        "storageos",
        "vsphereVolume",
    ],
};

pub(crate) const EMPTY_DIR: Schema = Schema {
    supported: &["medium", "sizeLimit"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const HOST_PATH: Schema = Schema {
    supported: &["path", "type"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const CONFIG_MAP_VOLUME: Schema = Schema {
    supported: &["name", "items", "defaultMode", "optional"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const SECRET_VOLUME: Schema = Schema {
    supported: &["secretName", "items", "defaultMode", "optional"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const KEY_TO_PATH: Schema = Schema {
    supported: &["key", "path", "mode"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const VOLUME_MOUNT: Schema = Schema {
    supported: &["name", "mountPath", "readOnly", "subPath"],
    server_set: &[],
    defaulted: &[],
    unsupported: &["mountPropagation", "subPathExpr", "recursiveReadOnly"],
};

pub(crate) const CONFIG_MAP: Schema = Schema {
    supported: &[
        "apiVersion",
        "kind",
        "metadata",
        "data",
        "binaryData",
        "immutable",
    ],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const SECRET: Schema = Schema {
    supported: &[
        "apiVersion",
        "kind",
        "metadata",
        "data",
        "stringData",
        "type",
        "immutable",
    ],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const CONTAINER_PORT: Schema = Schema {
    supported: &["name", "containerPort", "hostPort", "protocol"],
    server_set: &[],
    defaulted: &[],
    unsupported: &["hostIP"],
};

pub(crate) const RESOURCES: Schema = Schema {
    supported: &["requests", "limits"],
    server_set: &[],
    defaulted: &[],
    unsupported: &["claims"],
};

pub(crate) const PROBE: Schema = Schema {
    supported: &[
        "exec",
        "httpGet",
        "tcpSocket",
        "initialDelaySeconds",
        "periodSeconds",
        "timeoutSeconds",
        "failureThreshold",
        "successThreshold",
    ],
    server_set: &[],
    defaulted: &[],
    unsupported: &["grpc", "terminationGracePeriodSeconds"],
};

pub(crate) const EXEC_ACTION: Schema = Schema {
    supported: &["command"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const HTTP_GET: Schema = Schema {
    supported: &["path", "port", "scheme", "httpHeaders"],
    server_set: &[],
    defaulted: &[],
    unsupported: &["host"],
};

pub(crate) const HTTP_HEADER: Schema = Schema {
    supported: &["name", "value"],
    server_set: &[],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const TCP_SOCKET: Schema = Schema {
    supported: &["port"],
    server_set: &[],
    defaulted: &[],
    unsupported: &["host"],
};

/// A supported key close to `key` (a different case, or at most two edits away).
pub(crate) fn suggestion(key: &str, supported: &[&'static str]) -> Option<&'static str> {
    supported
        .iter()
        .copied()
        .find(|known| known.eq_ignore_ascii_case(key))
        .or_else(|| {
            supported
                .iter()
                .copied()
                .map(|known| (edit_distance(key, known), known))
                .filter(|&(distance, known)| distance <= 2 && distance < known.len() / 2)
                .min_by_key(|&(distance, _)| distance)
                .map(|(_, known)| known)
        })
}

/// Levenshtein distance, for short field names only.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            let insert = current[j] + 1;
            let delete = previous[j + 1] + 1;
            current.push(substitute.min(insert).min(delete));
        }
        previous = current;
    }
    previous[b.len()]
}

pub(crate) const SERVICE: Schema = Schema {
    supported: &["apiVersion", "kind", "metadata", "spec"],
    server_set: &["status"],
    defaulted: &[],
    unsupported: &[],
};

pub(crate) const SERVICE_SPEC: Schema = Schema {
    supported: &["type", "selector", "ports", "clusterIP", "sessionAffinity"],
    // What the API server fills in from clusterIP and the cluster's setup.
    server_set: &["clusterIPs", "ipFamilies"],
    defaulted: &[
        ("ipFamilyPolicy", KubernetesDefault::Str("SingleStack")),
        ("internalTrafficPolicy", KubernetesDefault::Str("Cluster")),
        ("externalTrafficPolicy", KubernetesDefault::Str("Cluster")),
        ("publishNotReadyAddresses", KubernetesDefault::Bool(false)),
    ],
    unsupported: &[
        "externalIPs",
        "externalName",
        "loadBalancerIP",
        "loadBalancerSourceRanges",
        "loadBalancerClass",
        "allocateLoadBalancerNodePorts",
        "healthCheckNodePort",
        "sessionAffinityConfig",
        "trafficDistribution",
    ],
};

pub(crate) const SERVICE_PORT: Schema = Schema {
    supported: &["name", "protocol", "port", "targetPort", "nodePort"],
    server_set: &[],
    defaulted: &[],
    unsupported: &["appProtocol"],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_field_names() {
        assert_eq!(
            suggestion("imagePullPolicey", CONTAINER.supported),
            Some("imagePullPolicy")
        );
        assert_eq!(
            suggestion("containerport", CONTAINER_PORT.supported),
            Some("containerPort")
        );
        assert_eq!(suggestion("volumez", CONTAINER.supported), None);
        assert_eq!(suggestion("x", CONTAINER.supported), None);
    }
}
