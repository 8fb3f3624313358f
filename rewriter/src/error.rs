//! Why the gate refused a statement, with the SQLSTATE the client receives.

/// A refusal. Messages describe the client's own statement only, never data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The statement could not be parsed (SQLSTATE 42601).
    #[error("Portcullis could not parse this statement: {0}")]
    Syntax(String),
    /// The statement parsed but is not allowed through Portcullis (SQLSTATE 42501).
    #[error("Portcullis refused this statement: {0}")]
    Forbidden(String),
    /// The statement is valid but this release does not support it (SQLSTATE 0A000).
    #[error("Portcullis does not support this statement: {0}")]
    Unsupported(String),
}

impl Refusal {
    /// The SQLSTATE sent in the ErrorResponse.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Refusal::Syntax(_) => "42601",
            Refusal::Forbidden(_) => "42501",
            Refusal::Unsupported(_) => "0A000",
        }
    }
}
