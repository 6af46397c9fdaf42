//! Telemetry sources, one module each.

mod fast_line;
pub mod linux;
pub mod nccl_inspector;
pub mod nvml;
pub mod prometheus;
pub mod push;
pub mod push_peer;
mod push_unix;
pub mod replay;
pub mod scrape;
pub mod trace_line;
