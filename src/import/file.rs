//! Reading the CSV file: its header, then one purchase per line, each with the
//! idempotency key that makes placing it twice impossible.
//!
//! A small parser of our own rather than a CSV library: one record per line, quotes
//! (RFC 4180: `"…"`, `""` for a quote) within the line. The fields of a purchase never hold
//! a line break (a username may hold no control character), and with records confined to
//! their line a broken quote costs that one line, reported with its exact number, where
//! RFC 4180's multi-line fields would let it swallow the rest of the file into one record.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The columns a file may have; `product` may be left out.
pub(crate) const COLUMNS: [&str; 4] = ["username", "product", "price", "amount"];

/// One line of the file after the header.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Line {
    /// A purchase to place: the body of `POST /api/purchase/` and its `Idempotency-Key`.
    Purchase { line: u64, body: Value, key: String },
    /// A line that is not a record of this file.
    Unparsable { line: u64, reason: String },
}

/// The file, read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    /// SHA-256 of the file's bytes, hex: the default batch.
    pub sha256: String,
    pub lines: Vec<Line>,
}

/// Where each column is in a record.
struct Layout {
    /// Index of each of [`COLUMNS`] in a record (None: `product`, left out).
    at: [Option<usize>; 4],
    width: usize,
}

/// Reads `bytes` (a whole file). `batch` names the import (None: the file's SHA-256): it
/// and each line's content make the line's key. An error is about the file as a whole (no
/// header, a header that is not this file's): nothing of it can be placed.
pub(crate) fn parse(bytes: &[u8], batch: Option<&str>) -> Result<Parsed, String> {
    let sha256 = hex(&Sha256::digest(bytes));
    let batch = batch.unwrap_or(&sha256).to_string();
    let mut numbered = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, raw)| (i as u64 + 1, raw.strip_suffix(b"\r").unwrap_or(raw)));
    let layout = loop {
        let Some((n, raw)) = numbered.next() else {
            return Err(format!(
                "no header: the file must start with {}",
                COLUMNS.join(",")
            ));
        };
        // A spreadsheet's UTF-8 byte order mark.
        let raw = if n == 1 {
            raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
        } else {
            raw
        };
        let text =
            std::str::from_utf8(raw).map_err(|_| format!("line {n}: the header is not UTF-8"))?;
        if text.trim().is_empty() {
            continue;
        }
        let names = cells(text).map_err(|e| format!("line {n}: the header: {e}"))?;
        break header(&names).map_err(|e| format!("line {n}: the header: {e}"))?;
    };
    // Identical lines are distinct purchases: their keys count them.
    let mut seen: std::collections::HashMap<String, u64> = Default::default();
    let mut lines = Vec::new();
    for (n, raw) in numbered {
        let unparsable = |reason: String| Line::Unparsable { line: n, reason };
        let Ok(text) = std::str::from_utf8(raw) else {
            lines.push(unparsable("not UTF-8".into()));
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        let record = match cells(text) {
            Ok(r) => r,
            Err(e) => {
                lines.push(unparsable(e));
                continue;
            }
        };
        if record.len() != layout.width {
            lines.push(unparsable(format!(
                "{} cells where the header has {}",
                record.len(),
                layout.width
            )));
            continue;
        }
        let [username, product, price, amount] = layout.at.map(|at| match at {
            Some(i) => record[i].clone(),
            None => String::new(),
        });
        // Numbers and the product as a spreadsheet may pad them; the username as written
        // (the API refuses one with spaces at its ends, and says so).
        let (product, price, amount) = (
            product.trim().to_string(),
            price.trim().to_string(),
            amount.trim().to_string(),
        );
        let content = [username.as_str(), &product, &price, &amount].join("\u{0}");
        let occurrence = seen.entry(content.clone()).or_default();
        let key = idempotency_key(&batch, &content, *occurrence);
        *occurrence += 1;
        lines.push(Line::Purchase {
            line: n,
            body: body(&username, &product, &price, &amount),
            key,
        });
    }
    Ok(Parsed { sha256, lines })
}

/// The layout a header names: each of [`COLUMNS`] once (`product` optional), no other.
fn header(names: &[String]) -> Result<Layout, String> {
    let mut at = [None; 4];
    for (i, name) in names.iter().enumerate() {
        let name = name.trim().to_ascii_lowercase();
        let Some(c) = COLUMNS.iter().position(|c| *c == name) else {
            return Err(format!(
                "unknown column {name:?} (the columns are {})",
                COLUMNS.join(",")
            ));
        };
        if at[c].replace(i).is_some() {
            return Err(format!("column {name:?} given twice"));
        }
    }
    for (c, name) in COLUMNS.iter().enumerate() {
        if at[c].is_none() && *name != "product" {
            return Err(format!("no column {name:?}"));
        }
    }
    Ok(Layout {
        at,
        width: names.len(),
    })
}

/// The cells of one line: comma-separated, a cell in double quotes may hold commas and
/// (doubled) quotes.
pub(crate) fn cells(line: &str) -> Result<Vec<String>, String> {
    let mut cells = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut cell = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted cell is not closed on its line".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        cell.push('"');
                    }
                    Some('"') => break,
                    Some(c) => cell.push(c),
                }
            }
            cells.push(cell);
            match chars.next() {
                None => return Ok(cells),
                Some(',') => {}
                Some(c) => return Err(format!("{c:?} after the closing quote of a cell")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        cells.push(cell);
                        return Ok(cells);
                    }
                    Some(',') => break,
                    Some('"') => {
                        return Err("a quote inside a cell that does not start with one".into());
                    }
                    Some(c) => cell.push(c),
                }
            }
            cells.push(cell);
        }
    }
}

/// The purchase's body. Empty cells are left out (the API says which field is missing);
/// a price or amount that reads as a JSON number is sent as one, anything else as the
/// text it is, so that the API, which decides what a valid purchase is, refuses it with
/// its own words. `product` only when given: the API's default is `late_token`.
fn body(username: &str, product: &str, price: &str, amount: &str) -> Value {
    let mut body = Map::new();
    if !username.is_empty() {
        body.insert("username".into(), username.into());
    }
    if !product.is_empty() {
        body.insert("product".into(), product.into());
    }
    for (name, cell) in [("price", price), ("amount", amount)] {
        if cell.is_empty() {
            continue;
        }
        let value = match serde_json::from_str::<serde_json::Number>(cell) {
            Ok(n) => Value::Number(n),
            Err(_) => Value::String(cell.into()),
        };
        body.insert(name.into(), value);
    }
    Value::Object(body)
}

/// `import-` and the SHA-256 (hex) of the batch, the line's content and how many identical
/// lines came before it: 71 visible ASCII characters, within the API's 1 to 255.
fn idempotency_key(batch: &str, content: &str, occurrence: u64) -> String {
    let mut h = Sha256::new();
    h.update(b"marketplace import\n");
    h.update(batch.as_bytes());
    h.update(b"\n");
    h.update(content.as_bytes());
    h.update(b"\n");
    h.update(occurrence.to_string().as_bytes());
    format!("import-{}", hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
