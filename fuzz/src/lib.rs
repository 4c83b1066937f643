//! What the fuzz targets share: the roster they verify against.

use std::sync::OnceLock;

use tidewire_core::keys::{Roster, RosterNode, SigningKey};

/// The origin and relays of the in-suite tests (`crates/tidewire-core/tests/common`), so that
/// envelopes produced there make a useful seed corpus.
pub fn roster() -> &'static Roster {
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
