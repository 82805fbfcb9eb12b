//! The command line as clap sees it: global flags, verbs and their flags.
//!
//! Global flags are `global = true` so that, as with kubectl, they may come
//! before or after the verb (`droverctl -n web get deploy` and
//! `droverctl get deploy -n web`). `--server` deliberately has no clap `env`
//! binding: `DROVER_SERVER` is read in [`crate::config`], so that
//! `config set-context NAME --server A,B` stores only what was typed.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// droverctl controls a drover cluster, the way kubectl controls Kubernetes.
#[derive(Debug, Parser)]
#[command(
    name = "droverctl",
    version = drover_proto::VERSION,
    about = "droverctl controls a drover cluster, the way kubectl controls Kubernetes",
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every verb accepts.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Controllers to talk to, tried in order [env: DROVER_SERVER] [default: the
    /// context's servers, else 127.0.0.1:7001]
    #[arg(long, global = true, value_name = "HOST:PORT[,HOST:PORT...]")]
    pub server: Option<String>,

    /// The context of the config file to use [default: its current-context]
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// The config file [default: ~/.config/drover/config.yaml]
    #[arg(
        long,
        global = true,
        env = "DROVERCONFIG",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,

    /// The namespace [default: the context's namespace, else "default"]
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// How long to wait for an answer before giving up (0 waits forever)
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_timeout
    )]
    pub request_timeout: RequestTimeout,

    /// The cluster's CA certificate [default: the context's ca]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Your client certificate [default: the context's cert]
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// The client certificate's private key [default: the context's key]
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Talk plaintext with no authentication, to a cluster running --insecure
    #[arg(long, global = true)]
    pub insecure: bool,
}

/// `--request-timeout`: `None` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTimeout(pub Option<Duration>);

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update deployments from manifest files
    Apply(ApplyArgs),
    /// List resources
    Get(GetArgs),
    /// Show one or more resources in detail
    Describe(DescribeArgs),
    /// Print the output of a replica's container, from the agent that runs it
    Logs(LogsArgs),
    /// Run a command in a replica (-it for an interactive shell)
    Exec(crate::cmd::exec::ExecArgs),
    /// Forward local ports to a replica's ports, through its agent
    PortForward(crate::cmd::port_forward::PortForwardArgs),
    /// Copy files and directories to and from a replica (tar over exec)
    Cp(crate::cmd::cp::CpArgs),
    /// Delete deployments by file, name or selector (waits until their replicas are gone), or nodes by name
    Delete(DeleteArgs),
    /// Wait for a condition on resources: condition=..., delete, jsonpath=...
    Wait(crate::verbs_cli::WaitArgs),
    /// Update the labels of deployments or nodes (KEY=VALUE to set, KEY- to remove)
    Label(crate::verbs_cli::LabelArgs),
    /// Update the annotations of deployments or nodes (KEY=VALUE to set, KEY- to remove)
    Annotate(crate::verbs_cli::LabelArgs),
    /// Change a deployment's images or environment without a file
    #[command(subcommand)]
    Set(crate::verbs_cli::SetCommand),
    /// Change a deployment with a JSON merge patch or a JSON patch
    Patch(crate::verbs_cli::PatchArgs),
    /// Edit a deployment in $EDITOR (KUBE_EDITOR, EDITOR, else vi) and apply it on save
    Edit(crate::verbs_cli::EditArgs),
    /// The resource types droverctl knows: names, short names, namespaced, kind
    ApiResources(crate::verbs_cli::ApiResourcesArgs),
    /// The fields of a resource type, from the schema the manifest parser uses
    Explain(crate::verbs_cli::ExplainArgs),
    /// Set the number of replicas of a deployment
    Scale(ScaleArgs),
    /// Mark a node unschedulable: no new replicas are placed on it
    Cordon(CordonArgs),
    /// Mark a node schedulable again (and stop a drain)
    Uncordon(CordonArgs),
    /// Cordon a node and move its replicas elsewhere, new before old; wait until it is empty
    Drain(DrainArgs),
    /// Show what apply would change, as a unified diff (exit 1 when something would)
    Diff(DiffArgs),
    /// Manage the rollout of a deployment: status, history, undo, pause, resume, restart
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Inspect and change the controllers' raft cluster
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print the client and server versions
    Version(VersionArgs),
    /// Print a shell completion script
    Completion(CompletionArgs),
    /// Show CPU and memory in use by nodes or replicas, as the agents last sampled them
    #[command(subcommand)]
    Top(TopCommand),
    /// Show and edit the config file's contexts
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Create the cluster CA and certificates
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Join tokens for agents (and controllers)
    #[command(subcommand)]
    Token(TokenCommand),
    /// A real multi-host lab cluster on this machine, and failure injection (needs root)
    #[command(subcommand)]
    Lab(LabCommand),
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start controllers and agents, each in its own network namespace, with TLS
    Up(LabUpArgs),
    /// Remove every process, namespace, veth, bridge, Docker engine and container of the lab
    Down(LabDownArgs),
    /// Show the hosts: address, pid, running/paused/stopped, partitions
    Status(LabDir),
    /// SIGKILL every process of a host (an agent's replicas too)
    Kill(LabHost),
    /// Stop a host's daemon with SIGTERM and wait for it to exit
    Stop(LabHost),
    /// Start a stopped or killed host's daemon again, with the same data dir
    Start(LabHost),
    /// Freeze every process of a host (SIGSTOP)
    Pause(LabHost),
    /// Unfreeze a paused host (SIGCONT)
    Resume(LabHost),
    /// Drop all traffic between a host and the others (or --from HOST,...), both directions
    Partition(LabPartitionArgs),
    /// Remove every partition
    Heal(LabDir),
    /// Interleave applies, scales and deletes with seeded faults, checking drover's guarantees
    Chaos(LabChaosArgs),
}

#[derive(Debug, Clone, Args)]
pub struct LabDir {
    /// The lab's directory: state file, PKI, data dirs and logs
    #[arg(long, value_name = "DIR", default_value = ".drover-lab")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct LabDownArgs {
    #[command(flatten)]
    pub dir: LabDir,

    /// Remove lab N from this machine without its state file (lost or
    /// deleted): everything named drvN-… and the bridge drvN (`ip -br link
    /// show type bridge` lists them); --dir is then ignored
    #[arg(long, value_name = "N")]
    pub id: Option<u32>,
}

#[derive(Debug, Args)]
pub struct LabUpArgs {
    #[command(flatten)]
    pub dir: LabDir,

    /// How many controllers (hosts c1..cN)
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub controllers: u32,

    /// How many agents (hosts n1..nM)
    #[arg(long, value_name = "M", default_value_t = 3)]
    pub agents: u32,

    /// How agents run replicas: process (inside the host's namespace) or docker
    /// (containers on a Docker engine of the host's own, inside its namespace)
    #[arg(long, value_name = "process|docker", default_value = "process",
          value_parser = ["process", "docker"])]
    pub runtime: String,

    /// Apply this manifest once the agents are Ready, and wait for its replicas
    #[arg(long, value_name = "FILE")]
    pub apply: Option<PathBuf>,

    /// How long --apply waits for its deployments to become available
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = drover_proto::duration::parse_positive)]
    pub timeout: Duration,

    /// Look for busybox (the examples' httpd, nc, wget) only in these
    /// directories; lab up then installs nothing [default: PATH, installing
    /// busybox-static with apt-get when missing]
    #[arg(long, value_name = "DIR:...", env = "DROVER_LAB_BUSYBOX_PATH")]
    pub busybox_path: Option<std::ffi::OsString>,

    /// Start every agent with this --stop-after-disconnect (fencing: at most
    /// 2500ms with the controllers' 3 s node timeout)
    #[arg(long, value_name = "DURATION", value_parser = drover_proto::duration::parse_positive)]
    pub stop_after_disconnect: Option<Duration>,

    /// Docker runtime: where the agents forward the containers' names
    /// outside cluster.local (a resolver that lab hosts can reach, e.g. one
    /// on this machine's address) [default: the resolvers of this
    /// machine's /etc/resolv.conf, except loopback ones]
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_dns_upstream)]
    pub dns_upstream: Option<std::net::SocketAddr>,
}

/// `--dns-upstream`: `IP` (port 53) or `IP:PORT`.
fn parse_dns_upstream(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    s.parse().map_err(|_| {
        format!("{s:?} is not a resolver address: give an IP address, optionally with :PORT")
    })
}

#[derive(Debug, Args)]
pub struct LabHost {
    /// A host of the lab: c1..cN (controllers) or n1..nM (agents)
    pub host: String,

    #[command(flatten)]
    pub dir: LabDir,
}

#[derive(Debug, Args)]
pub struct LabPartitionArgs {
    /// The host to cut off
    pub host: String,

    /// Cut it off only from these hosts [default: every other host]
    #[arg(long, value_name = "HOST,...", value_delimiter = ',')]
    pub from: Vec<String>,

    #[command(flatten)]
    pub dir: LabDir,
}

#[derive(Debug, Args)]
pub struct LabChaosArgs {
    /// How many rounds (one operation, one fault, heal, check)
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub rounds: u32,

    /// The seed of the schedule: the same seed replays the same operations and faults
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// How long a deployment may take to converge after a heal before it is a violation
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = drover_proto::duration::parse_positive)]
    pub converge_within: Duration,

    #[command(flatten)]
    pub dir: LabDir,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token; only the token is printed on stdout (shown once)
    Create(TokenCreateArgs),
    /// List join tokens (ids, never secrets)
    List,
    /// Revoke a join token: joins with it are refused from now on
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// What the token lets its holder join as: agent or controller
    #[arg(long, value_name = "agent|controller", default_value = "agent")]
    pub role: String,

    /// How long the token can be used
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = drover_proto::duration::parse_positive)]
    pub ttl: Duration,
}

#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    /// The token's id (the 8 hex digits `token list` shows)
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a cluster CA, a certificate per controller and an admin client certificate
    Init(PkiInitArgs),
    /// Issue a certificate signed by the CA (client certs for people; agent or controller certs)
    #[command(visible_alias = "issue")]
    Client(PkiClientArgs),
}

#[derive(Debug, Args)]
pub struct PkiInitArgs {
    /// Directory to create the CA and certificates in
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// A controller: its name and the host (IP or DNS name) it is reached at (repeatable)
    #[arg(long = "controller", value_name = "NAME=HOST[:PORT]", required = true)]
    pub controllers: Vec<String>,

    /// How long the controller and admin certificates are valid
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = drover_proto::duration::parse_positive)]
    pub validity: Duration,
}

#[derive(Debug, Args)]
pub struct PkiClientArgs {
    /// The directory made by pki init (its ca.crt and ca.key sign)
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// admin (everything), viewer (read-only), agent (one node) or controller
    #[arg(long, value_name = "ROLE", default_value = "admin")]
    pub role: String,

    /// The holder's name (a person, a node, a controller)
    #[arg(long, value_name = "NAME")]
    pub name: String,

    /// Where to write ca.crt, tls.crt and tls.key [default: DIR/ROLE-NAME]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Extra host names or IPs a controller or agent certificate is valid for (repeatable)
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,

    /// How long the certificate is valid
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = drover_proto::duration::parse_positive)]
    pub validity: Duration,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Manifest file, directory of *.yaml|*.yml|*.json, or - for stdin (repeatable)
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    pub filenames: Vec<String>,

    /// Also read directories' subdirectories
    #[arg(short = 'R', long)]
    pub recursive: bool,

    /// false turns unknown fields into warnings instead of errors
    #[arg(
        long,
        value_name = "true|false",
        num_args = 0..=1,
        require_equals = true,
        default_value = "true",
        default_missing_value = "true",
        value_parser = parse_validate
    )]
    pub validate: bool,

    /// Apply the Deployments of files that also hold other kinds, with a warning per skipped document
    #[arg(long)]
    pub skip_unsupported_kinds: bool,

    /// client: only check locally; server: have a controller check, store nothing
    #[arg(
        long,
        value_enum,
        value_name = "none|client|server",
        num_args = 0..=1,
        require_equals = true,
        default_value = "none",
        default_missing_value = "client"
    )]
    pub dry_run: DryRun,

    /// Wait until every applied deployment's rollout completes; exit 1 if one fails
    #[arg(long)]
    pub wait: bool,

    /// With --wait: give up after this long (0 waits forever)
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_wait, requires = "wait")]
    pub timeout: WaitLimit,

    /// name: print only deployment.apps/NAME per applied deployment
    #[arg(short = 'o', long, value_name = "name", value_parser = ["name"])]
    pub output: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DryRun {
    None,
    Client,
    Server,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// TYPE [NAME...] or TYPE/NAME... (types: deployments|deploy, replicas|po, nodes|no, events|ev)
    #[arg(value_name = "TYPE[/NAME]")]
    pub resources: Vec<String>,

    /// Output format: wide, yaml, json, name, jsonpath=TEMPLATE, custom-columns=HEADER:PATH,...
    #[arg(short = 'o', long, value_name = "FORMAT", value_parser = parse_output)]
    pub output: Option<OutputFormat>,

    /// Print tables (default, wide, custom-columns) without their header line
    #[arg(long)]
    pub no_headers: bool,

    /// Only objects whose labels match: app=web,tier!=db, env in (a,b), !canary
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// Only objects whose fields match: spec.nodeName=n1,status.state=Running
    #[arg(long, value_name = "SELECTOR")]
    pub field_selector: Option<String>,

    /// List across all namespaces
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Only the replicas of this deployment (get replicas)
    #[arg(long, value_name = "NAME")]
    pub deployment: Option<String>,

    /// Answer from the contacted controller's local state, without a quorum round
    #[arg(long)]
    pub stale: bool,

    /// After listing, keep printing each change (a line, or an object with -o json|yaml)
    #[arg(short = 'w', long)]
    pub watch: bool,

    /// Watch without printing the list first
    #[arg(long)]
    pub watch_only: bool,

    /// With -w: print each change's type (ADDED, MODIFIED, DELETED) before it
    #[arg(long)]
    pub output_watch_events: bool,

    /// Only the events about this object: TYPE/NAME, e.g. replica/web-1a2b3-0, node/n1 (get events)
    #[arg(long = "for", value_name = "TYPE/NAME")]
    pub for_object: Option<String>,
}

/// `-o`: a table format, an object format, or a kubectl template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputFormat {
    Wide,
    Yaml,
    Json,
    Name,
    /// `jsonpath=TEMPLATE` (checked when parsed).
    JsonPath(String),
    /// `custom-columns=HEADER:PATH,...` (checked when parsed).
    CustomColumns(String),
}

/// `-o wide|yaml|json|name|jsonpath=...|custom-columns=...`.
pub fn parse_output(s: &str) -> Result<OutputFormat, String> {
    if let Some(t) = s.strip_prefix("jsonpath=") {
        crate::output::template::Template::parse(t).map_err(|e| e.to_string())?;
        return Ok(OutputFormat::JsonPath(t.to_string()));
    }
    if let Some(spec) = s.strip_prefix("custom-columns=") {
        crate::output::template::CustomColumns::parse(spec).map_err(|e| e.to_string())?;
        return Ok(OutputFormat::CustomColumns(spec.to_string()));
    }
    match s {
        "wide" => Ok(OutputFormat::Wide),
        "yaml" => Ok(OutputFormat::Yaml),
        "json" => Ok(OutputFormat::Json),
        "name" => Ok(OutputFormat::Name),
        "jsonpath" | "custom-columns" => Err(format!("give -o {s}=... (e.g. -o jsonpath='{{.metadata.name}}')")),
        _ => Err(format!(
            "unknown output format {s:?}; use wide, yaml, json, name, jsonpath=TEMPLATE or custom-columns=SPEC"
        )),
    }
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// deployment|replica|node [NAME...] or TYPE/NAME...; no NAME describes every one (in the namespace)
    #[arg(value_name = "TYPE[/NAME]")]
    pub resources: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The replica (as `get replicas` names it), or replica/NAME
    #[arg(value_name = "REPLICA")]
    pub replica: String,

    /// Keep streaming new output until the replica stops or Ctrl-C
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// Only the last N lines (-1: all of them)
    #[arg(
        long,
        value_name = "N",
        default_value_t = -1,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i64).range(-1..=i64::from(u32::MAX))
    )]
    pub tail: i64,

    /// The output of the replica's previous run (before its last restart)
    #[arg(short = 'p', long)]
    pub previous: bool,

    /// Only output newer than this (e.g. 5s, 2m, 3h)
    #[arg(long, value_name = "DURATION", value_parser = drover_proto::duration::parse_positive)]
    pub since: Option<Duration>,

    /// Prefix every line with the time it was written (RFC 3339)
    #[arg(long)]
    pub timestamps: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// TYPE NAME... or TYPE/NAME...
    #[arg(value_name = "TYPE[/NAME]", conflicts_with = "filenames")]
    pub resources: Vec<String>,

    /// Delete what these manifests describe (file, directory or - for stdin; repeatable)
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub filenames: Vec<String>,

    /// Also read directories' subdirectories
    #[arg(short = 'R', long)]
    pub recursive: bool,

    /// Succeed for names that do not exist
    #[arg(long)]
    pub ignore_not_found: bool,

    /// Delete the deployments whose labels match (e.g. -l app=web)
    #[arg(
        short = 'l',
        long,
        value_name = "SELECTOR",
        conflicts_with = "filenames"
    )]
    pub selector: Option<String>,

    /// Delete the deployments whose fields match (metadata.name, metadata.namespace)
    #[arg(long, value_name = "SELECTOR", conflicts_with = "filenames")]
    pub field_selector: Option<String>,

    /// Delete every deployment in the namespace
    #[arg(long, conflicts_with = "filenames")]
    pub all: bool,

    /// Wait until no replica of the deleted deployments is left on any host (default true)
    #[arg(long, value_name = "true|false", default_value = "true", num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub wait: bool,

    /// Give up waiting after this long (0 waits forever); the deletion goes on
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_wait)]
    pub timeout: WaitLimit,

    /// Seconds a replica is given to stop: -1 (the default) uses its template's
    /// terminationGracePeriodSeconds, the only value drover supports; 0 needs --force
    #[arg(long, value_name = "SECONDS", default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,

    /// Delete at once and do not wait for the replicas to stop (they still stop);
    /// for nodes: delete a Ready node too
    #[arg(long)]
    pub force: bool,

    /// name: print only deployment.apps/NAME per deleted deployment
    #[arg(short = 'o', long, value_name = "name", value_parser = ["name"])]
    pub output: Option<String>,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// TYPE NAME... or TYPE/NAME...
    #[arg(value_name = "TYPE[/NAME]")]
    pub resources: Vec<String>,

    /// The new number of replicas
    #[arg(long, value_name = "N")]
    pub replicas: u32,

    /// name: print only deployment.apps/NAME per scaled deployment
    #[arg(short = 'o', long, value_name = "name", value_parser = ["name"])]
    pub output: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TopCommand {
    /// CPU and memory in use on each node (host), against its capacity
    #[command(visible_aliases = ["node", "no"])]
    Nodes(TopArgs),
    /// CPU and memory in use by each replica
    #[command(visible_aliases = ["replica", "po", "pods", "pod"])]
    Replicas(TopArgs),
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Replicas across all namespaces (top replicas)
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,

    /// Sort by CPU or memory in use, largest first
    #[arg(long, value_enum, value_name = "cpu|memory")]
    pub sort_by: Option<TopSort>,

    /// Print the table without its header line
    #[arg(long)]
    pub no_headers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopSort {
    Cpu,
    Memory,
}

#[derive(Debug, Args)]
pub struct CordonArgs {
    /// Node name (or node/NAME)
    #[arg(value_name = "NODE")]
    pub node: String,

    /// name: print only node/NAME
    #[arg(short = 'o', long, value_name = "name", value_parser = ["name"])]
    pub output: Option<String>,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Manifest file, directory of *.yaml|*.yml|*.json, or - for stdin (repeatable)
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    pub filenames: Vec<String>,

    /// Also read directories' subdirectories
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Node name (or node/NAME)
    #[arg(value_name = "NODE")]
    pub node: String,

    /// Give up waiting after this long (0 waits forever); the drain goes on
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_wait)]
    pub timeout: WaitLimit,
}

/// `--timeout` of a wait: `None` (given as `0`) means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitLimit(pub Option<Duration>);

pub fn parse_wait(s: &str) -> Result<WaitLimit, String> {
    let d = drover_proto::duration::parse(s)?;
    Ok(WaitLimit((!d.is_zero()).then_some(d)))
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Show a deployment's rollout progress until it completes (or fails)
    Status(RolloutStatusArgs),
    /// List a deployment's revisions
    History(RolloutTarget),
    /// Roll a deployment back to the previous revision (or --to-revision N)
    Undo(RolloutUndoArgs),
    /// Stop replacing replicas until `rollout resume`
    Pause(RolloutTarget),
    /// Continue a paused rollout
    Resume(RolloutTarget),
    /// Replace every replica, as a new revision (kubectl.kubernetes.io/restartedAt)
    Restart(RolloutRestartArgs),
}

#[derive(Debug, Args)]
pub struct RolloutRestartArgs {
    #[command(flatten)]
    pub target: RolloutTarget,

    /// name: print only deployment.apps/NAME
    #[arg(short = 'o', long, value_name = "name", value_parser = ["name"])]
    pub output: Option<String>,
}

#[derive(Debug, Args)]
pub struct RolloutTarget {
    /// deployment NAME, or deployment/NAME
    #[arg(value_name = "RESOURCE", required = true, num_args = 1..=2)]
    pub resources: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RolloutStatusArgs {
    #[command(flatten)]
    pub target: RolloutTarget,

    /// Keep watching until the rollout completes (default true, as kubectl)
    #[arg(short = 'w', long, value_name = "true|false", default_value = "true", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub watch: bool,

    /// Give up after this long (0 waits forever)
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_wait)]
    pub timeout: WaitLimit,
}

#[derive(Debug, Args)]
pub struct RolloutUndoArgs {
    #[command(flatten)]
    pub target: RolloutTarget,

    /// The revision to roll back to (default: the previous one)
    #[arg(long, value_name = "N", default_value = "0")]
    pub to_revision: u64,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every controller's raft role, term, indexes and health
    Status(ClusterStatusArgs),
    /// The raft membership
    Members,
    /// Add a controller to the raft membership
    Add(ClusterAddArgs),
    /// Remove a controller from the raft membership
    Remove(ClusterRemoveArgs),
}

#[derive(Debug, Args)]
pub struct ClusterStatusArgs {
    /// Output format
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<StatusFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Json,
}

#[derive(Debug, Args)]
pub struct ClusterAddArgs {
    /// The new controller's raft id
    #[arg(long)]
    pub id: u64,
    /// The new controller's gRPC address
    #[arg(long, value_name = "HOST:PORT")]
    pub address: String,
}

#[derive(Debug, Args)]
pub struct ClusterRemoveArgs {
    /// The raft id of the controller to remove
    pub id: u64,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print only the client version, without asking a controller
    #[arg(long)]
    pub client: bool,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to generate a completion script for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the config file
    View,
    /// Make NAME the current context
    UseContext(ContextName),
    /// Create or change a context; takes the global --server and --namespace
    SetContext(ContextName),
    /// List the contexts
    GetContexts,
    /// Print the current context's name
    CurrentContext,
}

#[derive(Debug, Args)]
pub struct ContextName {
    /// The context's name
    pub name: String,
}

/// `--validate`: `true`/`strict` refuse unknown fields; `false`/`warn`/`ignore` warn.
fn parse_validate(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "strict" => Ok(true),
        "false" | "warn" | "ignore" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}

fn parse_timeout(s: &str) -> Result<RequestTimeout, String> {
    let d = drover_proto::duration::parse(s)?;
    Ok(RequestTimeout((!d.is_zero()).then_some(d)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn zero_means_no_limit() {
        assert_eq!(parse_timeout("0"), Ok(RequestTimeout(None)));
        assert_eq!(
            parse_timeout("1m30s"),
            Ok(RequestTimeout(Some(Duration::from_secs(90))))
        );
        assert_eq!(parse_wait("0s"), Ok(WaitLimit(None)));
        assert!(parse_wait("10x").is_err());
    }

    #[test]
    fn global_flags_may_follow_the_verb() {
        let cli = Cli::try_parse_from([
            "droverctl",
            "get",
            "deploy",
            "-n",
            "prod",
            "--server",
            "a:1",
        ])
        .expect("parses");
        assert_eq!(cli.global.namespace.as_deref(), Some("prod"));
        assert_eq!(cli.global.server.as_deref(), Some("a:1"));
    }

    #[test]
    fn logs_flags_take_kubectl_forms() {
        let cli = Cli::try_parse_from(["droverctl", "logs", "web-1", "-f", "--tail", "20"])
            .expect("parses");
        let Command::Logs(l) = cli.command else {
            panic!("not logs")
        };
        assert_eq!((l.replica.as_str(), l.follow, l.tail), ("web-1", true, 20));
        let cli = Cli::try_parse_from(["droverctl", "logs", "web-1", "--tail=-1"]).expect("parses");
        let Command::Logs(l) = cli.command else {
            panic!("not logs")
        };
        assert_eq!((l.follow, l.tail), (false, -1));
        assert!(Cli::try_parse_from(["droverctl", "logs", "web-1", "--tail", "-2"]).is_err());
        assert!(Cli::try_parse_from(["droverctl", "logs"]).is_err());
    }

    #[test]
    fn apply_flags_take_kubectl_forms() {
        let cli = Cli::try_parse_from([
            "droverctl",
            "apply",
            "-f",
            "a.yaml",
            "-f",
            "-",
            "--validate=false",
            "--dry-run=server",
        ])
        .expect("parses");
        let Command::Apply(a) = cli.command else {
            panic!("not apply")
        };
        assert_eq!(a.filenames, ["a.yaml", "-"]);
        assert!(!a.validate);
        assert_eq!(a.dry_run, DryRun::Server);

        let cli = Cli::try_parse_from(["droverctl", "apply", "-f", "a.yaml", "--dry-run"])
            .expect("parses");
        let Command::Apply(a) = cli.command else {
            panic!("not apply")
        };
        assert!(a.validate);
        assert_eq!(a.dry_run, DryRun::Client);

        assert!(Cli::try_parse_from(["droverctl", "apply"]).is_err());
        assert!(
            Cli::try_parse_from(["droverctl", "apply", "-f", "a", "--validate=maybe"]).is_err()
        );
    }

    #[test]
    fn drain_rollout_and_wait_flags_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).expect("parses").command;
        let Command::Drain(d) = parse(&["droverctl", "drain", "node/n1"]) else {
            panic!("not drain")
        };
        assert_eq!(d.timeout, WaitLimit(Some(Duration::from_secs(300))));
        let Command::Drain(d) = parse(&["droverctl", "drain", "n1", "--timeout", "0"]) else {
            panic!("not drain")
        };
        assert_eq!(d.timeout, WaitLimit(None), "0 waits forever");
        let Command::Rollout(RolloutCommand::Undo(u)) = parse(&[
            "droverctl",
            "rollout",
            "undo",
            "deployment",
            "web",
            "--to-revision",
            "2",
        ]) else {
            panic!("not undo")
        };
        assert_eq!((u.target.resources.len(), u.to_revision), (2, 2));
        let Command::Rollout(RolloutCommand::Status(s)) = parse(&[
            "droverctl",
            "rollout",
            "status",
            "deploy/web",
            "--watch=false",
        ]) else {
            panic!("not status")
        };
        assert!(!s.watch);
        let Command::Apply(a) =
            parse(&["droverctl", "apply", "-f", "a", "--wait", "--timeout", "1m"])
        else {
            panic!("not apply")
        };
        assert!(a.wait);
        assert_eq!(a.timeout, WaitLimit(Some(Duration::from_secs(60))));
        assert!(
            Cli::try_parse_from(["droverctl", "apply", "-f", "a", "--timeout", "1m"]).is_err(),
            "--timeout belongs to --wait"
        );
    }

    #[test]
    fn script_verbs_take_kubectl_forms() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).expect("parses").command;
        let Command::Wait(w) = parse(&[
            "droverctl",
            "wait",
            "--for=condition=Available",
            "deployment/web",
            "--timeout=60s",
        ]) else {
            panic!("not wait")
        };
        assert_eq!(w.for_condition, "condition=Available");
        assert_eq!(w.timeout, Duration::from_secs(60));
        let Command::Wait(w) = parse(&["droverctl", "wait", "node", "--all", "--for", "delete"])
        else {
            panic!("not wait")
        };
        assert_eq!((w.all, w.timeout), (true, Duration::from_secs(30)));
        assert!(Cli::try_parse_from(["droverctl", "wait", "deploy/web"]).is_err());

        let Command::Delete(d) = parse(&["droverctl", "delete", "deploy", "web"]) else {
            panic!("not delete")
        };
        assert!(d.wait, "delete waits by default");
        assert_eq!(d.grace_period, -1);
        let Command::Delete(d) = parse(&[
            "droverctl",
            "delete",
            "deploy",
            "-l",
            "app=web",
            "--wait=false",
            "--grace-period=0",
            "--force",
        ]) else {
            panic!("not delete")
        };
        assert!(!d.wait && d.force && d.grace_period == 0);
        assert_eq!(d.selector.as_deref(), Some("app=web"));

        let Command::Get(g) = parse(&[
            "droverctl",
            "get",
            "deploy",
            "-o",
            "jsonpath={.items[*].metadata.name}",
            "--no-headers",
            "-l",
            "app in (a,b)",
        ]) else {
            panic!("not get")
        };
        assert_eq!(
            g.output,
            Some(OutputFormat::JsonPath("{.items[*].metadata.name}".into()))
        );
        assert!(g.no_headers);
        let bad = Cli::try_parse_from(["droverctl", "get", "deploy", "-o", "jsonpath={.x"])
            .unwrap_err()
            .to_string();
        assert!(bad.contains("without its '}'"), "{bad}");
        let bad = Cli::try_parse_from(["droverctl", "get", "deploy", "-o", "table"])
            .unwrap_err()
            .to_string();
        assert!(bad.contains("unknown output format \"table\""), "{bad}");
        assert_eq!(
            parse_output("custom-columns=NAME:.metadata.name"),
            Ok(OutputFormat::CustomColumns("NAME:.metadata.name".into()))
        );
    }
}
