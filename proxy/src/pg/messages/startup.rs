//! Untagged startup-phase packets: SSLRequest, GSSENCRequest, CancelRequest and StartupMessage.

use super::read_cstr;

pub const SSL_REQUEST: i32 = 80877103;
pub const GSSENC_REQUEST: i32 = 80877104;
pub const CANCEL_REQUEST: i32 = 80877102;
/// Largest startup packet accepted (PostgreSQL's own limit).
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// A decoded startup-phase packet (the body after the length word).
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid startup packet layout")]
    Malformed,
}

/// Decodes the body of a startup packet (everything after the 4-byte length).
pub fn decode(body: &[u8]) -> Result<StartupPacket, StartupError> {
    if body.len() < 4 {
        return Err(StartupError::Malformed);
    }
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    match code {
        SSL_REQUEST if body.len() == 4 => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if body.len() == 4 => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST if body.len() == 12 => Ok(StartupPacket::Cancel {
            process_id: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
            secret_key: i32::from_be_bytes([body[8], body[9], body[10], body[11]]),
        }),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => Err(StartupError::Malformed),
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            let mut params = Vec::new();
            let mut pos = 4;
            loop {
                match body.get(pos) {
                    Some(0) if pos + 1 == body.len() => break,
                    Some(_) => {}
                    None => return Err(StartupError::Malformed),
                }
                let k = read_cstr(body, &mut pos).ok_or(StartupError::Malformed)?;
                let v = read_cstr(body, &mut pos).ok_or(StartupError::Malformed)?;
                params.push((k.to_string(), v.to_string()));
            }
            Ok(StartupPacket::Startup {
                major,
                minor,
                params,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTOCOL_3_0: i32 = 196608;

    #[test]
    fn decodes_a_startup_message() {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0bot\0database\0app\0\0");
        assert_eq!(
            decode(&body).unwrap(),
            StartupPacket::Startup {
                major: 3,
                minor: 0,
                params: vec![
                    ("user".into(), "bot".into()),
                    ("database".into(), "app".into())
                ]
            }
        );
    }

    #[test]
    fn rejects_unterminated_parameters() {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0bot");
        assert_eq!(decode(&body), Err(StartupError::Malformed));
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0bot\0");
        assert_eq!(decode(&body), Err(StartupError::Malformed));
    }

    #[test]
    fn decodes_requests() {
        assert_eq!(
            decode(&SSL_REQUEST.to_be_bytes()).unwrap(),
            StartupPacket::SslRequest
        );
        let mut c = CANCEL_REQUEST.to_be_bytes().to_vec();
        c.extend_from_slice(&7i32.to_be_bytes());
        c.extend_from_slice(&9i32.to_be_bytes());
        assert_eq!(
            decode(&c).unwrap(),
            StartupPacket::Cancel {
                process_id: 7,
                secret_key: 9
            }
        );
    }
}
