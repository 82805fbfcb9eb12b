//! `droverctl lab up|down|status|kill|stop|start|pause|resume|partition|heal|chaos`
//!
//! The plumbing lives in [`crate::lab`]; this file parses, prints and, for
//! `up --apply`, runs droverctl's own `apply` and `get` against the new lab.

use clap::Parser as _;
use std::path::Path;

use super::{print, Env};
use crate::cli::{Cli, Command, LabCommand, LabDownArgs, LabUpArgs};
use crate::config::ConfigFile;
use crate::lab::{self, available, chaos, sys, Lab, UpOptions};
use crate::output::Table;

pub async fn run(env: &Env, cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up(args) => up(env, args).await,
        LabCommand::Down(LabDownArgs { id: Some(id), .. }) => {
            if let Some(missing) = sys::missing_prerequisite() {
                anyhow::bail!(missing);
            }
            let done = lab::down_orphan(id)?;
            print(&format!(
                "{}\nlab {id} is gone from this machine; its directory, if any is left, can be removed with rm -r\n",
                done.join("\n")
            ))
        }
        LabCommand::Down(d) => {
            let d = d.dir;
            let lab = Lab::load(&d.dir)?;
            // The context goes even when something else is left behind.
            let context = lab.config.as_deref().and_then(|c| remove_context(&lab, c));
            let mut done = lab::down(&d.dir)?;
            done.extend(context);
            print(&format!("{}\n", done.join("\n")))
        }
        LabCommand::Status(d) => print(&status(&Lab::load(&d.dir)?)),
        LabCommand::Kill(h) => {
            let mut lab = Lab::load(&h.dir.dir)?;
            let n = lab.kill(&h.host)?;
            print(&format!(
                "killed {} ({n} process(es)/container(s))\n",
                h.host
            ))
        }
        LabCommand::Stop(h) => {
            let mut lab = Lab::load(&h.dir.dir)?;
            lab.stop(&h.host)?;
            print(&format!("stopped {}\n", h.host))
        }
        LabCommand::Start(h) => {
            let mut lab = Lab::load(&h.dir.dir)?;
            let pid = lab.start(&h.host)?;
            print(&format!("started {} (pid {pid})\n", h.host))
        }
        LabCommand::Pause(h) => {
            let mut lab = Lab::load(&h.dir.dir)?;
            lab.pause(&h.host, true)?;
            print(&format!("paused {}\n", h.host))
        }
        LabCommand::Resume(h) => {
            let mut lab = Lab::load(&h.dir.dir)?;
            lab.pause(&h.host, false)?;
            print(&format!("resumed {}\n", h.host))
        }
        LabCommand::Partition(p) => {
            let mut lab = Lab::load(&p.dir.dir)?;
            let from = lab.partition(&p.host, &p.from)?;
            print(&format!(
                "partitioned {} from {} (both directions; droverctl still reaches every host)\n",
                p.host,
                from.join(", ")
            ))
        }
        LabCommand::Heal(d) => {
            let mut lab = Lab::load(&d.dir)?;
            let n = lab.heal()?;
            print(&format!("healed {n} partition(s)\n"))
        }
        LabCommand::Chaos(args) => {
            let lab = Lab::load(&args.dir.dir)?;
            let seed = args.seed.unwrap_or_else(chaos::random_seed);
            let report = chaos::run(
                lab,
                chaos::Options {
                    rounds: args.rounds,
                    seed,
                    converge_within: args.converge_within,
                },
                &mut |line| {
                    let _ = print(&format!("{line}\n"));
                },
            )
            .await?;
            print(&report.summary())?;
            if report.interrupted {
                return Err(crate::Interrupted.into());
            }
            if !report.violations.is_empty() {
                anyhow::bail!(
                    "{} violation(s) with seed {seed}: replay with droverctl lab chaos --seed {seed} --rounds {}",
                    report.violations.len(),
                    args.rounds
                );
            }
            Ok(())
        }
    }
}

async fn up(env: &Env, args: LabUpArgs) -> anyhow::Result<()> {
    let dir = args.dir.dir.clone();
    if lab::exists(&dir) {
        anyhow::bail!(
            "a lab already exists in {}: see it with droverctl lab status, or remove it with droverctl lab down{}",
            dir.display(),
            if dir == Path::new(".drover-lab") {
                String::new()
            } else {
                format!(" --dir {}", dir.display())
            }
        );
    }
    if let Some(missing) = sys::missing_prerequisite() {
        anyhow::bail!(missing);
    }
    if args.dns_upstream.is_some() && args.runtime != "docker" {
        anyhow::bail!(
            "--dns-upstream is for Docker replicas' names: add --runtime docker (process replicas use their host's resolver)"
        );
    }
    let controller_bin = lab::find_binary("drover-controller")?;
    let agent_bin = lab::find_binary("drover-agent")?;
    let opts = UpOptions {
        dir: dir.clone(),
        controllers: args.controllers,
        agents: args.agents,
        runtime: args.runtime.clone(),
        controller_bin,
        agent_bin,
        controller_args: Vec::new(),
        agent_args: args
            .stop_after_disconnect
            .map(|d| {
                vec![
                    "--stop-after-disconnect".to_string(),
                    drover_proto::duration::short(d),
                ]
            })
            .into_iter()
            .chain(
                args.dns_upstream
                    .map(|a| vec!["--service-dns-upstream".to_string(), a.to_string()]),
            )
            .flatten()
            .collect(),
        busybox_path: args.busybox_path.clone(),
    };
    let mut lab = lab::up(&opts, &mut |line| {
        let _ = print(&format!("{line}\n"));
    })
    .await?;
    let config = env.config_path()?;
    if let Err(e) = write_context(&lab, &config) {
        let _ = lab::down(&lab.dir);
        return Err(e);
    }
    lab.config = Some(config);
    lab.save()?;
    print(&format!(
        "context {:?} is now current ({})\n\n",
        lab::CONTEXT,
        env.config_path()?.display()
    ))?;
    print(&status(&lab))?;
    let me = invoked_as();
    let dir_flag = if dir == Path::new(".drover-lab") {
        String::new()
    } else {
        format!(" --dir {}", dir.display())
    };
    let mut curl = String::new();
    if let Some(file) = &args.apply {
        let file = file.display().to_string();
        run_self(env, &["apply", "-f", &file]).await?;
        let waited = available::wait(&lab, args.timeout, &mut |line| {
            let _ = print(&format!("{line}\n"));
        })
        .await;
        match waited {
            Ok(addresses) => {
                run_self(env, &["get", "deployments"]).await?;
                run_self(env, &["get", "replicas", "-o", "wide"]).await?;
                for a in &addresses {
                    curl.push_str(&format!("  curl {a}\n"));
                }
            }
            Err(stuck) => {
                let _ = run_self(env, &["get", "replicas", "-o", "wide"]).await;
                let next = match &stuck.first {
                    Some((replica, deployment)) => format!(
                        "see why with `{me} logs {replica}` and `{me} describe deployment {deployment}`; the lab stays up (remove it with {me} lab down{dir_flag})"
                    ),
                    None => format!(
                        "see why with `{me} describe deployments`; the lab stays up (remove it with {me} lab down{dir_flag})"
                    ),
                };
                anyhow::bail!("{file} is {stuck}\n{next}");
            }
        }
    }
    print(&format!(
        "\nnext:\n{curl}  {me} get nodes\n  {me} get replicas -o wide\n  {me} lab kill n1{dir_flag}        (or stop|start|pause|resume|partition|heal)\n  {me} lab chaos --rounds 20{dir_flag}\n  {me} lab down{dir_flag}\n"
    ))
}

/// Write the `lab` context (servers, CA, admin certificate) and make it current.
fn write_context(lab: &Lab, path: &Path) -> anyhow::Result<()> {
    let mut file = ConfigFile::load(path)?;
    file.set_context(lab::CONTEXT, Some(lab.servers()), None);
    let admin = lab.admin_tls();
    if let Some(ctx) = file.contexts.iter_mut().find(|c| c.name == lab::CONTEXT) {
        ctx.ca = Some(admin.ca_cert());
        ctx.cert = Some(admin.cert());
        ctx.key = Some(admin.key());
        ctx.insecure = false;
    }
    file.current_context = Some(lab::CONTEXT.to_string());
    file.save(path)
}

/// Remove the `lab` context from `path` if it still names this lab's
/// servers; what was done, for the user.
fn remove_context(lab: &Lab, path: &Path) -> Option<String> {
    let mut file = ConfigFile::load(path).ok()?;
    let ours = file
        .context(lab::CONTEXT)
        .is_some_and(|c| c.servers == lab.servers());
    if !ours {
        return None;
    }
    file.contexts.retain(|c| c.name != lab::CONTEXT);
    if file.current_context.as_deref() == Some(lab::CONTEXT) {
        file.current_context = None;
    }
    file.save(path).ok()?;
    Some(format!("removed context {}", lab::CONTEXT))
}

/// droverctl as the user ran it, for the commands printed to paste next:
/// the path as typed (`target/release/droverctl`, not where a symlinked
/// `target/` resolves to, as `current_exe` says), or the bare name found
/// on `PATH`.
fn invoked_as() -> String {
    std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "droverctl".into())
}

/// Run another droverctl verb against the lab's context.
async fn run_self(env: &Env, args: &[&str]) -> anyhow::Result<()> {
    let mut argv = vec!["droverctl", "--context", lab::CONTEXT];
    argv.extend_from_slice(args);
    let mut cli = Cli::try_parse_from(&argv)?;
    cli.global.config = env.global.config.clone();
    if matches!(cli.command, Command::Lab(_)) {
        anyhow::bail!("lab cannot run itself");
    }
    Box::pin(super::run(cli)).await
}

/// `HOST ROLE ADDRESS METRICS NAMESPACE PID STATE PARTITIONED-FROM`.
pub fn status(lab: &Lab) -> String {
    let mut t = Table::new([
        "HOST",
        "ROLE",
        "ADDRESS",
        "METRICS",
        "NAMESPACE",
        "PID",
        "STATE",
        "PARTITIONED-FROM",
    ]);
    for h in &lab.hosts {
        let state = lab.state(h);
        let parts = lab.partitions_of(&h.name);
        t.push(vec![
            h.name.clone(),
            match h.role {
                lab::Role::Controller => "controller".into(),
                lab::Role::Agent => format!("agent/{}", lab.runtime),
            },
            h.address(),
            format!("http://{}/metrics", h.metrics_address()),
            h.ns.clone(),
            match (state, h.pid) {
                (lab::HostState::Stopped, _) | (_, None) => "-".into(),
                (_, Some(p)) => p.to_string(),
            },
            state.to_string(),
            if parts.is_empty() {
                "-".into()
            } else {
                parts.join(",")
            },
        ]);
    }
    format!(
        "lab {} in {}: bridge {} ({}.0/24, this machine is {}.1)\n{}",
        lab.id,
        lab.dir.display(),
        lab.bridge,
        lab.net,
        lab.net,
        t.render()
    )
}
