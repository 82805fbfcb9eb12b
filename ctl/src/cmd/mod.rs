//! One file per verb. Each takes its parsed arguments and the [`Env`] (global
//! flags, and through them the config file and a [`Client`]), prints results to
//! stdout and returns an error for `error: ...` on stderr.

pub mod apply;
pub mod cluster;
pub mod completion;
pub mod config;
pub mod config_objects;
pub mod cordon;
pub mod cp;
pub mod delete;
pub mod describe;
pub mod diff;
pub mod discover;
pub mod drain;
pub mod events;
pub mod exec;
pub mod get;
pub mod lab;
pub mod logs;
pub mod mutate;
pub mod pki;
pub mod port_forward;
pub mod rollout;
pub mod scale;
pub mod services;
pub mod token;
pub mod top;
pub mod version;
pub mod wait;
pub mod watch;

use std::io::Write;
use std::path::PathBuf;

use drover_manifest::ParseOptions;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::client::Client;
use crate::config::{self as cfg, ConfigFile, Overrides, Settings};

/// What every verb may need: the global flags and what they resolve to.
pub struct Env {
    pub global: GlobalArgs,
}

impl Env {
    pub fn config_path(&self) -> anyhow::Result<PathBuf> {
        cfg::config_path(self.global.config.as_deref())
    }

    pub fn load_config(&self) -> anyhow::Result<(PathBuf, ConfigFile)> {
        let path = self.config_path()?;
        let file = ConfigFile::load(&path)?;
        Ok((path, file))
    }

    /// Servers and namespace from flags, `DROVER_SERVER` and the config file.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let (_, file) = self.load_config()?;
        let env_server = std::env::var("DROVER_SERVER").ok();
        cfg::resolve(
            &Overrides {
                server_flag: self.global.server.as_deref(),
                server_env: env_server.as_deref(),
                context_flag: self.global.context.as_deref(),
                namespace_flag: self.global.namespace.as_deref(),
                ca_flag: self.global.ca.as_deref(),
                cert_flag: self.global.cert.as_deref(),
                key_flag: self.global.key.as_deref(),
                insecure_flag: self.global.insecure,
            },
            &file,
        )
    }

    /// How `-f` files are read: objects that name no namespace go into
    /// `-n`'s, or else the context's. A namespace given with `-n` must also
    /// agree with any the manifest names, as kubectl enforces; the context's
    /// is only a default.
    pub fn parse_options(&self, base: ParseOptions) -> anyhow::Result<ParseOptions> {
        let settings = self.settings()?;
        Ok(ParseOptions {
            namespace: Some(settings.namespace),
            enforce_namespace: self
                .global
                .namespace
                .as_deref()
                .is_some_and(|ns| !ns.is_empty()),
            ..base
        })
    }

    /// A client for the resolved servers, and the settings it came from.
    pub fn client(&self) -> anyhow::Result<(Client, Settings)> {
        let settings = self.settings()?;
        let security = settings.credentials.load()?;
        let client = Client::new(
            settings.servers.clone(),
            self.global.request_timeout.0,
            security,
        );
        Ok((client, settings))
    }
}

/// Run the verb the command line names.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let env = Env { global: cli.global };
    match cli.command {
        Command::Apply(args) => apply::run(&env, args).await,
        Command::Get(args) => get::run(&env, args).await,
        Command::Describe(args) => describe::run(&env, args).await,
        Command::Logs(args) => logs::run(&env, args).await,
        Command::Exec(args) => exec::run(&env, args).await,
        Command::PortForward(args) => port_forward::run(&env, args).await,
        Command::Cp(args) => cp::run(&env, args).await,
        Command::Delete(args) => delete::run(&env, args).await,
        Command::Wait(args) => wait::run(&env, args).await,
        Command::Label(args) => mutate::label(&env, args, true).await,
        Command::Annotate(args) => mutate::label(&env, args, false).await,
        Command::Set(cmd) => mutate::set(&env, cmd).await,
        Command::Patch(args) => mutate::patch(&env, args).await,
        Command::Edit(args) => mutate::edit(&env, args).await,
        Command::ApiResources(args) => discover::api_resources(args),
        Command::Explain(args) => discover::explain(args),
        Command::Scale(args) => scale::run(&env, args).await,
        Command::Cordon(args) => cordon::run(&env, args, true).await,
        Command::Uncordon(args) => cordon::run(&env, args, false).await,
        Command::Drain(args) => drain::run(&env, args).await,
        Command::Diff(args) => diff::run(&env, args).await,
        Command::Rollout(cmd) => rollout::run(&env, cmd).await,
        Command::Cluster(cmd) => cluster::run(&env, cmd).await,
        Command::Version(args) => version::run(&env, args).await,
        Command::Completion(args) => completion::run(args),
        Command::Top(cmd) => top::run(&env, cmd).await,
        Command::Config(cmd) => config::run(&env, cmd),
        Command::Pki(cmd) => pki::run(cmd),
        Command::Token(cmd) => token::run(&env, cmd).await,
        Command::Lab(cmd) => lab::run(&env, cmd).await,
    }
}

/// Write to stdout; a closed pipe surfaces as an error that `main` treats as success.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
