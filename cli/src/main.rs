//! The `keel` binary: every role and tool of keel behind one command.

mod replay;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Finds skews in LLM inference on GPU clusters, names their cause, and acts on them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a trace (JSON Lines, `-` for stdin) and write findings as JSON Lines
    Replay {
        /// The trace file, or `-` for standard input
        trace: PathBuf,
        /// Write findings here instead of standard output
        #[arg(long)]
        out: Option<PathBuf>,
        /// Do not print the read summary on stderr
        #[arg(long)]
        quiet: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Replay { trace, out, quiet } => replay::run(&trace, out.as_deref(), quiet),
    }
}
