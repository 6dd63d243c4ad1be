use super::*;

#[test]
fn every_status_reads_back_from_its_name() {
    for s in PaymentStatus::ALL {
        assert_eq!(PaymentStatus::parse(s.as_str()), Some(*s));
    }
    for s in ReservationStatus::ALL {
        assert_eq!(ReservationStatus::parse(s.as_str()), Some(*s));
    }
    for s in DeliveryStatus::ALL {
        assert_eq!(DeliveryStatus::parse(&s.to_string()), Some(*s));
    }
    assert_eq!(PaymentStatus::parse("charged"), None);
}
