//! Errors and warnings about a policy document, each pinned to a file, line
//! and column so that an operator can jump straight to it.

use std::fmt;
use std::ops::Range;

/// How bad a reported problem is: an error stops the document from being
/// used; a warning is printed but the document still checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Warning,
    Error,
}

impl Level {
    pub fn wire(self) -> &'static str {
        match self {
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// One problem in a policy document.
///
/// Displays as `FILE:LINE:COL: error: MESSAGE (help: SUGGESTION)`, the shape
/// compilers use, so editors and terminals turn it into a link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, counted in characters.
    pub column: usize,
    pub level: Level,
    pub message: String,
    pub suggestion: Option<String>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file,
            self.line,
            self.column,
            self.level.wire(),
            self.message
        )?;
        if let Some(s) = &self.suggestion {
            write!(f, " (help: {s})")?;
        }
        Ok(())
    }
}

impl PolicyError {
    pub fn is_error(&self) -> bool {
        self.level == Level::Error
    }
}

/// Collects problems while a document is walked, turning byte spans into
/// lines and columns once, at the point of reporting.
pub(crate) struct Reporter<'a> {
    file: &'a str,
    text: &'a str,
    pub(crate) problems: Vec<PolicyError>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Reporter<'a> {
        Reporter {
            file,
            text,
            problems: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, at: &Range<usize>, message: String, help: Option<String>) {
        self.push(Level::Error, at.start, message, help);
    }

    pub(crate) fn warn(&mut self, at: &Range<usize>, message: String, help: Option<String>) {
        self.push(Level::Warning, at.start, message, help);
    }

    pub(crate) fn error_at(&mut self, offset: usize, message: String, help: Option<String>) {
        self.push(Level::Error, offset, message, help);
    }

    pub(crate) fn warn_at(&mut self, offset: usize, message: String, help: Option<String>) {
        self.push(Level::Warning, offset, message, help);
    }

    fn push(&mut self, level: Level, offset: usize, message: String, suggestion: Option<String>) {
        let (line, column) = line_col(self.text, offset);
        self.problems.push(PolicyError {
            file: self.file.to_string(),
            line,
            column,
            level,
            message,
            suggestion,
        });
    }

    /// "LINE:COL" of an offset, for messages that refer to another place.
    pub(crate) fn position(&self, offset: usize) -> String {
        let (line, col) = line_col(self.text, offset);
        format!("{line}:{col}")
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.problems.iter().any(PolicyError::is_error)
    }

    /// Problems in the order they appear in the file, so that fixing them
    /// top to bottom works.
    pub(crate) fn into_sorted(mut self) -> Vec<PolicyError> {
        self.problems
            .sort_by(|a, b| (a.line, a.column, b.level).cmp(&(b.line, b.column, a.level)));
        self.problems
    }
}

/// 1-based line and character column of a byte offset; offsets past the end
/// or inside a character are clamped rather than trusted.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Levenshtein distance, for "did you mean" suggestions; inputs are short
/// keys and names, so the quadratic cost does not matter.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != *cb)).min(row[j] + 1).min(up + 1);
            diag = up;
        }
    }
    row[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a typo
/// rather than a different word.
pub(crate) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| {
            // A word that one candidate starts (or that starts it) is a
            // shortening or a lengthening of that candidate ("automatic").
            let prefix =
                c.len() >= 3 && word.len() >= 3 && (word.starts_with(c) || c.starts_with(word));
            (if prefix { 0 } else { edit_distance(word, c) }, c)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// "did you mean `x`?" when something is close, else the full list, so the
/// help line is never empty.
pub(crate) fn suggest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str> + Clone,
) -> String {
    match closest(word, candidates.clone()) {
        Some(c) => format!("did you mean `{c}`?"),
        None => {
            let all: Vec<&str> = candidates.into_iter().collect();
            format!("expected one of: {}", all.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "ab\nçd = 1\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 3), (2, 1));
        // 'ç' is two bytes; the 'd' after it is the second character.
        assert_eq!(line_col(text, 5), (2, 2));
        assert_eq!(line_col(text, 4), (2, 1), "inside a character: clamped");
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn suggestions_pick_near_words_only() {
        assert_eq!(edit_distance("cooldown", "cooldown_s"), 2);
        assert_eq!(
            closest("cooldown", ["cooldown_s", "mode"]),
            Some("cooldown_s")
        );
        assert_eq!(closest("zzzzzzzz", ["cooldown_s", "mode"]), None);
        assert_eq!(closest("automatic", ["auto", "approve"]), Some("auto"));
        assert_eq!(suggest("x", ["a", "bcd"]), "did you mean `a`?");
        assert_eq!(suggest("xyz123", ["abcdefgh"]), "expected one of: abcdefgh");
    }
}
