//! A quick in-suite fuzz of the published-notification parser (the long-running fuzzer is the
//! cargo-fuzz target `fuzz/fuzz_targets/notification_json.rs`): valid notification JSON with
//! random bytes written over, inserted into or cut out of it must never panic
//! `Notification::from_json`, and whatever still parses must seal, with every field in the
//! sealed envelope.

mod common;

use proptest::prelude::*;
use tidewire_core::Notification;
use tidewire_core::envelope;

fn valid() -> Vec<u8> {
    common::notification_json(serde_json::json!({
        "vessel": {"name": "MV Example", "imo": "9387421", "position": {"lat": 5.61, "lon": -0.19}},
        "persons": [{"name": "J. Doe", "dob": "1979-03-02"}, null, [1, 2.5, true]],
        "narrative": "Δ rendezvous off the Bijagós ✓"
    }))
    .to_string()
    .into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn mutated_notifications_never_panic_and_what_parses_seals(
        how in any::<u8>(),
        at in 0.0f64..1.0,
        junk in proptest::collection::vec(any::<u8>(), 1..12),
    ) {
        let bytes = common::mutate::mutated(valid(), how, at, &junk);
        if let Ok(n) = Notification::from_json(&bytes) {
            let env = common::seal(&n);
            let view = envelope::inspect(&env).expect("a sealed notification inspects");
            prop_assert_eq!(view.fields.len(), n.fields.len());
        }
    }
}

#[test]
fn the_unmutated_notification_parses() {
    assert!(Notification::from_json(&valid()).is_ok());
}
