//! `droverctl config {view | use-context NAME | set-context NAME [--server A,B]
//! [--namespace N] | get-contexts | current-context}`
//!
//! `set-context` takes the global `--server`, `-n/--namespace`, `--ca`,
//! `--cert`, `--key` and `--insecure` flags as the values to store (only as
//! typed: `DROVER_SERVER` is not stored). Certificates and keys are stored as
//! paths, never their contents.

use anyhow::bail;

use super::{print, Env};
use crate::cli::{ConfigCommand, ContextName};
use crate::config::{parse_servers, ConfigFile};
use crate::output::Table;

pub fn run(env: &Env, cmd: ConfigCommand) -> anyhow::Result<()> {
    let (path, mut file) = env.load_config()?;
    match cmd {
        ConfigCommand::View => print(&view(&file)?),
        ConfigCommand::UseContext(ContextName { name }) => {
            if file.context(&name).is_none() {
                bail!("no context exists with the name: {name:?}");
            }
            file.current_context = Some(name.clone());
            file.save(&path)?;
            print(&format!("Switched to context {name:?}.\n"))
        }
        ConfigCommand::SetContext(ContextName { name }) => {
            if name.trim().is_empty() {
                bail!("a context name may not be empty");
            }
            let servers = env
                .global
                .server
                .as_deref()
                .map(parse_servers)
                .transpose()?;
            let created = file.set_context(&name, servers, env.global.namespace.clone());
            set_credentials(&mut file, &name, env)?;
            file.save(&path)?;
            let verb = if created { "created" } else { "modified" };
            print(&format!("Context {name:?} {verb}.\n"))
        }
        ConfigCommand::GetContexts => print(&contexts_table(&file)),
        ConfigCommand::CurrentContext => match file.current_context.as_deref() {
            Some(name) if !name.is_empty() => print(&format!("{name}\n")),
            _ => bail!("current-context is not set"),
        },
    }
}

/// Store the global --ca/--cert/--key (as absolute paths) and --insecure.
fn set_credentials(file: &mut ConfigFile, name: &str, env: &Env) -> anyhow::Result<()> {
    let absolute = |p: &std::path::Path| -> anyhow::Result<std::path::PathBuf> {
        std::path::absolute(p)
            .map_err(|e| anyhow::anyhow!("cannot resolve the path {}: {e}", p.display()))
    };
    let g = &env.global;
    let Some(ctx) = file.contexts.iter_mut().find(|c| c.name == name) else {
        return Ok(());
    };
    if let Some(p) = &g.ca {
        ctx.ca = Some(absolute(p)?);
    }
    if let Some(p) = &g.cert {
        ctx.cert = Some(absolute(p)?);
    }
    if let Some(p) = &g.key {
        ctx.key = Some(absolute(p)?);
    }
    if g.insecure {
        ctx.insecure = true;
    } else if g.ca.is_some() || g.cert.is_some() {
        ctx.insecure = false;
    }
    Ok(())
}

/// The config as YAML, credentials redacted.
pub fn view(file: &ConfigFile) -> anyhow::Result<String> {
    let text = serde_norway::to_string(&file.redacted())?;
    Ok(text.strip_prefix("---\n").unwrap_or(&text).to_string())
}

/// `CURRENT   NAME   SERVERS   NAMESPACE`, the current one marked `*`.
pub fn contexts_table(file: &ConfigFile) -> String {
    let mut t = Table::new(["CURRENT", "NAME", "SERVERS", "NAMESPACE"]);
    for c in &file.contexts {
        let current = file.current_context.as_deref() == Some(c.name.as_str());
        t.push(vec![
            if current { "*" } else { "" }.to_string(),
            c.name.clone(),
            c.servers.join(","),
            c.namespace.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_table_marks_the_current_one() {
        let mut file = ConfigFile::default();
        file.set_context(
            "lab",
            Some(vec!["a:1".into(), "b:2".into()]),
            Some("team".into()),
        );
        file.set_context("local", None, None);
        file.current_context = Some("lab".into());
        assert_eq!(
            contexts_table(&file),
            "CURRENT   NAME    SERVERS   NAMESPACE\n\
             *         lab     a:1,b:2   team\n          \
             local\n"
        );
    }

    #[test]
    fn view_hides_credentials() {
        let file = ConfigFile::parse(
            "current-context: lab\ncontexts:\n- name: lab\n  servers: [a:1]\n  token: hunter2\n",
        )
        .unwrap();
        let text = view(&file).unwrap();
        assert!(text.contains("current-context: lab"), "{text}");
        assert!(
            text.contains("REDACTED") && !text.contains("hunter2"),
            "{text}"
        );
    }
}
