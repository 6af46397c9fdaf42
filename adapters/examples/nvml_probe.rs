//! Prints this machine's GPU readings as trace-format metric lines, once a
//! second: `cargo run -p keel-adapters --features nvml --example nvml_probe -- [SECONDS]`.

use keel_adapters::sources::nvml::Nvml;
use keel_model::Record;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let seconds: u64 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 5,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("nvml_probe: SECONDS: {e}");
            std::process::exit(2);
        }
    };
    let nvml = match Nvml::load() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("nvml_probe: {e}");
            std::process::exit(1);
        }
    };
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let start = Instant::now();
    for tick in 0..seconds {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        match nvml.read(&node, ts) {
            Ok((samples, stats)) => {
                for s in samples {
                    match serde_json::to_string(&Record::Metric(s)) {
                        Ok(line) => println!("{line}"),
                        Err(e) => eprintln!("nvml_probe: {e}"),
                    }
                }
                eprintln!(
                    "nvml_probe: {} GPUs, {} samples, {} unsupported fields",
                    stats.gpus, stats.samples, stats.unsupported
                );
            }
            Err(e) => eprintln!("nvml_probe: {e}"),
        }
        // Ticks keep to the second however long a read took.
        let next = start + Duration::from_secs(tick + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}
