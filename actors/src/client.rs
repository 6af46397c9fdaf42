//! Asking the controller: one link to every replica, and failover between
//! them. Any replica answers routing questions, and raft forwards proposals
//! to the leader, so a request goes to the replica that answered last and
//! moves on to the next when that one is down or times out.

use anyhow::{bail, Result};
use keel_model::{Message, Query};
use keel_transport::{Backoff, Client, Credentials, Link, Options};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where one controller replica listens, as configs name it.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControllerAddr {
    pub addr: SocketAddr,
    /// The name in the replica's certificate.
    pub name: String,
}

#[derive(Clone)]
pub struct ControllerClient {
    links: Arc<Vec<(ControllerAddr, Link)>>,
    preferred: Arc<AtomicUsize>,
    next_id: Arc<AtomicU64>,
}

impl ControllerClient {
    /// Links come up in the background; requests wait for them.
    pub fn new(creds: &Credentials, controllers: &[ControllerAddr]) -> Result<Self> {
        if controllers.is_empty() {
            bail!("no controllers configured");
        }
        let mut links = Vec::new();
        for c in controllers {
            let client = Client::new(creds, options())?.expecting(keel_model::Role::Controller);
            let (link, _inbox) = Link::start(client, c.addr, &c.name, Backoff::default());
            links.push((c.clone(), link));
        }
        Ok(ControllerClient {
            links: Arc::new(links),
            preferred: Arc::new(AtomicUsize::new(0)),
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    /// Sends `msg` to one replica after another until one answers;
    /// `per_try` bounds each attempt.
    pub async fn request(&self, msg: Message, per_try: Duration) -> Result<Message> {
        let n = self.links.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last_err = None;
        for i in 0..n {
            let at = (start + i) % n;
            let (addr, link) = &self.links[at];
            match link.request(msg.clone(), per_try).await {
                Ok(reply) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(e) => last_err = Some(format!("{} at {}: {e}", addr.name, addr.addr)),
            }
        }
        bail!(
            "no controller answered ({})",
            last_err.unwrap_or_else(|| "none".into())
        )
    }

    /// Asks a query; `Ok(body)` when a replica answered `ok`.
    pub async fn ask(
        &self,
        topic: &str,
        params: BTreeMap<String, String>,
        per_try: Duration,
    ) -> Result<String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let q = Message::Query(Query {
            id,
            topic: topic.into(),
            params,
        });
        match self.request(q, per_try).await? {
            Message::QueryReply(r) if r.ok => Ok(r.body),
            Message::QueryReply(r) => bail!("controller refused `{topic}`: {}", r.body),
            other => bail!("controller answered `{topic}` with {}", other.kind()),
        }
    }

    /// Asks `topic` of every replica at once (a greeting every replica must
    /// hear); returns the first `ok` answer.
    pub async fn ask_all(
        &self,
        topic: &str,
        params: BTreeMap<String, String>,
        per_try: Duration,
    ) -> Result<String> {
        let mut tasks = tokio::task::JoinSet::new();
        for at in 0..self.links.len() {
            let me = self.clone();
            let params = params.clone();
            let topic = topic.to_string();
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(async move {
                let q = Message::Query(Query { id, topic, params });
                me.links[at].1.request(q, per_try).await
            });
        }
        let mut last = String::from("no answer");
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(Message::QueryReply(r))) if r.ok => {
                    // The others keep running to deliver the greeting.
                    tasks.detach_all();
                    return Ok(r.body);
                }
                Ok(Ok(Message::QueryReply(r))) => last = r.body,
                Ok(Ok(other)) => last = format!("answered with {}", other.kind()),
                Ok(Err(e)) => last = e.to_string(),
                Err(e) => last = e.to_string(),
            }
        }
        bail!("no controller answered `{topic}`: {last}")
    }
}

/// Replicas that die are noticed within about a second.
fn options() -> Options {
    Options {
        timing: keel_transport::Timing {
            idle_timeout: Duration::from_millis(1500),
            keep_alive: Duration::from_millis(300),
        },
        ..Options::default()
    }
}
