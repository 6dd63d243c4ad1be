use super::*;

#[test]
fn the_ca_goes_into_the_url_unless_it_names_one() {
    assert_eq!(
        amqp_url_with_ca("amqps://u:p@h:5671/v", "/etc/ca one.pem"),
        "amqps://u:p@h:5671/v?cacertfile=%2Fetc%2Fca+one.pem"
    );
    assert_eq!(
        query_param(
            &amqp_url_with_ca("amqps://h/v?heartbeat=5", "/a&b.pem"),
            "cacertfile"
        )
        .as_deref(),
        Some("/a&b.pem")
    );
    assert_eq!(
        amqp_url_with_ca("amqps://h/v?cacertfile=/mine.pem", "/other.pem"),
        "amqps://h/v?cacertfile=/mine.pem"
    );
    // Plain AMQP has no use for it.
    assert_eq!(amqp_url_with_ca("amqp://h/v", "/ca.pem"), "amqp://h/v");
    assert_eq!(
        postgres_url_with_ca("postgres://u@h/db_{service}?sslmode=verify-full", "/ca.pem"),
        "postgres://u@h/db_{service}?sslmode=verify-full&sslrootcert=%2Fca.pem"
    );
    assert_eq!(
        postgres_url_with_ca("postgres://h/db?sslrootcert=/x.pem", "/ca.pem"),
        "postgres://h/db?sslrootcert=/x.pem"
    );
}

#[test]
fn a_ca_file_must_hold_a_certificate() {
    let dir = std::env::temp_dir().join(format!("tls-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let problem = CaFile::read(empty.to_str().unwrap()).unwrap_err();
    assert!(problem.contains("holds no certificate"), "{problem}");
    let missing = CaFile::read("/nonexistent/ca.pem").unwrap_err();
    assert!(missing.contains("cannot be read"), "{missing}");
    let url = format!("amqps://h/v?cacertfile={}", empty.display());
    assert!(amqp_tls_config(&url).is_err());
    assert!(check_url_ca(&url, "cacertfile").is_err());
    assert!(check_url_ca("amqps://h/v", "cacertfile").is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}
