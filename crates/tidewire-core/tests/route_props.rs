//! Property tests of route patterns: `RoutePattern::overlaps` and `intersection` agree with
//! matching itself. Two patterns overlap exactly when some route matches both, and their
//! intersection matches exactly the routes both match; the routes tried are every route of
//! up to five segments over `a`, `b` and `c`, which is enough to witness any overlap of the
//! patterns generated here (segments `a`, `b` or `*`, up to four, then possibly `>`).

use proptest::prelude::*;
use tidewire_core::model::{Route, RoutePattern};

fn pattern() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "*"]), 1..=4),
        any::<bool>(),
    )
        .prop_map(|(segs, tail)| {
            let mut s = segs.join(".");
            if tail {
                s.push_str(".>");
            }
            s
        })
}

fn all_routes() -> Vec<Route> {
    let mut out: Vec<String> = Vec::new();
    let mut layer = vec![String::new()];
    for _ in 0..5 {
        let mut next = Vec::new();
        for prefix in &layer {
            for seg in ["a", "b", "c"] {
                let r = if prefix.is_empty() {
                    seg.to_owned()
                } else {
                    format!("{prefix}.{seg}")
                };
                out.push(r.clone());
                next.push(r);
            }
        }
        layer = next;
    }
    out.iter().map(|r| r.parse().expect("a route")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn patterns_overlap_exactly_when_some_route_matches_both(p in pattern(), q in pattern()) {
        let (pp, qq): (RoutePattern, RoutePattern) =
            (p.parse().expect("pattern"), q.parse().expect("pattern"));
        let witness = all_routes().into_iter().find(|r| pp.matches(r) && qq.matches(r));
        prop_assert_eq!(pp.overlaps(&qq), witness.is_some(), "{} and {}: witness {:?}", p, q, witness);
        prop_assert_eq!(pp.overlaps(&qq), qq.overlaps(&pp), "symmetric");
        // The intersection matches exactly the routes both match.
        if let Some(both) = pp.intersection(&qq) {
            for r in all_routes() {
                prop_assert_eq!(
                    both.matches(&r),
                    pp.matches(&r) && qq.matches(&r),
                    "{} of {} and {} on {}", both, p, q, r
                );
            }
        }
    }
}
