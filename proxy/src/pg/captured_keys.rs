//! Captured keys: the primary-key values of the rows a statement returns, for the tables named
//! in `[audit] capture_keys`, so that "which customers did this agent see" has an exact answer.
//! A RowDescription names each result column's table (OID) and column number, even through
//! Portcullis's fences (a masked column is an expression, and names none); when a result holds
//! a captured table's whole key, those columns, and only those, are read from each DataRow.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The captured tables: by OID, their name (`schema.table`) and key column numbers.
#[derive(Debug, Default)]
pub struct CapturedTables {
    tables: HashMap<u32, (Arc<str>, Vec<i16>)>,
}

/// `audit.capture_keys` as configured, resolved against the current catalog: found again by
/// name at each catalog refresh (a table dropped and created anew has a new OID).
#[derive(Debug)]
pub struct CapturedKeys {
    names: Vec<String>,
    tables: std::sync::RwLock<Arc<CapturedTables>>,
}

/// A catalog's tables with primary keys: (schema, table, OID, key column numbers).
pub type PrimaryKeys = [(String, String, u32, Vec<i16>)];

impl CapturedKeys {
    /// Resolves `names` (`schema.table`, or `table` in `public`); an error names one that is
    /// not a table with a primary key.
    pub fn new(names: &[String], primary_keys: &PrimaryKeys) -> Result<CapturedKeys, String> {
        let (tables, missing) = resolve(names, primary_keys);
        if let Some(name) = missing.first() {
            return Err(format!(
                "audit.capture_keys: {name} is not a table with a primary key"
            ));
        }
        Ok(CapturedKeys {
            names: names.to_vec(),
            tables: std::sync::RwLock::new(Arc::new(tables)),
        })
    }

    /// Resolves the names again against a refreshed catalog; returns those no longer found
    /// (their keys are not captured until they are back).
    pub fn refresh(&self, primary_keys: &PrimaryKeys) -> Vec<String> {
        let (tables, missing) = resolve(&self.names, primary_keys);
        *self.tables.write().expect("captured tables lock") = Arc::new(tables);
        missing
    }

    /// The tables as now resolved.
    pub fn current(&self) -> Arc<CapturedTables> {
        self.tables.read().expect("captured tables lock").clone()
    }
}

fn resolve(names: &[String], primary_keys: &PrimaryKeys) -> (CapturedTables, Vec<String>) {
    let mut tables = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        let (schema, table) = name.split_once('.').unwrap_or(("public", name));
        match primary_keys
            .iter()
            .find(|(s, t, _, _)| s == schema && t == table)
        {
            Some((_, _, oid, key)) => tables.push((*oid, format!("{schema}.{table}"), key.clone())),
            None => missing.push(name.clone()),
        }
    }
    (CapturedTables::new(tables), missing)
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

    /// Whether column `index` holds part of a captured key.
    fn wants(&self, index: usize) -> bool {
        self.tables
            .iter()
            .any(|(_, fields)| fields.iter().any(|f| f.index == index))
    }

    /// Adds the keys of a row scanned whole to `keys`.
    fn collect(&self, scan: &RowScan, keys: &mut Keys) {
        for (table, fields) in &self.tables {
            let key: Option<Vec<String>> = fields
                .iter()
                .map(|f| {
                    scan.value(f.index).map(|held| match held {
                        Held::Bytes(v) => text(*f, v),
                        Held::Digest(d) => format!("sha256:{}", audit::hex(&d.clone().finalize())),
                    })
                })
                .collect();
            if let Some(key) = key {
                keys.entry(table.to_string()).or_default().push(key);
            }
        }
    }
}

/// Reads a DataRow's key columns as its bytes are forwarded, in chunks of any size (the frame
/// from its tag on), keeping only the key values: a row of any size is read without being
/// buffered. Reused from row to row.
#[derive(Debug, Default)]
pub struct RowScan {
    /// A fixed-size field being assembled: the tag, length and column count (7 bytes), or a
    /// value's length (4).
    field: Vec<u8>,
    phase: Phase,
    column: usize,
    columns: usize,
    /// The key columns' values so far, by column (`None`: NULL).
    values: Vec<(usize, Option<Held>)>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Header,
    Length,
    Value {
        remaining: usize,
        keep: bool,
    },
    /// Every column read: the keys are taken.
    Complete,
    /// Keys taken, or not a well-formed DataRow: nothing more is read.
    Finished,
}

/// A key value, or the digest of one too long to hold.
#[derive(Debug)]
enum Held {
    Bytes(Vec<u8>),
    Digest(Sha256),
}

/// A key value longer than this is recorded as its SHA-256 (`sha256:<hex>`) rather than held.
const MAX_KEY_VALUE: usize = 64 * 1024;

impl RowScan {
    /// Starts a new row.
    pub fn reset(&mut self) {
        self.field.clear();
        self.phase = Phase::Header;
        self.column = 0;
        self.columns = 0;
        self.values.clear();
    }

    /// Feeds the row's next bytes; once it has been read whole, adds its keys (per `plan`) to
    /// `keys` and returns `true`.
    pub fn feed(&mut self, mut bytes: &[u8], plan: &Plan, keys: &mut Keys) -> bool {
        loop {
            match self.phase {
                Phase::Complete => {
                    plan.collect(self, keys);
                    self.phase = Phase::Finished;
                    return true;
                }
                Phase::Finished => return false,
                _ if bytes.is_empty() => return false,
                Phase::Header | Phase::Length => {
                    let need = if self.phase == Phase::Header { 7 } else { 4 };
                    let take = (need - self.field.len()).min(bytes.len());
                    self.field.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.field.len() < need {
                        return false;
                    }
                    if self.phase == Phase::Header {
                        let count = i16::from_be_bytes([self.field[5], self.field[6]]);
                        let data_row = self.field[0] == b'D';
                        self.field.clear();
                        match usize::try_from(count) {
                            Ok(count) if data_row => {
                                self.columns = count;
                                self.column = 0;
                                self.phase = if count == 0 {
                                    Phase::Complete
                                } else {
                                    Phase::Length
                                };
                            }
                            _ => self.phase = Phase::Finished,
                        }
                        continue;
                    }
                    let length =
                        i32::from_be_bytes(self.field[..4].try_into().expect("four bytes"));
                    self.field.clear();
                    let keep = plan.wants(self.column);
                    match usize::try_from(length) {
                        // -1: NULL.
                        Err(_) => {
                            if keep {
                                self.values.push((self.column, None));
                            }
                            self.next_column();
                        }
                        Ok(remaining) => {
                            if keep {
                                let held = if remaining > MAX_KEY_VALUE {
                                    Held::Digest(Sha256::new())
                                } else {
                                    Held::Bytes(Vec::with_capacity(remaining))
                                };
                                self.values.push((self.column, Some(held)));
                            }
                            self.phase = Phase::Value { remaining, keep };
                            if remaining == 0 {
                                self.next_column();
                            }
                        }
                    }
                }
                Phase::Value { remaining, keep } => {
                    let take = remaining.min(bytes.len());
                    if keep {
                        match self.values.last_mut() {
                            Some((_, Some(Held::Bytes(v)))) => v.extend_from_slice(&bytes[..take]),
                            Some((_, Some(Held::Digest(d)))) => d.update(&bytes[..take]),
                            _ => {}
                        }
                    }
                    bytes = &bytes[take..];
                    if remaining == take {
                        self.next_column();
                    } else {
                        self.phase = Phase::Value {
                            remaining: remaining - take,
                            keep,
                        };
                    }
                }
            }
        }
    }

    fn next_column(&mut self) {
        self.column += 1;
        self.phase = if self.column >= self.columns {
            Phase::Complete
        } else {
            Phase::Length
        };
    }

    /// A key column's value (`None` for NULL or a column not read).
    fn value(&self, index: usize) -> Option<&Held> {
        self.values
            .iter()
            .find(|(i, _)| *i == index)
            .and_then(|(_, v)| v.as_ref())
    }
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

    /// Reads a row's keys as forwarded in one piece, and again a byte at a time and in
    /// chunks of 3: all three must agree.
    fn read(plan: &Plan, row: &[u8], keys: &mut Keys) {
        let mut scan = RowScan::default();
        let mut whole = Keys::new();
        scan.reset();
        assert!(scan.feed(row, plan, &mut whole) || whole.is_empty());
        for chunk in [1, 3] {
            let mut pieces = Keys::new();
            scan.reset();
            let done: Vec<bool> = row
                .chunks(chunk)
                .map(|c| scan.feed(c, plan, &mut pieces))
                .collect();
            assert_eq!(pieces, whole, "in chunks of {chunk}");
            assert!(done.iter().filter(|d| **d).count() <= 1);
        }
        for (table, rows) in whole {
            keys.entry(table).or_default().extend(rows);
        }
    }

    #[test]
    fn rows_of_any_size_are_read_as_they_pass() {
        let tables = CapturedTables::new([(100, "public.docs".into(), vec![2])]);
        let plan = tables
            .plan(&row_description(&[
                ("body", 100, 1, 25, 0),
                ("id", 100, 2, 25, 0),
            ]))
            .unwrap();
        // A megabyte body before the key, and a key too long to hold.
        let body = vec![b'x'; 1 << 20];
        let long_key = vec![b'k'; MAX_KEY_VALUE + 1];
        let mut keys = Keys::new();
        read(&plan, &data_row(&[Some(&body), Some(b"doc-1")]), &mut keys);
        read(&plan, &data_row(&[None, Some(&long_key)]), &mut keys);
        assert_eq!(keys["public.docs"][0], vec!["doc-1".to_string()]);
        assert_eq!(
            keys["public.docs"][1],
            vec![format!("sha256:{}", audit::sha256_hex(&long_key))]
        );
        // Not a DataRow, or a negative column count: nothing is read.
        let mut keys = Keys::new();
        let mut other = data_row(&[Some(b"x"), Some(b"doc-2")]);
        other[0] = b'T';
        read(&plan, &other, &mut keys);
        read(&plan, &frame(b'D', &(-1i16).to_be_bytes()), &mut keys);
        assert!(keys.is_empty());
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
        read(
            &plan,
            &data_row(&[
                Some(b"Ann"),
                Some(b"***"),
                Some(&7i32.to_be_bytes()),
                Some(b"1"),
            ]),
            &mut keys,
        );
        read(
            &plan,
            &data_row(&[Some(b"Bo"), None, None, None]),
            &mut keys,
        );
        assert_eq!(keys["public.customers"], vec![vec!["7".to_string()]]);
        assert!(!keys.contains_key("public.pairs"));
        assert!(tables
            .plan(&row_description(&[("ssn", 0, 0, 25, 0)]))
            .is_none());
        let both = row_description(&[("b", 200, 2, 25, 0), ("a", 200, 1, 23, 0)]);
        let mut keys = Keys::new();
        read(
            &tables.plan(&both).unwrap(),
            &data_row(&[Some(b"x"), Some(b"1")]),
            &mut keys,
        );
        assert_eq!(
            keys["public.pairs"],
            vec![vec!["1".to_string(), "x".to_string()]]
        );
    }
}
