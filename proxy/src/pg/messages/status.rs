//! Session status messages Portcullis sends itself: ParameterStatus, BackendKeyData,
//! ReadyForQuery, NegotiateProtocolVersion.

use bytes::BytesMut;

use super::{put_cstr, read_cstr, write_message};

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    write_message(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// Decodes a ParameterStatus frame (header included).
pub fn decode_parameter_status(frame: &[u8]) -> Option<(&str, &str)> {
    let mut pos = 5;
    let name = read_cstr(frame, &mut pos)?;
    let value = read_cstr(frame, &mut pos)?;
    Some((name, value))
}

pub fn backend_key_data(out: &mut BytesMut, process_id: i32, secret_key: i32) {
    write_message(out, b'K', |b| {
        b.extend_from_slice(&process_id.to_be_bytes());
        b.extend_from_slice(&secret_key.to_be_bytes());
    });
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    write_message(out, b'Z', |b| b.extend_from_slice(&[status]));
}

/// Tells a client that asked for protocol 3.x (x > 0) or `_pq_.` options that we speak 3.0.
pub fn negotiate_protocol_version(out: &mut BytesMut, newest_minor: i32, unsupported: &[String]) {
    write_message(out, b'v', |b| {
        b.extend_from_slice(&newest_minor.to_be_bytes());
        b.extend_from_slice(&(unsupported.len() as i32).to_be_bytes());
        for o in unsupported {
            put_cstr(b, o);
        }
    });
}
