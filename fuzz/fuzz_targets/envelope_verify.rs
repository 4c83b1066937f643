//! Arbitrary bytes through envelope verification: `verify_bytes` against a fixed roster, and
//! `inspect` (structure and commitments, no signatures) on whatever decodes. Must never panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tidewire_core::envelope;
use tidewire_core::keys::{Roster, RosterNode, SigningKey};

/// The origin and relays of the in-suite tests (`crates/tidewire-core/tests/common`), so that
/// envelopes produced there make a useful seed corpus.
fn roster() -> &'static Roster {
    static ROSTER: OnceLock<Roster> = OnceLock::new();
    ROSTER.get_or_init(|| {
        let mut r = Roster::default();
        let nodes = [
            ("maoc-n", "PT", [1u8; 32]),
            ("dakar", "SN", [10; 32]),
            ("accra", "SN", [11; 32]),
            ("jiatf-s", "SN", [12; 32]),
        ];
        for (id, country, seed) in nodes {
            r.upsert(RosterNode::new(
                id.parse().expect("node id"),
                country.parse().expect("country"),
                id.into(),
                SigningKey::from_seed(seed).public(),
            ));
        }
        r
    })
}

fuzz_target!(|data: &[u8]| {
    let roster = roster();
    if let Ok((env, view)) = envelope::verify_bytes(data, roster) {
        assert!(view.signatures_checked);
        // What verifies must also pass the structural checks alone, with the same fields.
        let inspected = envelope::inspect(&env).expect("a verified envelope inspects");
        assert_eq!(inspected.fields, view.fields);
        let _ = (view.body(), view.path());
    }
    if let Ok(env) = envelope::decode(data) {
        if let Ok(view) = envelope::inspect(&env) {
            let _ = (view.body(), view.path());
        }
        let _ = envelope::verify(&env, roster);
    }
});
