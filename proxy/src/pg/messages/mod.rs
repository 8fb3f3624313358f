//! PostgreSQL wire messages, one file per message family. The proxy frames messages itself
//! (1-byte tag + 4-byte length) and decodes only the ones it must look at; everything else is
//! forwarded as the bytes that arrived.

pub mod auth;
pub mod error;
pub mod extended;
pub mod frame;
pub mod query;
pub mod rows;
pub mod startup;
pub mod status;

/// Tags of the backend messages the response accounting (`pipeline`) reads.
pub mod backend {
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const DATA_ROW: u8 = b'D';
    pub const COPY_OUT: u8 = b'H';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const ERROR: u8 = b'E';
    pub const NOTICE: u8 = b'N';
    pub const NOTIFICATION: u8 = b'A';
    pub const PARAMETER_STATUS: u8 = b'S';
}

/// Appends a NUL-terminated string.
pub(crate) fn put_cstr(out: &mut bytes::BytesMut, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(&[0]);
}

/// Writes `tag`, a length placeholder, runs `body`, then fills in the length.
pub(crate) fn write_message(
    out: &mut bytes::BytesMut,
    tag: u8,
    body: impl FnOnce(&mut bytes::BytesMut),
) {
    out.extend_from_slice(&[tag, 0, 0, 0, 0]);
    let start = out.len() - 4;
    body(out);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Reads a NUL-terminated UTF-8 string from `buf` starting at `*pos`, advancing past the NUL.
pub(crate) fn read_cstr<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a str> {
    let rest = buf.get(*pos..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&rest[..end]).ok()?;
    *pos += end + 1;
    Some(s)
}

/// Reads a big-endian int16 at `*pos`, advancing past it.
pub(crate) fn read_i16(buf: &[u8], pos: &mut usize) -> Option<i16> {
    let v = i16::from_be_bytes(buf.get(*pos..*pos + 2)?.try_into().ok()?);
    *pos += 2;
    Some(v)
}

/// Reads an int16 count and that many length-prefixed values (`-1`: NULL), as a DataRow's
/// columns and a Bind's parameters are laid out, advancing past them.
pub(crate) fn read_values<'a>(buf: &'a [u8], pos: &mut usize) -> Option<Vec<Option<&'a [u8]>>> {
    let count = usize::try_from(read_i16(buf, pos)?).ok()?;
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        let len = i32::from_be_bytes(buf.get(*pos..*pos + 4)?.try_into().ok()?);
        *pos += 4;
        if len < 0 {
            values.push(None);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        values.push(Some(buf.get(*pos..*pos + len)?));
        *pos += len;
    }
    Some(values)
}
