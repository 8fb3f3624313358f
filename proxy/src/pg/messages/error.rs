//! ErrorResponse / NoticeResponse: building the ones Portcullis sends.

use bytes::BytesMut;

use super::{put_cstr, write_message};

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
