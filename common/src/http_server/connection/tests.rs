use super::*;

const T: Timeouts = Timeouts {
    header: Duration::from_millis(100),
    idle: Duration::from_millis(1000),
};

#[test]
fn a_fresh_connection_has_the_header_timeout_from_its_accept_even_once_bytes_arrive() {
    let accepted = Instant::now();
    let fresh = Phase::Waiting {
        since: accepted,
        first: true,
    };
    assert_eq!(
        fresh.deadline(T),
        Some((accepted + T.header, Expired::Header))
    );
    let later = accepted + Duration::from_millis(90);
    assert_eq!(
        fresh.bytes_read(later).deadline(T),
        Some((accepted + T.header, Expired::Header))
    );
}

#[test]
fn a_request_under_way_has_no_connection_deadline_and_its_answer_starts_the_idle_one() {
    let start = Instant::now();
    let busy = Phase::Waiting {
        since: start,
        first: true,
    }
    .bytes_read(start)
    .request_started();
    assert_eq!(busy.deadline(T), None);
    let answered_at = start + Duration::from_secs(30);
    let idle = busy.request_answered(answered_at);
    assert_eq!(
        idle.deadline(T),
        Some((answered_at + T.idle, Expired::Idle))
    );
    // The next request's first byte switches to the header timeout, from that byte.
    let byte_at = answered_at + Duration::from_millis(500);
    assert_eq!(
        idle.bytes_read(byte_at).deadline(T),
        Some((byte_at + T.header, Expired::Header))
    );
    // Bytes read while busy (a body) change nothing.
    assert_eq!(busy.bytes_read(byte_at), busy);
}

#[test]
fn overlapping_requests_are_counted() {
    let busy = Phase::Waiting {
        since: Instant::now(),
        first: true,
    }
    .request_started()
    .request_started();
    let one_left = busy.request_answered(Instant::now());
    assert_eq!(one_left, Phase::Busy { requests: 1 });
    assert!(matches!(
        one_left.request_answered(Instant::now()),
        Phase::Waiting { first: false, .. }
    ));
}
