//! Resource types as typed on the command line: `deployments`, `deploy web`,
//! `deployment/web api`, `po`, `no/n1`... and the kubectl-style names printed
//! back (`deployment.apps/web`, `deployment.apps "web"`, `replica/web-7f9c2-3`).

/// The resource types droverctl can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Deployment,
    Replica,
    Node,
    /// Only `get` lists events; they have no names of their own to act on.
    Event,
    ConfigMap,
    Secret,
    Service,
    /// A Service's endpoints: listed, never applied or deleted.
    Endpoints,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 8] = [
        ResourceKind::Deployment,
        ResourceKind::Replica,
        ResourceKind::Node,
        ResourceKind::Event,
        ResourceKind::ConfigMap,
        ResourceKind::Secret,
        ResourceKind::Service,
        ResourceKind::Endpoints,
    ];

    /// `deployments`, `Deployment`, `deploy`, `deployments.apps`, ...
    pub fn parse(word: &str) -> Result<ResourceKind, ResourceError> {
        let lower = word.to_ascii_lowercase();
        for kind in Self::ALL {
            // Only deployments have an API group (`deployments.apps`).
            let bare = match kind {
                ResourceKind::Deployment => lower.strip_suffix(".apps").unwrap_or(&lower),
                ResourceKind::Replica
                | ResourceKind::Node
                | ResourceKind::Event
                | ResourceKind::ConfigMap
                | ResourceKind::Secret
                | ResourceKind::Service
                | ResourceKind::Endpoints => &lower,
            };
            if kind.plural() == bare || kind.aliases().contains(&bare) {
                return Ok(kind);
            }
        }
        if word.is_empty() {
            Err(ResourceError::Missing)
        } else {
            Err(ResourceError::Unknown(word.to_string()))
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            ResourceKind::Deployment => "deployments",
            ResourceKind::Replica => "replicas",
            ResourceKind::Node => "nodes",
            ResourceKind::Event => "events",
            ResourceKind::ConfigMap => "configmaps",
            ResourceKind::Secret => "secrets",
            ResourceKind::Service => "services",
            ResourceKind::Endpoints => "endpoints",
        }
    }

    pub fn singular(self) -> &'static str {
        match self {
            ResourceKind::Deployment => "deployment",
            ResourceKind::Replica => "replica",
            ResourceKind::Node => "node",
            ResourceKind::Event => "event",
            ResourceKind::ConfigMap => "configmap",
            ResourceKind::Secret => "secret",
            ResourceKind::Service => "service",
            ResourceKind::Endpoints => "endpoints",
        }
    }

    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            ResourceKind::Deployment => &["deployment", "deploy"],
            ResourceKind::Replica => &["replica", "po", "pod", "pods"],
            ResourceKind::Node => &["node", "no"],
            ResourceKind::Event => &["event", "ev"],
            ResourceKind::ConfigMap => &["configmap", "cm"],
            ResourceKind::Secret => &["secret"],
            ResourceKind::Service => &["service", "svc"],
            ResourceKind::Endpoints => &["ep"],
        }
    }

    /// `deployment.apps`, kubectl's qualified name for printing (`node` for
    /// nodes, which like kubectl's have no API group).
    pub fn qualified(self) -> &'static str {
        match self {
            ResourceKind::Deployment => "deployment.apps",
            ResourceKind::Replica => "replica",
            ResourceKind::Node => "node",
            ResourceKind::Event => "event",
            ResourceKind::ConfigMap => "configmap",
            ResourceKind::Secret => "secret",
            ResourceKind::Service => "service",
            ResourceKind::Endpoints => "endpoints",
        }
    }

    /// False for nodes, which belong to no namespace.
    pub fn namespaced(self) -> bool {
        match self {
            ResourceKind::Deployment
            | ResourceKind::Replica
            | ResourceKind::Event
            | ResourceKind::ConfigMap
            | ResourceKind::Secret
            | ResourceKind::Service
            | ResourceKind::Endpoints => true,
            ResourceKind::Node => false,
        }
    }

    /// `deployment.apps/web`
    pub fn slash_name(self, name: &str) -> String {
        format!("{}/{name}", self.qualified())
    }

    /// `deployment.apps "web"`
    pub fn quoted_name(self, name: &str) -> String {
        format!("{} \"{name}\"", self.qualified())
    }
}

/// `deployments (aliases: deployment, deploy); replicas (...); ...` for every supported type.
pub fn supported_types() -> String {
    ResourceKind::ALL
        .iter()
        .map(|k| format!("{} (aliases: {})", k.plural(), k.aliases().join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error(
        "you must specify the type of resource; supported types: {}",
        supported_types()
    )]
    Missing,
    #[error("unknown resource type {0:?}; supported types: {types}", types = supported_types())]
    Unknown(String),
    #[error("a resource name may not be empty (in {0:?})")]
    EmptyName(String),
    #[error("there is no need to give a resource type as a separate argument when passing arguments in TYPE/NAME form (e.g. droverctl get deployment/web)")]
    MixedForms,
    #[error("{0:?} and {1:?} are of different types; give one resource type at a time")]
    MixedKinds(String, String),
}

/// The arguments of `get`/`describe`/`delete`/`scale`: one type and the names given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub kind: ResourceKind,
    /// Empty means "all of this type".
    pub names: Vec<String>,
}

impl Selection {
    /// `TYPE [NAME...]` or `TYPE/NAME...`.
    pub fn parse(args: &[String]) -> Result<Selection, ResourceError> {
        let Some(first) = args.first() else {
            return Err(ResourceError::Missing);
        };
        if !first.contains('/') {
            let kind = ResourceKind::parse(first)?;
            let names = &args[1..];
            if names.iter().any(|n| n.contains('/')) {
                return Err(ResourceError::MixedForms);
            }
            if names.iter().any(|n| n.is_empty()) {
                return Err(ResourceError::EmptyName(String::new()));
            }
            return Ok(Selection {
                kind,
                names: names.to_vec(),
            });
        }
        let mut kind: Option<(ResourceKind, &String)> = None;
        let mut names = Vec::new();
        for arg in args {
            let Some((ty, name)) = arg.split_once('/') else {
                return Err(ResourceError::MixedForms);
            };
            if name.is_empty() || name.contains('/') {
                return Err(ResourceError::EmptyName(arg.clone()));
            }
            let this = ResourceKind::parse(ty)?;
            match kind {
                None => kind = Some((this, arg)),
                Some((first, first_arg)) if first != this => {
                    return Err(ResourceError::MixedKinds(first_arg.clone(), arg.clone()));
                }
                Some(_) => {}
            }
            names.push(name.to_string());
        }
        let (kind, _) = kind.ok_or(ResourceError::Missing)?;
        Ok(Selection { kind, names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_kubectl_spelling_of_deployments_is_accepted() {
        for word in [
            "deployments",
            "deployment",
            "deploy",
            "Deployment",
            "deployments.apps",
            "deploy.apps",
        ] {
            assert_eq!(
                ResourceKind::parse(word),
                Ok(ResourceKind::Deployment),
                "{word}"
            );
        }
    }

    #[test]
    fn every_kubectl_spelling_of_replicas_and_nodes_is_accepted() {
        for word in ["replicas", "replica", "po", "pod", "pods", "Pods"] {
            assert_eq!(
                ResourceKind::parse(word),
                Ok(ResourceKind::Replica),
                "{word}"
            );
        }
        for word in ["nodes", "node", "no", "NODES"] {
            assert_eq!(ResourceKind::parse(word), Ok(ResourceKind::Node), "{word}");
        }
        assert!(ResourceKind::parse("nodes.apps").is_err());
    }

    #[test]
    fn unsupported_types_say_what_is_supported() {
        const TYPES: &str = "deployments (aliases: deployment, deploy); \
            replicas (aliases: replica, po, pod, pods); nodes (aliases: node, no); \
            events (aliases: event, ev); configmaps (aliases: configmap, cm); \
            secrets (aliases: secret); services (aliases: service, svc); \
            endpoints (aliases: ep)";
        let e = ResourceKind::parse("ingresses").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("unknown resource type \"ingresses\"; supported types: {TYPES}")
        );
        for word in ["services", "service", "svc", "SVC"] {
            assert_eq!(
                ResourceKind::parse(word),
                Ok(ResourceKind::Service),
                "{word}"
            );
        }
        for word in ["endpoints", "ep"] {
            assert_eq!(
                ResourceKind::parse(word),
                Ok(ResourceKind::Endpoints),
                "{word}"
            );
        }
    }

    #[test]
    fn type_then_names_or_type_slash_name() {
        assert_eq!(
            Selection::parse(&args(&["deploy"])).unwrap(),
            Selection {
                kind: ResourceKind::Deployment,
                names: vec![]
            }
        );
        assert_eq!(
            Selection::parse(&args(&["deployment", "web", "api"]))
                .unwrap()
                .names,
            ["web", "api"]
        );
        assert_eq!(
            Selection::parse(&args(&["deployment/web", "deploy/api"]))
                .unwrap()
                .names,
            ["web", "api"]
        );
    }

    #[test]
    fn malformed_selections_are_refused() {
        assert_eq!(Selection::parse(&[]), Err(ResourceError::Missing));
        assert_eq!(
            Selection::parse(&args(&["deployment/web", "api"])),
            Err(ResourceError::MixedForms)
        );
        assert_eq!(
            Selection::parse(&args(&["deployment", "deploy/web"])),
            Err(ResourceError::MixedForms)
        );
        assert!(matches!(
            Selection::parse(&args(&["deployment/"])),
            Err(ResourceError::EmptyName(_))
        ));
        assert!(matches!(
            Selection::parse(&args(&["ingresses/web"])),
            Err(ResourceError::Unknown(_))
        ));
        let e = Selection::parse(&args(&["deploy/web", "no/n1"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"deploy/web\" and \"no/n1\" are of different types; give one resource type at a time"
        );
        assert_eq!(
            Selection::parse(&args(&["po/a", "replica/b"])).unwrap(),
            Selection {
                kind: ResourceKind::Replica,
                names: vec!["a".into(), "b".into()]
            }
        );
    }

    #[test]
    fn names_print_like_kubectl() {
        let k = ResourceKind::Deployment;
        assert_eq!(k.slash_name("web"), "deployment.apps/web");
        assert_eq!(k.quoted_name("web"), "deployment.apps \"web\"");
        assert_eq!(ResourceKind::Replica.slash_name("web-1"), "replica/web-1");
        assert_eq!(ResourceKind::Node.slash_name("n1"), "node/n1");
    }
}
