//! Field paths as Kubernetes prints them: `spec.template.spec.containers[0].image`,
//! with map entries in brackets (`metadata.labels[app.kubernetes.io/name]`).

use std::fmt;

/// Where in a document a value sits; the empty path is the document itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(String);

impl FieldPath {
    /// The document root.
    pub(crate) fn root() -> FieldPath {
        FieldPath::default()
    }

    /// A field of an object: `spec` → `spec.replicas`.
    pub(crate) fn field(&self, name: &str) -> FieldPath {
        if self.0.is_empty() {
            FieldPath(name.to_string())
        } else {
            FieldPath(format!("{}.{name}", self.0))
        }
    }

    /// An element of a list: `containers` → `containers[0]`.
    pub(crate) fn index(&self, index: usize) -> FieldPath {
        FieldPath(format!("{}[{index}]", self.0))
    }

    /// An entry of a string map: `labels` → `labels[app]`.
    pub(crate) fn key(&self, key: &str) -> FieldPath {
        FieldPath(format!("{}[{key}]", self.0))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_kubernetes() {
        let containers = FieldPath::root().field("spec").field("containers");
        assert_eq!(
            containers.index(0).field("image").to_string(),
            "spec.containers[0].image"
        );
        let labels = FieldPath::root().field("metadata").field("labels");
        assert_eq!(
            labels.key("app.kubernetes.io/name").to_string(),
            "metadata.labels[app.kubernetes.io/name]"
        );
    }
}
