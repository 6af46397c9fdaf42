//! The wire envelope: what one keel process says to another, and which roles
//! may say what.
//!
//! Every message travels as `Envelope { version, from, msg }`, encoded with
//! MessagePack maps (named fields), so that a newer peer may add fields that an
//! older one skips. A message kind this build does not know fails to decode
//! (serde's "unknown variant"), and the transport refuses it cleanly.
//! `from` is informative only: the transport takes a peer's role and name from
//! its verified certificate.

use crate::{Action, Finding, MetricSample, Name, RequestRecord, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The envelope version this build writes.
pub const WIRE_VERSION: u16 = 1;

/// One message with its header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    /// The sender's name as it claims it; receivers trust the certificate instead.
    pub from: String,
    pub msg: Message,
}

impl Envelope {
    pub fn new(from: impl Into<String>, msg: Message) -> Self {
        Envelope {
            version: WIRE_VERSION,
            from: from.into(),
            msg,
        }
    }
}

/// What a keel process is, as its certificate says (`keel://ROLE/NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Sensor,
    Correlator,
    Controller,
    Executor,
    /// Every right of the four roles below (kept for existing certificates;
    /// issue the narrow ones instead).
    Operator,
    /// Reads: status, findings, jobs, actions, history, explanations.
    Viewer,
    /// A viewer that also approves, rejects and cancels actions, and
    /// pauses and resumes all automation.
    Approver,
    /// Policy, membership, and any state-machine command.
    Admin,
    /// Registers and ends jobs: the Slurm prolog and epilog.
    Scheduler,
}

impl Role {
    pub const ALL: &'static [Role] = &[
        Role::Sensor,
        Role::Correlator,
        Role::Controller,
        Role::Executor,
        Role::Operator,
        Role::Viewer,
        Role::Approver,
        Role::Admin,
        Role::Scheduler,
    ];

    pub fn wire(self) -> &'static str {
        match self {
            Role::Sensor => "sensor",
            Role::Correlator => "correlator",
            Role::Controller => "controller",
            Role::Executor => "executor",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Scheduler => "scheduler",
        }
    }

    pub fn from_wire(s: &str) -> Option<Role> {
        Role::ALL.iter().copied().find(|r| r.wire() == s)
    }

    /// The role policy: which message kinds a peer of this role may send.
    ///
    /// - every role may `ping`, `pong` and `ack` (an ack only answers a request
    ///   that someone allowed to send it made);
    /// - a sensor sends `telemetry`, and may `query` (where its jobs'
    ///   correlators are; a job it saw start); it sends the `finding`s of
    ///   its node's GPU watch (the controller takes from a sensor only
    ///   `FindingKind::NODE_WATCHED` kinds about its own node);
    /// - a correlator sends `finding`s to the controller and may `query` it;
    /// - the controller sends everything of control: `command`, `raft` and
    ///   `raft_chunk`, `finding` (forwarded), `query` and `query_reply`, but
    ///   never telemetry;
    /// - an executor acknowledges commands, and greets the controller with
    ///   what it carries out (a `query`, on that one topic);
    /// - an operator asks (`query`); to act it asks the controller, which alone
    ///   may send a `command`, so that every action passes through the replicated
    ///   ledger.
    pub fn may_send(&self, msg: &Message) -> bool {
        use Message as M;
        match msg {
            M::Ping | M::Pong | M::Ack(_) => true,
            M::Telemetry(_) => *self == Role::Sensor,
            M::Finding(_) => matches!(self, Role::Correlator | Role::Sensor | Role::Controller),
            M::Query(_) => true,
            M::QueryReply(_) | M::Raft(_) | M::RaftChunk(_) | M::Command(_) => {
                *self == Role::Controller
            }
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire())
    }
}

/// Every message kind; externally tagged, so the kind is the map key on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    Telemetry(TelemetryBatch),
    Finding(Finding),
    Raft(RaftBytes),
    /// One piece of a Raft message too large for one frame (a snapshot).
    RaftChunk(RaftChunk),
    Command(Command),
    Ack(Ack),
    Query(Query),
    QueryReply(QueryReply),
    Ping,
    Pong,
}

impl Message {
    /// The kind's wire name, for logs and refusals.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Telemetry(_) => "telemetry",
            Message::Finding(_) => "finding",
            Message::Raft(_) => "raft",
            Message::RaftChunk(_) => "raft_chunk",
            Message::Command(_) => "command",
            Message::Ack(_) => "ack",
            Message::Query(_) => "query",
            Message::QueryReply(_) => "query_reply",
            Message::Ping => "ping",
            Message::Pong => "pong",
        }
    }
}

/// Sensor summaries, many per message so that the per-message cost is shared.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TelemetryBatch {
    pub summaries: Vec<Summary>,
    /// The node's exporter and counter readings, at most one per series and
    /// flush (the latest): a few dozen series a node, at exporter rates.
    #[serde(default, rename = "m", skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricSample>,
    /// The node's serving events (`t:"request"`), for the job's
    /// correlator: at most `REQUESTS_MAX` a sensor flush (see `actors`).
    #[serde(default, rename = "q", skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<RequestRecord>,
}

/// One rank's view of one window of collectives, as a sensor sends it to the
/// job's correlator. A window is a fixed run of collective sequence numbers
/// (not of time), so that every rank's window `w` covers the same
/// collectives and the correlator compares like with like whatever the
/// nodes' clocks say. Sensors send millions of these, so the wire keys are
/// one to three letters (about 64 bytes a summary, keys included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(rename = "n")]
    pub node: Name,
    #[serde(rename = "j")]
    pub job: Name,
    #[serde(rename = "r")]
    pub rank: u32,
    /// Window index: the collectives with `seq / window_len == window`.
    #[serde(rename = "w")]
    pub window: u64,
    /// Completion time of the window's last collective, on the node's clock.
    #[serde(rename = "t")]
    pub window_end: Timestamp,
    /// Collective calls seen in the window.
    #[serde(rename = "c")]
    pub count: u32,
    /// Median step period of this rank (time between its collectives),
    /// microseconds, measured on its own clock.
    #[serde(rename = "s")]
    pub step_us: u32,
    /// Median collective duration, microseconds.
    #[serde(rename = "dur")]
    pub dur_p50_us: u32,
    /// 99th percentile collective duration, microseconds.
    #[serde(rename = "d99")]
    pub dur_p99_us: u32,
    /// The sensor's estimate of the ranks' clock minus its own, microseconds
    /// (from collective completions; 0 until it has one).
    #[serde(rename = "o", default)]
    pub offset_us: i64,
}

/// A Raft message between controllers, opaque to the transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaftBytes {
    /// The receiving controller's Raft id.
    pub to: u64,
    /// raft-rs's protobuf encoding, as MessagePack bytes (`bin`), not an
    /// array of integers.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// One numbered piece of a Raft message sent in several requests (in
/// practice a snapshot larger than a frame). The receiver puts the pieces of
/// one `transfer` back together, in any order, then steps the whole message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaftChunk {
    /// The receiving controller's Raft id.
    pub to: u64,
    /// The sending controller's Raft id.
    pub from: u64,
    /// Names one message's transfer; a new one from the same sender
    /// replaces any transfer of it still incomplete.
    pub transfer: u64,
    /// This piece's number, from 0.
    pub index: u32,
    /// How many pieces the message was cut into.
    pub count: u32,
    /// The whole message's length, bytes.
    pub total: u64,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// The controller telling an executor to act.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    pub action: Action,
    pub target: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The same key on a retried command means the same action, done once.
    pub idempotency_key: String,
    /// Undo what the command with this key did, instead of doing it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
}

/// The answer to a request: done or not, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub id: u64,
    pub ok: bool,
    #[serde(default)]
    pub detail: String,
}

/// A question to the controller (state of a job, open findings, the ledger).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    pub id: u64,
    pub topic: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// The controller's answer to a [`Query`]; `body` is JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryReply {
    pub id: u64,
    pub ok: bool,
    pub body: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Message {
        Message::Command(Command {
            id: 1,
            action: Action::DrainNode,
            target: "node-3".into(),
            params: BTreeMap::new(),
            idempotency_key: "k".into(),
            rollback: false,
        })
    }

    #[test]
    fn only_a_controller_may_send_a_command() {
        for role in Role::ALL {
            assert_eq!(role.may_send(&command()), *role == Role::Controller);
        }
    }

    #[test]
    fn only_a_sensor_may_send_telemetry() {
        let t = Message::Telemetry(TelemetryBatch::default());
        for role in Role::ALL {
            assert_eq!(role.may_send(&t), *role == Role::Sensor);
        }
    }

    #[test]
    fn raft_bytes_travel_as_bytes_not_integers() {
        for n in [0usize, 1, 1000, 300_000] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 7 + 200) as u8).collect();
            let env = Envelope::new("c1", Message::Raft(RaftBytes { to: 2, bytes }));
            let encoded = rmp_serde::to_vec_named(&env).unwrap();
            assert!(encoded.len() < n + 64, "{n} bytes took {}", encoded.len());
            let back: Envelope = rmp_serde::from_slice(&encoded).unwrap();
            assert_eq!(back, env);
        }
    }

    #[test]
    fn only_a_controller_may_send_raft_chunks() {
        let c = Message::RaftChunk(RaftChunk {
            to: 1,
            from: 2,
            transfer: 3,
            index: 0,
            count: 1,
            total: 1,
            bytes: vec![9],
        });
        for role in Role::ALL {
            assert_eq!(role.may_send(&c), *role == Role::Controller);
        }
    }

    #[test]
    fn role_wire_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::from_wire(role.wire()), Some(*role));
        }
        assert_eq!(Role::from_wire("root"), None);
    }
}
