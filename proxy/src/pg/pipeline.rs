//! Response accounting: which client message each upstream response answers.
//!
//! Every message forwarded upstream that expects a reply is queued; backend messages pop it when
//! they complete it. This is how an injected refusal (a statement that fails upstream at parse
//! time, see `session`) is matched to its ErrorResponse, which is then replaced by Portcullis's
//! own error — keeping PostgreSQL's ordering and transaction-abort semantics exactly. Any
//! response that does not fit the queue ends the session (fail closed).

use std::collections::VecDeque;

/// Why a statement was refused: what the client will see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: &'static str,
    pub message: String,
}

impl From<&rewriter::Refusal> for Rejection {
    fn from(r: &rewriter::Refusal) -> Self {
        Rejection {
            code: r.sqlstate(),
            message: r.to_string(),
        }
    }
}

/// The kind of client message awaiting its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Query,
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
}

#[derive(Debug)]
struct Pending {
    expect: Expect,
    rejection: Option<Rejection>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("upstream sent '{}' while {expected}", *tag as char)]
pub struct Mismatch {
    pub tag: u8,
    pub expected: String,
}

#[derive(Debug, Default)]
pub struct Pipeline {
    queue: VecDeque<Pending>,
}

impl Pipeline {
    pub fn push(&mut self, expect: Expect, rejection: Option<Rejection>) {
        self.queue.push_back(Pending { expect, rejection });
    }

    /// True when no reply is outstanding (the upstream is not busy for this client).
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Accounts for one backend message by its tag. Returns the rejection to send instead of
    /// this message when it is the ErrorResponse of an injected refusal.
    pub fn on_backend(&mut self, tag: u8) -> Result<Option<Rejection>, Mismatch> {
        let front = self.queue.front().map(|p| p.expect);
        let mismatch = || Mismatch {
            tag,
            expected: format!("{front:?} was pending"),
        };
        // What this message does to the front of the queue: complete it, continue it, or neither.
        let completes: &[Expect] = match tag {
            b'1' => &[Expect::Parse],
            b'2' => &[Expect::Bind],
            b'3' => &[Expect::Close],
            b'n' => &[Expect::Describe],
            b's' => &[Expect::Execute],
            b'Z' => &[Expect::Query, Expect::Sync],
            b'T' if front == Some(Expect::Describe) => &[Expect::Describe],
            b'C' | b'I' if front == Some(Expect::Execute) => &[Expect::Execute],
            b'T' | b'C' | b'I' if front == Some(Expect::Query) => &[],
            b't' if front == Some(Expect::Describe) => &[],
            b'D' | b'H' | b'd' | b'c' if matches!(front, Some(Expect::Query | Expect::Execute)) => {
                &[]
            }
            b'E' => return Ok(self.on_error()),
            // Asynchronous messages may arrive at any time.
            b'N' | b'A' | b'S' => &[],
            _ => return Err(mismatch()),
        };
        if !completes.is_empty() {
            if !front.is_some_and(|f| completes.contains(&f)) {
                return Err(mismatch());
            }
            self.queue.pop_front();
        }
        Ok(None)
    }

    fn on_error(&mut self) -> Option<Rejection> {
        let front = self.queue.front_mut()?;
        let rejection = front.rejection.take();
        match front.expect {
            // A simple query, or the implicit commit at Sync, is followed by ReadyForQuery.
            Expect::Query | Expect::Sync => {}
            // In the extended protocol the backend now skips everything up to Sync.
            _ => {
                while self.queue.front().is_some_and(|p| p.expect != Expect::Sync) {
                    self.queue.pop_front();
                }
            }
        }
        rejection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rej() -> Option<Rejection> {
        Some(Rejection {
            code: "42501",
            message: "no".into(),
        })
    }

    #[test]
    fn extended_batch_completes() {
        let mut p = Pipeline::default();
        for e in [
            Expect::Parse,
            Expect::Bind,
            Expect::Describe,
            Expect::Execute,
            Expect::Sync,
        ] {
            p.push(e, None);
        }
        for tag in *b"12TDDCZ" {
            assert_eq!(p.on_backend(tag), Ok(None), "{}", tag as char);
        }
        assert!(p.is_idle());
    }

    #[test]
    fn an_injected_refusal_is_matched_to_its_error() {
        let mut p = Pipeline::default();
        p.push(Expect::Parse, None);
        p.push(Expect::Bind, None);
        p.push(Expect::Execute, None);
        p.push(Expect::Parse, rej());
        p.push(Expect::Sync, None);
        for tag in *b"12C" {
            assert_eq!(p.on_backend(tag), Ok(None));
        }
        assert_eq!(p.on_backend(b'E'), Ok(rej()));
        assert_eq!(p.on_backend(b'Z'), Ok(None));
        assert!(p.is_idle());
    }

    #[test]
    fn a_real_earlier_error_is_not_replaced_and_skips_to_sync() {
        let mut p = Pipeline::default();
        p.push(Expect::Parse, None);
        p.push(Expect::Bind, None);
        p.push(Expect::Parse, rej());
        p.push(Expect::Sync, None);
        assert_eq!(p.on_backend(b'E'), Ok(None));
        assert_eq!(p.on_backend(b'Z'), Ok(None));
        assert!(p.is_idle());
    }

    #[test]
    fn simple_query_refusal() {
        let mut p = Pipeline::default();
        p.push(Expect::Query, rej());
        assert_eq!(p.on_backend(b'E'), Ok(rej()));
        assert_eq!(p.on_backend(b'Z'), Ok(None));
    }

    #[test]
    fn unexpected_messages_are_mismatches() {
        let mut p = Pipeline::default();
        assert!(p.on_backend(b'D').is_err());
        assert!(p.on_backend(b'1').is_err());
        assert!(p.on_backend(b'G').is_err(), "COPY FROM is never expected");
        assert!(p.on_backend(b'R').is_err());
        assert_eq!(p.on_backend(b'N'), Ok(None));
    }
}
