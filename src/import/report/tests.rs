use super::*;

fn tally() -> Tally {
    let mut t = Tally::default();
    t.add(
        5,
        Outcome::Refused {
            status: 422,
            error: "invalid_field".into(),
            detail: "amount: must be greater than 0".into(),
        },
    );
    t.add(
        2,
        Outcome::Placed {
            order_id: "a".into(),
            replayed: false,
        },
    );
    t.add(
        3,
        Outcome::Placed {
            order_id: "b".into(),
            replayed: true,
        },
    );
    t.add(
        4,
        Outcome::Unparsable {
            reason: "3 cells where the header has 4".into(),
        },
    );
    t
}

#[test]
fn the_report_counts_each_kind_and_lists_lines_in_file_order() {
    let r = Report::of("f.csv", "http://x", "abc", tally());
    assert_eq!(
        (
            r.lines,
            r.accepted,
            r.already_placed,
            r.refused,
            r.not_placed
        ),
        (4, 1, 1, 2, 0)
    );
    assert!(!r.ok());
    assert_eq!(
        r.refusals.iter().map(|l| l.line).collect::<Vec<_>>(),
        [4, 5]
    );
    assert_eq!(r.refusals[0].status, None);
    assert_eq!(r.refusals[0].error, "unparsable");
    assert_eq!(r.orders.iter().map(|o| o.line).collect::<Vec<_>>(), [2, 3]);
}

#[test]
fn the_table_names_every_refused_line_with_its_reason() {
    let table = Report::of("f.csv", "http://x", "abc", tally()).table();
    assert!(table.contains("accepted        1"), "{table}");
    assert!(table.contains("already placed  1"), "{table}");
    assert!(
        table.contains("line 5      422 invalid_field  amount: must be greater than 0"),
        "{table}"
    );
    assert!(
        table.contains("line 4      unparsable         3 cells where the header has 4"),
        "{table}"
    );
}

#[test]
fn a_run_that_placed_everything_is_ok() {
    let mut t = Tally::default();
    t.add(
        2,
        Outcome::Placed {
            order_id: "a".into(),
            replayed: true,
        },
    );
    assert!(Report::of("f", "u", "b", t).ok());
}
