//! `keel scrape URL|FILE`: what keel reads from an exporter, without
//! running a sensor. Each sample as keel maps it (node, GPU or MIG
//! instance, NIC and direction, served model) and every line it dropped,
//! with the reason, through the same parser the sensor's `prometheus`
//! source uses.

use anyhow::{Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use keel_adapters::sources::prometheus::{parse_scrape_with, Dropped};
use keel_adapters::sources::scrape::{fetch, ScrapeTarget};
use serde_json::json;
use std::time::Duration;

/// Lines listed as dropped; past this only counted (node-exporter serves
/// about a thousand metrics keel does not use).
const DROPPED_SHOWN: usize = 10_000;

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Reads `source` (an `http://` URL, a file, or `-` for standard input)
/// as node `node` (default: the URL's host, or `local`) and prints what
/// keel makes of it; `unknown` also lists the metrics keel does not use.
pub fn run(source: &str, node: Option<&str>, json_out: bool, unknown: bool) -> Result<()> {
    let (body, default_node) = if source.starts_with("http://") || source.starts_with("https://") {
        let target = ScrapeTarget::new(source, node.unwrap_or("local"))?;
        let host = target.url.host.clone();
        (fetch(&target.url, Duration::from_secs(5))?, host)
    } else if source == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading standard input")?;
        (s, "local".to_string())
    } else {
        let s = std::fs::read_to_string(source).with_context(|| format!("reading {source}"))?;
        (s, "local".to_string())
    };
    let node = node.map_or(default_node, str::to_string);
    let mut dropped: Vec<(usize, String)> = Vec::new();
    let mut more = 0usize;
    let (samples, stats) = parse_scrape_with(&body, &node, now(), |line, why| {
        let reason = match why {
            Dropped::Unknown(_) if !unknown => return,
            Dropped::Unknown(name) => format!("{name}: a metric keel does not use"),
            Dropped::NonFinite => "NaN or Inf".to_string(),
            Dropped::Blank => {
                "no reading (dcgm-exporter's sentinel, or a link speed of -1)".to_string()
            }
            // Worded by the parser, in `stats.malformed`.
            Dropped::Malformed => String::new(),
        };
        if dropped.len() < DROPPED_SHOWN {
            dropped.push((line, reason));
        } else {
            more += 1;
        }
    });
    for (line, reason) in &mut dropped {
        if reason.is_empty() {
            if let Some((_, why)) = stats.malformed.iter().find(|(l, _)| l == line) {
                *reason = format!("malformed: {why}");
            }
        }
    }
    if json_out {
        let v = json!({
            "node": node,
            "samples": samples,
            "dropped": dropped.iter().map(|(l, r)| json!({"line": l, "reason": r})).collect::<Vec<_>>(),
            "counts": {
                "samples": stats.samples,
                "unknown": stats.unknown,
                "non_finite": stats.non_finite,
                "blank": stats.blank,
                "malformed": stats.malformed.len(),
            },
        });
        println!("{v}");
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header([
        "metric", "node", "gpu", "mig", "nic", "dir", "model", "value",
    ]);
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for s in &samples {
        let l = &s.labels;
        t.add_row([
            s.name.wire().to_string(),
            s.node.to_string(),
            opt(l.gpu.map(|g| g.to_string())),
            opt(l.gpu_instance.map(|g| g.to_string())),
            opt(l.device.as_ref().map(|d| d.to_string())),
            opt(l.dir.map(|d| format!("{d:?}").to_lowercase())),
            opt(l.model_name.as_ref().map(|m| m.to_string())),
            s.value.to_string(),
        ]);
    }
    println!("{t}");
    println!(
        "{} samples taken; dropped: {} of metrics keel does not use{}, {} NaN/Inf, {} without a reading, {} malformed",
        stats.samples,
        stats.unknown,
        if unknown { "" } else { " (--unknown lists them)" },
        stats.non_finite,
        stats.blank,
        stats.malformed.len()
    );
    for (line, reason) in &dropped {
        println!("  line {line}: {reason}");
    }
    if more > 0 {
        println!("  ... and {more} more");
    }
    Ok(())
}
