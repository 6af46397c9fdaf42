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
mod chaos_roles;
mod chaos_run;
mod controller;
mod demo;
mod demo_act;
mod eval;
mod http;
mod job;
mod live;
mod policy;
mod queries;
mod replay;
mod slurm;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Finds skews in LLM inference on GPU clusters and names their cause"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Worker threads of a role process's runtime (controller, sensor,
    /// correlator, executor); default 2
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// Serve /metrics, /healthz and /readyz of a role process on this
    /// address (e.g. 127.0.0.1:7480); off by default
    #[arg(long, global = true, env = "KEEL_HTTP")]
    http: Option<std::net::SocketAddr>,
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
    },
    /// List the findings the controller committed (open and closed), as a JSON array
    Findings {
        #[command(flatten)]
        at: ControllerAt,
        /// Only those open at or after this time, the on-disk history
        /// included: a duration back from now (90s, 15m, 12h, 7d), a Unix
        /// time in seconds, or a UTC time (2026-11-30T10:00:00Z)
        #[arg(long)]
        since: Option<String>,
    },
    /// List the job records the controller knows, as a JSON array
    Jobs {
        #[command(flatten)]
        at: ControllerAt,
        /// Only this job (an error if the controller does not know it)
        #[arg(long)]
        job: Option<String>,
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
        command: BenchCommand,
    },
    /// Make the cluster's certificates: one CA, one certificate per process
    Cert {
        #[command(subcommand)]
        command: cert::CertCommand,
    },
}

/// Asks a controller and prints its answer; a refusal is an error.
pub(crate) fn ask(
    at: &ControllerAt,
    topic: &str,
    params: std::collections::BTreeMap<String, String>,
) -> Result<()> {
    let r = controller::query(at.controller, &at.name, &at.credentials, topic, params)?;
    if !r.ok {
        bail!("{}: {}", at.name, r.body);
    }
    println!("{}", r.body);
    Ok(())
}

/// Which controller to ask, and as whom.
#[derive(clap::Args)]
pub(crate) struct ControllerAt {
    /// The controller's address
    #[arg(long)]
    pub(crate) controller: std::net::SocketAddr,
    /// The name in the controller's certificate
    #[arg(long)]
    pub(crate) name: String,
    /// A folder with an operator certificate (`keel cert issue --role operator`)
    #[arg(long)]
    pub(crate) credentials: PathBuf,
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

#[derive(Subcommand)]
enum BenchCommand {
    /// Commits/s and commit latency of 3 local controller processes (fsync on), then failover time
    Controller {
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Proposals in flight at once
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Onset-to-committed-finding latency in `keel demo`-like live runs (80 s each)
    Live {
        #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3, 4, 5])]
        seeds: Vec<u64>,
        #[arg(long, default_value = "live")]
        scenario: String,
    },
    /// Sensor edge aggregation rate (collective events/s on one core) and memory per tracked rank
    Edge {
        #[arg(long, default_value_t = 20_000_000)]
        events: u64,
        /// Collectives per window
        #[arg(long, default_value_t = 2)]
        window_len: u64,
    },
    /// Controller CPU, memory, routing and commit latency on a simulated cluster of N nodes
    Scale(bench_scale::ScaleArgs),
    /// Three controllers for an hour under steady findings, the leader killed every 2 minutes; RSS and state size into a CSV
    Soak(bench_soak::SoakArgs),
    /// Replay throughput (records/s on one core) and peak memory on traces of growing length
    Replay {
        /// Trace lengths to measure, in seconds of trace time
        #[arg(long, value_delimiter = ',', default_values_t = [120.0, 480.0])]
        durations: Vec<f64>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
        Command::Findings { at, since } => queries::findings(&at, since.as_deref()),
        Command::Jobs { at, job } => queries::jobs(&at, job.as_deref()),
        Command::Routes { at } => ask(&at, "routes", Default::default()),
        Command::Status { at, consistent } => {
            let params = [("consistent".to_string(), consistent.to_string())]
                .into_iter()
                .collect();
            ask(&at, "status", params)
        }
        Command::Policy { command } => policy::run(command),
        Command::Actions { at, json, since } => policy::actions(&at, json, since.as_deref()),
        Command::Action { command } => policy::approve(command),
        Command::Pause { reason, at } => policy::brake(&at, Some(reason)),
        Command::Resume { at } => policy::brake(&at, None),
        Command::Executor { config } => controller::run_executor(&config),
        Command::Bench { command } => match command {
            BenchCommand::Replay { durations, seed } => bench::run(&durations, seed),
            BenchCommand::Edge { events, window_len } => bench_edge::run(events, window_len),
            BenchCommand::Scale(args) => bench_scale::run(&args),
            BenchCommand::Soak(args) => bench_soak::run(&args),
            BenchCommand::Live { seeds, scenario } => bench_edge::live(&scenario, &seeds),
            BenchCommand::Controller {
                seconds,
                concurrency,
            } => bench_controller::run(seconds, concurrency),
        },
        Command::Cert { command } => cert::run(command),
    }
}
