//! Keyset pagination, as every list endpoint does it: a `limit` query parameter, one row
//! more than asked fetched to learn whether another page exists (so the last page never
//! points at an empty one), and the last row's key as the cursor of the next page.

/// A `limit` query parameter: `default` when absent, else an integer in `1..=max`; the
/// error says why not, for the caller to name the parameter in its own error shape.
pub fn limit(value: Option<&str>, default: i64, max: i64) -> Result<i64, String> {
    match value {
        None => Ok(default),
        Some(s) => match s.trim().parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            Ok(_) => Err(format!("must be between 1 and {max}")),
            Err(_) => Err("must be an integer".into()),
        },
    }
}

/// Cuts `rows`, fetched with a limit of `limit + 1`, down to `limit`, and returns the
/// cursor of the next page (`key` of the last row kept) when there is one.
pub fn next_page<T>(rows: &mut Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Option<String> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    if more { rows.last().map(key) } else { None }
}

#[cfg(test)]
mod tests;
