//! Response accounting: which client message each upstream response answers.
//!
//! Every message forwarded upstream that expects a reply is queued; backend messages pop it when
//! they complete it. This is how an injected refusal (a statement that fails upstream at parse
//! time, see `session`) is matched to its ErrorResponse, which is then replaced by Portcullis's
//! own error — keeping PostgreSQL's ordering and transaction-abort semantics exactly. Any
//! response that does not fit the queue ends the session (fail closed).

use std::collections::VecDeque;

use super::messages::backend::*;

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

/// What the client is shown of the reply to a message the proxy sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The client's own message: its reply is forwarded.
    Forward,
    /// An injected refusal: its ErrorResponse is replaced by this rejection.
    Refuse(Rejection),
    /// A message the proxy added on its own (re-preparing a statement): a successful reply is
    /// dropped, an error is forwarded (the client's next message fails with it).
    Hide,
    /// A query the proxy sent to read a setting (see `search_path`): none of its reply reaches
    /// the client; its DataRow is read, its ReadyForQuery ends the read.
    Read,
}

/// What to do with one backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Forward,
    Drop,
    Replace(Rejection),
    /// A row of a [`Reply::Read`]: read it, then drop it.
    ReadRow,
    /// The ReadyForQuery ending a [`Reply::Read`]: drop it; the read is over.
    ReadDone,
}

#[derive(Debug)]
struct Pending {
    expect: Expect,
    reply: Reply,
    /// The upstream prepared statement a Parse creates or a Close drops.
    statement: Option<Box<str>>,
    /// A Parse answered with an idle upstream statement (`statement`), which exists already:
    /// the take's token (see `statements`).
    reused: Option<u64>,
}

/// A Parse or Close the backend failed or skipped (an error earlier in its batch): the
/// statement it was to create does not exist, or the one it was to drop still does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub expect: Expect,
    /// Sent by the proxy on its own ([`Reply::Hide`]), not for the client.
    pub hidden: bool,
    pub statement: Box<str>,
    /// The client's Parse took the idle upstream `statement` with this token (see
    /// `statements`): the statement exists, the client's name for it does not.
    pub reused: Option<u64>,
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
    /// Parses and Closes an error made the backend fail or skip, not yet taken.
    lost: Vec<Lost>,
    /// Upstream statements whose Parse the backend completed, not yet taken.
    created: Vec<Box<str>>,
}

impl Pipeline {
    pub fn push(&mut self, expect: Expect, reply: Reply) {
        self.queue.push_back(Pending {
            expect,
            reply,
            statement: None,
            reused: None,
        });
    }

    /// A Parse or Close of upstream statement `statement`, whose loss must be reported.
    pub fn push_statement(&mut self, expect: Expect, reply: Reply, statement: Box<str>) {
        self.queue.push_back(Pending {
            expect,
            reply,
            statement: Some(statement),
            reused: None,
        });
    }

    /// A client's Parse answered with the idle upstream `statement`, whose loss (the backend
    /// skipping the Parse) must be reported.
    pub fn push_reused(&mut self, statement: Box<str>, token: u64) {
        self.queue.push_back(Pending {
            expect: Expect::Parse,
            reply: Reply::Forward,
            statement: Some(statement),
            reused: Some(token),
        });
    }

    /// The Parses and Closes failed or skipped since the last call.
    pub fn take_lost(&mut self) -> Vec<Lost> {
        std::mem::take(&mut self.lost)
    }

    /// The upstream statements created (ParseComplete) since the last call.
    pub fn take_created(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.created)
    }

    /// Whether the reply now arriving answers a client's Describe.
    pub fn front_is_describe(&self) -> bool {
        self.queue
            .front()
            .is_some_and(|p| p.expect == Expect::Describe && p.reply == Reply::Forward)
    }

    /// Whether the reply now arriving is to a read of the proxy's own.
    pub fn front_is_read(&self) -> bool {
        self.queue.front().is_some_and(|p| p.reply == Reply::Read)
    }

    /// True when no reply is outstanding (the upstream is not busy for this client).
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
    }

    /// Accounts for one backend message by its tag, and says what the client gets of it.
    pub fn on_backend(&mut self, tag: u8) -> Result<Action, Mismatch> {
        if self.queue.front().is_some_and(|p| p.reply == Reply::Read) {
            return Ok(match tag {
                // Asynchronous messages are the client's.
                NOTICE | NOTIFICATION | PARAMETER_STATUS => Action::Forward,
                DATA_ROW => Action::ReadRow,
                READY_FOR_QUERY => {
                    self.queue.pop_front();
                    Action::ReadDone
                }
                ROW_DESCRIPTION | COMMAND_COMPLETE | EMPTY_QUERY | ERROR => Action::Drop,
                _ => {
                    return Err(Mismatch {
                        tag,
                        expected: "a read was pending".into(),
                    })
                }
            });
        }
        let front = self.queue.front().map(|p| p.expect);
        let mismatch = || Mismatch {
            tag,
            expected: format!("{front:?} was pending"),
        };
        // What this message does to the front of the queue: complete it, continue it, or neither.
        let completes: &[Expect] = match tag {
            PARSE_COMPLETE => &[Expect::Parse],
            BIND_COMPLETE => &[Expect::Bind],
            CLOSE_COMPLETE => &[Expect::Close],
            NO_DATA => &[Expect::Describe],
            PORTAL_SUSPENDED => &[Expect::Execute],
            READY_FOR_QUERY => &[Expect::Query, Expect::Sync],
            ROW_DESCRIPTION if front == Some(Expect::Describe) => &[Expect::Describe],
            COMMAND_COMPLETE | EMPTY_QUERY if front == Some(Expect::Execute) => &[Expect::Execute],
            ROW_DESCRIPTION | COMMAND_COMPLETE | EMPTY_QUERY if front == Some(Expect::Query) => &[],
            PARAMETER_DESCRIPTION if front == Some(Expect::Describe) => &[],
            DATA_ROW | COPY_OUT | COPY_DATA | COPY_DONE
                if matches!(front, Some(Expect::Query | Expect::Execute)) =>
            {
                &[]
            }
            ERROR => return Ok(self.on_error()),
            // Asynchronous messages may arrive at any time.
            NOTICE | NOTIFICATION | PARAMETER_STATUS => &[],
            _ => return Err(mismatch()),
        };
        if completes.is_empty() {
            return Ok(Action::Forward);
        }
        if !front.is_some_and(|f| completes.contains(&f)) {
            return Err(mismatch());
        }
        let done = self.queue.pop_front().expect("front checked");
        if let (Expect::Parse, Some(statement), None) = (done.expect, &done.statement, done.reused)
        {
            self.created.push(statement.clone());
        }
        Ok(match done.reply {
            Reply::Hide => Action::Drop,
            _ => Action::Forward,
        })
    }

    fn on_error(&mut self) -> Action {
        let Some(front) = self.queue.front_mut() else {
            return Action::Forward;
        };
        let front_hidden = front.reply == Reply::Hide;
        let action = match std::mem::replace(&mut front.reply, Reply::Forward) {
            Reply::Refuse(r) => Action::Replace(r),
            Reply::Forward | Reply::Hide | Reply::Read => Action::Forward,
        };
        match front.expect {
            // A simple query, or the implicit commit at Sync, is followed by ReadyForQuery.
            Expect::Query | Expect::Sync => {}
            // In the extended protocol the backend now skips everything up to Sync: the
            // failed message and those skipped are lost.
            _ => {
                let mut hidden = front_hidden;
                while self.queue.front().is_some_and(|p| p.expect != Expect::Sync) {
                    let gone = self.queue.pop_front().expect("front checked");
                    hidden |= gone.reply == Reply::Hide;
                    if let Some(statement) = gone.statement {
                        self.lost.push(Lost {
                            expect: gone.expect,
                            hidden,
                            statement,
                            reused: gone.reused,
                        });
                    }
                    hidden = false;
                }
            }
        }
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection() -> Rejection {
        Rejection {
            code: "42501",
            message: "no".into(),
        }
    }

    fn rej() -> Reply {
        Reply::Refuse(rejection())
    }

    #[test]
    fn a_read_is_never_shown_to_the_client() {
        let mut p = Pipeline::default();
        p.push(Expect::Query, Reply::Forward);
        p.push(Expect::Query, Reply::Read);
        p.push(Expect::Sync, Reply::Forward);
        for tag in *b"TDCZ" {
            assert_eq!(p.on_backend(tag), Ok(Action::Forward));
        }
        assert_eq!(p.on_backend(b'T'), Ok(Action::Drop));
        assert_eq!(p.on_backend(b'S'), Ok(Action::Forward));
        assert_eq!(p.on_backend(b'D'), Ok(Action::ReadRow));
        assert_eq!(p.on_backend(b'C'), Ok(Action::Drop));
        assert_eq!(p.on_backend(b'Z'), Ok(Action::ReadDone));
        assert_eq!(p.on_backend(b'Z'), Ok(Action::Forward));
        assert!(p.is_idle());
        // A failed read (an aborted transaction) is dropped too.
        p.push(Expect::Query, Reply::Read);
        assert_eq!(p.on_backend(b'E'), Ok(Action::Drop));
        assert_eq!(p.on_backend(b'Z'), Ok(Action::ReadDone));
        assert!(p.is_idle());
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
            p.push(e, Reply::Forward);
        }
        for tag in *b"12TDDCZ" {
            assert_eq!(p.on_backend(tag), Ok(Action::Forward), "{}", tag as char);
        }
        assert!(p.is_idle());
    }

    #[test]
    fn an_injected_refusal_is_matched_to_its_error() {
        let mut p = Pipeline::default();
        p.push(Expect::Parse, Reply::Forward);
        p.push(Expect::Bind, Reply::Forward);
        p.push(Expect::Execute, Reply::Forward);
        p.push(Expect::Parse, rej());
        p.push(Expect::Sync, Reply::Forward);
        for tag in *b"12C" {
            assert_eq!(p.on_backend(tag), Ok(Action::Forward));
        }
        assert_eq!(p.on_backend(b'E'), Ok(Action::Replace(rejection())));
        assert_eq!(p.on_backend(b'Z'), Ok(Action::Forward));
        assert!(p.is_idle());
    }

    #[test]
    fn a_real_earlier_error_is_not_replaced_and_skips_to_sync() {
        let mut p = Pipeline::default();
        p.push(Expect::Parse, Reply::Forward);
        p.push(Expect::Bind, Reply::Forward);
        p.push(Expect::Parse, rej());
        p.push(Expect::Sync, Reply::Forward);
        assert_eq!(p.on_backend(b'E'), Ok(Action::Forward));
        assert_eq!(p.on_backend(b'Z'), Ok(Action::Forward));
        assert!(p.is_idle());
        assert!(p.take_lost().is_empty());
    }

    #[test]
    fn hidden_replies_are_dropped_and_lost_statements_reported() {
        let mut p = Pipeline::default();
        p.push_statement(Expect::Close, Reply::Hide, "old".into());
        p.push_statement(Expect::Parse, Reply::Hide, "new".into());
        p.push(Expect::Bind, Reply::Forward);
        p.push(Expect::Sync, Reply::Forward);
        assert_eq!(p.on_backend(b'3'), Ok(Action::Drop));
        assert_eq!(p.on_backend(b'1'), Ok(Action::Drop));
        assert_eq!(p.on_backend(b'2'), Ok(Action::Forward));
        assert_eq!(p.on_backend(b'Z'), Ok(Action::Forward));
        assert!(p.take_lost().is_empty());
        // A failed hidden Parse is forwarded (the client's next message fails with it) and
        // reported lost.
        p.push_statement(Expect::Parse, Reply::Hide, "a".into());
        p.push(Expect::Bind, Reply::Forward);
        p.push(Expect::Sync, Reply::Forward);
        assert_eq!(p.on_backend(b'E'), Ok(Action::Forward));
        assert_eq!(p.on_backend(b'Z'), Ok(Action::Forward));
        assert!(p.is_idle());
        let lost = |statement: &str, expect, hidden| Lost {
            expect,
            hidden,
            statement: statement.into(),
            reused: None,
        };
        assert_eq!(p.take_lost(), [lost("a", Expect::Parse, true)]);
        // An earlier error skips the statements queued behind it, the client's too.
        p.push(Expect::Execute, Reply::Forward);
        p.push_statement(Expect::Close, Reply::Hide, "b".into());
        p.push_statement(Expect::Parse, Reply::Forward, "c".into());
        p.push(Expect::Sync, Reply::Forward);
        assert_eq!(p.on_backend(b'E'), Ok(Action::Forward));
        assert_eq!(
            p.take_lost(),
            [
                lost("b", Expect::Close, true),
                lost("c", Expect::Parse, false)
            ]
        );
    }

    #[test]
    fn simple_query_refusal() {
        let mut p = Pipeline::default();
        p.push(Expect::Query, rej());
        assert_eq!(p.on_backend(b'E'), Ok(Action::Replace(rejection())));
        assert_eq!(p.on_backend(b'Z'), Ok(Action::Forward));
    }

    #[test]
    fn unexpected_messages_are_mismatches() {
        let mut p = Pipeline::default();
        assert!(p.on_backend(b'D').is_err());
        assert!(p.on_backend(b'1').is_err());
        assert!(p.on_backend(b'G').is_err(), "COPY FROM is never expected");
        assert!(p.on_backend(b'R').is_err());
        assert_eq!(p.on_backend(b'N'), Ok(Action::Forward));
    }
}
