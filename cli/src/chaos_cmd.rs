//! `keel chaos`: the scenario generator's commands (`list`, `gen`,
//! `corpus`), the live harness's (`run`, `clean`), and one fault in a real
//! cluster (`inject`).

use crate::{chaos_inject, chaos_run, ControllerAt};
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ChaosCommand {
    /// List the scenarios
    List,
    /// Write DIR/trace.jsonl and DIR/labels.jsonl for one scenario
    Gen {
        #[arg(long)]
        scenario: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Override the scenario's length in seconds of trace time
        #[arg(long)]
        duration: Option<f64>,
    },
    /// Write the evaluation corpus: one folder per (scenario, seed)
    Corpus {
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a test cluster of namespace nodes here, run a real MPI job,
    /// inject real faults and score what keel committed (root; see docs/chaos.md)
    Run {
        /// A live scenario (`keel chaos run --list`); default: mixed
        scenario: Option<String>,
        /// Print the scores as `keel eval --json` does
        #[arg(long)]
        json: bool,
        /// Where configs, logs, labels and findings go
        #[arg(long)]
        dir: Option<PathBuf>,
        /// List the live scenarios and what each needs
        #[arg(long)]
        list: bool,
    },
    /// Remove what a killed `keel chaos run` left (namespaces, links, cgroups, processes)
    Clean,
    /// Inject one bounded fault into one node or rank, through the executor
    /// whose [chaos] opens that node to chaos; a ledger action, reverted at
    /// its end or on `keel action cancel` (see docs/chaos.md)
    Inject {
        /// host, network, pcie or gpu
        #[arg(long)]
        cause: String,
        /// node/NODE, or job/JOB/rank/RANK (its node from the job's record)
        #[arg(long)]
        target: String,
        /// How long: 30s, 2m (at most 600 s)
        #[arg(long = "for", default_value = "30s")]
        duration: String,
        /// Wait for its end and say what keel found: the finding, its cause, how fast
        #[arg(long)]
        wait: bool,
        /// With --wait: the report as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: ControllerAt,
    },
}

/// Runs one `keel chaos` command.
pub fn run(command: ChaosCommand) -> Result<()> {
    match command {
        ChaosCommand::Run { list: true, .. } => {
            for s in keel_chaos::live::live_scenarios() {
                println!("{:<10} {}", s.name, s.about);
            }
            println!("{:<10} {}", "gpu", crate::chaos_gpu::ABOUT);
            Ok(())
        }
        ChaosCommand::Run { scenario, dir, .. } if scenario.as_deref() == Some("gpu") => {
            crate::chaos_gpu::run(dir)
        }
        ChaosCommand::Run {
            scenario,
            json,
            dir,
            ..
        } => chaos_run::run(chaos_run::RunOpts {
            scenario,
            json,
            dir,
        }),
        ChaosCommand::Clean => chaos_run::clean(),
        ChaosCommand::Inject {
            cause,
            target,
            duration,
            wait,
            json,
            at,
        } => chaos_inject::run(
            &at,
            chaos_inject::InjectOpts {
                cause,
                target,
                duration,
                wait,
                json,
            },
        ),
        ChaosCommand::List => {
            for s in keel_chaos::scenarios() {
                println!("{:<22} {}", s.name, s.about);
            }
            Ok(())
        }
        ChaosCommand::Gen {
            scenario,
            seed,
            out,
            duration,
        } => {
            let s = keel_chaos::generate_to_dir(
                &scenario,
                seed,
                &keel_chaos::GenOptions {
                    duration_s: duration,
                },
                &out,
            )?;
            eprintln!(
                "{}: {} records, {} labels, {:.0} s",
                out.display(),
                s.records,
                s.labels,
                s.end - s.start
            );
            Ok(())
        }
        ChaosCommand::Corpus { out } => {
            for (scenario, seed) in keel_chaos::corpus() {
                let dir = out.join(format!("{scenario}-{seed}"));
                let s = keel_chaos::generate_to_dir(
                    scenario,
                    seed,
                    &keel_chaos::GenOptions::default(),
                    &dir,
                )?;
                eprintln!(
                    "{}: {} records, {} labels",
                    dir.display(),
                    s.records,
                    s.labels
                );
            }
            Ok(())
        }
    }
}
