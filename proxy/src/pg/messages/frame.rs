//! Framing of regular (tagged) messages: `tag: u8, len: i32 (including itself), body`.

use bytes::BytesMut;

/// Length of the tag plus the length field.
pub const HEADER: usize = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i32),
    #[error("message of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(usize, usize),
}

/// Reads the header at the start of `buf`: the tag and the whole frame's size (header included).
pub fn peek_header(buf: &[u8]) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    Ok(Some((buf[0], 1 + len as usize)))
}

/// Splits one complete frame off the front of `buf`, or returns `None` until one has arrived.
pub fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<(u8, BytesMut)>, FrameError> {
    let Some((tag, size)) = peek_header(buf)? else {
        return Ok(None);
    };
    if size > max {
        return Err(FrameError::TooLarge(size, max));
    }
    if buf.len() < size {
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    Ok(Some((tag, buf.split_to(size))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_wait_for_more() {
        let mut b = BytesMut::from(&b"Q\0\0\0\x08abcdZ\0\0"[..]);
        let (tag, f) = next_frame(&mut b, 1 << 20).unwrap().unwrap();
        assert_eq!((tag, &f[..]), (b'Q', &b"Q\0\0\0\x08abcd"[..]));
        assert_eq!(next_frame(&mut b, 1 << 20).unwrap(), None);
    }

    #[test]
    fn bad_and_huge_lengths_are_errors() {
        let mut b = BytesMut::from(&b"Q\0\0\0\x02"[..]);
        assert_eq!(next_frame(&mut b, 100), Err(FrameError::BadLength(2)));
        let mut b = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert!(matches!(
            next_frame(&mut b, 100),
            Err(FrameError::TooLarge(_, 100))
        ));
        let mut b = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert!(matches!(
            next_frame(&mut b, 100),
            Err(FrameError::BadLength(-1))
        ));
    }
}
