//! The `when` selector: a CEL expression over the finding, compiled and
//! checked when the policy is checked, evaluated when a finding arrives.
//!
//! CEL has no static types here (the interpreter is dynamic), so "checked"
//! means: it parses; every variable, `finding` field and function it names
//! exists; and it yields a boolean without error on a sample finding that
//! has every field set. A second run on a finding with every optional field
//! absent turns up expressions that would fail on real findings; that is a
//! warning, since the expression may be right for the kinds it targets.

use crate::error::closest;
use cel::common::ast::{EntryExpr, Expr};
use cel::{Context, Env, IdedExpr, Program, Value};
use keel_model::Finding;
use std::collections::HashMap;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

/// The variables a `when` expression may use.
pub const VARIABLES: &[&str] = &["finding", "duration_s", "tenant"];

/// The fields of `finding`; optional ones are `null` when absent.
pub const FINDING_FIELDS: &[&str] = &[
    "kind",
    "cause",
    "severity",
    "confidence",
    "job",
    "node",
    "rank",
    "gpu",
    "device",
    "basis",
    "gpu_instance",
];

/// Functions of the interpreter's standard library as built here (no regex,
/// no time types); macros such as `exists` or `has` are expanded by the
/// parser and never show up as calls.
const FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "string",
    "int",
    "uint",
    "double",
    "bytes",
    "bool",
    "type",
    "dyn",
];

/// Type names are identifiers in CEL (`type(x) == string`).
const TYPE_NAMES: &[&str] = &[
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// A compiled `when` expression.
#[derive(Clone)]
pub struct When {
    source: String,
    program: Arc<Program>,
}

impl fmt::Debug for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("When").field(&self.source).finish()
    }
}

/// A problem in an expression; `at` is a character index into its source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Problem {
    pub(crate) at: usize,
    pub(crate) message: String,
    pub(crate) help: Option<String>,
}

/// What an expression sees of one finding.
pub(crate) struct Subject<'a> {
    pub(crate) finding: &'a Finding,
    pub(crate) duration_s: f64,
    pub(crate) tenant: Option<&'a str>,
}

impl When {
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Compiles and checks `source`. Only the parser's first complaint is
    /// kept: later ones are almost always the same mistake seen again.
    pub(crate) fn compile(source: &str) -> Result<When, Problem> {
        // The parser and evaluator recurse over the expression: bounding its
        // size and nesting keeps a hostile file from exhausting the stack.
        if source.chars().count() > MAX_LEN {
            return Err(Problem {
                at: 0,
                message: format!("`when` is longer than {MAX_LEN} characters"),
                help: Some("split the condition over several rules or selectors".into()),
            });
        }
        if let Some(at) = too_deep(source) {
            return Err(Problem {
                at,
                message: format!("`when` nests deeper than {MAX_DEPTH} levels"),
                help: Some("flatten the expression".into()),
            });
        }
        let compiled = catch_unwind(|| Program::compile(source)).map_err(|_| Problem {
            at: 0,
            message: "`when` could not be compiled (the CEL parser failed)".into(),
            help: Some("simplify the expression".into()),
        })?;
        let program = compiled.map_err(|e| match e.errors.first() {
            Some(p) => {
                // The parser appends the set of tokens it would have taken;
                // that belongs in the help, not the headline.
                let msg = first_line(&p.msg);
                let (head, expected) = match msg.split_once(" expecting ") {
                    Some((h, e)) => (h, Some(e)),
                    None => (msg, None),
                };
                Problem {
                    at: char_index(source, p.pos.0, p.pos.1),
                    message: format!("`when` does not parse: {head}"),
                    help: Some(match expected {
                        Some(e) => format!("expected {e}"),
                        None => "a CEL expression, e.g. finding.confidence > 0.8".into(),
                    }),
                }
            }
            None => Problem {
                at: 0,
                message: "`when` does not parse".into(),
                help: None,
            },
        })?;
        let mut problems = Vec::new();
        walk(
            program.expression(),
            &mut Vec::new(),
            &program,
            source,
            &mut problems,
        );
        if let Some(p) = problems.into_iter().next() {
            return Err(p);
        }
        let when = When {
            source: source.to_string(),
            program: Arc::new(program),
        };
        let sample = sample_finding(true);
        let subject = Subject {
            finding: &sample,
            duration_s: 60.0,
            tenant: Some("tenant-a"),
        };
        match when.run(&subject) {
            Ok(Value::Bool(_)) => Ok(when),
            Ok(other) => Err(Problem {
                at: 0,
                message: format!(
                    "`when` must yield a boolean, this yields {}",
                    format!("{:?}", other.type_of()).to_lowercase()
                ),
                help: Some("compare it, e.g. `... == \"x\"` or `... > 0.5`".into()),
            }),
            Err(e) => Err(Problem {
                at: 0,
                message: format!("`when` fails on a sample finding: {e}"),
                help: Some(format!(
                    "finding fields: {}; kind, cause and severity are strings",
                    FINDING_FIELDS.join(", ")
                )),
            }),
        }
    }

    /// A warning when the expression errs on a finding that lacks every
    /// optional field (no job, node, rank, gpu, device or tenant).
    pub(crate) fn lint_absent_fields(&self) -> Option<Problem> {
        let sample = sample_finding(false);
        let subject = Subject {
            finding: &sample,
            duration_s: 0.0,
            tenant: None,
        };
        match self.run(&subject) {
            Ok(Value::Bool(_)) => None,
            Ok(_) => None,
            Err(e) => Some(Problem {
                at: 0,
                message: format!(
                    "`when` fails on findings without job/node/rank/gpu/device/tenant ({e}); \
                     such findings will not match"
                ),
                help: Some("test for presence first, e.g. finding.job != null && ...".into()),
            }),
        }
    }

    /// Whether the finding satisfies the expression; an error (say a method
    /// called on an absent field) is reported, and counts as no match.
    pub(crate) fn eval(&self, subject: &Subject<'_>) -> Result<bool, String> {
        match self.run(subject) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("yielded {:?}, not a boolean", other.type_of())),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl When {
    /// Runs the program; a panic inside the interpreter becomes an error,
    /// since a policy must never take the controller down.
    fn run(&self, subject: &Subject<'_>) -> Result<Value, String> {
        let ctx = context(subject);
        match catch_unwind(AssertUnwindSafe(|| self.program.execute(&ctx))) {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the CEL interpreter failed".into()),
        }
    }
}

const MAX_LEN: usize = 2000;
const MAX_DEPTH: usize = 32;

/// Where brackets first nest deeper than `MAX_DEPTH`, ignoring those in
/// string literals only roughly (a quote toggles): good enough for a bound.
fn too_deep(source: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, c) in source.chars().enumerate() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '(' | '[' | '{') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
            }
            (None, ')' | ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// The standard environment is built once: registering every overload on
/// each evaluation would cost more than the evaluation itself.
fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib())).clone()
}

fn context(s: &Subject<'_>) -> Context<'static, 'static> {
    let f = s.finding;
    let opt_str = |v: &Option<keel_model::Name>| match v {
        Some(n) => Value::from(n.to_string()),
        None => Value::Null,
    };
    let opt_int = |v: Option<u32>| v.map_or(Value::Null, |i| Value::Int(i64::from(i)));
    let mut m: HashMap<String, Value> = HashMap::new();
    m.insert("kind".into(), Value::from(f.kind.wire().to_string()));
    m.insert("cause".into(), Value::from(f.cause.wire().to_string()));
    m.insert(
        "severity".into(),
        Value::from(f.severity.wire().to_string()),
    );
    m.insert("confidence".into(), Value::Float(f.confidence));
    m.insert("job".into(), opt_str(&f.job));
    m.insert("node".into(), opt_str(&f.node));
    m.insert("rank".into(), opt_int(f.rank));
    m.insert("gpu".into(), opt_int(f.gpu));
    m.insert("device".into(), opt_str(&f.device));
    m.insert(
        "basis".into(),
        f.basis
            .map_or(Value::Null, |b| Value::from(b.wire().to_string())),
    );
    m.insert("gpu_instance".into(), opt_int(f.gpu_instance));
    let mut ctx = Context::with_env(env());
    ctx.add_variable_from_value("finding", m);
    ctx.add_variable_from_value("duration_s", Value::Float(s.duration_s));
    ctx.add_variable_from_value(
        "tenant",
        s.tenant.map_or(Value::Null, |t| Value::from(t.to_string())),
    );
    ctx
}

fn sample_finding(full: bool) -> Finding {
    Finding {
        basis: None,
        gpu_instance: None,
        related: Vec::new(),
        ts: 0.0,
        kind: keel_model::FindingKind::TpStraggler,
        cause: keel_model::Cause::Network,
        severity: keel_model::Severity::Warning,
        confidence: 0.5,
        job: full.then(|| "job-1".into()),
        node: full.then(|| "node-1".into()),
        rank: full.then_some(1),
        gpu: full.then_some(1),
        device: full.then(|| "eth0".into()),
        evidence: Vec::new(),
    }
}

/// Checks names in the tree; `scope` holds comprehension variables.
fn walk(
    e: &IdedExpr,
    scope: &mut Vec<String>,
    program: &Program,
    source: &str,
    out: &mut Vec<Problem>,
) {
    let at = |id: u64| {
        program
            .source_info()
            .offset_for(id)
            .map_or(0, |(s, _)| s as usize)
    };
    match &e.expr {
        Expr::Ident(name) => {
            let known = scope.iter().any(|s| s == name)
                || VARIABLES.contains(&name.as_str())
                || TYPE_NAMES.contains(&name.as_str());
            if !known {
                out.push(Problem {
                    at: at(e.id),
                    message: format!("unknown variable `{name}` in `when`"),
                    help: Some(match closest(name, VARIABLES.iter().copied()) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!("variables: {}", VARIABLES.join(", ")),
                    }),
                });
            }
        }
        Expr::Select(sel) => {
            let on_finding = matches!(&sel.operand.expr, Expr::Ident(n) if n == "finding")
                && !scope.iter().any(|s| s == "finding");
            if on_finding && !FINDING_FIELDS.contains(&sel.field.as_str()) {
                out.push(Problem {
                    // The node sits on the dot; the field follows it.
                    at: at(e.id) + 1,
                    message: format!("`finding` has no field `{}`", sel.field),
                    help: Some(match closest(&sel.field, FINDING_FIELDS.iter().copied()) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!("fields: {}", FINDING_FIELDS.join(", ")),
                    }),
                });
            }
            walk(&sel.operand, scope, program, source, out);
        }
        Expr::Call(call) => {
            let name = call.func_name.as_str();
            let is_ident = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if is_ident && !FUNCTIONS.contains(&name) {
                // The node sits on the opening parenthesis; the name ends
                // right before it when written without a space.
                let paren = at(e.id);
                let start = paren.saturating_sub(name.chars().count());
                let written: String = source.chars().skip(start).take(paren - start).collect();
                out.push(Problem {
                    at: if written == name { start } else { paren },
                    message: format!("unknown function `{name}` in `when`"),
                    help: Some(match closest(name, FUNCTIONS.iter().copied()) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => format!("functions: {}", FUNCTIONS.join(", ")),
                    }),
                });
            }
            if let Some(t) = &call.target {
                walk(t, scope, program, source, out);
            }
            for a in &call.args {
                walk(a, scope, program, source, out);
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, scope, program, source, out);
            let depth = scope.len();
            scope.push(c.iter_var.clone());
            scope.extend(c.iter_var2.clone());
            scope.push(c.accu_var.clone());
            for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                walk(part, scope, program, source, out);
            }
            scope.truncate(depth);
        }
        Expr::List(l) => {
            for x in &l.elements {
                walk(x, scope, program, source, out);
            }
        }
        Expr::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    walk(&me.key, scope, program, source, out);
                    walk(&me.value, scope, program, source, out);
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let EntryExpr::StructField(f) = &entry.expr {
                    walk(&f.value, scope, program, source, out);
                }
            }
        }
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// Character index of a 1-based (line, column) in `source`.
fn char_index(source: &str, line: isize, col: isize) -> usize {
    let (line, col) = (line.max(1) as usize, col.max(1) as usize);
    let mut idx = 0;
    for (n, l) in source.split_inclusive('\n').enumerate() {
        if n + 1 == line {
            return idx + (col - 1).min(l.chars().count());
        }
        idx += l.chars().count();
    }
    idx
}

/// For a TOML string as written (`raw`, quotes included), the byte offset
/// within `raw` of each character of its value, plus one for the end; `None`
/// when the decoding here disagrees with `value` (then callers fall back to
/// the start of the string rather than point at a wrong place).
pub(crate) fn char_offsets(raw: &str, value: &str) -> Option<Vec<usize>> {
    let bytes = raw.as_bytes();
    let (quote, open) = if raw.starts_with("\"\"\"") {
        ('"', 3)
    } else if raw.starts_with("'''") {
        ('\'', 3)
    } else if raw.starts_with('"') {
        ('"', 1)
    } else if raw.starts_with('\'') {
        ('\'', 1)
    } else {
        return None;
    };
    let close = raw.len().checked_sub(open).filter(|c| *c >= open)?;
    let mut i = open;
    // A newline right after an opening triple quote is not part of the value.
    if open == 3 {
        if raw.get(i..)?.starts_with("\r\n") {
            i += 2;
        } else if raw.get(i..)?.starts_with('\n') {
            i += 1;
        }
    }
    let mut out = Vec::new();
    while i < close {
        let c = raw.get(i..)?.chars().next()?;
        if quote == '"' && c == '\\' {
            let next = *bytes.get(i + 1)?;
            let len = match next {
                b'u' => 6,
                b'U' => 10,
                b' ' | b'\t' | b'\r' | b'\n' => {
                    // Line-ending backslash: drops all whitespace after it.
                    i += 1;
                    while i < close && matches!(bytes[i], b' ' | b'\t' | b'\r' | b'\n') {
                        i += 1;
                    }
                    continue;
                }
                _ => 2,
            };
            out.push(i);
            i += len;
        } else if c == '\r' && raw.get(i..)?.starts_with("\r\n") {
            out.push(i);
            i += 2;
        } else {
            out.push(i);
            i += c.len_utf8();
        }
    }
    out.push(close);
    (out.len() == value.chars().count() + 1).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_escapes_and_triple_quotes() {
        let raw = r#""a\"b""#;
        assert_eq!(char_offsets(raw, "a\"b"), Some(vec![1, 2, 4, 5]));
        let raw = "'''\nx > 1'''";
        assert_eq!(char_offsets(raw, "x > 1"), Some(vec![4, 5, 6, 7, 8, 9]));
        assert_eq!(
            char_offsets("'ab'", "abc"),
            None,
            "disagreement is detected"
        );
    }

    #[test]
    fn names_are_checked() {
        let e = When::compile("finding.confidense > 0.5").unwrap_err();
        assert_eq!(e.at, 8);
        assert_eq!(e.help.as_deref(), Some("did you mean `confidence`?"));
        let e = When::compile("finding.kind == 'x' && stratsWith(finding.node)").unwrap_err();
        assert_eq!(e.at, 23);
        assert!(When::compile("[1, 2].exists(x, x == finding.rank)").is_ok());
        assert!(When::compile("fnding.rank == 1").is_err());
        assert!(
            When::compile("finding.confidence").is_err(),
            "not a boolean"
        );
    }
}
