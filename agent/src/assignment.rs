//! What the controller asks this node to run, decoded from the wire.
//!
//! An [`Assignment`] is the agent's own type: the generated
//! `drover_proto::pb::Assignment` stays at the edge and is converted once, here.
//! Decoding checks what every runtime relies on (the template parses, it has
//! exactly one container), so the rest of the agent never re-checks it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use drover_manifest::{Container, PodTemplate};
use drover_proto::pb;
use sha2::{Digest, Sha256};

use crate::backoff::BackoffPolicy;
use crate::error::AgentError;
use crate::resolve::EnvEntry;
use crate::volumes::HostMount;

/// One replica this node must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Cluster-unique replica name, `<deployment>-<revision>-<slot>`.
    pub replica: String,
    pub namespace: String,
    pub deployment: String,
    pub slot: u32,
    /// Short hash of the pod template, as in the replica's name.
    pub revision: String,
    /// SHA-256 of the template as the controller sent it (hex): the agent
    /// decides "same spec" on this full hash.
    pub spec_hash: String,
    /// Shared by every assignment of the node with the same template
    /// ([`Templates`]); [`Assignment::template_mut`] copies it on write.
    pub template: Arc<PodTemplate>,
    /// The template as the controller sent it, to tell a repeated
    /// assignment from a changed one without decoding it again.
    pub template_json: Arc<str>,
    /// Deployment annotations (`drover.io/restart-backoff-*`).
    pub annotations: BTreeMap<String, String>,
    /// Kubernetes' service variables the controller sent (`FOO_SERVICE_HOST`...),
    /// set before the container's own env, which wins over them.
    pub service_env: BTreeMap<String, String>,
    /// The env and mounts resolved on this node for this start (the
    /// supervisor fills it in just before a start; None: the template's
    /// plain `value`s and no mounts).
    pub prepared: Option<Prepared>,
}

/// A start's configuration as resolved on the node: what the runtime puts
/// in the container. Its `Debug` never shows a Secret's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    pub env: Vec<EnvEntry>,
    pub mounts: Vec<HostMount>,
}

impl Assignment {
    /// Decode a wire assignment. On failure the error names the replica so its
    /// status can say why it will not run.
    pub fn from_pb(a: pb::Assignment) -> Result<Assignment, (String, AgentError)> {
        Assignment::from_pb_after(a, None, &mut Templates::default())
    }

    /// [`Assignment::from_pb`], or `previous` as it is when `a` repeats it
    /// field for field: a node's whole set comes again on every (re)connect,
    /// and decoding each template again would cost a node of a hundred
    /// replicas a hundred decodes. A new assignment's template is decoded
    /// once per distinct template in `templates`.
    pub fn from_pb_after(
        a: pb::Assignment,
        previous: Option<Assignment>,
        templates: &mut Templates,
    ) -> Result<Assignment, (String, AgentError)> {
        if let Some(p) = previous.filter(|p| p.repeated_by(&a)) {
            return Ok(p);
        }
        if a.replica.is_empty() {
            return Err((
                a.replica,
                AgentError::InvalidSpec("the assignment has no replica name".into()),
            ));
        }
        let decoded = match templates.decode(&a.template_json) {
            Ok(decoded) => decoded,
            Err(e) => return Err((a.replica, e)),
        };
        Ok(Assignment {
            replica: a.replica,
            namespace: a.namespace,
            deployment: a.deployment,
            slot: a.slot,
            revision: a.revision,
            spec_hash: decoded.spec_hash,
            template: decoded.template,
            template_json: decoded.json,
            annotations: a.annotations.into_iter().collect(),
            service_env: a.service_env.into_iter().collect(),
            prepared: None,
        })
    }

    /// The template, to change (tests): copied first if it is shared.
    pub fn template_mut(&mut self) -> &mut PodTemplate {
        Arc::make_mut(&mut self.template)
    }

    /// Whether the wire assignment `a` says exactly what this one was
    /// decoded from.
    pub fn repeated_by(&self, a: &pb::Assignment) -> bool {
        self.prepared.is_none()
            && self.replica == a.replica
            && self.namespace == a.namespace
            && self.deployment == a.deployment
            && self.slot == a.slot
            && self.revision == a.revision
            && self.template_json.as_bytes() == a.template_json.as_ref()
            && same_map(&self.annotations, &a.annotations)
            && same_map(&self.service_env, &a.service_env)
    }

    /// The container's environment: the resolved one, or else the
    /// template's plain values.
    pub fn env(&self) -> Vec<EnvEntry> {
        match &self.prepared {
            Some(p) => p.env.clone(),
            None => self
                .service_env_entries()
                .chain(
                    self.container()
                        .env
                        .iter()
                        .filter(|e| e.value_from.is_none())
                        .map(|e| EnvEntry {
                            name: e.name.clone(),
                            value: e.value.clone(),
                            secret: false,
                        }),
                )
                .collect(),
        }
    }

    /// The service variables as env entries, in name order.
    pub fn service_env_entries(&self) -> impl Iterator<Item = EnvEntry> + '_ {
        self.service_env.iter().map(|(name, value)| EnvEntry {
            name: name.clone(),
            value: value.clone(),
            secret: false,
        })
    }

    /// Where the container's volumes are on the host (none until prepared).
    pub fn mounts(&self) -> &[HostMount] {
        self.prepared.as_ref().map_or(&[], |p| &p.mounts[..])
    }

    /// The replica's host name, as Kubernetes gives a pod its name: the
    /// replica name without its namespace, at most 63 characters (a DNS label).
    pub fn hostname(&self) -> &str {
        let name = self
            .replica
            .split_once('.')
            .map_or(self.replica.as_str(), |(_, name)| name);
        match name.char_indices().nth(63) {
            Some((end, _)) => &name[..end],
            None => name,
        }
    }

    /// The replica's one container (decoding guarantees there is exactly one).
    pub fn container(&self) -> &Container {
        // `from_pb` refuses templates without exactly one container; an
        // Assignment built by hand with none gets a default (empty) container
        // rather than a panic, which the runtimes refuse as an invalid spec.
        static EMPTY: std::sync::OnceLock<Container> = std::sync::OnceLock::new();
        self.template
            .spec
            .containers
            .first()
            .unwrap_or_else(|| EMPTY.get_or_init(Container::default))
    }

    /// How long a stop waits between the polite signal and SIGKILL.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.template.spec.termination_grace_period_seconds,
        ))
    }

    /// The restart backoff for this replica's deployment, and warnings about
    /// annotations that could not be used.
    pub fn backoff_policy(&self) -> (BackoffPolicy, Vec<String>) {
        BackoffPolicy::from_annotations(&self.annotations)
    }
}

/// The templates a node's assignments were decoded from, each decoded and
/// hashed once however many replicas of it the node runs (a hundred replicas
/// of a deployment on a node were a hundred decodes and copies of the same
/// template). Keyed by the JSON as sent; [`Templates::prune`] forgets the
/// ones no assignment holds any more.
#[derive(Debug, Default)]
pub struct Templates(HashMap<Box<[u8]>, Decoded>);

/// One template as decoded and checked, shared by its assignments.
#[derive(Debug, Clone)]
struct Decoded {
    template: Arc<PodTemplate>,
    json: Arc<str>,
    /// SHA-256 of the JSON, hex.
    spec_hash: String,
}

impl Templates {
    /// The template `json` decodes to, checked for what every runtime relies
    /// on (UTF-8, it parses, exactly one container).
    fn decode(&mut self, json: &[u8]) -> Result<Decoded, AgentError> {
        if let Some(known) = self.0.get(json) {
            return Ok(known.clone());
        }
        let decoded = decode_template(json)?;
        self.0.insert(json.into(), decoded.clone());
        Ok(decoded)
    }

    /// Forget the templates only this cache still holds.
    pub fn prune(&mut self) {
        self.0.retain(|_, d| Arc::strong_count(&d.template) > 1);
    }

    /// How many distinct templates are kept.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn decode_template(bytes: &[u8]) -> Result<Decoded, AgentError> {
    let json = std::str::from_utf8(bytes)
        .map_err(|e| AgentError::InvalidSpec(format!("the pod template is not UTF-8: {e}")))?;
    let template: PodTemplate = serde_json::from_str(json)
        .map_err(|e| AgentError::InvalidSpec(format!("the pod template does not decode: {e}")))?;
    if template.spec.containers.len() != 1 {
        return Err(AgentError::InvalidSpec(format!(
            "a replica must have exactly one container, this one has {}",
            template.spec.containers.len()
        )));
    }
    let spec_hash =
        Sha256::digest(json.as_bytes())
            .iter()
            .fold(String::with_capacity(64), |mut hex, b| {
                use std::fmt::Write;
                let _ = write!(hex, "{b:02x}");
                hex
            });
    Ok(Decoded {
        template: Arc::new(template),
        json: Arc::from(json),
        spec_hash,
    })
}

/// Whether a decoded map holds exactly the wire map's entries.
fn same_map<'a>(
    mine: &BTreeMap<String, String>,
    wire: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> bool {
    let mut n = 0;
    let all_mine = wire.into_iter().all(|(k, v)| {
        n += 1;
        mine.get(k) == Some(v)
    });
    all_mine && n == mine.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn the_host_name_is_the_replica_name_without_its_namespace() {
        let a = fixtures::assignment("default.web-1a2b3-0");
        assert_eq!(a.hostname(), "web-1a2b3-0");
        let bare = fixtures::assignment("web-1a2b3-0");
        assert_eq!(bare.hostname(), "web-1a2b3-0");
        let long = fixtures::assignment(&format!("default.{}", "x".repeat(80)));
        assert_eq!(long.hostname().len(), 63, "a DNS label at most");
    }

    /// Replicas of one template share its decoded form; a template no
    /// assignment holds any more is forgotten.
    #[test]
    fn a_template_is_decoded_once_for_all_its_replicas_and_forgotten_after_them() {
        let mut templates = Templates::default();
        let decode = |name: &str, templates: &mut Templates| {
            let wire = fixtures::to_pb(&fixtures::assignment(name));
            Assignment::from_pb_after(wire, None, templates).expect("decodes")
        };
        let a = decode("web-1a2b3-0", &mut templates);
        let b = decode("web-1a2b3-1", &mut templates);
        assert!(Arc::ptr_eq(&a.template, &b.template));
        assert!(Arc::ptr_eq(&a.template_json, &b.template_json));
        assert_eq!(a.spec_hash, b.spec_hash);
        assert_eq!(
            a,
            Assignment::from_pb(fixtures::to_pb(&a)).expect("decodes")
        );
        assert_eq!(templates.len(), 1);

        let mut other = fixtures::assignment("api-9f8e7-0");
        other.template_mut().spec.containers[0].image = "drover/busybox:2".into();
        let other = Assignment::from_pb_after(fixtures::to_pb(&other), None, &mut templates)
            .expect("decodes");
        assert_eq!(templates.len(), 2);
        drop((a, b));
        templates.prune();
        assert_eq!(templates.len(), 1, "web's template is held by nothing");
        drop(other);
        templates.prune();
        assert!(templates.is_empty());

        let mut none = fixtures::assignment("web-1a2b3-0");
        none.template_mut().spec.containers.clear();
        let none = fixtures::to_pb(&none);
        let Err((replica, e)) = Assignment::from_pb_after(none, None, &mut templates) else {
            panic!("a template without a container decoded");
        };
        assert_eq!(replica, "web-1a2b3-0");
        assert!(e.to_string().contains("exactly one container"), "{e}");
        assert!(templates.is_empty(), "a refused template is not kept");
    }

    #[test]
    fn a_repeated_assignment_is_kept_and_a_changed_one_decoded_again() {
        let wire = fixtures::to_pb(&fixtures::assignment("web-1a2b3-0"));
        let first = Assignment::from_pb(wire.clone()).expect("decodes");
        // A mark decoding would not reproduce shows which one came back.
        let marked = || Assignment {
            spec_hash: "kept".into(),
            ..first.clone()
        };
        let again =
            Assignment::from_pb_after(wire.clone(), Some(marked()), &mut Templates::default())
                .expect("decodes");
        assert_eq!(
            again.spec_hash, "kept",
            "the same wire assignment is not decoded again"
        );

        type Change = fn(&mut pb::Assignment);
        let changes: [(&str, Change); 5] = [
            ("template", |w| {
                let json = String::from_utf8_lossy(&w.template_json).replace("busybox", "nginx");
                w.template_json = json.into_bytes().into();
            }),
            ("annotation", |w| {
                w.annotations
                    .insert("drover.io/restart-backoff-max".into(), "10s".into());
            }),
            ("service variable", |w| {
                w.service_env
                    .insert("WEB_SERVICE_HOST".into(), "10.96.0.1".into());
            }),
            ("slot", |w| w.slot += 1),
            ("deployment", |w| w.deployment.push('x')),
        ];
        for (what, change) in changes {
            let mut changed = wire.clone();
            change(&mut changed);
            let decoded = Assignment::from_pb_after(
                changed.clone(),
                Some(marked()),
                &mut Templates::default(),
            )
            .expect("decodes");
            assert_ne!(
                decoded.spec_hash, "kept",
                "a changed {what} is decoded again"
            );
            assert_eq!(
                decoded,
                Assignment::from_pb(changed).expect("decodes"),
                "{what}"
            );
        }
    }
}
