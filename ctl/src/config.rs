//! The contexts file and how it combines with flags and the environment.
//!
//! ```yaml
//! current-context: lab
//! contexts:
//! - name: lab
//!   servers: [127.0.0.1:7001, 127.0.0.2:7001]
//!   namespace: default
//! ```
//!
//! Precedence, highest first:
//! - servers: `--server` > `DROVER_SERVER` > the context's `servers` > `127.0.0.1:7001`;
//! - namespace: `-n` > the context's `namespace` > `default`;
//! - context: `--context` > `current-context`.
//!
//! Keys this version does not know are kept when the file is rewritten, and
//! [`ConfigFile::redacted`] hides anything that looks like a credential before
//! the file is shown.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use drover_pki::{self as pki, Security, TlsMaterial};
use serde::{Deserialize, Serialize};

/// Where the config lives unless `--config` or `DROVERCONFIG` say otherwise.
pub const DEFAULT_CONFIG_PATH: &str = ".config/drover/config.yaml";

/// The controller droverctl talks to when nothing else is configured.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7001";

/// The namespace used when neither `-n` nor the context names one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Shown instead of a credential's value.
const REDACTED: &str = "REDACTED";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
    /// Keys a newer droverctl wrote; kept on rewrite.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_norway::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Context {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The cluster's CA certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The client certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The client key file (a path: the key itself never enters this file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The cluster runs --insecure: plaintext, no authentication.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Keys a newer droverctl wrote; kept on rewrite.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_norway::Value>,
}

/// What `--server`, `--context` and `-n` resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub servers: Vec<String>,
    pub namespace: String,
    /// The context used, if any.
    pub context: Option<String>,
    pub credentials: Credentials,
}

/// How droverctl proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Nothing configured.
    Missing,
    /// `--insecure`, or a context that says so.
    Insecure,
    Tls {
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    },
}

/// The inputs to [`resolve`] that come from flags and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides<'a> {
    pub server_flag: Option<&'a str>,
    pub server_env: Option<&'a str>,
    pub context_flag: Option<&'a str>,
    pub namespace_flag: Option<&'a str>,
    pub ca_flag: Option<&'a Path>,
    pub cert_flag: Option<&'a Path>,
    pub key_flag: Option<&'a Path>,
    pub insecure_flag: bool,
}

/// Combine flags, environment and config file by the precedence above.
pub fn resolve(o: &Overrides<'_>, file: &ConfigFile) -> anyhow::Result<Settings> {
    let context = match o.context_flag {
        Some(name) => Some(
            file.context(name)
                .ok_or_else(|| anyhow::anyhow!("context {name:?} is not in the config file"))?,
        ),
        None => file
            .current_context
            .as_deref()
            .filter(|name| !name.is_empty())
            .and_then(|name| file.context(name)),
    };
    let servers = if let Some(flag) = non_empty(o.server_flag) {
        parse_servers(flag).context("--server")?
    } else if let Some(env) = non_empty(o.server_env) {
        parse_servers(env).context("DROVER_SERVER")?
    } else if let Some(ctx) = context.filter(|c| !c.servers.is_empty()) {
        ctx.servers
            .iter()
            .map(|s| normalize_server(s))
            .collect::<anyhow::Result<_>>()
            .with_context(|| format!("context {:?}", ctx.name))?
    } else {
        vec![DEFAULT_SERVER.to_string()]
    };
    let namespace = o
        .namespace_flag
        .map(str::to_string)
        .or_else(|| context.and_then(|c| c.namespace.clone()))
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let any_flag = o.ca_flag.is_some() || o.cert_flag.is_some() || o.key_flag.is_some();
    let credentials = if o.insecure_flag {
        Credentials::Insecure
    } else if any_flag || context.is_some_and(|c| c.ca.is_some() || c.cert.is_some()) {
        let pick = |flag: Option<&Path>, ctx: Option<&PathBuf>| {
            flag.map(Path::to_path_buf).or_else(|| ctx.cloned())
        };
        Credentials::Tls {
            ca: pick(o.ca_flag, context.and_then(|c| c.ca.as_ref())),
            cert: pick(o.cert_flag, context.and_then(|c| c.cert.as_ref())),
            key: pick(o.key_flag, context.and_then(|c| c.key.as_ref())),
        }
    } else if context.is_some_and(|c| c.insecure) {
        Credentials::Insecure
    } else {
        Credentials::Missing
    };
    Ok(Settings {
        servers,
        namespace,
        context: context.map(|c| c.name.clone()),
        credentials,
    })
}

/// What `--insecure` prints on a terminal's stderr before anything else.
pub const INSECURE_WARNING: &str = "warning: --insecure: droverctl talks to the cluster in plaintext without authentication, so anyone on the network path can read and change what it sends and receives";

/// Warn a person (stderr is a terminal) that `--insecure` is in effect.
/// Scripts reading stderr are spared the line, which would change every
/// message they match.
fn insecure_warning(stderr: &mut (impl std::io::Write + std::io::IsTerminal)) {
    if stderr.is_terminal() {
        let _ = writeln!(stderr, "{INSECURE_WARNING}");
    }
}

impl Credentials {
    /// Read the certificate files, checking what can be checked before any
    /// connection: every path given, cert and key together, the cert in date.
    pub fn load(&self) -> anyhow::Result<Security> {
        let (ca, cert, key) = match self {
            Credentials::Insecure => {
                insecure_warning(&mut std::io::stderr());
                return Ok(Security::Insecure);
            }
            Credentials::Missing => bail!(
                "no credentials for the cluster: pass --ca, --cert and --key (files from droverctl pki init or pki client), \
                 store them in a context with droverctl config set-context NAME --ca FILE --cert FILE --key FILE, \
                 or pass --insecure for a cluster that runs without TLS"
            ),
            Credentials::Tls { ca, cert, key } => (ca, cert, key),
        };
        let Some(ca) = ca else {
            bail!("--cert needs --ca too: the cluster's ca.crt, to check the controllers' certificates")
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            (Some(_), None) => bail!("--cert needs --key: the private key of that certificate"),
            (None, Some(_)) => bail!("--key needs --cert: the certificate of that key"),
        };
        let material = TlsMaterial::read_files(ca, identity)
            .map_err(|e| anyhow::anyhow!("cannot read your credentials: {e}"))?;
        if let (Some((cert_pem, _)), Some(path)) = (&material.identity, cert) {
            let info =
                pki::cert_info(cert_pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let now = std::time::SystemTime::now();
            if info.not_after < now {
                bail!(
                    "your client certificate {} expired on {}: issue a new one with droverctl pki client",
                    path.display(),
                    pki::rfc3339(info.not_after)
                );
            }
            if info.not_before > now {
                bail!(
                    "your client certificate {} is not valid before {}: check this machine's clock",
                    path.display(),
                    pki::rfc3339(info.not_before)
                );
            }
        }
        Ok(Security::tls(material))
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.trim().is_empty())
}

/// Split `a:1,b:2` into checked `HOST:PORT` strings, keeping order, dropping repeats.
pub fn parse_servers(list: &str) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let server = normalize_server(part)?;
        if !out.contains(&server) {
            out.push(server);
        }
    }
    if out.is_empty() {
        bail!("no server address given (expected HOST:PORT[,HOST:PORT...])");
    }
    Ok(out)
}

/// Check one address: `host:port`, `[v6]:port`, optionally written as `http://host:port`.
pub fn normalize_server(s: &str) -> anyhow::Result<String> {
    let trimmed = s.trim();
    let bare = trimmed
        .strip_prefix("http://")
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    let invalid = || anyhow::anyhow!("invalid server address {s:?}: expected HOST:PORT");
    let (host, port) = bare.rsplit_once(':').ok_or_else(invalid)?;
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 && host_ok => Ok(format!("{host}:{port}")),
        _ => Err(invalid()),
    }
}

/// `--config` (or `DROVERCONFIG`, folded in by clap) > `~/.config/drover/config.yaml`.
pub fn config_path(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(DEFAULT_CONFIG_PATH)),
        None => bail!("HOME is not set; pass --config PATH or set DROVERCONFIG"),
    }
}

impl ConfigFile {
    /// Read the file; a missing file is an empty config.
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
            Err(e) => bail!(
                "cannot read config file {}: {}",
                path.display(),
                io_reason(&e)
            ),
        };
        ConfigFile::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<ConfigFile> {
        if text.trim().is_empty() {
            return Ok(ConfigFile::default());
        }
        let file: ConfigFile = serde_norway::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(file)
    }

    /// Write the file with mode 0600, creating its directory with mode 0700.
    ///
    /// Writes a temporary file beside it and renames it over, so a crash never
    /// leaves half a config.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
        let text = serde_norway::to_string(self).context("cannot encode the config")?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config.yaml".to_string());
        let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
        let written =
            write_private_file(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "cannot write config file {}: {}",
                path.display(),
                io_reason(&e)
            );
        }
        Ok(())
    }

    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    /// Create or update a context. Returns true when it was created.
    pub fn set_context(
        &mut self,
        name: &str,
        servers: Option<Vec<String>>,
        namespace: Option<String>,
    ) -> bool {
        let created = self.context(name).is_none();
        if created {
            self.contexts.push(Context {
                name: name.to_string(),
                ..Context::default()
            });
        }
        if let Some(ctx) = self.contexts.iter_mut().find(|c| c.name == name) {
            if let Some(servers) = servers {
                ctx.servers = servers;
            }
            if let Some(ns) = namespace {
                ctx.namespace = Some(ns);
            }
        }
        created
    }

    /// The config as `config view` may show it: every value under a key that
    /// names a credential is replaced by `REDACTED`.
    pub fn redacted(&self) -> ConfigFile {
        let mut out = self.clone();
        redact_map(&mut out.extra);
        for ctx in &mut out.contexts {
            redact_map(&mut ctx.extra);
        }
        out
    }
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["token", "password", "secret", "key", "credential"]
        .iter()
        .any(|word| key.contains(word))
}

fn redact_map(map: &mut BTreeMap<String, serde_norway::Value>) {
    for (key, value) in map.iter_mut() {
        if is_secret_key(key) {
            *value = serde_norway::Value::String(REDACTED.to_string());
        } else {
            redact_value(value);
        }
    }
}

fn redact_value(value: &mut serde_norway::Value) {
    match value {
        serde_norway::Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                if k.as_str().is_some_and(is_secret_key) {
                    *v = serde_norway::Value::String(REDACTED.to_string());
                } else {
                    redact_value(v);
                }
            }
        }
        serde_norway::Value::Sequence(items) => items.iter_mut().for_each(redact_value),
        serde_norway::Value::Tagged(t) => redact_value(&mut t.value),
        _ => {}
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let mut f = options.open(path)?;
        // The mode above only applies to a new file; make sure of it anyway.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()
    }
    #[cfg(not(unix))]
    {
        let mut f = options.open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }
}

pub use drover_client::io_reason;

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> ConfigFile {
        ConfigFile::parse(
            "current-context: lab\n\
             contexts:\n\
             - name: lab\n  servers: [10.0.0.1:7001, 10.0.0.2:7001]\n  namespace: team\n\
             - name: local\n  servers: [127.0.0.1:7001]\n",
        )
        .expect("parses")
    }

    #[test]
    fn credentials_come_from_flags_over_the_context() {
        let file = ConfigFile::parse(
            "current-context: lab\n\
             contexts:\n\
             - name: lab\n  ca: /p/ca.crt\n  cert: /p/tls.crt\n  key: /p/tls.key\n\
             - name: open\n  insecure: true\n",
        )
        .expect("parses");
        let s = resolve(&Overrides::default(), &file).expect("resolves");
        assert_eq!(
            s.credentials,
            Credentials::Tls {
                ca: Some("/p/ca.crt".into()),
                cert: Some("/p/tls.crt".into()),
                key: Some("/p/tls.key".into()),
            }
        );
        let flag = Path::new("/other/tls.crt");
        let o = Overrides {
            cert_flag: Some(flag),
            ..Overrides::default()
        };
        match resolve(&o, &file).expect("resolves").credentials {
            Credentials::Tls { cert, ca, .. } => {
                assert_eq!(cert.as_deref(), Some(flag));
                assert_eq!(ca.as_deref(), Some(Path::new("/p/ca.crt")));
            }
            other => panic!("{other:?}"),
        }
        let o = Overrides {
            context_flag: Some("open"),
            ..Overrides::default()
        };
        assert_eq!(
            resolve(&o, &file).expect("resolves").credentials,
            Credentials::Insecure
        );
        let e = Credentials::Missing.load().expect_err("refused");
        assert!(e.to_string().contains("--ca, --cert and --key"), "{e}");
        // The context stores paths only; view shows them, there is nothing secret.
        let shown = serde_norway::to_string(&file.redacted()).expect("yaml");
        assert!(shown.contains("/p/tls.key"), "{shown}");
    }

    #[test]
    fn server_flag_beats_env_beats_context_beats_default() {
        let file = lab();
        let mut o = Overrides {
            server_flag: Some("a:1,b:2"),
            server_env: Some("env:1"),
            ..Overrides::default()
        };
        assert_eq!(resolve(&o, &file).unwrap().servers, ["a:1", "b:2"]);
        o.server_flag = None;
        assert_eq!(resolve(&o, &file).unwrap().servers, ["env:1"]);
        o.server_env = Some("");
        assert_eq!(
            resolve(&o, &file).unwrap().servers,
            ["10.0.0.1:7001", "10.0.0.2:7001"]
        );
        assert_eq!(
            resolve(&o, &ConfigFile::default()).unwrap().servers,
            [DEFAULT_SERVER]
        );
    }

    #[test]
    fn namespace_flag_beats_context_beats_default() {
        let file = lab();
        let mut o = Overrides::default();
        assert_eq!(resolve(&o, &file).unwrap().namespace, "team");
        o.namespace_flag = Some("prod");
        assert_eq!(resolve(&o, &file).unwrap().namespace, "prod");
        o.namespace_flag = None;
        o.context_flag = Some("local");
        let s = resolve(&o, &file).unwrap();
        assert_eq!(s.namespace, "default");
        assert_eq!(s.servers, ["127.0.0.1:7001"]);
        assert_eq!(s.context.as_deref(), Some("local"));
    }

    #[test]
    fn an_unknown_context_flag_is_an_error_but_a_dangling_current_context_is_not() {
        let file = lab();
        let o = Overrides {
            context_flag: Some("nope"),
            ..Overrides::default()
        };
        let e = resolve(&o, &file).unwrap_err();
        assert_eq!(e.to_string(), "context \"nope\" is not in the config file");

        let mut dangling = lab();
        dangling.current_context = Some("gone".into());
        let s = resolve(&Overrides::default(), &dangling).unwrap();
        assert_eq!(s.servers, [DEFAULT_SERVER]);
        assert_eq!(s.context, None);
    }

    #[test]
    fn server_addresses_are_checked() {
        assert_eq!(
            parse_servers(" a:1 , http://b.example:7001/,a:1,[::1]:9").unwrap(),
            ["a:1", "b.example:7001", "[::1]:9"]
        );
        for bad in ["a", "a:", ":1", "a:0", "a:70000", "a b:1", "[zz]:1", ","] {
            assert!(parse_servers(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn the_file_round_trips_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("nested/drover/config.yaml");
        let mut file = ConfigFile::default();
        assert!(file.set_context("lab", Some(vec!["a:1".into(), "b:2".into()]), None));
        assert!(!file.set_context("lab", None, Some("team".into())));
        file.current_context = Some("lab".into());
        file.save(&path).unwrap();

        let back = ConfigFile::load(&path).unwrap();
        assert_eq!(back, file);
        assert_eq!(back.context("lab").unwrap().servers, ["a:1", "b:2"]);
        assert_eq!(
            back.context("lab").unwrap().namespace.as_deref(),
            Some("team")
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config.yaml"]);
    }

    #[test]
    fn a_missing_file_is_empty_and_a_broken_one_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.yaml");
        assert_eq!(ConfigFile::load(&path).unwrap(), ConfigFile::default());
        std::fs::write(&path, "contexts: {not: [a list").unwrap();
        let e = ConfigFile::load(&path).unwrap_err();
        assert!(format!("{e:#}").starts_with("config file "), "{e:#}");
    }

    #[test]
    fn unknown_keys_survive_and_credentials_are_redacted() {
        let file = ConfigFile::parse(
            "current-context: lab\n\
             preferences: {color: true}\n\
             contexts:\n\
             - name: lab\n  servers: [a:1]\n  token: s3cret\n  tls: {client-key-data: abc, ca: ca.pem}\n",
        )
        .unwrap();
        let text = serde_norway::to_string(&file).unwrap();
        assert!(text.contains("s3cret") && text.contains("preferences"));

        let shown = serde_norway::to_string(&file.redacted()).unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("abc"), "{shown}");
        assert!(
            shown.contains("ca.pem") && shown.contains("color"),
            "{shown}"
        );
    }
}
