//! The arguments of the verbs scripts lean on (issue 21): `wait`, `label`,
//! `annotate`, `set image|env`, `patch`, `edit`, `api-resources`, `explain`.
//! Kept beside `cli.rs` so the verbs' flags read together.

use std::time::Duration;

use clap::{Args, Subcommand};

/// `droverctl wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// TYPE NAME... or TYPE/NAME... (or TYPE with -l / --all)
    #[arg(value_name = "TYPE[/NAME]")]
    pub resources: Vec<String>,

    /// condition=NAME[=VALUE] (Available, Progressing, Ready), delete, or jsonpath={PATH}=VALUE
    #[arg(long = "for", value_name = "CONDITION", required = true)]
    pub for_condition: String,

    /// The objects whose labels match (e.g. -l app=web)
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// The objects whose fields match (e.g. status.state=Running)
    #[arg(long, value_name = "SELECTOR")]
    pub field_selector: Option<String>,

    /// Every object of the type (in the namespace)
    #[arg(long)]
    pub all: bool,

    /// Give up after this long (exit 1); 0 checks once without waiting
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = drover_proto::duration::parse)]
    pub timeout: Duration,
}

/// `droverctl label|annotate`.
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// TYPE NAME KEY=VALUE... KEY-... or TYPE/NAME KEY=VALUE...
    #[arg(value_name = "ARGS", required = true, num_args = 1..)]
    pub args: Vec<String>,

    /// Replace a key's existing value (without it, changing a value is refused)
    #[arg(long)]
    pub overwrite: bool,

    /// Every object whose labels match, instead of names
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// Every object of the type (deployments: in the namespace)
    #[arg(long)]
    pub all: bool,

    /// name: print only deployment.apps/NAME
    #[arg(short = 'o', long, value_name = "name", value_parser = ["name"])]
    pub output: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SetCommand {
    /// Set containers' images: CONTAINER=IMAGE ... (* for every container)
    Image(SetImageArgs),
    /// Set (NAME=VALUE) or remove (NAME-) environment variables of containers
    Env(SetEnvArgs),
}

#[derive(Debug, Args)]
pub struct SetImageArgs {
    /// deployment NAME CONTAINER=IMAGE... or deployment/NAME CONTAINER=IMAGE...
    #[arg(value_name = "ARGS", required = true, num_args = 2..)]
    pub args: Vec<String>,

    /// name: print only deployment.apps/NAME
    #[arg(short = 'o', long, value_name = "name", value_parser = ["name"])]
    pub output: Option<String>,
}

#[derive(Debug, Args)]
pub struct SetEnvArgs {
    /// deployment NAME NAME=VALUE... NAME-... or deployment/NAME ...
    #[arg(value_name = "ARGS", required = true, num_args = 2..)]
    pub args: Vec<String>,

    /// Only this container [default: every container]
    #[arg(short = 'c', long, value_name = "NAME")]
    pub container: Option<String>,

    /// name: print only deployment.apps/NAME
    #[arg(short = 'o', long, value_name = "name", value_parser = ["name"])]
    pub output: Option<String>,
}

#[derive(Debug, Args)]
pub struct PatchArgs {
    /// deployment NAME or deployment/NAME
    #[arg(value_name = "RESOURCE", required = true, num_args = 1..=2)]
    pub resources: Vec<String>,

    /// The patch, JSON (or YAML) text
    #[arg(short = 'p', long, value_name = "PATCH", required = true)]
    pub patch: String,

    /// merge (RFC 7386 JSON merge patch) or json (RFC 6902 JSON patch)
    #[arg(long = "type", value_name = "merge|json", default_value = "merge", value_parser = ["merge", "json", "strategic"])]
    pub patch_type: String,

    /// name: print only deployment.apps/NAME
    #[arg(short = 'o', long, value_name = "name", value_parser = ["name"])]
    pub output: Option<String>,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// deployment NAME or deployment/NAME
    #[arg(value_name = "RESOURCE", required = true, num_args = 1..=2)]
    pub resources: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ApiResourcesArgs {
    /// name: print only the resource names
    #[arg(short = 'o', long, value_name = "wide|name", value_parser = ["wide", "name"])]
    pub output: Option<String>,

    /// Print the table without its header line
    #[arg(long)]
    pub no_headers: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// TYPE[.FIELD...], e.g. deployment.spec.strategy
    #[arg(value_name = "TYPE[.FIELD]")]
    pub path: String,
}
