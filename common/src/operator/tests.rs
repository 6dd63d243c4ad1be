use super::*;
use axum::http::{HeaderValue, StatusCode};

fn bearer(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
    h
}

const LOOPBACK: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
const REMOTE: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 2, 3)));

#[test]
fn without_a_token_only_loopback_clients_are_admitted() {
    let none = AdminToken::new(None);
    assert!(none.admit(&HeaderMap::new(), LOOPBACK).is_ok());
    let v6 = Some("::ffff:127.0.0.1".parse().unwrap());
    assert!(none.admit(&HeaderMap::new(), v6).is_ok());
    let refused = none.admit(&bearer("Bearer x"), REMOTE).unwrap_err();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(none.admit(&HeaderMap::new(), None).is_err());
}

#[test]
fn with_a_token_none_is_401_wrong_is_403_right_passes_from_anywhere() {
    let t = AdminToken::new(Some("s3cret".into()));
    let missing = t.admit(&HeaderMap::new(), LOOPBACK).unwrap_err();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let basic = t.admit(&bearer("Basic czNjcmV0"), REMOTE).unwrap_err();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    for wrong in ["Bearer s3cre", "Bearer s3cret2", "Bearer S3CRET", "Bearer "] {
        let e = t.admit(&bearer(wrong), REMOTE).unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN, "{wrong}");
    }
    assert!(t.admit(&bearer("Bearer s3cret"), REMOTE).is_ok());
    assert!(t.admit(&bearer("bearer s3cret"), None).is_ok());
}

#[test]
fn equality_is_over_the_whole_of_both() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert!(!constant_time_eq(b"", b"a"));
    assert!(constant_time_eq(b"", b""));
}

#[test]
fn the_token_is_never_printed() {
    let t = AdminToken::new(Some("s3cret".into()));
    assert!(!format!("{t:?}").contains("s3cret"));
}
