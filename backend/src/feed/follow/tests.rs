use super::*;

#[test]
fn without_an_id_the_stream_is_live_only() {
    assert_eq!(plan(None, Some((1, 10))), (None, None));
    assert_eq!(plan(None, None), (None, None));
}

#[test]
fn an_id_that_is_kept_resumes_right_after_it() {
    assert_eq!(plan(Some(4), Some((1, 10))), (Some(4), None));
    assert_eq!(plan(Some(10), Some((1, 10))), (Some(10), None));
    // The row after it is the oldest kept: nothing was lost.
    assert_eq!(plan(Some(4), Some((5, 10))), (Some(4), None));
    assert_eq!(plan(Some(0), None), (Some(0), None));
    assert_eq!(plan(Some(0), Some((1, 3))), (Some(0), None));
}

#[test]
fn an_id_below_what_is_kept_resumes_at_the_oldest_row_and_says_so() {
    let (after, reset) = plan(Some(2), Some((50, 60)));
    assert_eq!(after, Some(49));
    assert_eq!(
        reset,
        Some(Reset {
            reason: "pruned",
            last_event_id: 2,
            resumes_after: 49
        })
    );
}

#[test]
fn an_id_this_feed_never_had_goes_on_from_its_newest_row_and_says_so() {
    let (after, reset) = plan(Some(99), Some((1, 60)));
    assert_eq!(after, Some(60));
    assert_eq!(reset.unwrap().reason, "unknown_id");
    let (after, reset) = plan(Some(7), None);
    assert_eq!(after, Some(0));
    assert_eq!(reset.unwrap().reason, "unknown_id");
}
