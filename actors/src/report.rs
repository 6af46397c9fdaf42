//! How a finding reaches the controller: opened until a replica has
//! committed it, closed once its condition has cleared, in the order they
//! were concluded. Used by job correlators and by the sensors' node-level
//! watch of GPUs.

use crate::client::ControllerClient;
use crate::controller::queries::params;
use anyhow::Result;
use keel_model::{Finding, Message};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Reports one host's detectors may have waiting for the controller. A
/// report waits while no replica answers; past this bound (an unreachable
/// controller and a flood of findings) the newest is dropped and counted in
/// the host's `reports_dropped`, so memory stays bounded while the older
/// reports, already in order, still go out.
pub const REPORTS_MAX: usize = 4096;

/// The sending side of a host's report queue, with its drop counter.
#[derive(Clone)]
pub struct Reports {
    tx: mpsc::Sender<Report>,
    /// Reports dropped because [`REPORTS_MAX`] were waiting.
    pub dropped: Arc<AtomicU64>,
}

/// A report queue of [`REPORTS_MAX`], counting its drops in `dropped`.
pub fn channel(dropped: Arc<AtomicU64>) -> (Reports, mpsc::Receiver<Report>) {
    let (tx, rx) = mpsc::channel(REPORTS_MAX);
    (Reports { tx, dropped }, rx)
}

impl Reports {
    fn send(&self, r: Report) {
        if let Err(mpsc::error::TrySendError::Full(r)) = self.tx.try_send(r) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            let (what, f) = match &r {
                Report::Open(f) => ("open", f),
                Report::Close(f) => ("close", f),
            };
            tracing::warn!(
                report = what,
                kind = %f.kind.wire(),
                job = ?f.job,
                node = ?f.node,
                bound = REPORTS_MAX,
                "report queue full (controller not answering); report dropped"
            );
        }
    }
}

const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What a detector's host tells the controller.
pub enum Report {
    Open(Finding),
    Close(Finding),
}

/// Queues what an engine's last input concluded (`found`, drained) and
/// then what it cleared: a finding concluded and cleared by the same input
/// must be open before it can be closed. Each is logged with its locus.
pub fn queue(engine: &mut keel_detect::Engine, found: &mut Vec<Finding>, reports: &Reports) {
    for f in found.drain(..) {
        tracing::info!(
            kind = %f.kind.wire(),
            cause = %f.cause,
            job = ?f.job,
            rank = ?f.rank,
            node = ?f.node,
            gpu = ?f.gpu,
            basis = ?f.basis,
            "finding concluded; reporting it"
        );
        reports.send(Report::Open(f));
    }
    for f in engine.take_cleared() {
        tracing::info!(
            kind = %f.kind.wire(),
            job = ?f.job,
            rank = ?f.rank,
            node = ?f.node,
            gpu = ?f.gpu,
            evidence = ?f.evidence,
            "finding cleared; reporting its close"
        );
        reports.send(Report::Close(f));
    }
}

/// Delivers one reporter's reports one at a time, in the order they were
/// queued, so that a finding's close never overtakes its open. Ends once
/// the reporter is gone and its queue is empty.
pub async fn deliver(client: ControllerClient, mut queue: mpsc::Receiver<Report>) {
    while let Some(r) = queue.recv().await {
        match r {
            Report::Open(f) => open(&client, f).await,
            Report::Close(f) => close(&client, f).await,
        }
    }
}

/// Reports a finding until a replica has committed it. A retry of the
/// same finding is the same proposal, and an open finding of the same kind
/// at the same place is recognised as such, so nothing is counted twice.
async fn open(client: &ControllerClient, f: Finding) {
    let sent = retry("finding not committed yet", || async {
        match client
            .request(Message::Finding(f.clone()), ASK_TIMEOUT * 3)
            .await?
        {
            Message::Ack(a) if a.ok => Ok(()),
            other => anyhow::bail!("answered {other:?}"),
        }
    })
    .await;
    if !sent {
        tracing::error!(kind = %f.kind.wire(), job = ?f.job, "finding given up after 30 tries");
    }
}

/// Closes the controller's open finding of the same kind and place. Any
/// answer will do: "not open" means that its open was never committed or
/// that it was closed already, and either way nothing is left to close.
async fn close(client: &ControllerClient, f: Finding) {
    let json = match serde_json::to_string(&f) {
        Ok(json) => json,
        Err(e) => {
            tracing::error!(kind = %f.kind.wire(), error = %e, "finding close not encodable");
            return;
        }
    };
    let sent = retry("finding close not committed yet", || async {
        let asked = params([("finding", json.clone())]);
        client.ask("close_finding", asked, ASK_TIMEOUT * 3).await?;
        Ok(())
    })
    .await;
    if !sent {
        tracing::error!(kind = %f.kind.wire(), job = ?f.job, "finding close given up after 30 tries");
    }
}

/// Tries `attempt` up to 30 times with backoff, the controller being
/// between leaders or unreachable for a while; false when every try failed.
async fn retry<F, Fut>(what: &str, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut delay = Duration::from_millis(100);
    for n in 0..30u32 {
        match attempt().await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(attempt = n, error = %e, "{what}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::Finding;

    #[test]
    fn a_full_report_queue_drops_the_newest_and_counts_it() {
        let dropped = Arc::new(AtomicU64::new(0));
        let (reports, mut rx) = channel(dropped.clone());
        let f: Finding = serde_json::from_str(
            r#"{"ts":1.0,"kind":"tp_straggler","cause":"host","severity":"warning","confidence":0.9}"#,
        )
        .unwrap();
        for _ in 0..REPORTS_MAX + 3 {
            reports.send(Report::Open(f.clone()));
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        let mut held = 0;
        while rx.try_recv().is_ok() {
            held += 1;
        }
        assert_eq!(held, REPORTS_MAX, "the older reports are all kept");
    }
}
