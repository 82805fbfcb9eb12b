//! `-o jsonpath=TEMPLATE` and `-o custom-columns=SPEC`: kubectl's template
//! dialect over the same Kubernetes-shaped objects `-o json` prints.
//!
//! ```text
//!  {range .items[*]}{.metadata.name}{"\t"}{.status.readyReplicas}{"\n"}{end}
//!  └─ range/end ───┘└─ path ────────┘└─ literal ┘
//! ```
//!
//! A template is literal text and `{...}` segments: a path, a quoted string
//! literal (`{"\n"}`), `{range PATH}` ... `{end}`. A path is kubectl's
//! (`.a.b`, `..name`, `[0]`, `[*]`, `[1:3]`, `[?(@.x=="y")]`, `\.` for a dot
//! inside a key); it is translated to RFC 9535 and evaluated by
//! `serde_json_path`, not by code of our own. As with `kubectl get`, a path
//! that matches nothing prints nothing; several matches print space
//! separated; strings print raw and anything else as compact JSON.

use serde_json::Value;
use serde_json_path::JsonPath;

/// A parsed `-o jsonpath` template.
#[derive(Debug, Clone)]
pub struct Template {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone)]
enum Segment {
    Text(String),
    Path(JsonPath),
    Range(JsonPath, Vec<Segment>),
}

/// Why a template or a path is refused, with the template named.
fn error(template: &str, reason: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid jsonpath template {template:?}: {reason}")
}

impl Template {
    /// Parse kubectl's template syntax.
    pub fn parse(template: &str) -> anyhow::Result<Template> {
        let mut stack: Vec<(JsonPath, Vec<Segment>)> = Vec::new();
        let mut current: Vec<Segment> = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                current.push(Segment::Text(rest.to_string()));
                break;
            };
            if open > 0 {
                current.push(Segment::Text(rest[..open].to_string()));
            }
            let inner_start = open + 1;
            let close = find_close(&rest[inner_start..])
                .ok_or_else(|| error(template, "a '{' without its '}'"))?;
            let inner = rest[inner_start..inner_start + close].trim();
            rest = &rest[inner_start + close + 1..];
            if inner == "end" {
                let (path, body) = stack
                    .pop()
                    .ok_or_else(|| error(template, "{end} without a {range ...}"))?;
                let finished = std::mem::replace(&mut current, body);
                current.push(Segment::Range(path, finished));
            } else if let Some(path) = inner.strip_prefix("range ") {
                let path = compile(path.trim()).map_err(|e| error(template, e))?;
                stack.push((path, std::mem::take(&mut current)));
            } else if inner.starts_with('"') {
                let text: String = serde_json::from_str(inner)
                    .map_err(|_| error(template, format!("{inner} is not a quoted string")))?;
                current.push(Segment::Text(text));
            } else if inner.is_empty() {
                return Err(error(template, "an empty {}"));
            } else {
                let path = compile(inner).map_err(|e| error(template, e))?;
                current.push(Segment::Path(path));
            }
        }
        if !stack.is_empty() {
            return Err(error(template, "a {range ...} without its {end}"));
        }
        Ok(Template { segments: current })
    }

    /// kubectl's relaxed form for custom columns and `wait --for=jsonpath`:
    /// `.a.b`, `{.a.b}` or `a.b` all name the same path.
    pub fn parse_relaxed(path: &str) -> anyhow::Result<Template> {
        let path = path.trim();
        if path.starts_with('{') {
            return Template::parse(path);
        }
        let dotted = if path.starts_with('.') || path.starts_with('$') || path.starts_with('[') {
            path.to_string()
        } else {
            format!(".{path}")
        };
        Template::parse(&format!("{{{dotted}}}"))
    }

    /// The text the template makes of `root`.
    pub fn render(&self, root: &Value) -> String {
        let mut out = String::new();
        render_segments(&self.segments, root, &mut out);
        out
    }

    /// The values the template's paths select in `root`, for custom columns
    /// and `wait`: None when nothing matched.
    pub fn values(&self, root: &Value) -> Option<Vec<String>> {
        let mut found = Vec::new();
        collect(&self.segments, root, &mut found);
        (!found.is_empty()).then_some(found)
    }
}

fn render_segments(segments: &[Segment], node: &Value, out: &mut String) {
    for s in segments {
        match s {
            Segment::Text(t) => out.push_str(t),
            Segment::Path(p) => {
                let texts: Vec<String> = p.query(node).all().into_iter().map(text_of).collect();
                out.push_str(&texts.join(" "));
            }
            Segment::Range(p, body) => {
                for item in p.query(node).all() {
                    render_segments(body, item, out);
                }
            }
        }
    }
}

fn collect(segments: &[Segment], node: &Value, found: &mut Vec<String>) {
    for s in segments {
        match s {
            Segment::Text(_) => {}
            Segment::Path(p) => found.extend(p.query(node).all().into_iter().map(text_of)),
            Segment::Range(p, body) => {
                for item in p.query(node).all() {
                    collect(body, item, found);
                }
            }
        }
    }
}

/// A string raw, anything else as compact JSON (kubectl's printing).
pub fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `}` that ends a segment, skipping those inside quotes and brackets.
fn find_close(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '[' | '(' => depth += 1,
            ']' | ')' => depth = depth.saturating_sub(1),
            '}' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

/// A kubectl path (`.a.b[*]`, `..x`, `.metadata.labels.app\.kubernetes\.io/name`)
/// as an RFC 9535 query, compiled.
fn compile(path: &str) -> Result<JsonPath, String> {
    let query = to_rfc9535(path)?;
    JsonPath::parse(&query).map_err(|e| format!("{path:?}: {e}"))
}

/// Translate kubectl's path syntax: member names become `['name']` (so `/`,
/// `-` and escaped dots are fine), brackets are kept as written (RFC 9535
/// reads kubectl's indexes, slices, wildcards and `?(@.x=="y")` filters).
fn to_rfc9535(path: &str) -> Result<String, String> {
    let mut out = String::from("$");
    let body = path
        .strip_prefix('$')
        .or_else(|| path.strip_prefix('@'))
        .unwrap_or(path);
    let chars: Vec<char> = body.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                let descendant = chars.get(i + 1) == Some(&'.');
                i += if descendant { 2 } else { 1 };
                if descendant {
                    out.push_str("..");
                }
                if chars.get(i) == Some(&'[') {
                    continue;
                }
                if chars.get(i) == Some(&'*') {
                    out.push_str(if descendant { "*" } else { "[*]" });
                    i += 1;
                    continue;
                }
                let mut name = String::new();
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    if chars[i] == '\\' && chars.get(i + 1) == Some(&'.') {
                        name.push('.');
                        i += 2;
                    } else {
                        name.push(chars[i]);
                        i += 1;
                    }
                }
                if name.is_empty() {
                    if i >= chars.len() && !descendant {
                        // `{.}`: the current object itself.
                        continue;
                    }
                    return Err(format!("{path:?} has an empty member name"));
                }
                let quoted = serde_json::to_string(&name).map_err(|e| e.to_string())?;
                out.push('[');
                out.push_str(&quoted);
                out.push(']');
            }
            '[' => {
                let close = find_bracket_end(&chars, i)
                    .ok_or_else(|| format!("{path:?} has a '[' without its ']'"))?;
                out.extend(&chars[i..=close]);
                i = close + 1;
            }
            c => {
                return Err(format!(
                    "{path:?}: expected '.' or '[' before {c:?} (paths look like .metadata.name)"
                ))
            }
        }
    }
    Ok(out)
}

/// The index of the `]` closing the `[` at `open`, skipping quoted text and nesting.
fn find_bracket_end(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, &c) in chars.iter().enumerate().skip(open) {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// `-o custom-columns=NAME:.metadata.name,READY:.status.readyReplicas`.
#[derive(Debug, Clone)]
pub struct CustomColumns {
    columns: Vec<(String, Template)>,
}

impl CustomColumns {
    pub fn parse(spec: &str) -> anyhow::Result<CustomColumns> {
        let mut columns = Vec::new();
        for part in split_columns(spec) {
            let Some((header, path)) = part.split_once(':') else {
                anyhow::bail!(
                    "invalid custom-columns {spec:?}: {part:?} is not HEADER:PATH (e.g. NAME:.metadata.name)"
                );
            };
            if header.trim().is_empty() || path.trim().is_empty() {
                anyhow::bail!(
                    "invalid custom-columns {spec:?}: {part:?} needs a header and a path"
                );
            }
            columns.push((header.trim().to_string(), Template::parse_relaxed(path)?));
        }
        if columns.is_empty() {
            anyhow::bail!("custom-columns needs at least one HEADER:PATH");
        }
        Ok(CustomColumns { columns })
    }

    /// A table of `objects`, `<none>` where a path matches nothing, several
    /// matches joined with commas (as kubectl).
    pub fn render(&self, objects: &[Value]) -> String {
        let mut t = super::Table::new(self.columns.iter().map(|(h, _)| h.clone()));
        for o in objects {
            t.push(
                self.columns
                    .iter()
                    .map(|(_, path)| match path.values(o) {
                        Some(v) => v.join(","),
                        None => super::none(),
                    })
                    .collect(),
            );
        }
        t.render()
    }
}

/// Split at commas outside brackets, quotes and braces.
fn split_columns(spec: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in spec.char_indices() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '[' | '{' | '(' => depth += 1,
            ']' | '}' | ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&spec[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list() -> Value {
        json!({
            "kind": "List",
            "items": [
                { "metadata": { "name": "web-0", "labels": { "app.kubernetes.io/name": "web" } },
                  "spec": { "nodeName": "n1" }, "status": { "state": "Running", "ready": true } },
                { "metadata": { "name": "web-1" },
                  "spec": { "nodeName": "n2" }, "status": { "state": "Pending", "ready": false } },
            ]
        })
    }

    fn render(t: &str, v: &Value) -> String {
        Template::parse(t).expect(t).render(v)
    }

    #[test]
    fn kubectl_templates_render_as_kubectl_prints_them() {
        let v = list();
        assert_eq!(render("{.items[*].metadata.name}", &v), "web-0 web-1");
        assert_eq!(render("{.items[0].status.ready}", &v), "true");
        assert_eq!(
            render(
                r#"{range .items[*]}{.metadata.name}{"\t"}{.spec.nodeName}{"\n"}{end}"#,
                &v
            ),
            "web-0\tn1\nweb-1\tn2\n"
        );
        assert_eq!(
            render(
                r#"{.items[?(@.status.state=="Running")].metadata.name}"#,
                &v
            ),
            "web-0"
        );
        assert_eq!(render("{..nodeName}", &v), "n1 n2");
        assert_eq!(
            render(r"{.items[0].metadata.labels.app\.kubernetes\.io/name}", &v),
            "web"
        );
        assert_eq!(
            render("count: {.items[5].x}!", &v),
            "count: !",
            "missing is empty"
        );
        assert_eq!(render("{.kind}", &v), "List");
        assert_eq!(render("{$.kind}", &v), "List");
        assert_eq!(render("{.items[-1:].metadata.name}", &v), "web-1");
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for (t, words) in [
            ("{.items", "without its '}'"),
            ("{range .items[*]}{.x}", "without its {end}"),
            ("{end}", "{end} without"),
            ("{.items[}", "without its"),
            ("{\"\\q\"}", "quoted string"),
            ("{metadata.name}", "expected '.'"),
        ] {
            let e = Template::parse(t).unwrap_err().to_string();
            assert!(e.contains(words), "{t}: {e}");
            assert!(e.starts_with("invalid jsonpath template"), "{e}");
        }
    }

    #[test]
    fn custom_columns_make_a_table_with_none_for_missing() {
        let c = CustomColumns::parse("NAME:.metadata.name,NODE:{.spec.nodeName},APP:.metadata.labels.app\\.kubernetes\\.io/name").unwrap();
        let items = list()["items"].as_array().unwrap().clone();
        assert_eq!(
            c.render(&items),
            "NAME    NODE   APP\nweb-0   n1     web\nweb-1   n2     <none>\n"
        );
        assert!(CustomColumns::parse("NAME").is_err());
        assert_eq!(
            Template::parse_relaxed("status.ready")
                .unwrap()
                .values(&list()["items"][0]),
            Some(vec!["true".to_string()])
        );
    }
}
