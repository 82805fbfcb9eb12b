//! Splits a file into YAML documents and loads each into a [`Node`] tree,
//! keeping what the strict decoder needs and `serde_norway`'s own `Value`
//! loses or refuses without a path:
//!
//! - mapping entries stay in order, duplicates included, so the decoder can
//!   refuse a duplicate key naming its path;
//! - merge keys (`<<: *base`) are applied here, as YAML 1.1 and Kubernetes
//!   (go-yaml) do: explicit keys win over merged ones, earlier merges win over
//!   later ones;
//! - custom tags (`!foo`) are refused.
//!
//! Bounds, so that no input can blow the stack, the heap or the clock:
//!
//! - `serde_norway` refuses nesting deeper than 128 levels and caps alias jumps;
//! - a file may produce at most [`NODE_BUDGET_BASE`] + its length in nodes,
//!   which a file without aliases cannot exceed (the densest YAML, `{a,b,c}`,
//!   spends a byte per node) but an alias bomb ("billion laughs") does, quickly;
//! - and at most [`NODE_BUDGET_BASE`] + twice its length in bytes of strings
//!   (keys and scalars): no scalar decodes to more than 1.5 times its text
//!   (the escape `\L` is the worst), so only aliases can exceed it (a 2 MiB anchored scalar referenced many times would stay
//!   under the node budget yet expand to terabytes);
//! - libyaml's scanner spends time proportional to the current flow nesting
//!   (`[`, `{`) on every token, so `{a: {a: {a: …` costs the square of its
//!   length before the nesting limit can apply. [`check_flow_cost`] bounds
//!   that cost from above before libyaml sees the text.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, Visitor};

/// Nodes every file may use beyond one per byte.
const NODE_BUDGET_BASE: usize = 10_000;

/// Most scanner work [`check_flow_cost`] lets through, in (byte × open
/// bracket) units: about a quarter of a second of libyaml time, and far above
/// any Deployment (a 10 KB JSON Deployment with 200 brackets costs 10^6).
const MAX_FLOW_COST: u64 = 100_000_000;

/// Refuses text whose flow collections could make libyaml's scanner slow.
///
/// Within a document the scanner's flow level never exceeds the number of `[`
/// and `{` seen so far, and every token costs at most that much, so the sum
/// over all bytes of "brackets opened so far in this document" bounds the
/// work from above. Brackets inside strings and comments count too: the bound
/// is loose but cannot be fooled. A `---` or `...` line ends a document (libyaml
/// stops any collection or scalar there), so the count starts again after it.
pub(crate) fn check_flow_cost(text: &str) -> Result<(), String> {
    let mut cost: u64 = 0;
    let mut opened: u64 = 0;
    for line in text.split_inclusive('\n') {
        let marker = line.starts_with("---") || line.starts_with("...");
        if marker
            && line
                .as_bytes()
                .get(3)
                .is_none_or(|b| b.is_ascii_whitespace())
        {
            opened = 0;
        }
        for byte in line.bytes() {
            opened += u64::from(matches!(byte, b'[' | b'{'));
            cost += opened;
        }
        if cost > MAX_FLOW_COST {
            return Err(
                "a document has too many '[' and '{' for its length to be parsed safely; \
                 write large documents in block style (indentation) rather than flow style"
                    .to_string(),
            );
        }
    }
    Ok(())
}

/// A loaded YAML value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    /// Integers; those beyond `i64` (up to `u64::MAX`) are [`Node::UInt`].
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order; keys may repeat.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// "a string", "a list", … for messages like `expected an object, found a list`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Int(_) | Node::UInt(_) | Node::Float(_) => "a number",
            Node::Str(_) => "a string",
            Node::Seq(_) => "a list",
            Node::Map(_) => "an object",
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of the first entry with string key `key`, if this is a mapping.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// The documents of one file, in order. Yields `Ok(None)` for an empty
/// document (nothing, or only comments, between `---` markers), and ends after
/// the first syntax error, which it yields as `Err(message)`.
pub(crate) struct Documents<'a> {
    stream: Option<serde_norway::Deserializer<'a>>,
    budget: Cell<usize>,
    /// Bytes of decoded strings the file may still produce.
    bytes: Cell<usize>,
}

impl<'a> Documents<'a> {
    pub(crate) fn new(text: &'a str) -> Documents<'a> {
        Documents {
            stream: Some(serde_norway::Deserializer::from_str(text)),
            budget: Cell::new(NODE_BUDGET_BASE + text.len()),
            // Twice the text: escapes like `\L` (2 bytes → 3) may grow a little.
            bytes: Cell::new(NODE_BUDGET_BASE + 2 * text.len()),
        }
    }
}

impl Iterator for Documents<'_> {
    type Item = Result<Option<Node>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let document = self.stream.as_mut()?.next()?;
        let seed = NodeSeed {
            budget: &self.budget,
            bytes: &self.bytes,
        };
        match seed.deserialize(document) {
            Ok(Node::Null) => Some(Ok(None)),
            Ok(node) => Some(Ok(Some(node))),
            Err(error) => {
                // libyaml cannot resume after an error: every later "document"
                // would repeat it.
                self.stream = None;
                Some(Err(error.to_string()))
            }
        }
    }
}

/// Deserialises one [`Node`], spending one unit of the file's budget per node.
#[derive(Clone, Copy)]
struct NodeSeed<'b> {
    budget: &'b Cell<usize>,
    bytes: &'b Cell<usize>,
}

impl NodeSeed<'_> {
    fn spend<E: de::Error>(&self) -> Result<(), E> {
        match self.budget.get().checked_sub(1) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => Err(E::custom(
                "the file expands to too many YAML nodes (are aliases expanding exponentially?)",
            )),
        }
    }
}

impl NodeSeed<'_> {
    /// A string node: one node and its length in bytes.
    fn spend_str<E: de::Error>(&self, len: usize) -> Result<(), E> {
        self.spend()?;
        match self.bytes.get().checked_sub(len) {
            Some(left) => {
                self.bytes.set(left);
                Ok(())
            }
            None => Err(E::custom(
                "the file expands to more text than it holds (are aliases repeating a large value?)",
            )),
        }
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Node;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        self.spend()?;
        Ok(Node::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        self.visit_unit()
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        self.spend()?;
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        self.spend()?;
        Ok(Node::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        self.spend()?;
        Ok(i64::try_from(v).map_or(Node::UInt(v), Node::Int))
    }

    // Integers beyond 64 bits are out of range for every field; as floats
    // they still read as "a number" in messages and as a quantity's digits.
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        self.visit_f64(v as f64)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        self.visit_f64(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        self.spend()?;
        Ok(Node::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        self.spend_str(v.len())?;
        Ok(Node::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        self.spend_str(v.len())?;
        Ok(Node::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        self.spend()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        self.spend()?;
        let mut entries = Vec::new();
        let mut merges = Vec::new();
        while let Some(key) = map.next_key_seed(self)? {
            let value = map.next_value_seed(self)?;
            if key.as_str() == Some("<<") {
                merges.push(value);
            } else {
                entries.push((key, value));
            }
        }
        if !merges.is_empty() {
            apply_merges(&mut entries, merges).map_err(de::Error::custom)?;
        }
        Ok(Node::Map(entries))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Node, A::Error> {
        let (tag, _) = data.variant::<String>()?;
        Err(de::Error::custom(format!(
            "YAML tag !{tag} is not supported"
        )))
    }
}

/// Appends the entries of `<<` values whose keys are not there yet.
fn apply_merges(entries: &mut Vec<(Node, Node)>, merges: Vec<Node>) -> Result<(), &'static str> {
    const SHAPE: &str = "a merge key (<<) takes a mapping or a list of mappings";
    let mut present: HashSet<String> = entries
        .iter()
        .filter_map(|(k, _)| k.as_str().map(str::to_string))
        .collect();
    let mut merge_one = |source: Node| match source {
        Node::Map(merged) => {
            for (key, value) in merged {
                let fresh = match key.as_str() {
                    Some(name) => present.insert(name.to_string()),
                    None => true,
                };
                if fresh {
                    entries.push((key, value));
                }
            }
            Ok(())
        }
        _ => Err(SHAPE),
    };
    for merge in merges {
        match merge {
            Node::Seq(sources) => sources.into_iter().try_for_each(&mut merge_one)?,
            source => merge_one(source)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Vec<Result<Option<Node>, String>> {
        Documents::new(text).collect()
    }

    fn s(text: &str) -> Node {
        Node::Str(text.to_string())
    }

    #[test]
    fn keeps_duplicate_keys_in_order() {
        let docs = load("a: 1\nb: 2\na: 3\n");
        let expected = Node::Map(vec![
            (s("a"), Node::Int(1)),
            (s("b"), Node::Int(2)),
            (s("a"), Node::Int(3)),
        ]);
        assert_eq!(docs, vec![Ok(Some(expected))]);
    }

    #[test]
    fn counts_empty_documents() {
        let docs = load("a: 1\n---\n# only a comment\n---\nb: 2\n---\n");
        assert_eq!(docs.len(), 4);
        assert_eq!(docs[1], Ok(None));
        assert_eq!(docs[3], Ok(None));
        assert_eq!(load(""), vec![Ok(None)]);
    }

    #[test]
    fn dense_files_stay_within_the_node_budget() {
        let keys: Vec<String> = (0..200_000).map(|i| format!("k{i}")).collect();
        let docs = load(&format!("{{{}}}", keys.join(",")));
        assert!(matches!(&docs[..], [Ok(Some(Node::Map(entries)))] if entries.len() == 200_000));
    }

    #[test]
    fn applies_merge_keys() {
        let docs = load("base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n");
        let Ok(Some(root)) = &docs[0] else {
            panic!("{docs:?}")
        };
        let derived = root.get("derived").cloned();
        let expected = Node::Map(vec![(s("y"), Node::Int(3)), (s("x"), Node::Int(1))]);
        assert_eq!(derived, Some(expected));
    }

    #[test]
    fn flow_cost_restarts_at_document_markers() {
        let nested = "{a: ".repeat(5_000);
        let text = "x".repeat(20_000);
        assert!(check_flow_cost(&nested).is_ok());
        assert!(check_flow_cost(&"{a: ".repeat(8_000)).is_err());
        // Every byte after the brackets costs as much as the brackets opened before it…
        assert!(check_flow_cost(&format!("{nested}\n# {text}")).is_err());
        assert!(check_flow_cost(&format!("{nested}\n---x\n{text}")).is_err());
        // … within the document only.
        assert!(check_flow_cost(&format!("{nested}\n---\n{text}")).is_ok());
        assert!(check_flow_cost(&format!("{nested}\n... # end\n{text}")).is_ok());
    }

    #[test]
    fn refuses_tags_and_stops_after_syntax_errors() {
        let docs = load("a: !custom 1\n");
        assert!(
            matches!(&docs[0], Err(e) if e.contains("YAML tag !custom")),
            "{docs:?}"
        );
        let docs = load("a: 1\n---\nb: [1\n---\nc: 3\n");
        assert_eq!(docs.len(), 2);
        assert!(docs[1].is_err());
    }
}
