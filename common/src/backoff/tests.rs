use super::*;

#[test]
fn delays_grow_and_stay_under_the_cap() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let first = b.next_delay();
    assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
    // 100, 200, 400, 800, 1600 ms ceilings, then the 2 s cap with at least half of it.
    let growing: Vec<Duration> = (0..4).map(|_| b.next_delay()).collect();
    assert!(
        growing.iter().all(|d| *d <= Duration::from_millis(1600)),
        "{growing:?}"
    );
    for _ in 0..20 {
        let d = b.next_delay();
        assert!(
            d <= Duration::from_secs(2) && d >= Duration::from_secs(1),
            "{d:?}"
        );
    }
    b.reset();
    assert!(b.next_delay() <= Duration::from_millis(100));
}
