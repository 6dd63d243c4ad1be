use super::*;

#[test]
fn events_and_phases_are_written_as_their_names() {
    for event in TimelineEvent::ALL {
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(json, format!("\"{event}\""));
        assert_eq!(serde_json::from_str::<TimelineEvent>(&json).unwrap(), event);
        assert_eq!(TimelineEvent::parse(event.as_str()), Some(event));
    }
    for phase in Phase::ALL {
        assert_eq!(
            serde_json::to_string(&phase).unwrap(),
            format!("\"{phase}\"")
        );
        assert_eq!(Phase::parse(phase.as_str()), Some(phase));
    }
    assert_eq!(Phase::parse("paused"), None);
}
