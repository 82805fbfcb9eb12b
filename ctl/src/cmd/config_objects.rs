//! ConfigMaps and Secrets for `get`, `describe`, `delete` and `diff`.
//!
//! ```text
//!  get configmaps|cm              ListConfigMaps         NAME  DATA  AGE
//!  get secrets                    ListSecrets (no values) NAME  TYPE  DATA  AGE
//!  get secret -o yaml|json|...    RevealSecrets (admins)  data base64, as kubectl
//!  describe secret                ListSecrets             key names and sizes only
//!  delete configmap|secret NAME   DeleteConfigObjects
//! ```
//!
//! A Secret's values are fetched only for the formats that print them, and
//! only from `RevealSecrets`, which the controllers allow to admins alone.

use std::fmt::Write as _;

use anyhow::Context as _;
use drover_manifest::{self as manifest, ConfigMap, Secret};
use drover_proto::pb;
use serde_json::{json, Value};

use crate::client::{Client, ClientError};
use crate::output::{self, age, rfc1123z, rfc3339, Table};
use crate::resource::ResourceKind;

/// A stored ConfigMap or Secret and its model.
#[derive(Clone)]
pub struct Item {
    pub record: pb::ConfigRecord,
    pub object: Object,
}

#[derive(Clone)]
pub enum Object {
    ConfigMap(ConfigMap),
    Secret(Secret),
}

/// The objects of `kind` in `namespace` ("" = all), by name when `names`
/// is not empty; `reveal` asks for Secret values.
pub async fn list(
    client: &mut Client,
    kind: ResourceKind,
    namespace: &str,
    names: &[String],
    labels: &str,
    reveal: bool,
    read: Option<pb::ReadOptions>,
) -> anyhow::Result<Vec<Item>> {
    let request = pb::ListConfigRequest {
        namespace: namespace.to_string(),
        read,
        names: names.to_vec(),
        label_selector: labels.to_string(),
        // ConfigMaps and Secrets come in one page.
        limit: 0,
        continue_token: String::new(),
    };
    let response = match kind {
        ResourceKind::ConfigMap => {
            client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.list_config_maps(request).await }
                })
                .await
        }
        ResourceKind::Secret if reveal => {
            client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.reveal_secrets(request).await }
                })
                .await
        }
        _ => {
            client
                .call(|mut c| {
                    let request = request.clone();
                    async move { c.list_secrets(request).await }
                })
                .await
        }
    }
    .map_err(anyhow::Error::from)?;
    let mut items = response
        .objects
        .into_iter()
        .map(|record| item(kind, record))
        .collect::<anyhow::Result<Vec<_>>>()?;
    items.sort_by(|a, b| {
        (&a.record.namespace, &a.record.name).cmp(&(&b.record.namespace, &b.record.name))
    });
    Ok(items)
}

/// A record as the controller sent it, with its model read from its JSON.
pub fn item(kind: ResourceKind, record: pb::ConfigRecord) -> anyhow::Result<Item> {
    let object = match kind {
        ResourceKind::ConfigMap => {
            Object::ConfigMap(serde_json::from_str(&record.json).with_context(|| {
                format!(
                    "the controller sent a configmap {:?} this droverctl cannot read",
                    record.name
                )
            })?)
        }
        _ => Object::Secret(serde_json::from_str(&record.json).with_context(|| {
            format!(
                "the controller sent a secret {:?} this droverctl cannot read",
                record.name
            )
        })?),
    };
    Ok(Item { record, object })
}

/// `NAME DATA AGE` (ConfigMaps) or `NAME TYPE DATA AGE` (Secrets).
pub fn table(kind: ResourceKind, items: &[Item], all_namespaces: bool, now_ms: i64) -> String {
    let mut t = Table::new(headers(kind, all_namespaces));
    for item in items {
        t.push(row(item, all_namespaces, now_ms));
    }
    t.render()
}

/// The table's headers: `[NAMESPACE] NAME [TYPE] DATA AGE`.
pub fn headers(kind: ResourceKind, all_namespaces: bool) -> Vec<&'static str> {
    let mut headers = Vec::new();
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.push("NAME");
    if kind == ResourceKind::Secret {
        headers.push("TYPE");
    }
    headers.extend(["DATA", "AGE"]);
    headers
}

/// One object's row of [`table`].
pub fn row(item: &Item, all_namespaces: bool, now_ms: i64) -> Vec<String> {
    let mut row = Vec::new();
    if all_namespaces {
        row.push(item.record.namespace.clone());
    }
    row.push(item.record.name.clone());
    if let Object::Secret(s) = &item.object {
        row.push(s.kind.clone());
    }
    row.push(item.record.sizes.len().to_string());
    row.push(age(item.record.created_unix_ms, now_ms));
    row
}

/// `configmap/app`, one per line.
pub fn names(kind: ResourceKind, items: &[Item]) -> String {
    items
        .iter()
        .map(|i| format!("{}\n", kind.slash_name(&i.record.name)))
        .collect()
}

/// The object as `kubectl get -o yaml|json` prints it (a Secret's data
/// base64, when it was revealed).
pub fn kubernetes_object(item: &Item) -> Value {
    let mut obj = match &item.object {
        Object::ConfigMap(c) => manifest::render_config_map(c),
        Object::Secret(s) => manifest::render_secret(s, false),
    };
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if item.record.created_unix_ms > 0 {
            meta.insert(
                "creationTimestamp".into(),
                json!(rfc3339(item.record.created_unix_ms)),
            );
        }
        meta.insert("generation".into(), json!(item.record.generation));
    }
    obj
}

/// `describe`'s first lines for an object sent as a record: name,
/// namespace, creation time, labels and annotations, as kubectl prints them.
pub fn describe_metadata(
    w: &mut String,
    r: &pb::ConfigRecord,
    labels: &std::collections::BTreeMap<String, String>,
    annotations: &std::collections::BTreeMap<String, String>,
) {
    let _ = writeln!(w, "Name:\t{}", r.name);
    let _ = writeln!(w, "Namespace:\t{}", r.namespace);
    if r.created_unix_ms > 0 {
        let _ = writeln!(w, "CreationTimestamp:\t{}", rfc1123z(r.created_unix_ms));
    }
    let pairs = |map: &std::collections::BTreeMap<String, String>, sep: &str| -> Vec<String> {
        map.iter().map(|(k, v)| format!("{k}{sep}{v}")).collect()
    };
    for (key, values) in [
        ("Labels", pairs(labels, "=")),
        ("Annotations", pairs(annotations, ": ")),
    ] {
        match values.split_first() {
            None => {
                let _ = writeln!(w, "{key}:\t<none>");
            }
            Some((first, rest)) => {
                let _ = writeln!(w, "{key}:\t{first}");
                for v in rest {
                    let _ = writeln!(w, "\t{v}");
                }
            }
        }
    }
}

/// `describe configmap|secret`: a ConfigMap's data in full, a Secret's key
/// names and sizes only, as kubectl shows them.
pub fn describe(item: &Item) -> String {
    let r = &item.record;
    let mut w = String::new();
    let (meta, immutable) = match &item.object {
        Object::ConfigMap(c) => (&c.metadata, c.immutable),
        Object::Secret(s) => (&s.metadata, s.immutable),
    };
    describe_metadata(&mut w, r, &meta.labels, &meta.annotations);
    if immutable {
        let _ = writeln!(w, "Immutable:\ttrue");
    }
    match &item.object {
        Object::ConfigMap(c) => {
            let _ = writeln!(w, "\nData\n====");
            for (k, v) in &c.data {
                let _ = writeln!(w, "{k}:\n----\n{v}\n");
            }
            let _ = writeln!(w, "\nBinaryData\n====");
            for (k, v) in &c.binary_data {
                let _ = writeln!(w, "{k}: {} bytes", v.0.len());
            }
        }
        Object::Secret(s) => {
            let _ = writeln!(w, "\nType:\t{}", s.kind);
            let _ = writeln!(w, "\nData\n====");
            for (k, size) in &r.sizes {
                let _ = writeln!(w, "{k}:\t{size} bytes");
            }
        }
    }
    output::align_tabs(&w)
}

/// Delete ConfigMaps or Secrets by name; returns the `configmap "x" deleted` lines.
pub async fn delete(
    client: &mut Client,
    kind: ResourceKind,
    namespace: &str,
    names: &[String],
    ignore_not_found: bool,
) -> Result<String, ClientError> {
    let request = pb::DeleteConfigRequest {
        kind: match kind {
            ResourceKind::Secret => pb::ConfigKind::Secret,
            _ => pb::ConfigKind::ConfigMap,
        } as i32,
        namespace: namespace.to_string(),
        names: names.to_vec(),
        ignore_not_found,
    };
    let response = client
        .call(|mut c| {
            let request = request.clone();
            async move { c.delete_config_objects(request).await }
        })
        .await?;
    Ok(response
        .deleted
        .iter()
        .map(|name| format!("{} deleted\n", kind.quoted_name(name)))
        .collect())
}

/// What `diff` compares for a Secret: every value masked, and marked
/// `(before)`/`(after)` where they differ, as kubectl's diff does.
pub fn masked_pair(live: Option<&Secret>, new: &Secret) -> (Option<Value>, Value) {
    let render = |s: &Secret, other: Option<&Secret>, mark: &str| {
        let mut v = manifest::render_secret(s, true);
        if let Some(data) = v.get_mut("data").and_then(Value::as_object_mut) {
            for (k, value) in data.iter_mut() {
                let differs = other.is_none_or(|o| o.data.get(k) != s.data.get(k));
                if differs {
                    *value = json!(format!("*** ({mark})"));
                }
            }
        }
        v
    };
    (
        live.map(|l| render(l, Some(new), "before")),
        render(new, live, "after"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_manifest::{Bytes, ObjectMeta};

    fn secret(value: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: "db".into(),
                namespace: "default".into(),
                ..Default::default()
            },
            kind: "Opaque".into(),
            data: [
                ("password".to_string(), Bytes(value.as_bytes().to_vec())),
                ("user".to_string(), Bytes(b"admin".to_vec())),
            ]
            .into(),
            immutable: false,
        }
    }

    fn item(object: Object, sizes: &[(&str, u64)]) -> Item {
        Item {
            record: pb::ConfigRecord {
                namespace: "default".into(),
                name: "db".into(),
                json: String::new(),
                generation: 2,
                created_unix_ms: 1_717_243_200_000,
                updated_unix_ms: 1_717_243_200_000,
                sizes: sizes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            },
            object,
        }
    }

    #[test]
    fn a_secret_reads_as_kubectl_shows_it_without_its_values() {
        // As ListSecrets answers: no data, sizes only.
        let mut listed = secret("");
        listed.data.clear();
        let i = item(Object::Secret(listed), &[("password", 6), ("user", 5)]);
        let text = describe(&i);
        assert!(text.contains("password:  6 bytes"), "{text}");
        assert!(text.contains("Type:  Opaque"), "{text}");
        let t = table(ResourceKind::Secret, &[i], false, 1_717_243_260_000);
        assert_eq!(
            t,
            "NAME   TYPE     DATA   AGE\ndb     Opaque   2      60s\n"
        );
    }

    #[test]
    fn a_secret_diff_masks_every_value_and_marks_the_changed_ones() {
        let (before, after) = masked_pair(Some(&secret("one")), &secret("two"));
        let before = serde_json::to_string(&before).expect("json");
        let after = serde_json::to_string(&after).expect("json");
        for text in [&before, &after] {
            assert!(!text.contains("one") && !text.contains("two"), "{text}");
            assert!(
                !text.contains("b25l") && !text.contains("dHdv"),
                "base64 too: {text}"
            );
        }
        assert!(before.contains("\"password\":\"*** (before)\""), "{before}");
        assert!(after.contains("\"password\":\"*** (after)\""), "{after}");
        assert!(
            after.contains("\"user\":\"***\""),
            "unchanged values stay plain ***: {after}"
        );
    }
}
