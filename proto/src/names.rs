//! The name grammars Kubernetes validates against (`k8s.io/apimachinery`'s
//! `validation` package): DNS-1123 labels and subdomains, qualified names for
//! label and annotation keys, label values, IANA service names for ports,
//! environment variable names and HTTP header names.
//!
//! Each check returns `Err(reason)` with Kubernetes' wording of the rule; the
//! caller adds the field path and the offending value.
//!
//! [`check_name`] is the one rule for node and object names drover checks
//! outside a manifest (a node's `--name`, a join request, a certificate's
//! holder, a namespace or deployment name typed for a lookup): a DNS-1123
//! subdomain as Kubernetes has it, the rule `metadata.name` follows, so a
//! lookup never refuses a name an apply accepted. A name embedded in a DNS
//! name (an agent's certificate server name `<node>.agent.drover`) must also
//! leave that a DNS name: [`check_dns_name`] checks the result where it is
//! built.

/// Longest DNS-1123 label, label name or label value.
pub const MAX_LABEL_LEN: usize = 63;
/// Longest DNS-1123 subdomain.
const MAX_SUBDOMAIN_LEN: usize = 253;
/// Longest IANA service name (a port name).
const MAX_SVC_NAME_LEN: usize = 15;

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn too_long(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (namespaces, container names).
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > MAX_LABEL_LEN {
        return Err(too_long(MAX_LABEL_LEN));
    }
    if is_dns1123_label(s) {
        Ok(())
    } else {
        Err(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters \
             or '-', and must start and end with an alphanumeric character (e.g. 'my-name' \
             or '123-abc')"
                .to_string(),
        )
    }
}

fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            is_lower_alnum(first)
                && is_lower_alnum(last)
                && bytes.iter().all(|&b| is_lower_alnum(b) || b == b'-')
        }
        _ => false,
    }
}

/// DNS-1123 labels joined by `.`, at most 253 characters (object names, key prefixes).
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > MAX_SUBDOMAIN_LEN {
        return Err(too_long(MAX_SUBDOMAIN_LEN));
    }
    if s.split('.').all(is_dns1123_label) {
        Ok(())
    } else {
        Err(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
             characters, '-' or '.', and must start and end with an alphanumeric character \
             (e.g. 'example.com')"
                .to_string(),
        )
    }
}

/// A node or object name was refused; `Display` is one sentence naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("{what} is empty")]
    Empty { what: String },
    /// The name breaks the DNS-1123 subdomain rule.
    #[error(
        "{what} {value:?} is invalid: use at most 253 lower case letters, digits, '-' and '.', \
         starting and ending with a letter or digit (e.g. node-1)"
    )]
    Invalid { what: String, value: String },
}

/// The one rule for node and object names (nodes, namespaces, deployments,
/// certificate holders): a DNS-1123 subdomain as Kubernetes has it — at most
/// 253 characters of `a-z`, `0-9`, `-` and `.`, every dot-separated part
/// starting and ending with a letter or digit. `what` names the value in the
/// error ("node name", "namespace").
pub fn check_name(what: &str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty {
            what: what.to_string(),
        });
    }
    if dns1123_subdomain(value).is_err() {
        return Err(NameError::Invalid {
            what: what.to_string(),
            value: value.to_string(),
        });
    }
    Ok(())
}

/// Longest DNS name, as resolvers and TLS libraries (rustls) take it.
pub const MAX_DNS_NAME_LEN: usize = 253;

/// A lowercase DNS name built from a checked name (`<node>.agent.drover`):
/// dot-separated labels of 1–63 characters, at most 253 in all. Names that
/// pass [`check_name`] fail this only when a part is longer than 63 or the
/// whole too long once embedded.
pub fn check_dns_name(s: &str) -> Result<(), String> {
    if s.len() > MAX_DNS_NAME_LEN {
        return Err(format!("a DNS name {}", too_long(MAX_DNS_NAME_LEN)));
    }
    if s.split('.').any(|l| l.len() > MAX_LABEL_LEN) {
        return Err(format!(
            "each dot-separated part of a DNS name {}",
            too_long(MAX_LABEL_LEN)
        ));
    }
    dns1123_subdomain(s)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: the name part of a label key,
/// and a non-empty label value.
fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// A label or annotation key: `[prefix/]name`, the prefix a DNS-1123
/// subdomain, the name at most 63 characters of `[-A-Za-z0-9_.]` starting and
/// ending with an alphanumeric character.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return Err("prefix part must be non-empty".to_string());
            }
            dns1123_subdomain(prefix).map_err(|reason| format!("prefix part {reason}"))?;
            name
        }
        None => s,
    };
    if name.is_empty() {
        return Err("name part must be non-empty".to_string());
    }
    if name.len() > MAX_LABEL_LEN {
        return Err(format!("name part {}", too_long(MAX_LABEL_LEN)));
    }
    if is_label_name(name) {
        Ok(())
    } else {
        Err(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must \
             start and end with an alphanumeric character (e.g. 'MyName', 'my.name' or \
             '123-abc'), with an optional DNS subdomain prefix and '/' (e.g. \
             'example.com/MyName')"
                .to_string(),
        )
    }
}

/// A label value: empty, or at most 63 characters of `[-A-Za-z0-9_.]` starting
/// and ending with an alphanumeric character.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.len() > MAX_LABEL_LEN {
        return Err(too_long(MAX_LABEL_LEN));
    }
    if s.is_empty() || is_label_name(s) {
        Ok(())
    } else {
        Err(
            "a valid label value must be an empty string or consist of alphanumeric \
             characters, '-', '_' or '.', and must start and end with an alphanumeric \
             character (e.g. 'MyValue', 'my_value' or '12345')"
                .to_string(),
        )
    }
}

/// A port name (IANA_SVC_NAME): at most 15 characters of `[a-z0-9-]`, at
/// least one letter, no leading, trailing or doubled `-`.
pub fn iana_svc_name(s: &str) -> Result<(), String> {
    if s.len() > MAX_SVC_NAME_LEN {
        return Err(too_long(MAX_SVC_NAME_LEN));
    }
    let bytes = s.as_bytes();
    if s.is_empty() || !bytes.iter().all(|&b| is_lower_alnum(b) || b == b'-') {
        return Err(
            "must contain only lower case alphanumeric characters or '-' (e.g. 'http')".to_string(),
        );
    }
    if !bytes.iter().any(u8::is_ascii_lowercase) {
        return Err("must contain at least one letter (a-z)".to_string());
    }
    if s.contains("--") {
        return Err("must not contain consecutive hyphens".to_string());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not begin or end with a hyphen".to_string());
    }
    Ok(())
}

/// An environment variable name: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn env_var_name(s: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    match s.as_bytes().first() {
        Some(first) if !first.is_ascii_digit() && s.bytes().all(allowed) => Ok(()),
        _ => Err(
            "a valid environment variable name must consist of alphabetic characters, \
                  digits, '_', '-' or '.', and must not start with a digit (e.g. \
                  'my.env-name' or 'MY_ENV.NAME')"
                .to_string(),
        ),
    }
}

/// An HTTP header name: `[-A-Za-z0-9]+`.
pub fn http_header_name(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(())
    } else {
        Err(
            "a valid HTTP header name must consist of alphanumeric characters or '-' \
             (e.g. 'X-Header-Name')"
                .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(dns1123_label("web-1").is_ok());
        assert!(dns1123_label("Web").is_err());
        assert!(dns1123_label("-web").is_err());
        assert!(dns1123_label("").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(dns1123_subdomain("web.example.com").is_ok());
        assert!(dns1123_subdomain("web..example").is_err());
    }

    #[test]
    fn node_and_object_names() {
        for good in ["n1", "node-1", "rack-2.host-3", "0", &"a".repeat(253)] {
            assert!(check_name("node name", good).is_ok(), "{good:?}");
        }
        for bad in [
            "N1",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a_b",
            "a/b",
            "a b",
            &"a".repeat(254),
        ] {
            assert!(check_name("node name", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_name("namespace", "").unwrap_err().to_string(),
            "namespace is empty"
        );
        assert_eq!(
            check_name("node name", "Bad_Name").unwrap_err().to_string(),
            "node name \"Bad_Name\" is invalid: use at most 253 lower case letters, digits, \
             '-' and '.', starting and ending with a letter or digit (e.g. node-1)"
        );
    }

    #[test]
    fn dns_names() {
        assert!(check_dns_name("node-1.agent.drover").is_ok());
        assert!(check_dns_name(&format!("{}.agent.drover", "a".repeat(63))).is_ok());
        assert!(check_dns_name(&format!("{}.agent.drover", "a".repeat(64))).is_err());
        let long = vec!["a".repeat(60); 4].join(".");
        assert!(check_dns_name(&long).is_ok());
        assert!(check_dns_name(&format!("{long}.agent.drover")).is_err());
        assert!(check_dns_name("Upper.agent.drover").is_err());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(qualified_name("app").is_ok());
        assert!(qualified_name("app.kubernetes.io/name").is_ok());
        assert!(qualified_name("My_Key.1").is_ok());
        assert!(qualified_name("/name").is_err());
        assert!(qualified_name("example.com/").is_err());
        assert!(qualified_name("a/b/c").is_err());
        assert!(qualified_name("Example.com/name").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3-x").is_ok());
        assert!(label_value("-x").is_err());
        assert!(label_value("has space").is_err());
    }

    #[test]
    fn port_and_env_names() {
        assert!(iana_svc_name("http").is_ok());
        assert!(iana_svc_name("http-alt2").is_ok());
        assert!(iana_svc_name("8080").is_err());
        assert!(iana_svc_name("a--b").is_err());
        assert!(iana_svc_name("too-long-port-name").is_err());
        assert!(env_var_name("MY_VAR.x-1").is_ok());
        assert!(env_var_name("1VAR").is_err());
        assert!(env_var_name("A=B").is_err());
        assert!(http_header_name("X-Custom-Header").is_ok());
        assert!(http_header_name("Bad Header").is_err());
    }
}
