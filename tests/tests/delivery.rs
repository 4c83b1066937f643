//! Proves that a notification published at one end of a line `a – b – c` crosses the relay and
//! arrives at `c` verified, with the custody path `a → b` shown both by `c`'s ledger and by `c`'s
//! feed, and that the relay `b` (outside the audience) forwards it without delivering it locally;
//! and that when many clients publish at once, every notification reaches the peer and the local
//! feed (none is left behind a sender's or a subscription's cursor).

use std::time::Duration;

use anyhow::Context;
use anyhow::ensure;
use tidewire_proto::v1 as pb;
use tidewire_testkit::{Kit, check_sequence, counter, counts, eventually, notification};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_a_b_c_delivers_verified_with_custody_path() -> anyhow::Result<()> {
    let kit = Kit::start(&["a", "b", "c"], &["a:b", "b:c"]).await?;
    let id = kit
        .publish("a", &notification("LINE-1", &["node:c"]))
        .await?;

    let entry = eventually!(Duration::from_secs(15), "c records receiving it", {
        kit.audit("c", "received")
            .await?
            .into_iter()
            .find(|e| e.notification == id)
            .context("no `received` entry for it in c's ledger yet")
    });
    let detail: serde_json::Value = serde_json::from_str(&entry.detail_json)?;
    assert_eq!(detail["path"], serde_json::json!(["a", "b"]), "{detail}");
    assert_eq!(detail["origin"], "a");
    assert_eq!(entry.destination, "node:b", "c got it from b");

    // The ledger shows the record once it is applied; the counters move once it is durable
    // (c's delivery) and once c has acknowledged it (b's forward).
    let c = eventually!(Duration::from_secs(15), "c counts the delivery", {
        let c = kit.status("c").await?;
        ensure!(counter(&c, "delivered") == 1, "{:?}", c.counters);
        Ok(c)
    });
    assert_eq!(counter(&c, "received"), 1, "{:?}", c.counters);
    assert_eq!(counter(&c, "verified"), 1, "c verified what it received");
    assert_eq!(counter(&c, "refused"), 0, "{:?}", c.refused);
    let b = eventually!(Duration::from_secs(15), "b counts the forward", {
        let b = kit.status("b").await?;
        ensure!(counter(&b, "forwarded") == 1, "{:?}", b.counters);
        Ok(b)
    });
    assert_eq!(counter(&b, "verified"), 1, "the relay verified it too");
    assert_eq!(counter(&b, "delivered"), 0, "b is not in the audience");
    assert_eq!(
        counter(&b, "sent_ahead"),
        1,
        "the relay prepared c's copy as it stored it: {:?}",
        b.counters
    );
    let relayed = kit.audit("b", "transfer").await?;
    let relayed: Vec<_> = relayed.iter().filter(|e| e.notification == id).collect();
    assert_eq!(relayed.len(), 1, "one transfer recorded by the relay");
    assert_eq!(relayed[0].destination, "node:c");

    let feed = kit.deliveries("c", 1, Duration::from_secs(10)).await?;
    let d = &feed[0];
    assert_eq!(d.id, id);
    assert_eq!(d.origin, "a");
    assert_eq!(d.case_ref, "LINE-1");
    assert_eq!(d.path, ["a", "b"]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    assert!(
        d.created_at_ms > 0 && d.created_at_ms <= d.received_at_ms && d.received_at_ms <= now_ms,
        "c says when it received it, after a published it: created {}, received {}, now {now_ms}",
        d.created_at_ms,
        d.received_at_ms
    );
    assert_eq!(
        &d.id[..12],
        format!("{:012x}", d.created_at_ms),
        "an id begins with its creation time in milliseconds"
    );
    let fields: serde_json::Value = serde_json::from_str(&d.fields_json)?;
    assert_eq!(fields["vessel"]["imo"], "9387421", "{fields}");
    kit.stop().await;
    Ok(())
}

/// Over a connected, idle link a copy is prepared when it is published: its `transfer` record is
/// written in the publish's own commit, right after the `published` record, and the send loop
/// signs and sends it without a commit of its own. Each notification still has exactly one
/// transfer record, and arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_over_an_idle_link_is_sent_as_prepared_and_recorded_once() -> anyhow::Result<()> {
    const N: usize = 5;
    let kit = Kit::start(&["a", "b"], &["a:b"]).await?;
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        let n = notification(&format!("AHEAD-{i}"), &["node:b"]);
        ids.push(kit.publish("a", &n).await?);
    }
    let feed = kit.deliveries("b", N, Duration::from_secs(15)).await?;
    let got: Vec<&str> = feed.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(got, ids, "b's feed holds every one, in publish order");

    let a = eventually!(Duration::from_secs(15), "a counts every forward", {
        let a = kit.status("a").await?;
        ensure!(counter(&a, "forwarded") == N as u64, "{:?}", a.counters);
        Ok(a)
    });
    assert_eq!(
        counter(&a, "sent_ahead"),
        N as u64,
        "each went as prepared at publish: {:?}",
        a.counters
    );
    let published = kit.audit("a", "published").await?;
    let transfers = kit.audit("a", "transfer").await?;
    for id in &ids {
        let p: Vec<_> = published.iter().filter(|e| e.notification == *id).collect();
        let t: Vec<_> = transfers.iter().filter(|e| e.notification == *id).collect();
        assert_eq!(
            (p.len(), t.len()),
            (1, 1),
            "one publish, one transfer: {id}"
        );
        assert_eq!(t[0].seq, p[0].seq + 1, "recorded with the publish: {id}");
        assert_eq!(t[0].destination, "node:b");
    }
    kit.stop().await;
    Ok(())
}

/// A publish answers with the nodes it was queued for, and names the audience entries that match
/// no node of the roster (a mistyped `node:` or `org:`), so that an alert meant for a centre
/// does not silently go nowhere. The notification is published regardless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_names_its_destinations_and_the_audience_that_matches_no_node()
-> anyhow::Result<()> {
    let kit = Kit::start(&["a", "b", "c"], &["a:b", "b:c"]).await?;
    let mut client = pb::publisher_client::PublisherClient::new(kit.channel("a").await?);
    let mut publish = async |audience: &[&str], key: &str| -> anyhow::Result<pb::PublishReply> {
        Ok(client
            .publish(pb::PublishRequest {
                notification_json: notification("WHERE-1", audience).to_string(),
                idempotency_key: key.to_owned(),
            })
            .await?
            .into_inner())
    };

    let r = publish(&["node:c", "node:b"], "").await?;
    assert_eq!(r.destinations, ["b", "c"]);
    assert!(r.unmatched_audience.is_empty(), "{r:?}");

    let r = publish(&["node:c", "node:nowhere", "org:nobody"], "where/2").await?;
    assert_eq!(r.destinations, ["c"], "only the nodes that exist");
    assert_eq!(r.unmatched_audience, ["node:nowhere", "org:nobody"]);
    let feed = kit.deliveries("c", 2, Duration::from_secs(15)).await?;
    assert_eq!(feed[1].id, r.id, "published regardless");

    let again = publish(&["node:c", "node:nowhere", "org:nobody"], "where/2").await?;
    assert!(again.duplicate);
    assert_eq!(again.id, r.id);
    assert!(again.destinations.is_empty() && again.unmatched_audience.is_empty());
    kit.stop().await;
    Ok(())
}

/// A live subscription near the head of the feed has each new notification's delivery prepared
/// by the commit that stores the notification, its `delivered` record written in that commit:
/// one commit closer to the officer's screen. Each arrives once, in order, with one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscription_gets_deliveries_prepared_by_the_commit_that_stores_them()
-> anyhow::Result<()> {
    const N: usize = 5;
    let kit = Kit::start(&["a", "b"], &["a:b"]).await?;
    let mut sub = kit.subscribe_from_beginning("b").await?;
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        let n = notification(&format!("LIVE-{i}"), &["node:b"]);
        ids.push(kit.publish("a", &n).await?);
    }
    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        let d = tokio::time::timeout(Duration::from_secs(15), sub.message())
            .await
            .context("no delivery within 15 s")??
            .context("the subscription ended")?;
        got.push(d.id);
    }
    assert_eq!(got, ids, "every one, once, in publish order");

    let b = kit.status("b").await?;
    assert_eq!(
        counter(&b, "delivered_ahead"),
        N as u64,
        "each delivery was prepared with its commit: {:?}",
        b.counters
    );
    let delivered = kit.audit("b", "delivered").await?;
    for id in &ids {
        let records = delivered.iter().filter(|e| e.notification == *id).count();
        assert_eq!(records, 1, "one delivery record for {id}");
    }
    kit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_are_all_delivered() -> anyhow::Result<()> {
    const CLIENTS: usize = 8;
    const EACH: usize = 100;
    let kit = std::sync::Arc::new(Kit::start(&["a", "b"], &["a:b"]).await?);
    let mut clients = Vec::new();
    for w in 0..CLIENTS {
        let kit = kit.clone();
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let n = notification(&format!("W{w}-{i}"), &["node:b"]);
                ids.push(kit.publish("a", &n).await?);
            }
            Ok::<_, anyhow::Error>(ids)
        }));
    }
    let mut published = Vec::new();
    for c in clients {
        published.extend(c.await??);
    }
    let total = CLIENTS * EACH;

    eventually!(Duration::from_secs(15), "b receives every notification", {
        let got = kit.received_ids("b").await?;
        ensure!(got.len() >= total, "b has {} of {total}", got.len());
        Ok(())
    });
    let mut got = kit.received_ids("b").await?;
    let twice = counts(&got).values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "delivered more than once at b");
    got.sort();
    published.sort();
    check_sequence("b's received notifications", &got, &published)?;

    // a's own feed (its local subscribers) has every one too.
    let feed = kit.deliveries("a", total, Duration::from_secs(10)).await?;
    let mut in_feed: Vec<String> = feed.into_iter().map(|d| d.id).collect();
    in_feed.sort();
    check_sequence("a's feed", &in_feed, &published)?;
    Ok(())
}

/// A bulk stream is signed in rounds (one origin signature per batch of the stream, one custody
/// signature per send round at each hop), and what `c` holds verifies against the roster on its
/// own: every header and custody entry with its proof, exactly as a later audit would check it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_stream_is_signed_in_rounds_and_each_copy_verifies_on_its_own() -> anyhow::Result<()>
{
    const N: usize = 300;
    let kit = Kit::start(&["a", "b", "c"], &["a:b", "b:c"]).await?;
    let batch = (0..N)
        .map(|i| notification(&format!("BULK-{i:03}"), &["node:c"]))
        .collect();
    let ids = kit.publish_all("a", batch).await?;
    let feed = kit.deliveries("c", N, Duration::from_secs(60)).await?;
    let got: Vec<&str> = feed.iter().map(|d| d.id.as_str()).collect();
    check_sequence("c's feed", &got, &ids)?;

    let c = &kit.node("c").node;
    let mut origin_sigs = std::collections::HashSet::new();
    let mut custody_sigs = [
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    ];
    for id in &ids {
        let id: tidewire_core::NotificationId = id.parse()?;
        let copy = c
            .stored_copy(&tidewire_node::node::note_key(&id, c.id()))
            .map_err(|e| anyhow::anyhow!("c holds no copy of {id}: {e:?}"))?;
        let view = tidewire_core::envelope::verify(&copy.env, &c.roster())
            .with_context(|| format!("c's copy of {id} verifies"))?;
        ensure!(view.path() == ["a", "b"], "custody path {:?}", view.path());
        origin_sigs.insert(copy.env.origin_signature.clone());
        for (hop, sigs) in custody_sigs.iter_mut().enumerate() {
            sigs.insert(copy.env.custody[hop].signature.clone());
        }
    }
    // Without rounds every copy would carry three signatures of its own.
    ensure!(
        origin_sigs.len() < N / 2,
        "{} origin signatures for {N} notifications",
        origin_sigs.len()
    );
    for (hop, sigs) in custody_sigs.iter().enumerate() {
        ensure!(
            sigs.len() < N / 2,
            "{} custody signatures at hop {hop} for {N} notifications",
            sigs.len()
        );
    }
    kit.stop().await;
    Ok(())
}
