//! Per-agent time limits that Portcullis enforces itself: how long one statement may run
//! (then Portcullis cancels it upstream) and how long a session may sit idle inside a
//! transaction (then Portcullis ends it). The same caps are the upstream session's
//! `statement_timeout` and `idle_in_transaction_session_timeout`, so an agent may lower them
//! with `SET`; raising them does nothing, since Portcullis's own timers do not read `SET`.
//!
//! [`Timers`] is the sans-IO part: the session tells it what happened and asks it for the next
//! deadline.

use std::time::Duration;

use tokio::time::Instant;

/// The caps of one agent; `None`: no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub statement: Option<Duration>,
    pub idle_in_transaction: Option<Duration>,
    /// Longest a session may sit idle outside a transaction (`client_idle_timeout_ms`).
    pub idle_session: Option<Duration>,
}

impl Limits {
    /// From milliseconds, 0 meaning no cap.
    pub fn from_ms(statement: u64, idle_in_transaction: u64) -> Self {
        let cap = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Limits {
            statement: cap(statement),
            idle_in_transaction: cap(idle_in_transaction),
            idle_session: None,
        }
    }

    /// These limits, and an idle session ended after `ms` (0: never).
    pub fn with_idle_session_ms(self, ms: u64) -> Self {
        Limits {
            idle_session: (ms > 0).then(|| Duration::from_millis(ms)),
            ..self
        }
    }

    /// Caps the upstream session's own timeouts in `params` (the client's startup
    /// parameters): a client's value is kept only when it is a positive number of
    /// milliseconds no larger than the cap.
    pub fn cap_startup_params(&self, params: &mut Vec<(String, String)>) {
        for (name, cap) in [
            ("statement_timeout", self.statement),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction,
            ),
        ] {
            let Some(cap) = cap else { continue };
            let cap_ms = cap.as_millis() as u64;
            let lower = params
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .filter(|ms| (1..=cap_ms).contains(ms));
            params.retain(|(k, _)| k != name);
            params.push((name.to_string(), lower.unwrap_or(cap_ms).to_string()));
        }
    }
}

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The statement in flight ran past its cap: cancel it upstream.
    Statement,
    /// The session sat idle in a transaction past its cap: end it.
    IdleInTransaction,
    /// The session sat idle outside a transaction past its cap: end it.
    IdleSession,
}

/// The session's clocks.
#[derive(Debug)]
pub struct Timers {
    limits: Limits,
    /// Since when the upstream has had work in flight for this client (and whether it has
    /// been cancelled already).
    busy_since: Option<Instant>,
    cancelled: bool,
    /// Since when the session has been idle inside a transaction block.
    idle_in_transaction_since: Option<Instant>,
    /// Since when the session has been idle outside a transaction (the client not speaking).
    idle_since: Option<Instant>,
}

impl Timers {
    pub fn new(limits: Limits) -> Self {
        Timers {
            limits,
            busy_since: None,
            cancelled: false,
            idle_in_transaction_since: None,
            // A session starts idle, after its first ReadyForQuery.
            idle_since: Some(Instant::now()),
        }
    }

    /// The upstream has work in flight (`busy`) or not, now.
    pub fn set_busy(&mut self, busy: bool, now: Instant) {
        match (busy, self.busy_since) {
            (true, None) => {
                self.busy_since = Some(now);
                self.cancelled = false;
                self.idle_in_transaction_since = None;
                self.idle_since = None;
            }
            (false, Some(_)) => self.busy_since = None,
            _ => {}
        }
    }

    /// A ReadyForQuery arrived with transaction status `status` (`I`, `T` or `E`).
    pub fn ready(&mut self, status: u8, now: Instant) {
        self.idle_in_transaction_since = (status != b'I').then_some(now);
        self.idle_since = (status == b'I').then_some(now);
    }

    /// The client sent something: it is not idle.
    pub fn client_active(&mut self) {
        self.idle_in_transaction_since = None;
        self.idle_since = None;
    }

    /// The next deadline, if any.
    pub fn deadline(&self) -> Option<(Instant, Expiry)> {
        if let (Some(since), Some(cap), false) =
            (self.busy_since, self.limits.statement, self.cancelled)
        {
            return Some((since + cap, Expiry::Statement));
        }
        match (
            self.idle_in_transaction_since,
            self.limits.idle_in_transaction,
        ) {
            (Some(since), Some(cap)) if self.busy_since.is_none() => {
                Some((since + cap, Expiry::IdleInTransaction))
            }
            _ => match (self.idle_since, self.limits.idle_session) {
                (Some(since), Some(cap)) if self.busy_since.is_none() => {
                    Some((since + cap, Expiry::IdleSession))
                }
                _ => None,
            },
        }
    }

    /// The statement deadline passed and a cancel was sent: no second one for this statement.
    pub fn cancelled(&mut self) {
        self.cancelled = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::from_ms(1000, 5000)
    }

    #[test]
    fn a_busy_upstream_gets_one_statement_deadline() {
        let t0 = Instant::now();
        let mut t = Timers::new(limits());
        assert_eq!(t.deadline(), None);
        t.set_busy(true, t0);
        t.set_busy(true, t0 + Duration::from_millis(500));
        assert_eq!(
            t.deadline(),
            Some((t0 + Duration::from_secs(1), Expiry::Statement))
        );
        t.cancelled();
        assert_eq!(t.deadline(), None);
        t.set_busy(false, t0 + Duration::from_secs(2));
        t.set_busy(true, t0 + Duration::from_secs(3));
        assert_eq!(
            t.deadline(),
            Some((t0 + Duration::from_secs(4), Expiry::Statement))
        );
    }

    #[test]
    fn idle_in_transaction_counts_from_ready_for_query_until_the_client_speaks() {
        let t0 = Instant::now();
        let mut t = Timers::new(limits());
        t.ready(b'I', t0);
        assert_eq!(t.deadline(), None);
        t.ready(b'T', t0);
        assert_eq!(
            t.deadline(),
            Some((t0 + Duration::from_secs(5), Expiry::IdleInTransaction))
        );
        t.client_active();
        assert_eq!(t.deadline(), None);
        t.ready(b'E', t0);
        assert!(t.deadline().is_some());
    }

    #[test]
    fn no_cap_no_deadline() {
        let mut t = Timers::new(Limits::from_ms(0, 0));
        t.set_busy(true, Instant::now());
        t.ready(b'T', Instant::now());
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn startup_parameters_may_lower_the_caps_but_not_raise_them() {
        let caps = limits();
        for (given, want) in [
            (None, "1000"),
            (Some("500"), "500"),
            (Some("0"), "1000"),
            (Some("5000"), "1000"),
            (Some("1min"), "1000"),
        ] {
            let mut params = vec![("application_name".to_string(), "x".to_string())];
            if let Some(v) = given {
                params.push(("statement_timeout".into(), v.into()));
            }
            caps.cap_startup_params(&mut params);
            let got: Vec<_> = params
                .iter()
                .filter(|(k, _)| k == "statement_timeout")
                .collect();
            assert_eq!(got.len(), 1, "{given:?}");
            assert_eq!(got[0].1, want, "{given:?}");
        }
    }

    #[test]
    fn an_idle_session_counts_from_ready_for_query_outside_a_transaction() {
        let t0 = Instant::now();
        let mut t = Timers::new(limits().with_idle_session_ms(2000));
        t.ready(b'I', t0);
        assert_eq!(
            t.deadline(),
            Some((t0 + Duration::from_secs(2), Expiry::IdleSession))
        );
        t.client_active();
        assert_eq!(t.deadline(), None);
        t.ready(b'T', t0);
        assert_eq!(
            t.deadline(),
            Some((t0 + Duration::from_secs(5), Expiry::IdleInTransaction))
        );
        t.ready(b'I', t0);
        t.set_busy(true, t0);
        assert_eq!(
            t.deadline(),
            Some((t0 + Duration::from_secs(1), Expiry::Statement))
        );
        assert_eq!(Timers::new(limits()).deadline(), None);
    }
}
