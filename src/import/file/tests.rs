use serde_json::json;

use super::*;

fn purchases(parsed: &Parsed) -> Vec<(u64, Value)> {
    parsed
        .lines
        .iter()
        .filter_map(|l| match l {
            Line::Purchase { line, body, .. } => Some((*line, body.clone())),
            Line::Unparsable { .. } => None,
        })
        .collect()
}

fn unparsable(parsed: &Parsed) -> Vec<(u64, String)> {
    parsed
        .lines
        .iter()
        .filter_map(|l| match l {
            Line::Unparsable { line, reason } => Some((*line, reason.clone())),
            Line::Purchase { .. } => None,
        })
        .collect()
}

fn keys(parsed: &Parsed) -> Vec<String> {
    parsed
        .lines
        .iter()
        .filter_map(|l| match l {
            Line::Purchase { key, .. } => Some(key.clone()),
            Line::Unparsable { .. } => None,
        })
        .collect()
}

#[test]
fn cells_are_split_on_commas_and_quotes_protect_them() {
    assert_eq!(cells("a,b,,d").unwrap(), ["a", "b", "", "d"]);
    assert_eq!(cells("").unwrap(), [""]);
    assert_eq!(
        cells(r#""a,b","say ""hi""",c"#).unwrap(),
        ["a,b", r#"say "hi""#, "c"]
    );
    assert_eq!(cells(r#""""#).unwrap(), [""]);
    assert_eq!(cells(r#"a,"""#).unwrap(), ["a", ""]);
}

#[test]
fn a_broken_quote_is_an_error_of_its_line() {
    for line in [r#""open,b"#, r#"a"b,c"#, r#""a"b,c"#] {
        assert!(cells(line).is_err(), "{line}");
    }
}

#[test]
fn each_line_is_a_purchase_numbered_as_in_the_file() {
    let file = "username,product,price,amount\r\nalice,,10,2\n\nbob,late_token,\"5\",1\n";
    let parsed = parse(file.as_bytes(), None).unwrap();
    assert_eq!(
        purchases(&parsed),
        [
            (2, json!({"username": "alice", "price": 10, "amount": 2})),
            (
                4,
                json!({"username": "bob", "product": "late_token", "price": 5, "amount": 1})
            ),
        ]
    );
    assert!(unparsable(&parsed).is_empty());
}

#[test]
fn columns_may_come_in_any_order_and_product_may_be_left_out() {
    let parsed = parse(b"\xEF\xBB\xBFAmount, price ,username\n3,4,carol\n", None).unwrap();
    assert_eq!(
        purchases(&parsed),
        [(2, json!({"username": "carol", "price": 4, "amount": 3}))]
    );
}

#[test]
fn a_header_that_is_not_this_files_is_refused_whole() {
    for (file, says) in [
        ("", "no header"),
        ("\n\n", "no header"),
        ("username,price\n", "no column \"amount\""),
        (
            "username,price,amount,colour\n",
            "unknown column \"colour\"",
        ),
        ("username,price,amount,price\n", "given twice"),
    ] {
        let e = parse(file.as_bytes(), None).unwrap_err();
        assert!(e.contains(says), "{file:?}: {e}");
    }
}

#[test]
fn lines_that_are_not_records_are_reported_with_their_number_and_the_rest_go_on() {
    let file = b"username,product,price,amount\nann,,1\n\"bob,,1,1\ncyd,,1,1\nd\xFFn,,1,1\n";
    let parsed = parse(file, None).unwrap();
    let bad = unparsable(&parsed);
    assert_eq!(bad.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2, 3, 5]);
    assert!(
        bad[0].1.contains("3 cells where the header has 4"),
        "{bad:?}"
    );
    assert!(bad[1].1.contains("not closed"), "{bad:?}");
    assert_eq!(bad[2].1, "not UTF-8");
    assert_eq!(
        purchases(&parsed)
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>(),
        [4]
    );
}

#[test]
fn values_the_api_must_judge_are_sent_as_they_are() {
    let file = "username,product,price,amount\nann,,-1,abc\n,,,\n bob ,,1e3,2.5\n";
    let parsed = parse(file.as_bytes(), None).unwrap();
    assert_eq!(
        purchases(&parsed),
        [
            (2, json!({"username": "ann", "price": -1, "amount": "abc"})),
            (3, json!({})),
            (4, json!({"username": " bob ", "price": 1e3, "amount": 2.5})),
        ]
    );
}

#[test]
fn keys_are_the_same_for_the_same_file_and_batch_and_differ_otherwise() {
    let file = "username,product,price,amount\nann,,1,1\nann,,1,1\nbob,,1,1\n";
    let once = keys(&parse(file.as_bytes(), None).unwrap());
    let again = keys(&parse(file.as_bytes(), None).unwrap());
    assert_eq!(once, again);
    // Identical lines are two purchases.
    assert_eq!(once.len(), 3);
    assert_ne!(once[0], once[1]);
    for key in &once {
        assert!(key.starts_with("import-") && key.len() == 71, "{key}");
        assert!(key.bytes().all(|b| b.is_ascii_graphic()));
    }
    // Another file (here: one more line) is another batch: no key in common.
    let other = keys(&parse(format!("{file}cyd,,1,1\n").as_bytes(), None).unwrap());
    assert!(once.iter().all(|k| !other.contains(k)));
    // With a batch named, a line's key depends on its content, not on its place: a line
    // added, or one fixed, leaves the other lines' keys as they were.
    let named = keys(&parse(file.as_bytes(), Some("monday")).unwrap());
    let edited = "username,product,price,amount\nzed,,1,1\nann,,1,1\nann,,1,1\nbob,,1,1\n";
    let edited = keys(&parse(edited.as_bytes(), Some("monday")).unwrap());
    assert_eq!(edited[1..], named[..]);
    // Formatting is not content.
    let quoted = "username,product,price,amount\n\"ann\",, 1 ,\"1\"\n";
    assert_eq!(
        keys(&parse(quoted.as_bytes(), Some("monday")).unwrap())[0],
        named[0]
    );
}
