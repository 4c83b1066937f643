//! Origin rules on a notification's life (DESIGN invariant 3), with real nodes: an expired
//! notification is never forwarded, and a signed recall deletes the content at every node that
//! holds it.

mod common;

use std::time::Duration;

use common::{events, federation, publish, publish_keyed_on, wait_for};
use tidewire::demo::LocalFederation;
use tidewire_proto::v1 as pb;

async fn held(f: &LocalFederation, node: &str, id: &str) -> bool {
    common::admin(f, node)
        .await
        .cases_list(pb::CasesListRequest::default())
        .await
        .expect("cases")
        .into_inner()
        .items
        .iter()
        .any(|i| i.id == id)
}

/// An H0 alert from maoc-n to dakar saying `text`, expiring at `expires_at` if given.
fn alert(text: &str, expires_at: Option<&str>) -> serde_json::Value {
    let mut n = serde_json::json!({
        "kind": "alert", "routes": ["atlantic.west-africa"], "handling": "H0",
        "audience": ["node:dakar"], "fields": {"narrative": text}
    });
    if let Some(at) = expires_at {
        n["expires_at"] = at.into();
    }
    n
}

async fn pair() -> (tempfile::TempDir, LocalFederation) {
    federation(&["maoc-n", "dakar"], &["maoc-n:dakar"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_notification_is_never_forwarded() {
    let (_tmp, f) = pair().await;
    let expired = publish(&f, "maoc-n", &alert("stale", Some("2020-01-01T00:00:00Z"))).await;
    let fresh = publish(&f, "maoc-n", &alert("current", None)).await;
    // The fresh one, queued after the expired one, arrives: the expired one was resolved first.
    wait_for(
        Duration::from_secs(10),
        "the fresh notification at dakar",
        async || events(&f, "dakar", &fresh, "received").await > 0,
    )
    .await;
    assert_eq!(events(&f, "dakar", &expired, "received").await, 0);
    assert_eq!(
        events(&f, "maoc-n", &expired, "expired").await,
        1,
        "the origin records why it did not send"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_recall_deletes_the_content_where_it_is_held() {
    let (_tmp, f) = pair().await;
    let id = publish(
        &f,
        "maoc-n",
        &serde_json::json!({
            "kind": "vessel_of_interest", "routes": ["atlantic.west-africa"], "handling": "H1",
            "audience": ["node:dakar"], "fields": {"vessel": {"name": "MV Wrong", "imo": "9000001"}}
        }),
    )
    .await;
    wait_for(Duration::from_secs(10), "dakar to hold it", || async {
        held(&f, "dakar", &id).await
    })
    .await;
    let recall = publish(
        &f,
        "maoc-n",
        &serde_json::json!({
            "kind": "recall", "routes": ["atlantic.west-africa"], "handling": "H1",
            "audience": ["node:dakar"], "recalls": id, "fields": {"reason": "vessel misidentified"}
        }),
    )
    .await;
    wait_for(
        Duration::from_secs(10),
        "the recall to reach dakar",
        async || events(&f, "dakar", &recall, "received").await > 0,
    )
    .await;
    assert!(
        !held(&f, "dakar", &id).await,
        "dakar must no longer hold the recalled content"
    );
    assert!(
        !held(&f, "maoc-n", &id).await,
        "the origin deletes its own copy too"
    );
    assert_eq!(events(&f, "dakar", &id, "recalled").await, 1);
    f.stop().await;
}

/// The seen-set entries a node keeps for notification `id` (hex).
fn seen_entries(f: &LocalFederation, node: &str, id: &str) -> usize {
    let id = hex::decode(id).expect("hex id");
    f.nodes[node]
        .node
        .store
        .scan(tidewire_store::Space::Seen, &id, &id, usize::MAX)
        .expect("scan")
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_content_is_purged_everywhere_with_its_seen_set_entries() {
    let (_tmp, mut f) = pair().await;
    // Both wait at maoc-n while dakar is down, so that dakar receives them together: the
    // expiring one goes, the lasting one (stored in the same batch) stays.
    f.stop_node("dakar").await.expect("stop dakar");
    let soon = tidewire_core::timefmt::format_ms(tidewire_core::timefmt::now_ms() + 3_000);
    let brief = alert("brief", Some(&soon));
    // Published with an idempotency key, which goes with the origin's copy.
    let id = publish_keyed_on(
        f.conn("maoc-n").connect().await.expect("connect"),
        &brief,
        "brief-1",
    )
    .await
    .id;
    let lasting = publish(&f, "maoc-n", &alert("for the file", None)).await;
    f.restart_node("dakar").await.expect("restart dakar");
    wait_for(Duration::from_secs(10), "dakar to hold both", || async {
        held(&f, "dakar", &id).await && held(&f, "dakar", &lasting).await
    })
    .await;
    assert!(seen_entries(&f, "maoc-n", &id) > 0);
    assert!(seen_entries(&f, "dakar", &id) > 0);
    // The purge runs every 10 s; the notification expires 3 s after it was published.
    for node in ["maoc-n", "dakar"] {
        wait_for(
            Duration::from_secs(30),
            &format!("{node} to purge the expired notification"),
            || async { events(&f, node, &id, "expired").await > 0 },
        )
        .await;
        assert!(!held(&f, node, &id).await, "{node} still holds it");
        assert_eq!(seen_entries(&f, node, &id), 0, "{node} still remembers it");
        assert!(
            held(&f, node, &lasting).await,
            "{node} purged the lasting one"
        );
        assert!(seen_entries(&f, node, &lasting) > 0);
        assert!(
            indexed(&f, node, &lasting),
            "{node}'s expiry index no longer lists the lasting one"
        );
    }
    // The key went with maoc-n's copy: the same key now publishes anew.
    let key_kept = f.nodes["maoc-n"]
        .node
        .store
        .contains(tidewire_store::Space::Idempotency, b"brief-1")
        .expect("read");
    assert!(!key_kept, "maoc-n kept the key of a purged publish");
    let again = publish_keyed_on(
        f.conn("maoc-n").connect().await.expect("connect"),
        &brief,
        "brief-1",
    )
    .await;
    assert!(!again.duplicate && again.id != id, "{again:?}");
    f.stop().await;
}

/// Whether `node`'s expiry index lists a copy of notification `id` (hex).
fn indexed(f: &LocalFederation, node: &str, id: &str) -> bool {
    let id = hex::decode(id).expect("hex id");
    f.nodes[node]
        .node
        .store
        .scan(tidewire_store::Space::Expiry, b"", b"", usize::MAX)
        .expect("scan")
        .iter()
        .flat_map(|(k, v)| tidewire_node::node::decode_expiry(k, v))
        .any(|d| d.note.starts_with(&id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_held_past_the_retention_is_purged_and_older_copies_are_not_kept() {
    let (_tmp, mut f) = pair().await;
    let kept = publish(
        &f,
        "maoc-n",
        &alert("received under the default retention", None),
    )
    .await;
    wait_for(Duration::from_secs(10), "dakar to hold it", || async {
        held(&f, "dakar", &kept).await
    })
    .await;
    assert!(seen_entries(&f, "dakar", &kept) > 0);

    // While dakar is down, another one waits at maoc-n; dakar comes back keeping things for
    // 36 ms only, so the waiting one is already too old for it when it arrives.
    f.stop_node("dakar").await.expect("stop dakar");
    let queued_at = tidewire_core::timefmt::now_ms();
    let late = publish(
        &f,
        "maoc-n",
        &alert("older than dakar keeps anything", None),
    )
    .await;
    common::set_limit(&f, "dakar", "retention_hours", "0.00001");
    wait_for(
        Duration::from_secs(5),
        "the queued notification to be older than 36 ms",
        || async { tidewire_core::timefmt::now_ms() - queued_at > 100 },
    )
    .await;
    f.restart_node("dakar").await.expect("restart dakar");

    // Acknowledged (maoc-n's backlog drains), counted, not kept and not delivered.
    wait_for(
        Duration::from_secs(20),
        "the late copy to be refused",
        || async { common::counter(&f, "dakar", "past_retention").await >= 1 },
    )
    .await;
    common::wait_drained(&f, "maoc-n", Duration::from_secs(10)).await;
    assert!(
        !held(&f, "dakar", &late).await,
        "dakar kept a copy past its retention"
    );
    assert_eq!(events(&f, "dakar", &late, "received").await, 0);

    // What dakar already held goes at the next purge (every 10 s), seen-set entries included,
    // and the ledger says why.
    wait_for(
        Duration::from_secs(30),
        "dakar to purge what it held past the retention",
        || async { events(&f, "dakar", &kept, "purged").await > 0 },
    )
    .await;
    assert!(!held(&f, "dakar", &kept).await, "dakar still holds it");
    assert_eq!(
        seen_entries(&f, "dakar", &kept),
        0,
        "dakar still remembers it"
    );
    let purged = common::audit(&f, "dakar", &kept, "purged").await;
    let detail: serde_json::Value = serde_json::from_str(&purged[0].detail_json).expect("detail");
    assert_eq!(detail["reason"], "retention");
    assert_eq!(detail["held_for"], "dakar");
    // maoc-n keeps its own copy under its own (default) retention.
    assert!(held(&f, "maoc-n", &kept).await);

    // The feed's numbering survives trimming: restarted with nothing left in its feed, dakar
    // numbers the next entry after the trimmed ones, so that a durable cursor still means
    // "after this". It restarted from 0, and a subscription acknowledged up to the trimmed
    // entries skipped every new one.
    let numbered = f.nodes["dakar"]
        .node
        .feed_seq
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(numbered >= 1, "dakar's feed had an entry");
    f.stop_node("dakar").await.expect("stop dakar");
    common::set_limit(&f, "dakar", "retention_hours", "720");
    f.restart_node("dakar").await.expect("restart dakar");
    assert_eq!(
        f.nodes["dakar"]
            .node
            .feed_seq
            .load(std::sync::atomic::Ordering::SeqCst),
        numbered,
        "the feed numbering after a restart with an empty feed"
    );
    f.stop().await;
}

/// Centres set their own limits. A copy larger than its next hop accepts (as that node said in
/// its hello) is not sent: a frame its link cannot decode would break the link at every attempt,
/// holding up everything queued behind it. The sender records and counts it instead, and
/// smaller copies keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_larger_than_the_next_hop_accepts_is_recorded_not_sent_and_the_link_keeps_flowing() {
    let (_tmp, mut f) = pair().await;
    f.stop_node("dakar").await.expect("stop dakar");
    common::set_limit(&f, "dakar", "max_message_bytes", "65536");
    f.restart_node("dakar").await.expect("restart dakar");
    wait_for(Duration::from_secs(20), "the link to come back", || async {
        common::status(&f, "maoc-n")
            .await
            .links
            .iter()
            .all(|l| l.up)
    })
    .await;

    // Within maoc-n's limits (4 MiB, and 64 KiB per field), over dakar's once sealed.
    let mut large = alert(&"x".repeat(60 * 1024), None);
    large["fields"]["annex"] = "y".repeat(30 * 1024).into();
    let big = publish(&f, "maoc-n", &large).await;
    wait_for(
        Duration::from_secs(20),
        "maoc-n to record the copy it could not send",
        || async { events(&f, "maoc-n", &big, "dropped").await == 1 },
    )
    .await;
    let dropped = common::audit(&f, "maoc-n", &big, "dropped").await;
    let detail: serde_json::Value =
        serde_json::from_str(&dropped[0].detail_json).expect("detail is JSON");
    assert_eq!(detail["reason"], "too_large_for_peer", "{detail}");
    assert_eq!(detail["via"], "dakar", "{detail}");
    assert!(
        detail["detail"]
            .as_str()
            .is_some_and(|d| d.contains("accepts envelopes of up to 65536 bytes")),
        "says what the peer accepts: {detail}"
    );
    assert_eq!(dropped[0].destination, "node:dakar");
    assert_eq!(
        events(&f, "maoc-n", &big, "transfer").await,
        0,
        "never sent"
    );
    let status = common::status(&f, "maoc-n").await;
    assert_eq!(status.refused.get("too_large_for_peer"), Some(&1));
    assert!(
        status.links.iter().all(|l| l.up),
        "the link stays up: {status:?}"
    );

    // Resolved, not retried: the backlog empties, and a small alert still arrives.
    common::wait_drained(&f, "maoc-n", Duration::from_secs(10)).await;
    let small = publish(&f, "maoc-n", &alert("small enough", None)).await;
    wait_for(
        Duration::from_secs(20),
        "the small alert to arrive",
        || async { events(&f, "dakar", &small, "received").await == 1 },
    )
    .await;
    assert_eq!(events(&f, "dakar", &big, "received").await, 0);
    assert_eq!(
        events(&f, "dakar", "", "refused").await,
        0,
        "nothing reached dakar to refuse"
    );
}

/// A queued copy whose bytes were damaged on disk is resolved as `dropped` (reason: the stored
/// copy is corrupt) and recorded, and the copies queued with it still go. Before, the damage
/// surfaced as a plain store error, and the outbox item was deleted with no ledger entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_copy_damaged_on_disk_is_recorded_as_dropped_and_the_rest_still_go() {
    let (_tmp, mut f) = pair().await;
    f.stop_node("dakar").await.expect("stop dakar");
    let before = publish(&f, "maoc-n", &alert("first in line", None)).await;
    // Large enough to be kept in the blob log rather than inline in sled.
    let marked = format!("MARK-4242 {}", "to be damaged ".repeat(100));
    let damaged = publish(&f, "maoc-n", &alert(&marked, None)).await;
    let after = publish(&f, "maoc-n", &alert("last in line", None)).await;

    // Damage one byte of that copy's record in maoc-n's blob log, with maoc-n stopped (so that
    // it holds no decoded copy in memory either).
    f.stop_node("maoc-n").await.expect("stop maoc-n");
    let segment = f.dir.join("maoc-n/data/store/blob-log/00000001.seg");
    let mut bytes = std::fs::read(&segment).expect("blob segment");
    let at = bytes
        .windows(9)
        .position(|w| w == b"MARK-4242")
        .expect("the marked copy is in the first segment");
    bytes[at] ^= 0x20;
    std::fs::write(&segment, bytes).expect("write segment");
    f.restart_node("maoc-n").await.expect("restart maoc-n");
    f.restart_node("dakar").await.expect("restart dakar");

    wait_for(
        Duration::from_secs(20),
        "the intact copies at dakar",
        || async {
            events(&f, "dakar", &before, "received").await == 1
                && events(&f, "dakar", &after, "received").await == 1
        },
    )
    .await;
    let dropped = common::audit(&f, "maoc-n", &damaged, "dropped").await;
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert!(
        dropped[0].detail_json.contains("stored copy is corrupt"),
        "{}",
        dropped[0].detail_json
    );
    assert_eq!(events(&f, "dakar", &damaged, "received").await, 0);
    common::wait_drained(&f, "maoc-n", Duration::from_secs(10)).await;
}

/// A graceful stop drains: a sending node stopped mid-backlog waits for the acknowledgements
/// of what it already sent before closing its links, so that its peer does not receive those
/// again after the restart (before, every transfer in flight at the stop came back as a
/// duplicate). The rest of the backlog waits in the outbox and goes after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_mid_backlog_lets_sent_transfers_be_acknowledged_first() {
    let (_tmp, mut f) = pair().await;
    f.stop_node("dakar").await.expect("stop dakar");
    let alerts: Vec<_> = (0..3000)
        .map(|i| alert(&format!("backlog {i}"), None))
        .collect();
    let ids = common::publish_stream(&f, "maoc-n", &alerts).await;
    f.restart_node("dakar").await.expect("restart dakar");
    wait_for(
        Duration::from_secs(20),
        "dakar to start receiving the backlog",
        async || common::counter(&f, "dakar", "received").await > 0,
    )
    .await;
    f.stop_node("maoc-n").await.expect("stop maoc-n");
    f.restart_node("maoc-n").await.expect("restart maoc-n");
    common::wait_drained(&f, "maoc-n", Duration::from_secs(60)).await;
    wait_for(
        Duration::from_secs(20),
        "the whole backlog at dakar",
        async || common::counter(&f, "dakar", "received").await >= ids.len() as u64,
    )
    .await;
    assert_eq!(common::counter(&f, "dakar", "duplicates").await, 0);
    assert_eq!(
        common::counter(&f, "dakar", "received").await,
        ids.len() as u64
    );
    f.stop().await;
}

/// Points `node`'s `node.toml` at `roster` (a file name beside the federation's `roster.toml`)
/// and, if given, at another signing key file in its directory.
fn repoint(f: &LocalFederation, node: &str, roster: &str, key: Option<&str>) {
    let path = f.dir.join(node).join("node.toml");
    let text = std::fs::read_to_string(&path).expect("node.toml");
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("roster =") {
                format!("roster = \"../{roster}\"")
            } else if let (true, Some(k)) = (l.starts_with("signing_key ="), key) {
                format!("signing_key = \"{k}\"")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&path, edited.join("\n") + "\n").expect("write node.toml");
}

/// Publishes at maoc-n, signed with its new key, and waits (bounded) until maoc-n records
/// dakar's refusal of the copy. Returns its id.
async fn refused_with_the_new_key(f: &LocalFederation) -> String {
    let id = publish(f, "maoc-n", &alert("signed with the new key", None)).await;
    wait_for(
        Duration::from_secs(20),
        "dakar's refusal recorded at maoc-n",
        async || events(f, "maoc-n", &id, "transfer_refused").await == 1,
    )
    .await;
    id
}

/// Waits (bounded) for the waiting copy `id` to reach dakar after `what`, then for maoc-n's
/// outbox to drain, and checks that dakar received it once.
async fn arrives_once_at_dakar(f: &LocalFederation, id: &str, what: &str) {
    wait_for(
        Duration::from_secs(30),
        &format!("the copy at dakar after {what}"),
        async || events(f, "dakar", id, "received").await == 1,
    )
    .await;
    common::wait_drained(f, "maoc-n", Duration::from_secs(10)).await;
    assert_eq!(events(f, "dakar", id, "received").await, 1);
}

/// maoc-n rotates its signing key: a new key, added beside the old one to a copy of the roster
/// (`roster-2.toml`) that only maoc-n is given; maoc-n restarts signing with it. Returns that
/// roster.
async fn rotate_maoc_n_key(f: &mut LocalFederation) -> tidewire_core::keys::Roster {
    f.stop_node("maoc-n").await.expect("stop maoc-n");
    let key = tidewire_core::keys::SigningKey::generate();
    key.save(
        &f.dir.join("maoc-n/maoc-n-2.key"),
        &f.dir.join("maoc-n/maoc-n-2.pub"),
    )
    .expect("save the new key");
    let mut roster = tidewire_core::keys::Roster::load(&f.dir.join("roster.toml")).expect("roster");
    let mut entry = roster.get("maoc-n").expect("maoc-n").clone();
    let fresh = tidewire_core::keys::RosterNode::new(
        entry.id.clone(),
        entry.country,
        entry.org.clone(),
        key.public(),
    );
    entry.keys.extend(fresh.keys);
    roster.upsert(entry);
    std::fs::write(f.dir.join("roster-2.toml"), roster.to_toml()).expect("roster-2");
    repoint(f, "maoc-n", "roster-2.toml", Some("maoc-n-2.key"));
    f.restart_node("maoc-n").await.expect("restart maoc-n");
    roster
}

/// The same rotation, with dakar taking the new roster without a restart (`reload_roster`,
/// what SIGHUP runs): the waiting copy goes through, once. A roster dakar cannot run on (one
/// without dakar) is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_reloaded_without_a_restart_lets_the_waiting_copy_through() {
    let (_tmp, mut f) = pair().await;
    let roster_path = f.dir.join("roster.toml");
    let first = std::fs::read_to_string(&roster_path).expect("roster");
    let roster = rotate_maoc_n_key(&mut f).await;
    let rotated = roster.to_toml();

    let id = refused_with_the_new_key(&f).await;
    let dakar = f.nodes["dakar"].node.clone();

    // A roster without dakar: refused, naming the file; the roster in force stays.
    let mut without = roster.clone();
    without.remove("dakar").expect("dakar is in it");
    std::fs::write(&roster_path, without.to_toml()).expect("write roster");
    let err = dakar
        .reload_roster()
        .expect_err("dakar cannot run without itself");
    assert!(
        err.to_string().contains("roster.toml") && err.to_string().contains("`dakar`"),
        "{err}"
    );
    assert!(
        dakar.roster().get("dakar").is_some(),
        "the roster in force stays"
    );

    // Unchanged: nothing to do.
    std::fs::write(&roster_path, &first).expect("write roster");
    assert!(!dakar.reload_roster().expect("reload").is_change());

    // The rotated roster: maoc-n's entry changed, links reconnect, the copy goes through.
    std::fs::write(&roster_path, &rotated).expect("write roster");
    let r = dakar.reload_roster().expect("reload");
    assert_eq!(r.changed, ["maoc-n"], "{r:?}");
    assert!(r.added.is_empty() && r.removed.is_empty(), "{r:?}");
    arrives_once_at_dakar(&f, &id, "its roster reload").await;
    f.stop().await;
}

/// A key rotation that reaches one roster before another: the peer refuses the new key
/// (`unknown_key`) as any unknown key, but the copy stays queued at the sender instead of being
/// dropped, and goes through once the peer restarts with the updated roster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_refused_for_a_key_the_peer_does_not_know_yet_waits_for_its_roster() {
    let (_tmp, mut f) = pair().await;
    rotate_maoc_n_key(&mut f).await;

    let id = refused_with_the_new_key(&f).await;
    let refused = common::audit(&f, "maoc-n", &id, "transfer_refused").await;
    assert!(
        refused[0].detail_json.contains("unknown_key")
            && refused[0].detail_json.contains("stays queued"),
        "{}",
        refused[0].detail_json
    );
    assert_eq!(
        common::backlogs(&f, "maoc-n").await.get("dakar"),
        Some(&1),
        "the copy waits in the outbox"
    );
    assert_eq!(events(&f, "dakar", &id, "received").await, 0);

    // Dakar gets the new roster and restarts: the copy goes through, once.
    f.stop_node("dakar").await.expect("stop dakar");
    repoint(&f, "dakar", "roster-2.toml", None);
    f.restart_node("dakar").await.expect("restart dakar");
    arrives_once_at_dakar(&f, &id, "its roster update").await;
    f.stop().await;
}
