//! Authentication messages: the server's AuthenticationSASL/Continue/Final/CleartextPassword/Ok
//! and the client's SASLInitialResponse / SASLResponse / PasswordMessage (all tagged 'p').

use bytes::BytesMut;

use super::{put_cstr, read_cstr, write_message};

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

pub fn authentication_sasl(out: &mut BytesMut) {
    write_message(out, b'R', |b| {
        b.extend_from_slice(&10i32.to_be_bytes());
        put_cstr(b, SCRAM_SHA_256);
        b.extend_from_slice(&[0]);
    });
}

pub fn authentication_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    write_message(out, b'R', |b| {
        b.extend_from_slice(&11i32.to_be_bytes());
        b.extend_from_slice(data);
    });
}

pub fn authentication_sasl_final(out: &mut BytesMut, data: &[u8]) {
    write_message(out, b'R', |b| {
        b.extend_from_slice(&12i32.to_be_bytes());
        b.extend_from_slice(data);
    });
}

/// AuthenticationCleartextPassword: the client sends its password (an agent's token) as is.
pub fn authentication_cleartext_password(out: &mut BytesMut) {
    write_message(out, b'R', |b| b.extend_from_slice(&3i32.to_be_bytes()));
}

/// Decodes a PasswordMessage frame: one NUL-terminated string, nothing after it.
pub fn decode_password(frame: &[u8]) -> Option<&str> {
    let mut pos = 5;
    let password = read_cstr(frame, &mut pos)?;
    (pos == frame.len()).then_some(password)
}

pub fn authentication_ok(out: &mut BytesMut) {
    write_message(out, b'R', |b| b.extend_from_slice(&0i32.to_be_bytes()));
}

/// Decodes a SASLInitialResponse frame: (mechanism, client-first-message).
pub fn decode_sasl_initial(frame: &[u8]) -> Option<(&str, &[u8])> {
    let mut pos = 5;
    let mechanism = read_cstr(frame, &mut pos)?;
    let len_bytes = frame.get(pos..pos + 4)?;
    let len = i32::from_be_bytes(len_bytes.try_into().ok()?);
    let data = &frame[pos + 4..];
    (len >= 0 && len as usize == data.len()).then_some((mechanism, data))
}

/// Decodes a SASLResponse frame: the body is the mechanism's data.
pub fn decode_sasl_response(frame: &[u8]) -> &[u8] {
    &frame[5..]
}
