//! Bind, Describe and Close: the extended-protocol messages that name a prepared statement.
//! Only the names are decoded (the proxy re-prepares a statement whose rewrite is out of date);
//! the messages themselves are forwarded as they arrived.

use bytes::BytesMut;

use super::{put_cstr, read_cstr, write_message};

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
