use super::*;

#[test]
fn a_limit_is_an_integer_within_its_bounds_or_the_default() {
    assert_eq!(limit(None, 50, 200), Ok(50));
    assert_eq!(limit(Some(" 7 "), 50, 200), Ok(7));
    assert_eq!(limit(Some("200"), 50, 200), Ok(200));
    assert_eq!(
        limit(Some("0"), 50, 200),
        Err("must be between 1 and 200".into())
    );
    assert_eq!(
        limit(Some("201"), 50, 200),
        Err("must be between 1 and 200".into())
    );
    assert_eq!(
        limit(Some("ten"), 50, 200),
        Err("must be an integer".into())
    );
}

#[test]
fn one_row_more_than_the_limit_means_another_page_after_the_last_row_kept() {
    let mut rows = vec![5, 4, 3];
    assert_eq!(
        next_page(&mut rows, 2, ToString::to_string),
        Some("4".into())
    );
    assert_eq!(rows, [5, 4]);

    let mut last_page = vec![2, 1];
    assert_eq!(next_page(&mut last_page, 2, ToString::to_string), None);
    assert_eq!(last_page, [2, 1]);
}
