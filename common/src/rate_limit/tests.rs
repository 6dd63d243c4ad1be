use super::*;

const LIMIT: RateLimit = RateLimit {
    per_second: 2,
    burst: 3,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_client_gets_its_burst_then_waits_for_tokens() {
    let l = RateLimiter::new(LIMIT, "TEST");
    let t0 = Instant::now();
    for _ in 0..3 {
        assert!(l.admit(ip("10.0.0.1"), t0).is_ok());
    }
    let wait = l.admit(ip("10.0.0.1"), t0).unwrap_err();
    assert_eq!(wait, Duration::from_millis(500));
    // Half a second later, one token (at two per second).
    let t1 = t0 + Duration::from_millis(500);
    assert!(l.admit(ip("10.0.0.1"), t1).is_ok());
    assert!(l.admit(ip("10.0.0.1"), t1).is_err());
    // Never more than the burst, however long the pause.
    let t2 = t1 + Duration::from_secs(3600);
    for _ in 0..3 {
        assert!(l.admit(ip("10.0.0.1"), t2).is_ok());
    }
    assert!(l.admit(ip("10.0.0.1"), t2).is_err());
}

#[test]
fn clients_have_buckets_of_their_own() {
    let l = RateLimiter::new(LIMIT, "TEST");
    let t0 = Instant::now();
    for _ in 0..3 {
        l.admit(ip("10.0.0.1"), t0).unwrap();
    }
    assert!(l.admit(ip("10.0.0.1"), t0).is_err());
    assert!(l.admit(ip("10.0.0.2"), t0).is_ok());
    assert!(l.admit(ip("2001:db8::1"), t0).is_ok());
}

#[test]
fn an_ipv6_client_is_its_slash_64_and_a_mapped_ipv4_is_the_ipv4() {
    assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
    assert_eq!(
        client_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
        ip("2001:db8:1:2::")
    );
    assert_ne!(client_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    assert_eq!(client_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    let l = RateLimiter::new(LIMIT, "TEST");
    let t0 = Instant::now();
    for host in ["2001:db8::1", "2001:db8::2", "2001:db8::3"] {
        l.admit(ip(host), t0).unwrap();
    }
    assert!(l.admit(ip("2001:db8::4"), t0).is_err());
}

#[test]
fn the_tracked_clients_stay_under_the_cap() {
    let l = RateLimiter::with_capacity(LIMIT, "TEST", 100);
    let t0 = Instant::now();
    for i in 0..10_000u32 {
        let client = IpAddr::V4(std::net::Ipv4Addr::from(i));
        l.admit(client, t0 + Duration::from_millis(u64::from(i)))
            .unwrap();
        assert!(l.tracked_clients() <= 100);
    }
    // The most recent client is still limited: its bucket was kept.
    let last = IpAddr::V4(std::net::Ipv4Addr::from(9_999u32));
    let at = t0 + Duration::from_millis(9_999);
    l.admit(last, at).unwrap();
    l.admit(last, at).unwrap();
    assert!(l.admit(last, at).is_err());
}

#[test]
fn refilled_buckets_are_forgotten_before_active_ones() {
    let l = RateLimiter::with_capacity(LIMIT, "TEST", 2);
    let t0 = Instant::now();
    for _ in 0..3 {
        l.admit(ip("10.0.0.1"), t0).unwrap();
    }
    l.admit(ip("10.0.0.2"), t0).unwrap();
    // 10.0.0.2 has refilled by then (1.5 s at 2/s); 10.0.0.1, drained, has too.
    // Both are forgotten, and a third client fits.
    let t1 = t0 + Duration::from_secs(2);
    l.admit(ip("10.0.0.3"), t1).unwrap();
    assert_eq!(l.tracked_clients(), 1);
    // Every bucket active and the cap reached: the least recently seen goes, and
    // starts again with a full burst (the limit fails open, never refuses a newcomer).
    for _ in 0..2 {
        l.admit(ip("10.0.0.3"), t1).unwrap();
    }
    assert!(l.admit(ip("10.0.0.3"), t1).is_err());
    l.admit(ip("10.0.0.4"), t1 + Duration::from_millis(1))
        .unwrap();
    l.admit(ip("10.0.0.5"), t1 + Duration::from_millis(2))
        .unwrap();
    assert_eq!(l.tracked_clients(), 2);
    l.admit(ip("10.0.0.3"), t1 + Duration::from_millis(3))
        .expect("forgotten, 10.0.0.3 has a full bucket again");
    assert!(l.tracked_clients() <= 2);
}
