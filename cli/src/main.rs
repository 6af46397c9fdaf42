//! The `keel` binary: every role and tool of keel behind one command.

mod bench;
mod bench_controller;
mod bench_edge;
mod bench_scale;
mod bench_scale_detect;
mod bench_scale_load;
mod bench_soak;
mod cert;
mod chaos_cmd;
mod chaos_gpu;
mod chaos_inject;
mod chaos_roles;
mod chaos_run;
mod context;
mod controller;
mod dashboard;
mod demo;
mod demo_act;
mod demo_hook;
mod eval;
mod failover;
mod filters;
mod http;
mod job;
mod live;
mod manual;
mod policy;
mod probes;
mod queries;
mod replay;
mod scrape_cmd;
mod slurm;
mod tables;

pub(crate) use context::ControllerAt;
pub(crate) use queries::ask;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Finds skews in LLM inference on GPU clusters and names their cause",
    after_long_help = context::ABOUT
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Worker threads of a role process's runtime (controller, sensor,
    /// correlator, executor); default 2
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// Serve /metrics, /healthz and /readyz of a role process (and a
    /// controller's dashboard at /) on this address (e.g. 127.0.0.1:7480);
    /// off by default, except for `keel demo` (127.0.0.1:7480)
    #[arg(long, global = true, env = "KEEL_HTTP")]
    http: Option<std::net::SocketAddr>,
    /// Log lines as text, or as one JSON object each (fields and spans)
    #[arg(long, global = true, env = "KEEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole simulated cluster through the detectors and tell what was found and why
    Demo {
        /// Scenario to run (see `keel chaos list`; default: `live`, or
        /// `mixed` with --offline)
        #[arg(long)]
        scenario: Option<String>,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Trace seconds played per wall second
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// No cluster: replay the scenario's trace through the detectors
        /// as fast as they go, and score them
        #[arg(long)]
        offline: bool,
        /// Keep the generated trace and labels in this folder
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Also act on the Slurm this machine reaches: submit a real job
        /// (`sleep 600`), make it a GPU squatter, and show the executor
        /// refusing its reclaim at Slurm's word (without this flag the demo
        /// never calls Slurm)
        #[arg(long)]
        slurm: bool,
        /// After the run, keep the cluster and its dashboard up until
        /// interrupted (Ctrl-C)
        #[arg(long)]
        stay: bool,
    },
    /// Replay a trace (JSON Lines) and write findings as JSON Lines
    Replay {
        /// The trace file, or `-` for standard input
        trace: PathBuf,
        /// Write findings here instead of standard output
        #[arg(long)]
        out: Option<PathBuf>,
        /// Do not print the read summary on stderr
        #[arg(long)]
        quiet: bool,
        /// Detect as a live cluster does: collectives summarised per window at
        /// each node's edge first
        #[arg(long)]
        edge: bool,
    },
    /// Score findings against labels: per kind and overall precision, recall, F1, cause accuracy, latency
    ///
    /// The table's columns: `labels`, episodes labelled; `detected`, labels
    /// a finding matched; `findings`, findings of the kind; `FP`, findings
    /// that matched no label; precision, recall and F1 from those;
    /// `cause_acc`, of detected labels that carry a cause, the share whose
    /// first finding named it; the last three, onset to finding (s):
    /// median, 90th percentile, worst.
    Eval {
        /// A trace to replay (with --labels)
        #[arg(long, requires = "labels")]
        trace: Option<PathBuf>,
        /// The trace's labels
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Score these findings instead of replaying the trace (from another tool, say)
        #[arg(long, requires = "trace")]
        findings: Option<PathBuf>,
        /// A folder of scenario folders, each with trace.jsonl and labels.jsonl
        #[arg(long, conflicts_with_all = ["trace", "labels", "findings"])]
        corpus: Option<PathBuf>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// Also score each trace on its own
        #[arg(long)]
        per_trace: bool,
        /// Print each replay's read summary on stderr
        #[arg(long)]
        verbose: bool,
        /// Detect as a live cluster does: collectives summarised per window at
        /// each node's edge first
        #[arg(long)]
        edge: bool,
    },
    /// Generate scenarios (simulated clusters with injected faults and nuisances),
    /// or run live ones: real faults in a real job on namespace nodes here
    Chaos {
        #[command(subcommand)]
        command: chaos_cmd::ChaosCommand,
    },
    /// Run one replica of the Raft-replicated controller, or change its membership
    #[command(args_conflicts_with_subcommands = true)]
    Controller {
        /// TOML: id, listen, data_dir, credentials, [[peers]] id/addr/name, join
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<MemberCommand>,
    },
    /// Run a sensor: its telemetry sources, edge aggregation, summaries to the correlators
    Sensor {
        /// TOML: node, credentials, [[controllers]] addr/name, [[source]] type=...
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a correlator host: the correlators of the jobs the controller assigns to it
    Correlator {
        /// TOML: listen, advertise, credentials, [[controllers]] addr/name
        #[arg(long)]
        config: PathBuf,
    },
    /// Tell the controller that a job started, changed or ended
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// What keel reads from Slurm (jobs, states, nodes, GPU indices)
    Slurm {
        #[command(subcommand)]
        command: slurm::SlurmCommand,
    },
    /// Which correlator host holds each job (and where sensors send its summaries)
    Routes {
        #[command(flatten)]
        at: ControllerAt,
        /// Print the controller's JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// What keel reads from an exporter (a URL, a file of Prometheus text, or - for stdin): each sample as keel maps it to node, GPU, NIC and model, and every line it dropped with the reason
    Scrape {
        /// `http://HOST:PORT/metrics`, a file, or `-`
        source: String,
        /// The node the samples belong to (a sample's own `Hostname` label wins); default the URL's host, or `local`
        #[arg(long)]
        node: Option<String>,
        /// Print JSON: the samples in the trace format's shape, the dropped lines, the counts
        #[arg(long)]
        json: bool,
        /// Also list each sample of a metric keel does not use
        #[arg(long)]
        unknown: bool,
    },
    /// List the findings the controller committed (open and closed), as a
    /// table, or a JSON array with --json
    Findings {
        #[command(flatten)]
        at: ControllerAt,
        /// Only those open at or after this time, the on-disk history
        /// included: a duration back from now (90s, 15m, 12h, 7d), a Unix
        /// time in seconds, or a UTC time (2026-11-30T10:00:00Z)
        #[arg(long)]
        since: Option<String>,
        /// Only those not closed
        #[arg(long)]
        open: bool,
        /// Only those of this job
        #[arg(long)]
        job: Option<String>,
        /// Only those of this kind (its wire name, e.g. tp_straggler)
        #[arg(long)]
        kind: Option<String>,
        /// Only those on this node
        #[arg(long)]
        node: Option<String>,
        /// Print the controller's JSON (an array of entries) instead of a table
        #[arg(long)]
        json: bool,
    },
    /// List the job records the controller knows, as a table, or a JSON
    /// array with --json
    Jobs {
        #[command(flatten)]
        at: ControllerAt,
        /// Only this job (an error if the controller does not know it)
        #[arg(long)]
        job: Option<String>,
        /// Print the controller's JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Ask a controller for its view: leader, term, commit and applied
    /// index, state digest, members, and counts of jobs, findings, actions
    Status {
        #[command(flatten)]
        at: ControllerAt,
        /// Linearizable: wait until the replica has applied everything the
        /// cluster committed before the question (needs a leader)
        #[arg(long)]
        consistent: bool,
        /// Print the controller's JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Check policy files, apply one to the controller, explain a finding's match
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// The mitigation ledger: every action, its status, and the audit trail
    Actions {
        #[command(flatten)]
        at: ControllerAt,
        /// Print the controller's JSON
        #[arg(long)]
        json: bool,
        /// Only what moved at or after this time, the on-disk history
        /// included (a duration back from now, a Unix time or a UTC time)
        #[arg(long)]
        since: Option<String>,
    },
    /// Act on one action of the ledger
    Action {
        #[command(subcommand)]
        command: policy::ActionCommand,
    },
    /// Pause all automation: no leader sends, rolls back or escalates
    /// anything until `keel resume` (findings are still planned)
    Pause {
        /// Why (kept with the pause in the replicated state)
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        at: ControllerAt,
    },
    /// Resume automation; also resets a tripped circuit breaker
    Resume {
        #[command(flatten)]
        at: ControllerAt,
    },
    /// Run an executor: carries the controller's commands out (Slurm, HAProxy, webhook, NIC, GPU processes)
    Executor {
        /// TOML: credentials, [[controllers]], state_dir, nodes, [slurm], [haproxy], [webhook], [nic], [gpu], [log]
        #[arg(long)]
        config: PathBuf,
    },
    /// Measure keel's speed
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Make the cluster's certificates: one CA, one certificate per process
    Cert {
        #[command(subcommand)]
        command: cert::CertCommand,
    },
    /// Print a shell's completion script for keel, e.g.
    /// `keel completions bash > ~/.local/share/bash-completion/completions/keel`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print keel's manual page (roff: `keel man | man -l -`), or write one
    /// page per command into a folder
    Man {
        /// Write keel.1 and a page per command (keel-findings.1, ...) here
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Add a replica (started with `join = true`) to the cluster
    Join {
        /// The new replica's Raft id
        #[arg(long)]
        id: u64,
        /// Where the other replicas reach it
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// The name in its certificate
        #[arg(long = "member-name")]
        member_name: String,
        #[command(flatten)]
        at: ControllerAt,
    },
    /// Remove a replica from the cluster
    Leave {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        at: ControllerAt,
    },
}

#[derive(Subcommand)]
pub(crate) enum JobCommand {
    /// Register (or update) a job: its ranks per node, GPUs and NICs; or
    /// many jobs from a file
    Register {
        /// The job id
        #[arg(long, required_unless_present = "file")]
        job: Option<String>,
        /// NODE=RANK,RANK,... (repeat per node), e.g. node-0=0,1,2,3
        #[arg(long = "ranks")]
        ranks: Vec<String>,
        /// RANK=GPU pairs, comma-separated (default: rank i on GPU i mod 8)
        #[arg(long)]
        gpus: Option<String>,
        /// NODE=IDX,IDX-IDX: the GPU indices Slurm allocated to the job on
        /// NODE (repeat per node); without it (or --slurm-detail), they are
        /// unknown. Where they are as many as the node's ranks, the ranks
        /// run on them in order (over --gpus)
        #[arg(long = "node-gpus")]
        node_gpus: Vec<String>,
        /// The output of `scontrol show job -d -o JOB`: the GPU indices
        /// per node are read from its GRES detail
        #[arg(long = "slurm-detail")]
        slurm_detail: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// Register every job of FILE, one per line: a JSON job record, or
        /// `JOB NODE=RANK,... [NODE=RANK,...]`. Exits non-zero naming each
        /// line that was not applied
        #[arg(long, conflicts_with_all = ["job", "ranks", "gpus", "tenant"])]
        file: Option<PathBuf>,
        #[command(flatten)]
        at: ControllerAt,
    },
    /// Mark a job ended (its correlator stops after a short linger)
    End {
        #[arg(long)]
        job: String,
        /// Slurm's final state (COMPLETED, FAILED, CANCELLED, ...)
        #[arg(long, default_value = "COMPLETED")]
        state: String,
        #[command(flatten)]
        at: ControllerAt,
    },
}

/// How a process writes its log (standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() {
    let cli = Cli::parse();
    // Services log what they do; the demo tells its own story and logs only
    // errors. RUST_LOG overrides either.
    let default = match cli.command {
        Command::Controller { .. }
        | Command::Sensor { .. }
        | Command::Correlator { .. }
        | Command::Executor { .. } => "info",
        _ => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // One JSON object a line, with the fields and the spans it was
        // logged in: `grep KEY` follows one action from planning through
        // dispatch and acknowledgement to verification.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    // An actor that panics is restarted by its supervisor, which logs it;
    // the panic itself gets one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic: {info}");
    }));
    // Errors are for operators: the chain of what failed and where, without
    // the backtrace anyhow would attach when RUST_BACKTRACE is set.
    if let Err(e) = run(cli) {
        eprintln!("keel: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.worker_threads {
        controller::set_worker_threads(usize::from(n));
    }
    if let Some(addr) = cli.http {
        http::set_addr(addr);
    }
    match cli.command {
        Command::Demo {
            scenario,
            seed,
            speed,
            offline,
            keep,
            slurm,
            stay,
        } => {
            if offline {
                let scenario = scenario.unwrap_or_else(|| "mixed".into());
                demo::run(&scenario, seed, keep.as_deref())
            } else {
                if !(speed.is_finite() && speed > 0.0) {
                    bail!("--speed must be a positive number");
                }
                live::run(live::LiveOptions {
                    scenario: scenario.unwrap_or_else(|| "live".into()),
                    seed,
                    speed,
                    keep,
                    quiet: false,
                    duration: None,
                    slurm,
                    // The dashboard: `--http ADDR`, or the demo's own port.
                    http: Some(cli.http.unwrap_or(live::DEMO_HTTP)),
                    stay,
                })
                .map(|_| ())
            }
        }
        Command::Replay {
            trace,
            out,
            quiet,
            edge,
        } => replay::run(&trace, out.as_deref(), quiet, edge),
        Command::Eval {
            trace,
            labels,
            findings,
            corpus,
            json,
            per_trace,
            verbose,
            edge,
        } => {
            let cases = match (corpus, trace, labels) {
                (Some(dir), _, _) => eval::corpus_cases(&dir)?,
                (None, Some(trace), Some(labels)) => vec![eval::Case {
                    name: trace.display().to_string(),
                    trace,
                    labels,
                    findings,
                }],
                _ => bail!("give --trace and --labels, or --corpus DIR"),
            };
            eval::run(cases, json, per_trace, verbose, edge)
        }
        Command::Chaos { command } => chaos_cmd::run(command),
        Command::Controller { config, command } => match (config, command) {
            (Some(config), None) => controller::run(&config),
            (
                None,
                Some(MemberCommand::Join {
                    id,
                    addr,
                    member_name,
                    at,
                }),
            ) => {
                let params = [
                    ("op", "add".to_string()),
                    ("id", id.to_string()),
                    ("addr", addr.to_string()),
                    ("name", member_name),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                ask(&at, "member", params)
            }
            (None, Some(MemberCommand::Leave { id, at })) => {
                let params = [("op", "remove".to_string()), ("id", id.to_string())]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                ask(&at, "member", params)
            }
            _ => bail!("give --config FILE to run a replica, or a join/leave command"),
        },
        Command::Sensor { config } => controller::run_sensor(&config),
        Command::Correlator { config } => controller::run_correlator(&config),
        Command::Job { command } => job::run(command),
        Command::Slurm { command } => slurm::run(command),
        Command::Scrape {
            source,
            node,
            json,
            unknown,
        } => scrape_cmd::run(&source, node.as_deref(), json, unknown),
        Command::Findings {
            at,
            since,
            open,
            job,
            kind,
            node,
            json,
        } => {
            let filter = filters::FindingFilter::new(open, job, kind.as_deref(), node)?;
            queries::findings(&at, since.as_deref(), &filter, json)
        }
        Command::Jobs { at, job, json } => queries::jobs(&at, job.as_deref(), json),
        Command::Routes { at, json } => queries::routes(&at, json),
        Command::Status {
            at,
            consistent,
            json,
        } => queries::status(&at, consistent, json),
        Command::Policy { command } => policy::run(command),
        Command::Actions { at, json, since } => policy::actions(&at, json, since.as_deref()),
        Command::Action { command } => policy::approve(command),
        Command::Pause { reason, at } => policy::brake(&at, Some(reason)),
        Command::Resume { at } => policy::brake(&at, None),
        Command::Executor { config } => controller::run_executor(&config),
        Command::Bench { command } => match command {
            bench::BenchCommand::Replay {
                durations,
                seed,
                mix,
                trace,
                keep,
                split,
            } => bench::run(&bench::ReplayArgs {
                durations: &durations,
                seed,
                mix,
                trace: trace.as_deref(),
                keep: keep.as_deref(),
                split,
            }),
            bench::BenchCommand::Edge { events, window_len } => bench_edge::run(events, window_len),
            bench::BenchCommand::Scale(args) => bench_scale::run(&args),
            bench::BenchCommand::Soak(args) => bench_soak::run(&args),
            bench::BenchCommand::Live { seeds, scenario } => bench_edge::live(&scenario, &seeds),
            bench::BenchCommand::Controller {
                seconds,
                concurrency,
            } => bench_controller::run(seconds, concurrency),
        },
        Command::Cert { command } => cert::run(command),
        Command::Completions { shell } => manual::completions(shell),
        Command::Man { out } => manual::man(out.as_deref()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
