//! Telemetry sources, one module each.

pub mod replay;
pub mod trace_line;
