//! Captured keys: the primary-key values of the rows a statement returns, for the tables named
//! in `[audit] capture_keys`, so that "which customers did this agent see" has an exact answer.
//! A RowDescription names each result column's table (OID) and column number, even through
//! Portcullis's fences (a masked column is an expression, and names none); when a result holds
//! a captured table's whole key, those columns, and only those, are read from each DataRow.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The captured tables: by OID, their name (`schema.table`) and key column numbers.
#[derive(Debug, Default)]
pub struct CapturedTables {
    tables: HashMap<u32, (Arc<str>, Vec<i16>)>,
}

/// Which columns of one result to read, per captured table whose key it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    tables: Vec<(Arc<str>, Vec<Field>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    index: usize,
    binary: bool,
    type_oid: u32,
}

/// Keys read so far, per table: each row's key values (as text).
pub type Keys = BTreeMap<String, Vec<Vec<String>>>;

impl CapturedTables {
    pub fn new(tables: impl IntoIterator<Item = (u32, String, Vec<i16>)>) -> Self {
        CapturedTables {
            tables: tables
                .into_iter()
                .map(|(oid, name, key)| (oid, (Arc::from(name), key)))
                .collect(),
        }
    }

    /// What to read from the rows described by this RowDescription frame (header included);
    /// `None` when it holds no captured table's whole key.
    pub fn plan(&self, row_description: &[u8]) -> Option<Plan> {
        let fields = describe(row_description)?;
        let mut tables = Vec::new();
        for (oid, (name, key)) in &self.tables {
            let found: Option<Vec<Field>> = key
                .iter()
                .map(|attnum| {
                    fields
                        .iter()
                        .position(|f| f.0 == *oid && f.1 == *attnum)
                        .map(|index| Field {
                            index,
                            binary: fields[index].3 == 1,
                            type_oid: fields[index].2,
                        })
                })
                .collect();
            if let Some(found) = found {
                tables.push((name.clone(), found));
            }
        }
        (!tables.is_empty()).then_some(Plan { tables })
    }
}

/// (table OID, column number, type OID, format) of each field of a RowDescription.
fn describe(frame: &[u8]) -> Option<Vec<(u32, i16, u32, i16)>> {
    let count = i16::from_be_bytes(frame.get(5..7)?.try_into().ok()?);
    let mut pos = 7;
    let mut fields = Vec::with_capacity(usize::try_from(count).ok()?);
    for _ in 0..count {
        let end = frame.get(pos..)?.iter().position(|&b| b == 0)?;
        pos += end + 1;
        let at = |p: usize, n: usize| frame.get(p..p + n);
        let table = u32::from_be_bytes(at(pos, 4)?.try_into().ok()?);
        let column = i16::from_be_bytes(at(pos + 4, 2)?.try_into().ok()?);
        let type_oid = u32::from_be_bytes(at(pos + 6, 4)?.try_into().ok()?);
        let format = i16::from_be_bytes(at(pos + 16, 2)?.try_into().ok()?);
        fields.push((table, column, type_oid, format));
        pos += 18;
    }
    Some(fields)
}

impl Plan {
    /// The plan with the result formats a Bind asked for (a Describe of a prepared statement
    /// says text for every column: the formats are chosen at Bind): none means text, one
    /// applies to every column, else one per column.
    pub fn with_formats(&self, formats: &[i16]) -> Plan {
        let format = |index: usize| match formats {
            [] => 0,
            [one] => *one,
            many => many.get(index).copied().unwrap_or(0),
        };
        Plan {
            tables: self
                .tables
                .iter()
                .map(|(table, fields)| {
                    let fields = fields
                        .iter()
                        .map(|f| Field {
                            binary: format(f.index) == 1,
                            ..*f
                        })
                        .collect();
                    (table.clone(), fields)
                })
                .collect(),
        }
    }

    /// Reads the key columns of one whole DataRow frame (header included) into `keys`.
    pub fn read(&self, row: &[u8], keys: &mut Keys) {
        let Some(values) = columns(row) else {
            return;
        };
        for (table, fields) in &self.tables {
            let key: Option<Vec<String>> = fields
                .iter()
                .map(|f| values.get(f.index).copied().flatten().map(|v| text(*f, v)))
                .collect();
            if let Some(key) = key {
                keys.entry(table.to_string()).or_default().push(key);
            }
        }
    }
}

/// The values of a DataRow frame's columns (`None` for NULL).
fn columns(frame: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    super::messages::read_values(frame, &mut 5)
}

/// A key value as text: text format as sent; binary integers as numbers, binary text types as
/// text, anything else as hex.
fn text(field: Field, value: &[u8]) -> String {
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const INT8: u32 = 20;
    const TEXT_TYPES: [u32; 4] = [25, 1043, 1042, 19];
    if !field.binary || TEXT_TYPES.contains(&field.type_oid) {
        return String::from_utf8_lossy(value).into_owned();
    }
    match (field.type_oid, value.len()) {
        (INT2, 2) => i16::from_be_bytes(value.try_into().expect("2 bytes")).to_string(),
        (INT4, 4) => i32::from_be_bytes(value.try_into().expect("4 bytes")).to_string(),
        (INT8, 8) => i64::from_be_bytes(value.try_into().expect("8 bytes")).to_string(),
        _ => format!("\\x{}", audit::hex(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_description(fields: &[(&str, u32, i16, u32, i16)]) -> Vec<u8> {
        let mut body = (fields.len() as i16).to_be_bytes().to_vec();
        for (name, table, column, type_oid, format) in fields {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&table.to_be_bytes());
            body.extend_from_slice(&column.to_be_bytes());
            body.extend_from_slice(&type_oid.to_be_bytes());
            body.extend_from_slice(&4i16.to_be_bytes());
            body.extend_from_slice(&(-1i32).to_be_bytes());
            body.extend_from_slice(&format.to_be_bytes());
        }
        frame(b'T', &body)
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                Some(v) => {
                    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    body.extend_from_slice(v);
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        frame(b'D', &body)
    }

    #[test]
    fn keys_are_read_from_the_described_columns_only() {
        let tables = CapturedTables::new([
            (100, "public.customers".into(), vec![1]),
            (200, "public.pairs".into(), vec![1, 2]),
        ]);
        // A masked column names no table; the join holds customers' key, not pairs' whole key.
        let rd = row_description(&[
            ("name", 100, 3, 25, 0),
            ("ssn", 0, 0, 25, 0),
            ("id", 100, 1, 23, 1),
            ("a", 200, 1, 23, 0),
        ]);
        let plan = tables.plan(&rd).unwrap();
        let mut keys = Keys::new();
        plan.read(
            &data_row(&[
                Some(b"Ann"),
                Some(b"***"),
                Some(&7i32.to_be_bytes()),
                Some(b"1"),
            ]),
            &mut keys,
        );
        plan.read(&data_row(&[Some(b"Bo"), None, None, None]), &mut keys);
        assert_eq!(keys["public.customers"], vec![vec!["7".to_string()]]);
        assert!(!keys.contains_key("public.pairs"));
        assert!(tables
            .plan(&row_description(&[("ssn", 0, 0, 25, 0)]))
            .is_none());
        let both = row_description(&[("b", 200, 2, 25, 0), ("a", 200, 1, 23, 0)]);
        let mut keys = Keys::new();
        tables
            .plan(&both)
            .unwrap()
            .read(&data_row(&[Some(b"x"), Some(b"1")]), &mut keys);
        assert_eq!(
            keys["public.pairs"],
            vec![vec!["1".to_string(), "x".to_string()]]
        );
    }
}
