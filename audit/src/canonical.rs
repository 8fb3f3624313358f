//! Canonical JSON: the one byte string an entry is hashed as. Object keys sorted (by UTF-16
//! code units for ASCII keys, which is byte order), no whitespace, strings escaped as
//! serde_json escapes them, integers only (a float has no single spelling), one line.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonicalError {
    #[error("floating-point numbers have no canonical form; record {0} as an integer or a string")]
    Float(String),
}

/// The canonical encoding of `value`. Keys are sorted here, not left to serde_json's map
/// (whose order depends on a crate feature another dependency may turn on).
pub fn canonical(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write(value, &mut out)?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            return Err(CanonicalError::Float(n.to_string()))
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("a string always encodes");
                out.push(b':');
                write(&map[key], out)?;
            }
            out.push(b'}');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("a scalar always encodes"),
    }
    Ok(())
}

/// Whether `line` is the canonical encoding of the JSON it holds.
pub(crate) fn is_canonical(line: &[u8]) -> bool {
    serde_json::from_slice::<Value>(line)
        .ok()
        .and_then(|v| canonical(&v).ok())
        .is_some_and(|c| c == line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_nothing_is_spaced() {
        let v = json!({"b": 1, "a": {"d": [1, "x\ny"], "c": null}});
        assert_eq!(
            canonical(&v).unwrap(),
            br#"{"a":{"c":null,"d":[1,"x\ny"]},"b":1}"#.to_vec()
        );
        assert!(is_canonical(br#"{"a":1,"b":2}"#));
        assert!(!is_canonical(br#"{"b":2,"a":1}"#));
        assert!(!is_canonical(br#"{"a": 1}"#));
        assert!(canonical(&json!({"x": 1.5})).is_err());
    }
}
