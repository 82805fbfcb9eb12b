//! Container image references, checked against Docker's reference grammar
//! (`github.com/distribution/reference`):
//!
//! ```text
//! reference  ::= name [ ":" tag ] [ "@" digest ]
//! name       ::= [ domain "/" ] path-component ( "/" path-component )*   (≤ 255 chars)
//! domain     ::= host [ ":" port ]          host: DNS name, IPv4 or [IPv6]
//! path-component ::= [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        ::= [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     ::= "sha256:" 64 hex | "sha384:" 96 hex | "sha512:" 128 hex  (lower case)
//! ```

/// Longest repository name (domain and path), as Docker has it.
const MAX_NAME_LEN: usize = 255;
/// Longest tag.
const MAX_TAG_LEN: usize = 128;

/// The parts of a valid reference that defaulting needs.
#[derive(Debug, PartialEq, Eq)]
pub struct ImageReference<'a> {
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

impl ImageReference<'_> {
    /// Kubernetes pulls `:latest` and untagged (digest-less) images every time.
    pub fn floats(&self) -> bool {
        match self.tag {
            Some(tag) => tag == "latest",
            None => self.digest.is_none(),
        }
    }
}

/// Checks `reference`; `Err` carries the reason.
pub fn parse(reference: &str) -> Result<ImageReference<'_>, String> {
    if reference.is_empty() {
        return Err("must not be empty".to_string());
    }
    if reference.trim() != reference {
        return Err("must not have leading or trailing whitespace".to_string());
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => {
            check_digest(digest)?;
            (rest, Some(digest))
        }
        None => (reference, None),
    };
    // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(colon) => {
            let at = last_slash + colon;
            (&rest[..at], Some(&rest[at + 1..]))
        }
        None => (rest, None),
    };
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    check_name(name)?;
    Ok(ImageReference { tag, digest })
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("repository name must not be empty".to_string());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "repository name must not be longer than {MAX_NAME_LEN} characters"
        ));
    }
    let mut components = name.split('/');
    let first = components.next().unwrap_or_default();
    let rest: Vec<&str> = components.collect();
    // The first of several components is a registry when it cannot be a path
    // component ("registry.example.com:5000/app", "localhost/app", "[::1]/app").
    if !rest.is_empty() && !is_path_component(first) {
        check_domain(first)?;
    } else {
        check_path_component(first)?;
    }
    rest.into_iter().try_for_each(check_path_component)
}

fn check_path_component(component: &str) -> Result<(), String> {
    if is_path_component(component) {
        return Ok(());
    }
    if component.bytes().any(|b| b.is_ascii_uppercase()) {
        Err("repository name must be lowercase".to_string())
    } else {
        Err(format!(
            "invalid repository name component {component:?}: use lower case letters and \
             digits, separated by '.', '_', '__' or '-'"
        ))
    }
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let mut i = 0;
    loop {
        let run = bytes[i..]
            .iter()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            .count();
        if run == 0 {
            return false;
        }
        i += run;
        if i == bytes.len() {
            return true;
        }
        let separator = bytes[i..]
            .iter()
            .take_while(|b| matches!(b, b'.' | b'_' | b'-'))
            .count();
        let valid = match &bytes[i..i + separator] {
            [b'.'] | [b'_'] | [b'_', b'_'] => true,
            dashes => !dashes.is_empty() && dashes.iter().all(|&b| b == b'-'),
        };
        if !valid {
            return false;
        }
        i += separator;
    }
}

fn check_domain(domain: &str) -> Result<(), String> {
    let invalid = || Err(format!("invalid registry host {domain:?}"));
    let (host, port) = if let Some(bracketed) = domain.strip_prefix('[') {
        let Some((ipv6, after)) = bracketed.split_once(']') else {
            return invalid();
        };
        if ipv6.is_empty() || !ipv6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return invalid();
        }
        match after {
            "" => (ipv6, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (ipv6, Some(port)),
                None => return invalid(),
            },
        }
    } else {
        let (host, port) = match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        };
        let component_ok = |c: &str| {
            let bytes = c.as_bytes();
            match (bytes.first(), bytes.last()) {
                (Some(first), Some(last)) => {
                    first.is_ascii_alphanumeric()
                        && last.is_ascii_alphanumeric()
                        && bytes
                            .iter()
                            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                }
                _ => false,
            }
        };
        if !host.split('.').all(component_ok) {
            return invalid();
        }
        (host, port)
    };
    match port {
        Some(port) if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) => invalid(),
        _ if host.is_empty() => invalid(),
        _ => Ok(()),
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let valid = match tag.as_bytes().first() {
        Some(&first) => {
            word(first)
                && tag.len() <= MAX_TAG_LEN
                && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-')
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {tag:?}: a tag is 1 to {MAX_TAG_LEN} letters, digits, '_', '.' or \
             '-', not starting with '.' or '-'"
        ))
    }
}

fn check_digest(digest: &str) -> Result<(), String> {
    let hex_len = match digest.split_once(':') {
        Some(("sha256", hex)) => Some((hex, 64)),
        Some(("sha384", hex)) => Some((hex, 96)),
        Some(("sha512", hex)) => Some((hex, 128)),
        _ => None,
    };
    match hex_len {
        Some((hex, len))
            if hex.len() == len
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "invalid digest {digest:?}: expected sha256: and 64 lower-case hex digits"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_docker_references() {
        for ok in [
            "nginx",
            "nginx:1.25.3",
            "nginx:latest",
            "library/nginx",
            "docker.io/library/nginx:1.14.2",
            "registry.k8s.io/pause:3.9",
            "localhost:5000/team/app:v2",
            "localhost/app",
            "my-registry:5000/app_name/sub__part/x--y:TAG_1.0-rc",
            "[::1]:5000/app",
            "192.168.1.10:5000/app:dev",
            "Registry.Example.com/app",
        ] {
            assert!(parse(ok).is_ok(), "{ok} should be valid: {:?}", parse(ok));
        }
        let with_digest = format!("nginx@{DIGEST}");
        assert_eq!(
            parse(&with_digest),
            Ok(ImageReference {
                tag: None,
                digest: Some(DIGEST)
            })
        );
        assert!(parse(&format!("nginx:1.25@{DIGEST}")).is_ok());
    }

    #[test]
    fn refuses_invalid_references() {
        for bad in [
            "",
            " nginx",
            "Nginx",
            "nginx:",
            "nginx:-tag",
            "nginx:a/b",
            "nginx@sha256:abc",
            "nginx@md5:0123456789abcdef0123456789abcdef",
            "ngi..nx",
            "nginx_",
            "-nginx",
            "registry:port/app",
            "a//b",
            "/app",
            "app/",
            "nginx:1.0:2.0",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be invalid");
        }
        assert_eq!(
            parse("Nginx:1.0").unwrap_err(),
            "repository name must be lowercase"
        );
    }

    #[test]
    fn pull_policy_floats_only_on_latest_or_untagged() {
        let floats = |r: &str| parse(r).map(|r| r.floats());
        assert_eq!(floats("nginx"), Ok(true));
        assert_eq!(floats("nginx:latest"), Ok(true));
        assert_eq!(floats("nginx:1.25"), Ok(false));
        assert_eq!(floats(&format!("nginx@{DIGEST}")), Ok(false));
    }
}
