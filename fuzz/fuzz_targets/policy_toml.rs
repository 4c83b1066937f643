//! Arbitrary text as a sharing policy: what `Admin.PolicyApply` hands to `Policy::parse`. Must
//! never panic; a refusal is an error the caller can show.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewire_policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse(text) {
        Ok(p) => {
            let _ = (p.version(), p.content_hash());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
