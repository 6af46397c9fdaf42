//! Loopback benchmark of one keel connection: a sensor streams batched 64-byte
//! summaries to a controller as fast as the connection takes them, while
//! control round trips run on the same connection, and we measure both.
//!
//! cargo run --release -p keel-transport --example transport_bench -- [SECONDS]

use keel_model::{Ack, Action, Command, Message, Role, Summary};
use keel_transport::certs::{Ca, Validity};
use keel_transport::{Client, Credentials, Options, Server};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn summary(i: u64) -> Summary {
    Summary {
        node: "node-0017".into(),
        job: "job-42".into(),
        rank: (i % 64) as u32,
        window: 7,
        window_end: 1_700_000_000.0 + i as f64,
        count: 120,
        step_us: 33_000,
        dur_p50_us: 8_400,
        dur_p99_us: 31_000,
        offset_us: 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut rtts: Vec<Duration>) {
    rtts.sort();
    println!(
        "{what}: {} round trips, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        rtts.len(),
        percentile(&rtts, 0.50).as_secs_f64() * 1e3,
        percentile(&rtts, 0.99).as_secs_f64() * 1e3,
        rtts.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let ca = Ca::generate(Validity::days(1))?;
    let creds = |role, name| -> Result<Credentials, Box<dyn std::error::Error>> {
        Ok(Credentials::new(
            ca.pem.cert.clone(),
            ca.issue(role, name, Validity::days(1))?,
        ))
    };
    let mut server = Server::bind(
        ([127, 0, 0, 1], 0).into(),
        &creds(Role::Controller, "ctl-1")?,
        Options::default(),
    )?;
    let addr = server.local_addr()?;
    let client = Client::new(&creds(Role::Sensor, "s-1")?, Options::default())?;
    let (sensor, mut sensor_inbox) = client.connect(addr, "ctl-1").await?;
    let (controller, mut ctl_inbox) = server.accept().await.ok_or("no connection")?;

    let stop = Arc::new(AtomicBool::new(false));
    // The controller's side: take telemetry as it comes.
    let consumer = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some((_, batch)) = ctl_inbox.telemetry.recv().await {
            n += batch.summaries.len() as u64;
        }
        n
    });
    // The sensor's side: ack every command.
    tokio::spawn(async move {
        while let Some(req) = sensor_inbox.requests.recv().await {
            let id = match &req.msg {
                Message::Command(c) => c.id,
                _ => 0,
            };
            let _ = req
                .reply(Message::Ack(Ack {
                    id,
                    ok: true,
                    detail: String::new(),
                }))
                .await;
        }
    });
    // The sensor produces as fast as its queue drains, keeping it half full at
    // most, so the figure is what the connection carries, not what it drops.
    let producer = {
        let tx = sensor.telemetry().clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if tx.queued() > keel_transport::telemetry::QUEUE_CAPACITY / 2 {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                }
                tx.send_all((i..i + 1024).map(summary));
                i += 1024;
                tokio::task::yield_now().await;
            }
            i
        })
    };
    let commands = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rtts = Vec::new();
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let cmd = Message::Command(Command {
                    id,
                    action: Action::Notify,
                    target: "node-0017".into(),
                    params: BTreeMap::new(),
                    idempotency_key: format!("bench-{id}"),
                    rollback: false,
                });
                let t = Instant::now();
                if controller
                    .request(cmd, Duration::from_secs(5))
                    .await
                    .is_ok()
                {
                    rtts.push(t.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            rtts
        })
    };
    let pings = {
        let stop = stop.clone();
        let sensor = sensor.clone();
        tokio::spawn(async move {
            let mut rtts = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if sensor
                    .request(Message::Ping, Duration::from_secs(5))
                    .await
                    .is_ok()
                {
                    rtts.push(t.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            rtts
        })
    };

    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let received_at_stop = server_received(&server);
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let produced = producer.await?;
    let command_rtts = commands.await?;
    let ping_rtts = pings.await?;
    sensor.close_gracefully(Duration::from_secs(1)).await;
    let consumed = consumer.await?;

    println!(
        "duration: {:.1} s, one connection, loopback",
        elapsed.as_secs_f64()
    );
    println!(
        "telemetry: {} summaries delivered ({:.0}/s), {} produced, {} dropped by the sender queue",
        received_at_stop,
        received_at_stop as f64 / elapsed.as_secs_f64(),
        produced,
        client.stats.dropped(),
    );
    println!(
        "telemetry frames: {} summaries per batch at most, 64-byte summaries ({} consumed in all)",
        keel_transport::telemetry::BATCH_MAX,
        consumed
    );
    report(
        "control command->ack (controller to sensor, under telemetry)",
        command_rtts,
    );
    report(
        "control ping->pong (sensor to controller, under telemetry)",
        ping_rtts,
    );
    Ok(())
}

fn server_received(server: &Server) -> u64 {
    server.stats.telemetry_received.load(Ordering::Relaxed)
}
