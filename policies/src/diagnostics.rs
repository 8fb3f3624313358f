//! Problems found while loading a policy set, each with its file, line and column, rendered
//! like a compiler's (`file:line:col: message`).

use std::fmt;

/// One problem in one file. `line` and `column` are 1-based; 0 when Cedar gave no position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The policy concerned, when there is one.
    pub policy: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        if let Some(p) = &self.policy {
            write!(f, "policy {p:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl Diagnostic {
    pub(crate) fn at(file: &str, text: &str, offset: Option<usize>, message: String) -> Self {
        let (line, column) = offset.map(|o| line_col(text, o)).unwrap_or((0, 0));
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            message,
            policy: None,
        }
    }

    /// From a Cedar (miette) diagnostic whose labels are offsets into `text`. The message keeps
    /// Cedar's wording, plus its help when it has one.
    pub(crate) fn from_miette(file: &str, text: &str, d: &dyn miette::Diagnostic) -> Self {
        let offset = d.labels().and_then(|mut l| l.next()).map(|l| l.offset());
        let mut message = d.to_string();
        if let Some(help) = d.help() {
            message.push_str(&format!(" (help: {help})"));
        }
        Diagnostic::at(file, text, offset, message)
    }

    pub(crate) fn for_policy(mut self, id: &str) -> Self {
        self.policy = Some(id.to_string());
        self
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn lines_and_columns_are_one_based() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 5), (2, 3));
        assert_eq!(line_col(t, t.len()), (3, 2));
    }
}
