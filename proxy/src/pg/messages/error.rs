//! ErrorResponse / NoticeResponse: building the ones Portcullis sends.

use bytes::BytesMut;

use super::{put_cstr, write_message};

/// The SQLSTATEs sessions are refused or ended with.
pub mod codes {
    /// The proxy is shutting down (PostgreSQL's `admin_shutdown`).
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// PostgreSQL's `idle_session_timeout`.
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends an ErrorResponse with severity, SQLSTATE and message (and an optional hint).
pub fn error_response(
    out: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    hint: Option<&str>,
) {
    write_message(out, b'E', |b| {
        b.extend_from_slice(b"S");
        put_cstr(b, severity.as_str());
        b.extend_from_slice(b"V");
        put_cstr(b, severity.as_str());
        b.extend_from_slice(b"C");
        put_cstr(b, code);
        b.extend_from_slice(b"M");
        put_cstr(b, message);
        if let Some(h) = hint {
            b.extend_from_slice(b"H");
            put_cstr(b, h);
        }
        b.extend_from_slice(&[0]);
    });
}

/// Fields of an upstream error that may carry row values or the rewritten SQL: detail (the
/// failing row of a constraint violation), context and internal query (text the agent never
/// sent, with values), and positions (offsets into the rewritten SQL, not the agent's).
const WITHHELD: &[u8] = b"DWPpq";

/// Re-encodes an upstream ErrorResponse frame (header included) for the agent: withholds the
/// fields in [`WITHHELD`] (saying so in the detail), and turns the rewriter's policy-violation
/// error (an input-syntax error whose text starts with `violation_marker`) into the 42501 error
/// it stands for.
/// The SQLSTATE of a whole ErrorResponse frame (header included).
pub fn sqlstate(frame: &[u8]) -> Option<&str> {
    let mut rest = frame.get(5..)?;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if code == b'C' {
            return std::str::from_utf8(&tail[..end]).ok();
        }
        rest = &tail[end + 1..];
    }
    None
}

pub fn redact_upstream_error(out: &mut BytesMut, frame: &[u8], violation_marker: &str) {
    redact(out, b'E', frame, Some(violation_marker));
}

/// Re-encodes an upstream NoticeResponse for the agent, withholding the same fields as
/// [`redact_upstream_error`] (a trigger's notice can carry row values in its detail).
pub fn redact_upstream_notice(out: &mut BytesMut, frame: &[u8]) {
    redact(out, b'N', frame, None);
}

fn redact(out: &mut BytesMut, tag: u8, frame: &[u8], violation_marker: Option<&str>) {
    let mut fields: Vec<(u8, String)> = Vec::new();
    let mut pos = 5;
    while let Some(&code) = frame.get(pos) {
        if code == 0 {
            break;
        }
        let rest = &frame[pos + 1..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        fields.push((code, String::from_utf8_lossy(&rest[..end]).into_owned()));
        pos += end + 2;
    }
    let field = |c: u8| {
        fields
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.as_str())
    };
    if let (Some("22P02"), Some(violation_marker)) = (field(b'C'), violation_marker) {
        if let Some(at) = field(b'M').and_then(|m| m.find(violation_marker)) {
            let message = field(b'M').unwrap_or_default()[at + violation_marker.len()..]
                .trim_end_matches('"')
                .to_string();
            return error_response(out, Severity::Error, "42501", &message, None);
        }
    }
    let withheld = fields.iter().any(|(k, _)| matches!(k, b'D' | b'W'));
    write_message(out, tag, |b| {
        for (code, value) in &fields {
            if !WITHHELD.contains(code) {
                b.extend_from_slice(&[*code]);
                put_cstr(b, value);
            }
        }
        if withheld {
            b.extend_from_slice(b"D");
            put_cstr(
                b,
                "Portcullis withheld this error's detail and context: they can carry row values",
            );
        }
        b.extend_from_slice(&[0]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(fields: &[(u8, &str)]) -> BytesMut {
        let mut b = BytesMut::new();
        write_message(&mut b, b'E', |b| {
            for (c, v) in fields {
                b.extend_from_slice(&[*c]);
                put_cstr(b, v);
            }
            b.extend_from_slice(&[0]);
        });
        b
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn row_values_are_withheld() {
        let e = upstream(&[
            (b'S', "ERROR"),
            (b'C', "23505"),
            (
                b'M',
                "duplicate key value violates unique constraint \"c_pkey\"",
            ),
            (b'D', "Key (id)=(42) already exists."),
            (b'P', "17"),
            (b'n', "c_pkey"),
        ]);
        let mut out = BytesMut::new();
        redact_upstream_error(&mut out, &e, "marker: ");
        let t = text(&out);
        assert!(!t.contains("(42)"), "{t}");
        assert!(t.contains("c_pkey") && t.contains("23505") && t.contains("withheld"));
        assert!(!t.contains("P17"));
    }

    #[test]
    fn a_violation_becomes_42501() {
        let e = upstream(&[
            (b'S', "ERROR"),
            (b'C', "22P02"),
            (
                b'M',
                "invalid input syntax for type integer: \"marker: new row violates p\"",
            ),
        ]);
        let mut out = BytesMut::new();
        redact_upstream_error(&mut out, &e, "marker: ");
        let t = text(&out);
        assert!(t.contains("C42501\0Mnew row violates p\0"), "{t:?}");
    }
}
