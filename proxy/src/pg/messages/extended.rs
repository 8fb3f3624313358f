//! Bind, Describe and Close: the extended-protocol messages that name a prepared statement.
//! Only the names are decoded (the proxy re-prepares a statement whose rewrite is out of date);
//! the messages themselves are forwarded as they arrived.

use bytes::BytesMut;

use super::{put_cstr, read_cstr, read_i16, read_values, write_message};

/// The prepared statement a Bind frame (header included) binds; `None` if malformed.
pub fn bind_statement(frame: &[u8]) -> Option<&str> {
    let mut pos = 5;
    read_cstr(frame, &mut pos)?; // portal
    read_cstr(frame, &mut pos)
}

/// The portal a Bind frame (header included) creates; `None` if malformed.
pub fn bind_portal(frame: &[u8]) -> Option<&str> {
    let mut pos = 5;
    read_cstr(frame, &mut pos)
}

/// The parameter values of a Bind frame (header included), `None` for SQL NULL; `None` if
/// malformed.
pub fn bind_parameters(frame: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    bind_parts(frame).map(|(values, _)| values)
}

/// The result-column format codes of a Bind frame (header included): none (all text), one
/// (for all columns) or one per column; `None` if malformed.
pub fn bind_result_formats(frame: &[u8]) -> Option<Vec<i16>> {
    let (_, mut pos) = bind_parts(frame)?;
    let results = usize::try_from(read_i16(frame, &mut pos)?).ok()?;
    (0..results).map(|_| read_i16(frame, &mut pos)).collect()
}

/// A Bind's parameter values, and where its result formats begin.
fn bind_parts(frame: &[u8]) -> Option<(Vec<Option<&[u8]>>, usize)> {
    let mut pos = 5;
    read_cstr(frame, &mut pos)?; // portal
    read_cstr(frame, &mut pos)?; // statement
    let formats = usize::try_from(read_i16(frame, &mut pos)?).ok()?;
    pos += 2 * formats;
    let values = read_values(frame, &mut pos)?;
    Some((values, pos))
}

/// The portal an Execute frame (header included) runs; `None` if malformed.
pub fn execute_portal(frame: &[u8]) -> Option<&str> {
    let mut pos = 5;
    read_cstr(frame, &mut pos)
}

/// What a Describe or Close frame targets: a prepared statement (`b'S'`) or a portal (`b'P'`).
pub fn target(frame: &[u8]) -> Option<(u8, &str)> {
    let kind = *frame.get(5)?;
    let mut pos = 6;
    let name = read_cstr(frame, &mut pos)?;
    Some((kind, name))
}

/// Appends the Bind `frame` (header included) with its statement name replaced by `statement`.
/// The frame must have passed [`bind_statement`].
pub fn encode_bind_renamed(out: &mut BytesMut, frame: &[u8], statement: &str) {
    let mut pos = 5;
    let portal = read_cstr(frame, &mut pos).unwrap_or_default();
    let _ = read_cstr(frame, &mut pos);
    let rest = &frame[pos..];
    write_message(out, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.extend_from_slice(rest);
    });
}

/// Appends a Describe of the prepared statement `name`.
pub fn encode_describe_statement(out: &mut BytesMut, name: &str) {
    write_message(out, b'D', |b| {
        b.extend_from_slice(b"S");
        put_cstr(b, name);
    });
}

/// Appends a Close of the prepared statement `name`.
pub fn encode_close_statement(out: &mut BytesMut, name: &str) {
    write_message(out, b'C', |b| {
        b.extend_from_slice(b"S");
        put_cstr(b, name);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_parameters_are_read() {
        let mut b = BytesMut::new();
        write_message(&mut b, b'B', |b| {
            put_cstr(b, "p1");
            put_cstr(b, "s1");
            b.extend_from_slice(&[0, 1, 0, 0]); // one format: text
            b.extend_from_slice(&[0, 2]); // two parameters
            b.extend_from_slice(&[0, 0, 0, 2]);
            b.extend_from_slice(b"42");
            b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]); // NULL
            b.extend_from_slice(&[0, 0]); // no result formats
        });
        assert_eq!(bind_portal(&b), Some("p1"));
        assert_eq!(bind_parameters(&b), Some(vec![Some(&b"42"[..]), None]));
        assert_eq!(bind_parameters(&b[..b.len() - 8]), None);
        assert_eq!(bind_result_formats(&b), Some(vec![]));
    }

    #[test]
    fn names_are_read() {
        let mut b = BytesMut::new();
        write_message(&mut b, b'B', |b| {
            put_cstr(b, "portal");
            put_cstr(b, "stmt");
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        });
        assert_eq!(bind_statement(&b), Some("stmt"));
        let mut renamed = BytesMut::new();
        encode_bind_renamed(&mut renamed, &b, "portcullis_s1");
        assert_eq!(bind_statement(&renamed), Some("portcullis_s1"));
        assert_eq!(&renamed[renamed.len() - 6..], &[0, 0, 0, 0, 0, 0]);
        assert_eq!(&renamed[5..12], b"portal\0");
        let mut c = BytesMut::new();
        encode_close_statement(&mut c, "s1");
        assert_eq!(target(&c), Some((b'S', "s1")));
        assert_eq!(target(&c[..6]), None);
    }
}
