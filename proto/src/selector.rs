//! Label and field selectors, kubectl's grammar: one parser for droverctl
//! (which checks what the user typed before sending it) and the controller
//! (which evaluates it on List requests).
//!
//! ```text
//! labels:  app=web,tier!=db     env in (a,b)    env notin (c)    canary    !canary
//! fields:  spec.nodeName=n1,status.state!=Running
//! ```
//!
//! A selector is a conjunction of requirements. As in Kubernetes, `k!=v` and
//! `k notin (...)` also match objects that have no `k` at all.

use std::collections::BTreeSet;

/// A replica's state as `-o yaml` shows it (`status.state`) and a field
/// selector matches it: `Pending`, `Running`, `CrashLoopBackOff`, `Failed`,
/// `Terminating`, `Gone`. No report yet counts as `Pending`.
pub fn replica_state_name(s: crate::pb::ReplicaState) -> &'static str {
    use crate::pb::ReplicaState;
    match s {
        ReplicaState::Unspecified | ReplicaState::Pending => "Pending",
        ReplicaState::Running => "Running",
        ReplicaState::CrashLoopBackOff => "CrashLoopBackOff",
        ReplicaState::Failed => "Failed",
        ReplicaState::Terminating => "Terminating",
        ReplicaState::Gone => "Gone",
    }
}

/// The fields each kind can be selected by, as `--field-selector` names them.
pub const DEPLOYMENT_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];
pub const REPLICA_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.deployment",
    "status.state",
];
pub const NODE_FIELDS: &[&str] = &["metadata.name", "spec.unschedulable", "status.condition"];

/// A List request's `label_selector` and `field_selector`, parsed and
/// checked against the fields of `kind`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListSelector {
    pub labels: Selector,
    pub fields: Selector,
}

impl ListSelector {
    pub fn parse(
        labels: &str,
        fields: &str,
        kind: &'static str,
        supported: &[&str],
    ) -> Result<ListSelector, SelectorError> {
        let labels = Selector::parse_labels(labels)?;
        let fields = Selector::parse_fields(fields)?;
        fields.check_fields(kind, supported)?;
        Ok(ListSelector { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// Whether a replica is selected.
    pub fn replica(&self, r: &crate::pb::Replica) -> bool {
        let state = r
            .status
            .as_ref()
            .map(|s| s.state())
            .unwrap_or(crate::pb::ReplicaState::Pending);
        self.labels.matches_labels(&r.labels)
            && self.fields.matches(|field| match field {
                "metadata.name" => Some(r.name.as_str()),
                "metadata.namespace" => Some(r.namespace.as_str()),
                "spec.nodeName" => Some(r.node.as_str()),
                "spec.deployment" => Some(r.deployment.as_str()),
                "status.state" => Some(replica_state_name(state)),
                _ => None,
            })
    }

    /// Whether a node is selected.
    pub fn node(&self, n: &crate::pb::Node) -> bool {
        self.labels.matches_labels(&n.labels)
            && self.fields.matches(|field| match field {
                "metadata.name" => Some(n.name.as_str()),
                "spec.unschedulable" => Some(if n.cordoned { "true" } else { "false" }),
                "status.condition" => Some(n.condition.as_str()),
                _ => None,
            })
    }

    /// Whether a deployment with these name, namespace and labels is selected.
    pub fn deployment<'a, I>(&self, namespace: &str, name: &str, labels: I) -> bool
    where
        I: IntoIterator<Item = (&'a String, &'a String)> + Clone,
    {
        self.labels.matches_labels(labels)
            && self.fields.matches(|field| match field {
                "metadata.name" => Some(name),
                "metadata.namespace" => Some(namespace),
                _ => None,
            })
    }
}

/// One requirement's test on the value of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Eq(String),
    NotEq(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

impl Requirement {
    /// Whether a value (`None`: the key is absent) satisfies the requirement.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Eq(want), Some(v)) => v == want,
            (Op::Eq(_), None) => false,
            (Op::NotEq(want), v) => v != Some(want.as_str()),
            (Op::In(set), Some(v)) => set.contains(v),
            (Op::In(_), None) => false,
            (Op::NotIn(set), v) => v.is_none_or(|v| !set.contains(v)),
            (Op::Exists, v) => v.is_some(),
            (Op::NotExists, v) => v.is_none(),
        }
    }
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{what} {text:?}: {reason}")]
    Invalid {
        what: &'static str,
        text: String,
        reason: String,
    },
    #[error("field selector {field:?} is not supported for {kind}; supported fields: {supported}")]
    UnknownField {
        field: String,
        kind: &'static str,
        supported: String,
    },
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// `-l`: `app=web,tier!=db`, `env in (a,b)`, `env notin (c)`, `canary`, `!canary`.
    pub fn parse_labels(text: &str) -> Result<Selector, SelectorError> {
        let invalid = |reason: String| SelectorError::Invalid {
            what: "label selector",
            text: text.to_string(),
            reason,
        };
        let mut requirements = Vec::new();
        for part in split_top_level(text).map_err(invalid)? {
            let part = part.trim();
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(invalid(
                    "an empty requirement (two commas, or one at an end)".into(),
                ));
            }
            let requirement = parse_label_requirement(part).map_err(invalid)?;
            requirements.push(requirement);
        }
        Ok(Selector { requirements })
    }

    /// `--field-selector`: `spec.nodeName=n1,status.state!=Running`.
    pub fn parse_fields(text: &str) -> Result<Selector, SelectorError> {
        let invalid = |reason: String| SelectorError::Invalid {
            what: "field selector",
            text: text.to_string(),
            reason,
        };
        let mut requirements = Vec::new();
        if text.trim().is_empty() {
            return Ok(Selector::default());
        }
        for part in text.split(',') {
            let part = part.trim();
            let (key, op) = if let Some((k, v)) = part.split_once("!=") {
                (k, Op::NotEq(v.trim().to_string()))
            } else if let Some((k, v)) = part.split_once("==") {
                (k, Op::Eq(v.trim().to_string()))
            } else if let Some((k, v)) = part.split_once('=') {
                (k, Op::Eq(v.trim().to_string()))
            } else {
                return Err(invalid(format!(
                    "{part:?} is not FIELD=VALUE, FIELD==VALUE or FIELD!=VALUE"
                )));
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(invalid(format!("{part:?} names no field")));
            }
            requirements.push(Requirement {
                key: key.to_string(),
                op,
            });
        }
        Ok(Selector { requirements })
    }

    /// Every requirement holds for `lookup` (a key's value, `None` when absent).
    pub fn matches<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.matches(lookup(&r.key)))
    }

    /// [`Selector::matches`] on a label map.
    pub fn matches_labels<'a, I>(&self, labels: I) -> bool
    where
        I: IntoIterator<Item = (&'a String, &'a String)> + Clone,
    {
        self.matches(|key| {
            labels
                .clone()
                .into_iter()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, v)| v.as_str())
        })
    }

    /// Refuse a field selector naming a field `kind` cannot be selected by.
    pub fn check_fields(
        &self,
        kind: &'static str,
        supported: &[&str],
    ) -> Result<(), SelectorError> {
        for r in &self.requirements {
            if !supported.contains(&r.key.as_str()) {
                return Err(SelectorError::UnknownField {
                    field: r.key.clone(),
                    kind,
                    supported: supported.join(", "),
                });
            }
        }
        Ok(())
    }
}

/// Split at commas that are not inside `( )`.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "a ')' without its '('".to_string())?
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err("a '(' without its ')'".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn check_key(key: &str) -> Result<(), String> {
    crate::names::qualified_name(key).map_err(|e| format!("label key {key:?}: {e}"))
}

fn check_value(value: &str) -> Result<(), String> {
    crate::names::label_value(value).map_err(|e| format!("label value {value:?}: {e}"))
}

fn parse_label_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        check_key(key)?;
        return Ok(Requirement {
            key: key.to_string(),
            op: Op::NotExists,
        });
    }
    for (word, negated) in [(" notin ", true), (" in ", false)] {
        let Some(at) = part.find(word) else { continue };
        let key = part[..at].trim();
        check_key(key)?;
        let rest = part[at + word.len()..].trim();
        let inner = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("the values of {key:?}{word}must be in parentheses: (a,b)"))?;
        let mut set = BTreeSet::new();
        for v in inner.split(',') {
            let v = v.trim();
            check_value(v)?;
            set.insert(v.to_string());
        }
        let op = if negated { Op::NotIn(set) } else { Op::In(set) };
        return Ok(Requirement {
            key: key.to_string(),
            op,
        });
    }
    let (key, op) = if let Some((k, v)) = part.split_once("!=") {
        (k, Op::NotEq(v.trim().to_string()))
    } else if let Some((k, v)) = part.split_once("==") {
        (k, Op::Eq(v.trim().to_string()))
    } else if let Some((k, v)) = part.split_once('=') {
        (k, Op::Eq(v.trim().to_string()))
    } else {
        (part, Op::Exists)
    };
    let key = key.trim();
    check_key(key)?;
    if let Op::Eq(v) | Op::NotEq(v) = &op {
        check_value(v)?;
    }
    Ok(Requirement {
        key: key.to_string(),
        op,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(text: &str) -> Selector {
        Selector::parse_labels(text).expect(text)
    }

    #[test]
    fn equality_and_set_based_requirements_match_as_in_kubernetes() {
        let web = labels(&[("app", "web"), ("tier", "front"), ("env", "a")]);
        let db = labels(&[("app", "db"), ("tier", "db")]);
        let cases = [
            ("app=web", true, false),
            ("app==web", true, false),
            ("app=web,tier!=db", true, false),
            ("tier!=db", true, false),
            ("env in (a,b)", true, false),
            ("env in (b)", false, false),
            ("env notin (b)", true, true),
            ("env", true, false),
            ("!env", false, true),
            ("!canary", true, true),
            ("", true, true),
            ("app in (web, db), !env", false, true),
        ];
        for (text, on_web, on_db) in cases {
            let s = sel(text);
            assert_eq!(s.matches_labels(&web), on_web, "{text} on web");
            assert_eq!(s.matches_labels(&db), on_db, "{text} on db");
        }
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        for (text, words) in [
            ("env in a,b", "parentheses"),
            ("env in (a", "without its ')'"),
            ("app=web,,x=y", "empty requirement"),
            ("app=we b", "label value"),
            ("-x=y", "label key"),
        ] {
            let e = Selector::parse_labels(text).unwrap_err().to_string();
            assert!(e.contains(words), "{text}: {e}");
            assert!(e.starts_with("label selector"), "{e}");
        }
        let e = Selector::parse_fields("spec.nodeName")
            .unwrap_err()
            .to_string();
        assert!(e.contains("FIELD=VALUE"), "{e}");
    }

    #[test]
    fn field_selectors_name_supported_fields_only() {
        let s = Selector::parse_fields("spec.nodeName=n1,status.state!=Running").unwrap();
        let fields = |key: &str| match key {
            "spec.nodeName" => Some("n1"),
            "status.state" => Some("Pending"),
            _ => None,
        };
        assert!(s.matches(fields));
        assert!(s
            .check_fields("replicas", &["spec.nodeName", "status.state"])
            .is_ok());
        let e = s.check_fields("nodes", &["metadata.name"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "field selector \"spec.nodeName\" is not supported for nodes; supported fields: metadata.name"
        );
    }

    #[test]
    fn list_selectors_read_the_fields_get_o_yaml_shows() {
        use crate::pb;
        let replica = pb::Replica {
            namespace: "default".into(),
            name: "web-1a2b3-0".into(),
            deployment: "web".into(),
            node: "n1".into(),
            labels: [("app".to_string(), "web".to_string())]
                .into_iter()
                .collect(),
            status: Some(pb::ReplicaStatus {
                state: pb::ReplicaState::Running as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let select = |l: &str, f: &str| {
            ListSelector::parse(l, f, "replicas", REPLICA_FIELDS)
                .unwrap()
                .replica(&replica)
        };
        assert!(select("app=web", "spec.nodeName=n1,status.state=Running"));
        assert!(select("", "spec.deployment=web,metadata.namespace=default"));
        assert!(!select("app=web", "status.state=Pending"));
        assert!(!select("app notin (web)", ""));
        let unreported = pb::Replica {
            status: None,
            ..replica.clone()
        };
        assert!(
            ListSelector::parse("", "status.state=Pending", "replicas", REPLICA_FIELDS)
                .unwrap()
                .replica(&unreported)
        );
        let node = pb::Node {
            name: "n1".into(),
            condition: "NotReady".into(),
            cordoned: true,
            ..Default::default()
        };
        let s = ListSelector::parse(
            "",
            "spec.unschedulable=true,status.condition!=Ready",
            "nodes",
            NODE_FIELDS,
        )
        .unwrap();
        assert!(s.node(&node));
        let labels: BTreeMap<String, String> = labels(&[("tier", "db")]);
        let s = ListSelector::parse(
            "tier=db",
            "metadata.name=api",
            "deployments",
            DEPLOYMENT_FIELDS,
        )
        .unwrap();
        assert!(s.deployment("default", "api", &labels));
        assert!(!s.deployment("default", "web", &labels));
    }
}
