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
#[derive(Debug, PartialEq)]
pub enum Report {
    Open(Finding),
    Close(Finding),
}

/// Queues what an engine's last input concluded (`found`, drained) and
/// what it cleared, each logged with its locus. The controller knows an
/// open finding by its kind and place, so the order matters where both
/// name one place:
/// - a finding concluded and cleared by the same input (its job ended,
///   say) must be open before it can be closed: its clearing goes after;
/// - a finding open before this input and cleared by it, with a new one
///   concluded at the same place (a straggler's review found a new cause
///   or a jump in lateness: a new episode), must be closed first: opened
///   first, the new finding would be taken for the open one and then
///   closed with it, and its episode lost.
///
/// A clearing is of a finding of this input when that finding is in
/// `found` with everything but the time, the evidence and the related
/// findings alike.
pub fn queue(engine: &mut keel_detect::Engine, found: &mut Vec<Finding>, reports: &Reports) {
    for r in order(std::mem::take(found), engine.take_cleared()) {
        match &r {
            Report::Open(f) => tracing::info!(
                kind = %f.kind.wire(),
                cause = %f.cause,
                job = ?f.job,
                rank = ?f.rank,
                node = ?f.node,
                gpu = ?f.gpu,
                basis = ?f.basis,
                "finding concluded; reporting it"
            ),
            Report::Close(f) => tracing::info!(
                kind = %f.kind.wire(),
                job = ?f.job,
                rank = ?f.rank,
                node = ?f.node,
                gpu = ?f.gpu,
                evidence = ?f.evidence,
                "finding cleared; reporting its close"
            ),
        }
        reports.send(r);
    }
}

/// The reports of one input in the order [`queue`] sends them: closes of
/// findings open before it, the opens, then closes of its own findings.
pub fn order(found: Vec<Finding>, cleared: Vec<Finding>) -> Vec<Report> {
    // `related` too: the engine links a new finding to open ones after its
    // detector kept the copy it clears.
    let bare = |f: &Finding| Finding {
        ts: 0.0,
        evidence: Vec::new(),
        related: Vec::new(),
        ..f.clone()
    };
    let (after, before): (Vec<Finding>, Vec<Finding>) = cleared
        .into_iter()
        .partition(|c| found.iter().any(|f| bare(f) == bare(c)));
    before
        .into_iter()
        .map(Report::Close)
        .chain(found.into_iter().map(Report::Open))
        .chain(after.into_iter().map(Report::Close))
        .collect()
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

    fn finding(cause: &str, confidence: f64, ts: f64) -> Finding {
        serde_json::from_str(&format!(
            r#"{{"ts":{ts},"kind":"tp_straggler","cause":"{cause}","severity":"warning","confidence":{confidence},"job":"j","node":"n","rank":1}}"#
        ))
        .unwrap()
    }

    fn cleared(mut f: Finding, now: f64) -> Finding {
        f.ts = now;
        f.evidence = vec!["tp_straggler cleared".into()];
        f
    }

    /// A review that finds a new cause clears the open finding and
    /// concludes a new one at the same place in one input: the close goes
    /// first, or the controller would take the new finding for the open
    /// one and close both.
    #[test]
    fn a_new_episode_at_an_open_place_is_opened_after_the_old_one_closes() {
        let old = finding("gpu", 0.6, 10.0);
        let new = finding("host", 0.9, 20.0);
        let got = order(vec![new.clone()], vec![cleared(old.clone(), 20.0)]);
        assert_eq!(
            got,
            vec![Report::Close(cleared(old, 20.0)), Report::Open(new)]
        );
    }

    /// A finding concluded and cleared by the same input (its job ended)
    /// is opened before it is closed.
    #[test]
    fn a_finding_concluded_and_cleared_at_once_is_opened_first() {
        let f = finding("host", 0.9, 20.0);
        let got = order(vec![f.clone()], vec![cleared(f.clone(), 20.0)]);
        assert_eq!(
            got,
            vec![Report::Open(f.clone()), Report::Close(cleared(f, 20.0))]
        );
    }

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
