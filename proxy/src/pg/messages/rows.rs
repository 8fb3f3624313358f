//! Result rows the proxy reads itself: DataRow, for the answers to its own queries (client
//! rows are forwarded as bytes, never decoded here).

/// The first column of a DataRow frame (header included) as text; `None` for NULL, no
/// columns, or a malformed frame.
pub fn first_text(frame: &[u8]) -> Option<&str> {
    let columns = i16::from_be_bytes(frame.get(5..7)?.try_into().ok()?);
    if columns < 1 {
        return None;
    }
    let len = i32::from_be_bytes(frame.get(7..11)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    std::str::from_utf8(frame.get(11..11 + len)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_column() {
        // D, length 17, 1 column of 6 bytes.
        let frame = b"D\x00\x00\x00\x10\x00\x01\x00\x00\x00\x06public";
        assert_eq!(first_text(frame), Some("public"));
        let null = b"D\x00\x00\x00\x0a\x00\x01\xff\xff\xff\xff";
        assert_eq!(first_text(null), None);
        assert_eq!(
            first_text(b"D\x00\x00\x00\x10\x00\x01\x00\x00\x00\x09pub"),
            None
        );
        assert_eq!(first_text(b"D\x00"), None);
    }
}
