//! A small spanned tree built from `toml_edit`'s document, so that the checker
//! walks one shape whether a table was written as `[rule.match]` or inline as
//! `match = { ... }`, and every node keeps the bytes it came from.

use std::ops::Range;
use toml_edit::{Item, Value};

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) span: Range<usize>,
    pub(crate) val: Val,
}

#[derive(Debug, Clone)]
pub(crate) enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_span: Range<usize>,
    pub(crate) node: Node,
}

impl Val {
    /// The TOML name of the value's type, for "expected X, found Y".
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Bool(_) => "a boolean",
            Val::Datetime => "a date-time",
            Val::Array(_) => "an array",
            Val::Table(_) => "a table",
        }
    }
}

impl Node {
    /// A number, whether written as an integer or a float.
    pub(crate) fn as_number(&self) -> Option<f64> {
        match self.val {
            Val::Int(i) => Some(i as f64),
            Val::Float(f) => Some(f),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.val {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// The document's top-level table. Spans that `toml_edit` does not know
/// (it knows all of them for a freshly parsed document) fall back to the
/// parent's, so a position is always reported somewhere sensible.
pub(crate) fn root(table: &toml_edit::Table) -> Vec<Entry> {
    table_entries(table, 0..0)
}

fn table_entries(table: &toml_edit::Table, parent: Range<usize>) -> Vec<Entry> {
    let mut out = Vec::new();
    for (k, item) in table.iter() {
        let key_span = table
            .key(k)
            .and_then(|k| k.span())
            .unwrap_or_else(|| parent.clone());
        if let Some(node) = item_node(item, key_span.clone()) {
            out.push(Entry {
                key: k.to_string(),
                key_span,
                node,
            });
        }
    }
    out
}

fn item_node(item: &Item, fallback: Range<usize>) -> Option<Node> {
    let span = item.span().unwrap_or_else(|| fallback.clone());
    let val = match item {
        Item::None => return None,
        Item::Value(v) => return Some(value_node(v, fallback)),
        Item::Table(t) => Val::Table(table_entries(t, span.clone())),
        Item::ArrayOfTables(a) => Val::Array(
            a.iter()
                .map(|t| {
                    let span = t.span().unwrap_or_else(|| span.clone());
                    Node {
                        val: Val::Table(table_entries(t, span.clone())),
                        span,
                    }
                })
                .collect(),
        ),
    };
    Some(Node { span, val })
}

fn value_node(v: &Value, fallback: Range<usize>) -> Node {
    let span = v.span().unwrap_or(fallback);
    let val = match v {
        Value::String(s) => Val::Str(s.value().clone()),
        Value::Integer(i) => Val::Int(*i.value()),
        Value::Float(f) => Val::Float(*f.value()),
        Value::Boolean(b) => Val::Bool(*b.value()),
        Value::Datetime(_) => Val::Datetime,
        Value::Array(a) => Val::Array(a.iter().map(|v| value_node(v, span.clone())).collect()),
        Value::InlineTable(t) => Val::Table(
            t.iter()
                .map(|(k, v)| {
                    let key_span = t
                        .key(k)
                        .and_then(|k| k.span())
                        .unwrap_or_else(|| span.clone());
                    Entry {
                        key: k.to_string(),
                        node: value_node(v, key_span.clone()),
                        key_span,
                    }
                })
                .collect(),
        ),
    };
    Node { span, val }
}
