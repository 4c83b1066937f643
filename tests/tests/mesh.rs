//! Proves exactly-once delivery on a mesh with a loop, and rerouting around a dead link: in the
//! ring `a – b – c – d – a`, `a` reaches `c` through `b` (ties break by node id). That `a – b` link
//! runs through a test-controlled proxy. Notifications to every node arrive once each despite the
//! loop; when the proxy cuts `a – b` while a batch is in flight, everything still reaches `c` exactly
//! once (copies resent the other way are dropped by `c`'s seen-set), and new publishes reach `c`
//! through `d` within a bounded time.

use std::time::Duration;

use anyhow::{Context, ensure};
use tidewire_testkit::{Kit, Proxy, counter, counts, eventually, notification};

fn next_hop(s: &tidewire_proto::v1::StatusReply, dest: &str) -> Option<String> {
    s.routes
        .iter()
        .find(|r| r.node == dest)
        .map(|r| r.next_hop.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_with_loop_delivers_once_and_reroutes_when_a_link_dies() -> anyhow::Result<()> {
    let mut builder = Kit::builder(&["a", "b", "c", "d"], &["a:b", "b:c", "c:d", "d:a"])?;
    let proxy = Proxy::start(builder.addr("b")?).await?;
    builder.route_link_via("a", "b", proxy.addr)?;
    let kit = builder.start().await?;
    assert!(proxy.forwarded() > 0, "the a–b link goes through the proxy");
    let a = kit.status("a").await?;
    assert_eq!(next_hop(&a, "c").as_deref(), Some("b"), "{:?}", a.routes);

    // 1. To everyone, around the loop: each node receives each notification once.
    let everyone: Vec<_> = (0..20)
        .map(|i| notification(&format!("ALL-{i}"), &["node:b", "node:c", "node:d"]))
        .collect();
    let all_ids = kit.publish_all("a", everyone).await?;
    for n in ["b", "c", "d"] {
        let got = eventually!(Duration::from_secs(15), &format!("{n} receives all 20"), {
            let got = kit.received_ids(n).await?;
            ensure!(
                all_ids.iter().all(|id| got.contains(id)),
                "{n} has {} of 20",
                got.len()
            );
            Ok(got)
        });
        assert_eq!(got.len(), all_ids.len(), "{n} received some more than once");
    }

    // 2. A batch for c, with the a–b link cut while it is in flight.
    let batch: Vec<_> = (0..300)
        .map(|i| notification(&format!("CUT-{i}"), &["node:c"]))
        .collect();
    let cut_ids = kit.publish_all("a", batch).await?;
    proxy.cut();
    let a = eventually!(Duration::from_secs(15), "a reroutes c through d", {
        let s = kit.status("a").await?;
        ensure!(
            next_hop(&s, "c").as_deref() == Some("d"),
            "a's routes: {:?}",
            s.routes
        );
        Ok(s)
    });
    assert!(
        a.links.iter().any(|l| l.peer == "b" && !l.up),
        "{:?}",
        a.links
    );

    // 3. New publishes reach c the other way, within a bounded wait.
    let after: Vec<_> = (0..20)
        .map(|i| notification(&format!("AFTER-{i}"), &["node:c"]))
        .collect();
    let after_ids = kit.publish_all("a", after).await?;
    let entries = eventually!(Duration::from_secs(15), "c receives everything", {
        let entries = kit.audit("c", "received").await?;
        let got: Vec<&str> = entries.iter().map(|e| e.notification.as_str()).collect();
        let missing = cut_ids
            .iter()
            .chain(&after_ids)
            .filter(|id| !got.contains(&id.as_str()))
            .count();
        ensure!(missing == 0, "{missing} of {} not received yet", 320);
        Ok(entries)
    });
    for id in &after_ids {
        let e = entries
            .iter()
            .find(|e| &e.notification == id)
            .context("received")?;
        let detail: serde_json::Value = serde_json::from_str(&e.detail_json)?;
        assert_eq!(
            detail["path"],
            serde_json::json!(["a", "d"]),
            "published after the cut, it went round the other way"
        );
    }

    // Exactly once: one `received` entry per notification at c, and the delivered counter
    // matches, however many copies the loop and the resend produced.
    let ids: Vec<String> = entries.iter().map(|e| e.notification.clone()).collect();
    let dup: Vec<_> = counts(&ids).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(dup.is_empty(), "delivered more than once at c: {dup:?}");
    let expected = all_ids.len() + cut_ids.len() + after_ids.len();
    assert_eq!(ids.len(), expected);
    let c = kit.status("c").await?;
    assert_eq!(
        counter(&c, "delivered"),
        expected as u64,
        "{:?}",
        c.counters
    );
    println!(
        "c: delivered {}, duplicates dropped {}",
        counter(&c, "delivered"),
        counter(&c, "duplicates")
    );
    kit.stop().await;
    Ok(())
}
