//! Arbitrary bytes through envelope verification: `verify_bytes` against a fixed roster, and
//! `inspect` (structure and commitments, no signatures) on whatever decodes. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewire_core::envelope;
use tidewire_fuzz::roster;

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
