//! The parameters each action takes, checked against what its executor
//! needs, and rendered as the strings a command carries.

use crate::error::{suggest, Reporter};
use crate::tree::{Node, Val};
use keel_model::Action;
use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Clone, Copy)]
enum Kind {
    /// An integer within bounds (inclusive).
    Int(i64, i64),
    /// A number within 0..=1.
    Share,
    /// A non-empty string.
    Text,
    /// One of a fixed set of words.
    OneOf(&'static [&'static str]),
}

/// Which of an action's parameters must be present.
#[derive(Clone, Copy)]
enum Need {
    Nothing,
    ExactlyOne,
    AtLeastOne,
    All,
}

struct Spec {
    /// Name, type, and an example line for help texts.
    params: &'static [(&'static str, Kind, &'static str)],
    need: Need,
    /// An example line for the help text.
    example: &'static str,
}

/// Parameters the planner fills in from the finding; setting them in a file
/// would be overridden, so it is refused.
const DERIVED: &[(&str, &str)] = &[("exclude", "the finding's node"), ("rank", "the finding")];

fn spec(action: Action) -> Spec {
    match action {
        // HAProxy weights run 0..=256; a share is the fraction of new
        // requests to move away from the replica.
        Action::RemapRequests => Spec {
            params: &[
                ("weight", Kind::Int(0, 256), "weight = 32"),
                ("share", Kind::Share, "share = 0.5"),
            ],
            need: Need::ExactlyOne,
            example: "weight = 32",
        },
        Action::RetuneNic => Spec {
            params: &[
                ("rx_ring", Kind::Int(1, 65536), "rx_ring = 4096"),
                ("tx_ring", Kind::Int(1, 65536), "tx_ring = 4096"),
                ("channels", Kind::Int(1, 1024), "channels = 8"),
                (
                    "coalesce_rx_usecs",
                    Kind::Int(0, 1_000_000),
                    "coalesce_rx_usecs = 64",
                ),
                ("txqueuelen", Kind::Int(1, 1_000_000), "txqueuelen = 10000"),
            ],
            need: Need::AtLeastOne,
            example: "rx_ring = 4096",
        },
        Action::RebalanceRanks => Spec {
            params: &[(
                "strategy",
                Kind::OneOf(&["shift", "requeue"]),
                "strategy = \"requeue\"",
            )],
            need: Need::Nothing,
            example: "strategy = \"requeue\"",
        },
        Action::ReclaimZombie => Spec {
            params: &[(
                "signal",
                Kind::OneOf(&["TERM", "KILL", "INT"]),
                "signal = \"TERM\"",
            )],
            need: Need::Nothing,
            example: "signal = \"TERM\"",
        },
        Action::DrainNode => Spec {
            params: &[("reason", Kind::Text, "reason = \"...\"")],
            need: Need::All,
            example: "reason = \"keel: straggler not cleared by remapping\"",
        },
        Action::ResumeNode => Spec {
            params: &[("reason", Kind::Text, "reason = \"...\"")],
            need: Need::Nothing,
            example: "reason = \"keel: healthy again\"",
        },
        Action::Notify => Spec {
            params: &[("message", Kind::Text, "message = \"...\"")],
            need: Need::Nothing,
            example: "message = \"look at this\"",
        },
        // An operator's action (`keel chaos inject`); a rule naming it is
        // refused before its parameters are read.
        Action::InjectFault => Spec {
            params: &[],
            need: Need::Nothing,
            example: "",
        },
    }
}

/// Checks `params` (absent when the rule has none) for `action`; errors
/// about missing parameters point at `anchor` when there is no table.
pub(crate) fn check(
    rep: &mut Reporter<'_>,
    action: Action,
    params: Option<&Node>,
    anchor: &Range<usize>,
) -> Option<BTreeMap<String, String>> {
    let spec = spec(action);
    let names: Vec<&str> = spec.params.iter().map(|(n, _, _)| *n).collect();
    let mut out = BTreeMap::new();
    let mut ok = true;
    let entries = match params.map(|p| (&p.val, p)) {
        None => &[][..],
        Some((Val::Table(entries), _)) => &entries[..],
        Some((other, node)) => {
            rep.error(
                &node.span,
                format!("`params` must be a table, found {}", other.type_name()),
                Some(format!("write [rule.params] with e.g. {}", spec.example)),
            );
            return None;
        }
    };
    for e in entries {
        if let Some((_, from)) = DERIVED.iter().find(|(n, _)| *n == e.key) {
            rep.error(
                &e.key_span,
                format!("`{}` is set by keel from {from}", e.key),
                Some("remove it".into()),
            );
            ok = false;
            continue;
        }
        let Some((_, kind, example)) = spec.params.iter().find(|(n, _, _)| *n == e.key) else {
            let help = if names.is_empty() {
                format!("`{action}` takes no parameters")
            } else {
                suggest(&e.key, names.iter().copied())
            };
            rep.error(
                &e.key_span,
                format!("unknown parameter `{}` for `{action}`", e.key),
                Some(help),
            );
            ok = false;
            continue;
        };
        match value(&e.node, *kind) {
            Ok(v) => {
                out.insert(e.key.clone(), v);
            }
            Err(msg) => {
                rep.error(
                    &e.node.span,
                    format!("`{}` {msg}", e.key),
                    Some(format!("e.g. {example}")),
                );
                ok = false;
            }
        }
    }
    let present = names
        .iter()
        .filter(|n| entries.iter().any(|e| e.key == **n));
    let count = present.count();
    let at = params.map_or(anchor, |p| &p.span);
    let missing = match spec.need {
        Need::Nothing => None,
        Need::ExactlyOne if count == 1 => None,
        Need::ExactlyOne if count > 1 => {
            rep.error(
                at,
                format!("`{action}` takes one of {}, not both", names.join(" or ")),
                Some("keep one".into()),
            );
            ok = false;
            None
        }
        Need::ExactlyOne => Some(format!("one of {}", names.join(", "))),
        Need::AtLeastOne if count >= 1 => None,
        Need::AtLeastOne => Some(format!("at least one of {}", names.join(", "))),
        Need::All if count == names.len() => None,
        Need::All => Some(
            names
                .iter()
                .filter(|n| !entries.iter().any(|e| e.key == **n))
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
        ),
    };
    if let Some(what) = missing {
        rep.error(
            at,
            format!("`{action}` needs params: {what}"),
            Some(format!("add under [rule.params]: {}", spec.example)),
        );
        ok = false;
    }
    ok.then_some(out)
}

fn value(node: &Node, kind: Kind) -> Result<String, String> {
    match (kind, &node.val) {
        (Kind::Int(lo, hi), Val::Int(i)) if (lo..=hi).contains(i) => Ok(i.to_string()),
        (Kind::Int(lo, hi), Val::Int(i)) => Err(format!("must be within {lo}..={hi}, not {i}")),
        (Kind::Int(..), other) => Err(format!("must be an integer, found {}", other.type_name())),
        (Kind::Share, _) => match node.as_number() {
            Some(x) if (0.0..=1.0).contains(&x) => Ok(x.to_string()),
            Some(x) => Err(format!("must be within 0..=1, not {x}")),
            None => Err(format!("must be a number, found {}", node.val.type_name())),
        },
        (Kind::Text, Val::Str(s)) if !s.trim().is_empty() => Ok(s.clone()),
        (Kind::Text, Val::Str(_)) => Err("must not be empty".into()),
        (Kind::Text, other) => Err(format!("must be a string, found {}", other.type_name())),
        (Kind::OneOf(words), Val::Str(s)) if words.contains(&s.as_str()) => Ok(s.clone()),
        (Kind::OneOf(words), Val::Str(s)) => {
            Err(format!("must be one of {}, not \"{s}\"", words.join(", ")))
        }
        (Kind::OneOf(_), other) => Err(format!("must be a string, found {}", other.type_name())),
    }
}
