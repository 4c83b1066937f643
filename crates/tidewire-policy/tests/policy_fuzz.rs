//! A quick in-suite fuzz of the policy parser, which reads text an administrator sends over the
//! network (`Admin.PolicyApply`); the long-running fuzzer is the cargo-fuzz target
//! `fuzz/fuzz_targets/policy_toml.rs`. The documented example policies with random text written
//! over, inserted into or cut out of them must never panic `Policy::parse`: each one is a policy
//! or an error with something to show.

use proptest::prelude::*;
use tidewire_policy::Policy;

const EXAMPLES: [&str; 3] = [
    include_str!("../../../docs/examples/policy-maoc-n.toml"),
    include_str!("../../../docs/examples/policy-dakar.toml"),
    include_str!("../../../docs/examples/policy-accra.toml"),
];

/// The core fuzzers' mutation, over characters (so that the text stays UTF-8).
#[path = "../../tidewire-core/tests/common/mutate.rs"]
mod mutate;

/// Overwrites, inserts or removes `junk` at character `at` (a fraction of the length).
fn mutated(text: &str, how: u8, at: f64, junk: &str) -> String {
    let junk: Vec<char> = junk.chars().collect();
    mutate::mutated(text.chars().collect(), how, at, &junk)
        .into_iter()
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn mutated_policies_never_panic_the_parser(
        which in 0usize..3,
        how in any::<u8>(),
        at in 0.0f64..1.0,
        junk in "[\\PC\n=\\[\\]\"'{},.*#-]{1,12}",
    ) {
        match Policy::parse(&mutated(EXAMPLES[which], how, at, &junk)) {
            Ok(p) => prop_assert!(p.content_hash().starts_with("sha256:")),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

#[test]
fn the_examples_parse() {
    for text in EXAMPLES {
        Policy::parse(text).expect("documented example");
    }
}
