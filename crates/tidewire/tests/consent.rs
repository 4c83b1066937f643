//! Onward-transfer consent end to end (DESIGN invariant 4), with real nodes over real mTLS: an H2
//! notification that a relay wants to pass outside the origin's audience is held until the origin
//! grants (then it is delivered, with the grant checked at the destination), dropped when the
//! origin refuses, and released at once under a standing consent in the origin's policy.

mod common;

use std::time::Duration;

use common::{admin, has, line, wait_for};
use tidewire::demo::LocalFederation;
use tidewire_proto::v1 as pb;

async fn publish(f: &LocalFederation, node: &str, case_ref: &str) -> String {
    let n = serde_json::json!({
        "kind": "vessel_of_interest", "case_ref": case_ref, "routes": ["atlantic.west-africa"],
        "handling": "H2", "audience": ["node:dakar"], "onward_transfer": false,
        "fields": {"vessel": {"name": "MV Example", "imo": "9387421"}}
    });
    common::publish(f, node, &n).await
}

/// Dakar's administrator asks to pass notification `id` on to Accra.
async fn ask(f: &LocalFederation, id: &str) -> Result<pb::ConsentItem, tonic::Status> {
    admin(f, "dakar")
        .await
        .consent_ask(pb::ConsentAskRequest {
            notification: id.to_owned(),
            destination: "accra".into(),
            reason: "joint operation".into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// The items the origin holds for its administrator, by state.
async fn origin_items(f: &LocalFederation) -> Vec<pb::ConsentItem> {
    admin(f, "maoc-n")
        .await
        .consent_list(pb::ConsentListRequest {})
        .await
        .expect("list")
        .into_inner()
        .items
}

/// An H2 notification published at maoc-n, received at dakar, and held there for maoc-n's
/// consent to pass it on to accra, the request having reached maoc-n. Returns its id.
async fn held_at_dakar(f: &LocalFederation, case_ref: &str) -> String {
    let id = publish(f, "maoc-n", case_ref).await;
    wait_for(Duration::from_secs(10), "dakar to receive", || {
        has(f, "dakar", &id, "received")
    })
    .await;
    ask(f, &id).await.expect("ask");
    wait_for(
        Duration::from_secs(10),
        "the request to reach maoc-n",
        || async { !origin_items(f).await.is_empty() },
    )
    .await;
    id
}

async fn events(f: &LocalFederation, node: &str, id: &str, event: &str) -> usize {
    common::events(f, node, id, event).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_outside_the_audience_is_held_until_the_origin_grants() {
    let (_tmp, f) = line().await;
    let id = publish(&f, "maoc-n", "MAOC-H2-GRANT").await;
    wait_for(Duration::from_secs(10), "dakar to receive", || {
        has(&f, "dakar", &id, "received")
    })
    .await;

    let asked = ask(&f, &id).await.expect("ask");
    assert_eq!(asked.state, "held");
    wait_for(
        Duration::from_secs(10),
        "the request to reach maoc-n",
        || async { origin_items(&f).await.iter().any(|i| i.state == "pending") },
    )
    .await;
    // Held: nothing reached accra yet.
    assert_eq!(events(&f, "accra", &id, "received").await, 0);

    let req = origin_items(&f).await.remove(0);
    grant_and_wait_for_accra(&f, &req.id, &id).await;
    assert_eq!(events(&f, "maoc-n", &id, "consent_granted").await, 1);
    assert_eq!(events(&f, "dakar", &id, "released").await, 1);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_consent_drops_the_held_notification() {
    let (_tmp, f) = line().await;
    let id = held_at_dakar(&f, "MAOC-H2-REFUSE").await;
    let req = origin_items(&f).await.remove(0);
    admin(&f, "maoc-n")
        .await
        .consent_decide(pb::ConsentDecideRequest {
            id: req.id,
            grant: false,
        })
        .await
        .expect("refuse");
    wait_for(Duration::from_secs(10), "dakar to drop it", || {
        has(&f, "dakar", &id, "dropped")
    })
    .await;
    assert_eq!(
        events(&f, "accra", &id, "received").await,
        0,
        "a refused notification must never reach accra"
    );
    assert_eq!(events(&f, "maoc-n", &id, "consent_refused").await, 1);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standing_consent_in_the_origin_policy_answers_at_once() {
    let (_tmp, f) = line().await;
    let policy = format!(
        "{}\n[[standing_consent]]\nid = \"h2-vessels-to-ghana\"\nto = [\"country:GH\"]\nwhen = {{ kinds = [\"vessel_of_interest\"] }}\n",
        tidewire::pki::starter_policy("maoc-n")
    );
    admin(&f, "maoc-n")
        .await
        .policy_apply(pb::PolicyApplyRequest {
            policy_toml: policy,
        })
        .await
        .expect("apply");
    let id = publish(&f, "maoc-n", "MAOC-H2-STANDING").await;
    wait_for(Duration::from_secs(10), "dakar to receive", || {
        has(&f, "dakar", &id, "received")
    })
    .await;
    ask(&f, &id).await.expect("ask");
    wait_for(
        Duration::from_secs(10),
        "accra to receive under standing consent",
        || has(&f, "accra", &id, "received"),
    )
    .await;
    let granted = admin(&f, "maoc-n")
        .await
        .audit_query(pb::AuditQueryRequest {
            notification: id.clone(),
            event: "consent_granted".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .entries;
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].rule, "h2-vessels-to-ghana");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onward_transfer_false_without_h2_is_refused_outright() {
    let (_tmp, f) = line().await;
    let n = serde_json::json!({
        "kind": "alert", "routes": ["atlantic.west-africa"], "handling": "H1",
        "audience": ["node:dakar"], "onward_transfer": false, "fields": {"narrative": "x"}
    });
    let id = common::publish(&f, "maoc-n", &n).await;
    wait_for(Duration::from_secs(10), "dakar to receive", || {
        has(&f, "dakar", &id, "received")
    })
    .await;
    let err = ask(&f, &id).await.expect_err("must be refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("onward_transfer = false"),
        "{}",
        err.message()
    );
    f.stop().await;
}

/// Asking to pass on a notification that needs no consent (onward transfer allowed) sends it at
/// once, and the answer says what it is: its kind and case, state `queued`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_a_notification_that_needs_no_consent_sends_it_and_says_what_it_is() {
    let (_tmp, f) = line().await;
    let n = serde_json::json!({
        "kind": "alert", "case_ref": "MAOC-2026-0777", "routes": ["atlantic.west-africa"],
        "handling": "H1", "audience": ["node:dakar"], "onward_transfer": true,
        "fields": {"narrative": "x"}
    });
    let id = common::publish(&f, "maoc-n", &n).await;
    wait_for(Duration::from_secs(10), "dakar to receive", || {
        has(&f, "dakar", &id, "received")
    })
    .await;
    let asked = ask(&f, &id).await.expect("ask");
    assert_eq!(asked.state, "queued", "{asked:?}");
    assert_eq!(
        (asked.kind.as_str(), asked.case_ref.as_str()),
        ("alert", "MAOC-2026-0777"),
        "{asked:?}"
    );
    assert!(asked.at_ms > 0, "{asked:?}");
    wait_for(Duration::from_secs(10), "accra to receive", || {
        has(&f, "accra", &id, "received")
    })
    .await;
    // No request went to the origin: nothing waits for its decision.
    assert!(origin_items(&f).await.is_empty());
    f.stop().await;
}

/// MAOC-N's administrator grants request `req`; waits until notification `id` reaches Accra.
async fn grant_and_wait_for_accra(f: &LocalFederation, req: &str, id: &str) {
    let decided = admin(f, "maoc-n")
        .await
        .consent_decide(pb::ConsentDecideRequest {
            id: req.to_owned(),
            grant: true,
        })
        .await
        .expect("grant")
        .into_inner();
    assert_eq!(decided.state, "granted");
    wait_for(
        Duration::from_secs(20),
        "accra to receive after the grant",
        || has(f, "accra", id, "received"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_asked_while_the_origin_is_down_reaches_it_when_it_returns() {
    let (_tmp, mut f) = line().await;
    let id = publish(&f, "maoc-n", "MAOC-H2-LATER").await;
    wait_for(Duration::from_secs(10), "dakar to receive", || {
        has(&f, "dakar", &id, "received")
    })
    .await;

    // The origin goes away; the relay's administrator asks anyway.
    let origin = f.nodes.remove("maoc-n").expect("maoc-n runs");
    origin.stop().await;
    let asked = ask(&f, &id)
        .await
        .expect("the ask is held even though the origin is unreachable");
    assert_eq!(asked.state, "held");

    // The origin comes back on the same data directory: the relay's retry reaches it, once.
    let back = LocalFederation::start_existing(&f.dir, f.fed.clone(), &["maoc-n"])
        .await
        .expect("restart maoc-n");
    wait_for(
        Duration::from_secs(20),
        "the held request to reach maoc-n after it returns",
        || async { origin_items(&f).await.iter().any(|i| i.state == "pending") },
    )
    .await;
    let pending = origin_items(&f).await;
    assert_eq!(pending.len(), 1, "one request, however often it was sent");
    grant_and_wait_for_accra(&f, &pending[0].id, &id).await;
    assert_eq!(events(&f, "maoc-n", &id, "consent_requested").await, 1);
    assert_eq!(events(&f, "dakar", &id, "released").await, 1);
    back.stop().await;
    f.stop().await;
}

/// The destination leaves the federation while a copy is held for consent to reach it: the
/// relay's roster reload closes the held request (`dropped`, with the reason), and the origin's
/// grant, arriving after, releases nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_held_for_a_destination_that_leaves_the_federation_is_dropped() {
    let (_tmp, f) = line().await;
    let id = held_at_dakar(&f, "MAOC-H2-LEAVES").await;

    // Accra leaves: out of the roster, and out of dakar's links.
    let roster_path = f.dir.join("roster.toml");
    let mut roster = tidewire_core::keys::Roster::load(&roster_path).expect("roster");
    roster.remove("accra").expect("accra is in it");
    std::fs::write(&roster_path, roster.to_toml()).expect("write roster");
    let dakar = f.nodes["dakar"].node.clone();
    let r = dakar
        .reload_roster_for(&["maoc-n".parse().expect("id")])
        .expect("reload");
    assert_eq!(r.removed, ["accra"], "{r:?}");
    assert_eq!(dakar.drop_queued_for_departed().await.expect("drop"), 1);
    let held = dakar.held_items().expect("held");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].state, "dropped", "{held:?}");
    let dropped = common::audit(&f, "dakar", &id, "dropped").await;
    assert!(
        dropped.len() == 1
            && dropped[0]
                .detail_json
                .contains("no longer in the federation roster"),
        "{dropped:?}"
    );

    // The reload ended dakar's link sessions: the answer goes once the link is back.
    let up = async |node: &str, peer: &str| {
        common::status(&f, node)
            .await
            .links
            .iter()
            .any(|l| l.peer == peer && l.up)
    };
    wait_for(
        Duration::from_secs(20),
        "the dakar–maoc-n link back up at both ends",
        || async { up("dakar", "maoc-n").await && up("maoc-n", "dakar").await },
    )
    .await;
    let req = origin_items(&f).await.remove(0);
    admin(&f, "maoc-n")
        .await
        .consent_decide(pb::ConsentDecideRequest {
            id: req.id,
            grant: true,
        })
        .await
        .expect("grant");
    wait_for(
        Duration::from_secs(10),
        "the answer to reach dakar",
        || async {
            dakar
                .counters
                .consent_answers
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        },
    )
    .await;
    assert_eq!(events(&f, "dakar", &id, "released").await, 0);
    assert_eq!(dakar.held_items().expect("held")[0].state, "dropped");
    f.stop().await;
}
