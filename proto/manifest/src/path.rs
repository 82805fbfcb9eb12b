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

    /// A field of an object: `spec` → `spec.replicas`. Every field a
    /// document has gets its path whether or not it is wrong, so this one is
    /// built without the formatting machinery (a tenth of a manifest's parse
    /// went to `format!` here).
    pub(crate) fn field(&self, name: &str) -> FieldPath {
        if self.0.is_empty() {
            return FieldPath(name.to_string());
        }
        let mut path = String::with_capacity(self.0.len() + 1 + name.len());
        path.push_str(&self.0);
        path.push('.');
        path.push_str(name);
        FieldPath(path)
    }

    /// An element of a list: `containers` → `containers[0]`.
    pub(crate) fn index(&self, index: usize) -> FieldPath {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = index;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let mut path = String::with_capacity(self.0.len() + digits.len() - at + 2);
        path.push_str(&self.0);
        path.push('[');
        path.extend(digits[at..].iter().map(|&d| char::from(d)));
        path.push(']');
        FieldPath(path)
    }

    /// An entry of a string map: `labels` → `labels[app]`.
    pub(crate) fn key(&self, key: &str) -> FieldPath {
        let mut path = String::with_capacity(self.0.len() + key.len() + 2);
        path.push_str(&self.0);
        path.push('[');
        path.push_str(key);
        path.push(']');
        FieldPath(path)
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
        assert_eq!(
            containers.index(1234567890).to_string(),
            "spec.containers[1234567890]"
        );
        assert_eq!(
            FieldPath::root().index(usize::MAX).to_string(),
            format!("[{}]", usize::MAX)
        );
        let labels = FieldPath::root().field("metadata").field("labels");
        assert_eq!(
            labels.key("app.kubernetes.io/name").to_string(),
            "metadata.labels[app.kubernetes.io/name]"
        );
    }
}
