//! `droverctl completion bash|zsh|fish|powershell|elvish`: a completion script on stdout.
//!
//! ```sh
//! source <(droverctl completion bash)
//! ```

use clap::CommandFactory;

use crate::cli::{Cli, CompletionArgs};

pub fn run(args: CompletionArgs) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "droverctl", &mut buf);
    super::print(&String::from_utf8_lossy(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_verbs() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
            clap_complete::Shell::PowerShell,
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "droverctl", &mut buf);
            let script = String::from_utf8(buf).unwrap();
            assert!(
                script.contains("apply") && script.contains("droverctl"),
                "{shell}"
            );
        }
    }
}
