//! Positioned problems in configuration files: `file:line:column: what is wrong, what was expected`.

use std::fmt;
use std::path::{Path, PathBuf};

/// A place in a file. Line and column are 1-based; the column counts characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The file.
    pub path: PathBuf,
    /// Line, from 1 (0 when the problem is with the whole file).
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` of `text`, read from `path`.
    pub fn at(path: &Path, text: &str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        let before = &text.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        Self {
            path: path.to_path_buf(),
            line,
            column,
        }
    }

    /// The whole file, when no better position is known.
    pub fn file(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.path.display())
        } else {
            write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
        }
    }
}

/// One problem found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where.
    pub position: Position,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Diagnostic {
    /// A problem at byte `offset` of `text`.
    pub fn at(path: &Path, text: &str, offset: usize, message: String) -> Self {
        Self {
            position: Position::at(path, text, offset),
            message,
        }
    }

    /// A problem with the file as a whole.
    pub fn file(path: &Path, message: String) -> Self {
        Self {
            position: Position::file(path),
            message,
        }
    }

    /// A problem at a known position.
    pub fn new(position: &Position, message: impl Into<String>) -> Self {
        Self {
            position: position.clone(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.position, self.message)
    }
}

/// Every diagnostic, one per line.
pub fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A value read from a file, with where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub at: Position,
}

impl<T> Located<T> {
    /// Pairs a value with its position.
    pub fn new(value: T, at: Position) -> Self {
        Self { value, at }
    }
}
