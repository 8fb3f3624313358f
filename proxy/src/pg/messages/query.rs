//! Query ('Q') and Parse ('P'): the two messages that carry SQL text, decoded so the gate can
//! check them and re-encoded with the text the gate produced.

use bytes::BytesMut;

use super::{put_cstr, read_cstr, write_message};

/// Decodes a Query frame (header included) into its SQL text; `None` if malformed or not UTF-8.
pub fn decode_query(frame: &[u8]) -> Option<&str> {
    let mut pos = 5;
    let sql = read_cstr(frame, &mut pos)?;
    (pos == frame.len()).then_some(sql)
}

pub fn encode_query(out: &mut BytesMut, sql: &str) {
    write_message(out, b'Q', |b| put_cstr(b, sql));
}

/// A decoded Parse message. `param_types` is the raw count + OID list, re-emitted unchanged.
pub struct Parse<'a> {
    pub name: &'a str,
    pub sql: &'a str,
    pub param_types: &'a [u8],
}

/// Errors decoding a Parse frame: `Encoding` is a bad string (refusable), `Malformed` is a
/// protocol violation.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseDecodeError {
    Encoding,
    Malformed,
}

pub fn decode_parse(frame: &[u8]) -> Result<Parse<'_>, ParseDecodeError> {
    let mut pos = 5;
    let name = read_cstr(frame, &mut pos).ok_or(ParseDecodeError::Encoding)?;
    let sql = read_cstr(frame, &mut pos).ok_or(ParseDecodeError::Encoding)?;
    let param_types = &frame[pos..];
    if param_types.len() < 2 {
        return Err(ParseDecodeError::Malformed);
    }
    let n = i16::from_be_bytes([param_types[0], param_types[1]]);
    if n < 0 || param_types.len() != 2 + 4 * n as usize {
        return Err(ParseDecodeError::Malformed);
    }
    Ok(Parse {
        name,
        sql,
        param_types,
    })
}

pub fn encode_parse(out: &mut BytesMut, name: &str, sql: &str, param_types: &[u8]) {
    write_message(out, b'P', |b| {
        put_cstr(b, name);
        put_cstr(b, sql);
        b.extend_from_slice(param_types);
    });
}

pub fn encode_flush(out: &mut BytesMut) {
    write_message(out, b'H', |_| {});
}

pub fn encode_terminate(out: &mut BytesMut) {
    write_message(out, b'X', |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips() {
        let mut b = BytesMut::new();
        encode_parse(&mut b, "s1", "SELECT $1", &[0, 1, 0, 0, 0, 23]);
        let p = decode_parse(&b).unwrap();
        assert_eq!(
            (p.name, p.sql, p.param_types),
            ("s1", "SELECT $1", &[0u8, 1, 0, 0, 0, 23][..])
        );
    }

    #[test]
    fn truncated_parse_is_malformed() {
        let mut b = BytesMut::new();
        encode_parse(&mut b, "", "SELECT 1", &[0, 2, 0, 0, 0, 23]);
        assert_eq!(decode_parse(&b).err(), Some(ParseDecodeError::Malformed));
    }

    #[test]
    fn query_with_trailing_bytes_is_rejected() {
        assert_eq!(decode_query(b"Q\0\0\0\x0aab\0c"), None);
        assert_eq!(decode_query(b"Q\0\0\0\x07ab\0"), Some("ab"));
    }
}
