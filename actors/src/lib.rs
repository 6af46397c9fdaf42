//! keel's actors: thin ractor shells that wire the sans-IO logic (`detect`,
//! `consensus`) to the outside world (`adapters`, `transport`).
//!
//! - `sensor`: one per node; runs its telemetry sources as supervised
//!   children (`sources`), summarises at the edge, sends to correlators.
//! - `correlator`: a correlator host per process, one correlator actor per
//!   job (supervised children); detection and reporting.
//! - `controller`: one Raft replica; commits jobs, findings and their
//!   closing, and tells sensors and correlator hosts where jobs live; the
//!   leader runs the mitigation loop (`controller::steward`).
//! - `executor`: carries the leader's commands out on Slurm, HAProxy, a
//!   webhook or the node's NIC, and acknowledges them.
//!
//! A crashed source or correlator is restarted by its parent, which logs the
//! restart and counts it; its siblings keep running.

pub mod client;
pub mod controller;
pub mod correlator;
mod correlator_config;
pub mod discovery;
pub mod executor;
pub mod executor_chaos;
pub mod mailbox;
pub mod report;
pub mod sensor;
pub mod sources;

pub use client::{ControllerAddr, ControllerClient};
pub use ractor;
