//! Which GPUs Slurm allocated to a job, sans-IO: the per-node GRES detail
//! of `scontrol show job -d` (`GRES=gpu:a100:2(IDX:0,2)` or, in older
//! versions, `GRES_IDX=gpu(IDX:0,2-3,5)`), the `gres_detail` list of the
//! JSON outputs (one string per allocated node, in the job's node order),
//! and index lists such as `0,2-3,5` (`SLURM_JOB_GPUS`).
//!
//! `IDX` is Slurm's index of the GPU among the node's configured GPUs
//! (the order of `gres.conf`: with `File=/dev/nvidia[0-7]` or
//! `AutoDetect=nvml`, the GPU's NVML index). A GPU given only by count
//! (`gpu:2(CNT:2)`) or a MIG instance (`gpu:1g.5gb:1(IDX:3)`, whose index
//! counts instances, not GPUs) says nothing about which GPU it is: the
//! mapping is then unknown, never guessed.

use std::collections::BTreeMap;

/// The most GPU indices one node may be said to hold: a typo such as
/// `IDX:0-4294967295` must not eat memory.
pub const MAX_GPUS_PER_NODE: usize = 1024;

/// What Slurm says about the GPUs a job holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gpus {
    /// Node -> the GPU indices the job holds there (an empty list: none).
    /// Every node of the job is listed; a job without nodes (pending) has
    /// an empty map.
    Known(BTreeMap<String, Vec<u32>>),
    /// Slurm did not say, or not in a form that names GPUs; the reason.
    Unknown(String),
}

impl Default for Gpus {
    fn default() -> Self {
        Gpus::Unknown("not read from Slurm".into())
    }
}

impl Gpus {
    /// The GPU indices on `node`: Ok(None) when the job is not on that
    /// node by this map; Err(why) when the mapping is unknown.
    pub fn on(&self, node: &str) -> Result<Option<&[u32]>, &str> {
        match self {
            Gpus::Known(m) => Ok(m.get(node).map(Vec::as_slice)),
            Gpus::Unknown(why) => Err(why),
        }
    }

    pub fn is_known(&self) -> bool {
        matches!(self, Gpus::Known(_))
    }
}

/// Parses an index list: `0,2-3,5`, `7`, or empty (no index). Errors say
/// what is wrong (not a number, a range that runs backwards, more than
/// [`MAX_GPUS_PER_NODE`] indices). The result is sorted, without repeats.
pub fn parse_index_list(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let num = |x: &str| {
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{part:?} is not an index or a range of them"));
            }
            x.parse::<u32>()
                .map_err(|_| format!("{part:?}: index out of range"))
        };
        let (a, b) = (num(lo)?, num(hi)?);
        if a > b {
            return Err(format!("range {part:?} runs backwards"));
        }
        if (b - a) as usize >= MAX_GPUS_PER_NODE
            || out.len() + (b - a) as usize >= MAX_GPUS_PER_NODE
        {
            return Err(format!("more than {MAX_GPUS_PER_NODE} indices"));
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Splits a GRES string at the commas outside parentheses:
/// `gg:g0(CNT:1),gpu:1(IDX:0,2)` -> `gg:g0(CNT:1)`, `gpu:1(IDX:0,2)`.
fn entries(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.into_iter().filter(|e| !e.is_empty()).collect()
}

/// A MIG profile name as Slurm's NVML autodetection types them (`1g.5gb`,
/// `3g.40gb`).
fn is_mig_type(t: &str) -> bool {
    let t = t.to_ascii_lowercase();
    t.split_once("g.").is_some_and(|(a, b)| {
        !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.ends_with("gb")
    })
}

/// The GPU indices in one node's GRES detail (`gpu:rtx2080:1(IDX:1),gg:g0(CNT:1)`,
/// `gpu(IDX:0,2-3,5)`, empty or `(null)` for no GRES). Ok(indices) when
/// they are named (none when no GPU is listed); Err(why) when a GPU is
/// listed but not by index.
pub fn gpus_in_gres(detail: &str) -> Result<Vec<u32>, String> {
    let detail = detail.trim();
    if detail.is_empty() || detail == "(null)" || detail == "N/A" {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in entries(detail) {
        let head = e.split('(').next().unwrap_or("");
        let mut parts = head.split(':');
        if parts.next() != Some("gpu") {
            continue;
        }
        if let Some(t) = parts.next().filter(|t| is_mig_type(t)) {
            return Err(format!(
                "{e:?} is a MIG instance ({t}): its index counts instances, not GPUs"
            ));
        }
        let Some(rest) = e.find("(IDX:").map(|i| &e[i + 5..]) else {
            return Err(format!("{e:?} names no GPU index (IDX)"));
        };
        let Some(list) = rest.split(')').next().filter(|_| rest.contains(')')) else {
            return Err(format!("{e:?}: unclosed (IDX:"));
        };
        let idx = parse_index_list(list).map_err(|why| format!("{e:?}: {why}"))?;
        if out.len() + idx.len() > MAX_GPUS_PER_NODE {
            return Err(format!("{e:?}: more than {MAX_GPUS_PER_NODE} indices"));
        }
        out.extend(idx);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The mapping from per-node GRES details given in the job's node order
/// (`gres_detail` of the JSON outputs). An empty list says nothing (Slurm
/// leaves it empty without `-d`, and for jobs without GRES alike).
pub fn from_gres_detail(nodes: &[String], details: &[String]) -> Gpus {
    if nodes.is_empty() {
        return Gpus::Known(BTreeMap::new());
    }
    if details.is_empty() {
        return Gpus::Unknown("Slurm gave no per-node GRES detail (gres_detail is empty)".into());
    }
    if details.len() != nodes.len() {
        return Gpus::Unknown(format!(
            "gres_detail has {} entries for {} nodes",
            details.len(),
            nodes.len()
        ));
    }
    let mut m = BTreeMap::new();
    for (node, d) in nodes.iter().zip(details) {
        match gpus_in_gres(d) {
            Ok(g) => {
                m.insert(node.clone(), g);
            }
            Err(why) => return Gpus::Unknown(format!("{node}: {why}")),
        }
    }
    Gpus::Known(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lists_expand() {
        assert_eq!(parse_index_list("0,2-3,5").unwrap(), [0, 2, 3, 5]);
        assert_eq!(parse_index_list("7").unwrap(), [7]);
        assert_eq!(parse_index_list("").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_index_list("3,1,1").unwrap(), [1, 3]);
        for bad in ["a", "1-", "3-1", "0-99999", "-1", "1.5"] {
            assert!(parse_index_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gres_details_of_every_shape() {
        assert_eq!(gpus_in_gres("gpu(IDX:0,2-3,5)").unwrap(), [0, 2, 3, 5]);
        assert_eq!(gpus_in_gres("gpu(IDX:5)").unwrap(), [5]);
        assert_eq!(gpus_in_gres("gg:g0(CNT:1),gpu:1(IDX:3)").unwrap(), [3]);
        assert_eq!(
            gpus_in_gres("gpu:rtx2080:1(IDX:1),gg:g0(CNT:1)").unwrap(),
            [1]
        );
        assert_eq!(
            gpus_in_gres("gpu:a100:2(IDX:0-1),gpu:v100:1(IDX:4)").unwrap(),
            [0, 1, 4]
        );
        assert_eq!(gpus_in_gres("").unwrap(), Vec::<u32>::new());
        assert_eq!(gpus_in_gres("(null)").unwrap(), Vec::<u32>::new());
        assert_eq!(gpus_in_gres("gg:g0(CNT:1)").unwrap(), Vec::<u32>::new());
        let e = gpus_in_gres("gpu:2(CNT:2)").unwrap_err();
        assert!(e.contains("no GPU index"), "{e}");
        let e = gpus_in_gres("gpu:1g.5gb:1(IDX:3)").unwrap_err();
        assert!(e.contains("MIG"), "{e}");
        assert!(gpus_in_gres("gpu(IDX:0-").is_err());
        assert!(gpus_in_gres("gpu(IDX:x)").is_err());
    }

    #[test]
    fn gres_detail_lists_follow_the_node_order() {
        let nodes = vec!["a".to_string(), "b".to_string()];
        let d = vec!["gpu:2(IDX:0-1)".to_string(), "gpu:1(IDX:3)".to_string()];
        let Gpus::Known(m) = from_gres_detail(&nodes, &d) else {
            panic!()
        };
        assert_eq!((m["a"].clone(), m["b"].clone()), (vec![0, 1], vec![3]));
        assert!(!from_gres_detail(&nodes, &[]).is_known());
        assert!(!from_gres_detail(&nodes, &d[..1]).is_known());
        assert_eq!(from_gres_detail(&[], &[]), Gpus::Known(BTreeMap::new()));
        let g = from_gres_detail(&nodes[..1], &["gpu:2(CNT:2)".to_string()]);
        assert_eq!(
            g.on("a"),
            Err("a: \"gpu:2(CNT:2)\" names no GPU index (IDX)")
        );
    }
}
