use super::*;

#[test]
fn every_target_parses_back_from_its_name() {
    for (name, _) in Target::documented() {
        let target = Target::parse(name).expect(name);
        assert_eq!(target.to_string(), name);
    }
    assert_eq!(Target::parse("every"), None);
    assert_eq!(Target::documented().count(), 1 + Service::ALL.len());
}

#[test]
fn all_runs_every_service_and_one_only_its_own() {
    for s in Service::ALL {
        assert!(Target::All.runs(s));
        assert!(Target::One(s).runs(s));
    }
    assert!(!Target::One(Service::Order).runs(Service::Payment));
}

#[test]
fn each_worker_is_the_service_of_its_name() {
    use crate::messages::Worker;
    for (worker, name) in [
        (Worker::Order, "order"),
        (Worker::Payment, "payment"),
        (Worker::Inventory, "inventory"),
        (Worker::Delivery, "delivery"),
    ] {
        assert_eq!(Service::from(worker).name(), name);
    }
}
