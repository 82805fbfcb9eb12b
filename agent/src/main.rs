//! drover-agent: placeholder until the agents issue lands.
use clap::Parser;

#[derive(Parser)]
#[command(name = "drover-agent", version = drover_proto::VERSION, about = "drover host agent (runs replicas; not yet implemented)")]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _ = Args::parse();
    anyhow::bail!("drover-agent is not implemented yet: this build has the control plane only")
}
