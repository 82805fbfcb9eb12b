//! `droverctl explain deployment.spec.strategy`: the fields of a path of a
//! Deployment, read from the same [`Schema`]s the strict decoder uses, so
//! what explain calls supported is exactly what the parser accepts.

use super::schema::{self, Schema};

/// One level of a Deployment as explain shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// `spec.strategy` (empty for the object itself).
    pub path: String,
    /// The Kubernetes type at the path (`Deployment`, `Strategy`, `Container`...).
    pub kind: String,
    /// Supported fields, each with whether it is an object explain can go into.
    pub fields: Vec<(String, bool)>,
    /// Fields the server sets, which apply ignores.
    pub server_set: Vec<String>,
    /// Kubernetes fields accepted only at their default, with that default.
    pub defaulted: Vec<(String, String)>,
    /// Kubernetes fields drover does not support.
    pub unsupported: Vec<String>,
}

/// A level of the Deployment: a name for the walk, and its schema.
type Level = (&'static str, &'static Schema);

const ROOT: Level = ("Deployment", &schema::DOCUMENT);

/// The level under a field of `parent`, if the field is an object (or a list of objects).
fn child(parent: Level, field: &str) -> Option<Level> {
    let level: Level = match (parent.0, field) {
        ("Deployment", "metadata") => ("ObjectMeta", &schema::OBJECT_META),
        ("Deployment", "spec") => ("DeploymentSpec", &schema::DEPLOYMENT_SPEC),
        ("DeploymentSpec", "selector") => ("LabelSelector", &schema::LABEL_SELECTOR),
        ("DeploymentSpec", "strategy") => ("Strategy", &schema::STRATEGY),
        ("DeploymentSpec", "template") => ("PodTemplate", &schema::POD_TEMPLATE),
        ("Strategy", "rollingUpdate") => ("RollingUpdate", &schema::ROLLING_UPDATE),
        ("PodTemplate", "metadata") => ("TemplateMeta", &schema::TEMPLATE_META),
        ("PodTemplate", "spec") => ("PodSpec", &schema::POD_SPEC),
        ("PodSpec", "containers") => ("Container", &schema::CONTAINER),
        ("Container", "env") => ("EnvVar", &schema::ENV_VAR),
        ("Container", "envFrom") => ("EnvFromSource", &schema::ENV_FROM_SOURCE),
        ("Container", "volumeMounts") => ("VolumeMount", &schema::VOLUME_MOUNT),
        ("EnvVar", "valueFrom") => ("EnvVarSource", &schema::ENV_VAR_SOURCE),
        ("EnvVarSource", "configMapKeyRef") => ("ConfigMapKeySelector", &schema::KEY_SELECTOR),
        ("EnvVarSource", "secretKeyRef") => ("SecretKeySelector", &schema::KEY_SELECTOR),
        ("EnvVarSource", "fieldRef") => ("ObjectFieldSelector", &schema::OBJECT_FIELD_SELECTOR),
        ("EnvFromSource", "configMapRef") => ("ConfigMapEnvSource", &schema::ENV_SOURCE_REF),
        ("EnvFromSource", "secretRef") => ("SecretEnvSource", &schema::ENV_SOURCE_REF),
        ("PodSpec", "volumes") => ("Volume", &schema::VOLUME),
        ("Volume", "emptyDir") => ("EmptyDirVolumeSource", &schema::EMPTY_DIR),
        ("Volume", "hostPath") => ("HostPathVolumeSource", &schema::HOST_PATH),
        ("Volume", "configMap") => ("ConfigMapVolumeSource", &schema::CONFIG_MAP_VOLUME),
        ("Volume", "secret") => ("SecretVolumeSource", &schema::SECRET_VOLUME),
        ("ConfigMapVolumeSource" | "SecretVolumeSource", "items") => {
            ("KeyToPath", &schema::KEY_TO_PATH)
        }
        ("Container", "ports") => ("ContainerPort", &schema::CONTAINER_PORT),
        ("Container", "resources") => ("Resources", &schema::RESOURCES),
        ("Container", "livenessProbe" | "readinessProbe") => ("Probe", &schema::PROBE),
        ("Probe", "exec") => ("ExecAction", &schema::EXEC_ACTION),
        ("Probe", "httpGet") => ("HTTPGetAction", &schema::HTTP_GET),
        ("Probe", "tcpSocket") => ("TCPSocketAction", &schema::TCP_SOCKET),
        ("HTTPGetAction", "httpHeaders") => ("HTTPHeader", &schema::HTTP_HEADER),
        _ => return None,
    };
    Some(level)
}

/// The fields at `path` (`""`, `spec`, `spec.template.spec.containers`...)
/// of a Deployment, or one sentence saying which part of the path is wrong.
pub fn explain(path: &str) -> Result<Explained, String> {
    let mut level = ROOT;
    let mut walked: Vec<&str> = Vec::new();
    for field in path.split('.').filter(|f| !f.is_empty()) {
        let schema = level.1;
        if !schema.supported.contains(&field) {
            let at = if walked.is_empty() {
                "a Deployment".to_string()
            } else {
                walked.join(".")
            };
            let why = if schema.unsupported.contains(&field) {
                "is a Kubernetes field drover does not support"
            } else if schema.server_set.contains(&field) {
                "is set by the server"
            } else {
                "does not exist"
            };
            return Err(format!("field {field:?} of {at} {why}"));
        }
        level = child(level, field).ok_or_else(|| {
            let mut full = walked.clone();
            full.push(field);
            format!("field {} has no fields of its own", full.join("."))
        })?;
        walked.push(field);
    }
    let schema = level.1;
    let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Ok(Explained {
        path: walked.join("."),
        kind: level.0.to_string(),
        fields: schema
            .supported
            .iter()
            .map(|f| (f.to_string(), child(level, f).is_some()))
            .collect(),
        server_set: strings(schema.server_set),
        defaulted: schema
            .defaulted
            .iter()
            .map(|(f, d)| (f.to_string(), d.describe()))
            .collect(),
        unsupported: strings(schema.unsupported),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_walks_the_parsers_schema() {
        let top = explain("").unwrap();
        assert_eq!(
            top.fields,
            [
                ("apiVersion".to_string(), false),
                ("kind".to_string(), false),
                ("metadata".to_string(), true),
                ("spec".to_string(), true)
            ]
        );
        let strategy = explain("spec.strategy").unwrap();
        assert_eq!(strategy.path, "spec.strategy");
        assert!(strategy
            .fields
            .contains(&("rollingUpdate".to_string(), true)));
        let c = explain("spec.template.spec.containers").unwrap();
        assert!(c.fields.iter().any(|(f, _)| f == "image"));
        assert!(explain("spec.template.spec.containers.readinessProbe.httpGet").is_ok());
    }

    #[test]
    fn wrong_paths_name_the_wrong_part() {
        assert_eq!(
            explain("spec.nope").unwrap_err(),
            "field \"nope\" of spec does not exist"
        );
        assert_eq!(
            explain("spec.selector.matchExpressions").unwrap_err(),
            "field \"matchExpressions\" of spec.selector is a Kubernetes field drover does not support"
        );
        assert_eq!(
            explain("spec.replicas.x").unwrap_err(),
            "field spec.replicas has no fields of its own"
        );
    }
}
