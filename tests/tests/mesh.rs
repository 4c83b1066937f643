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

/// The links of a node, by peer: whether each is up, and its last error.
async fn links(kit: &Kit, node: &str) -> anyhow::Result<Vec<(String, bool, String)>> {
    Ok(kit
        .status(node)
        .await?
        .links
        .into_iter()
        .map(|l| (l.peer, l.up, l.last_error))
        .collect())
}

/// A link removed at run time (what SIGHUP does with a `node.toml` that lost a `[[link]]`)
/// closes, and the peer that still dials it is refused with the reason, counted; put back, it
/// opens again and what waited goes through. A new link to a node the roster does not have is
/// not opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_removed_without_a_restart_closes_and_stays_refused_until_put_back()
-> anyhow::Result<()> {
    let kit = Kit::start(&["a", "b"], &["a:b"]).await?;
    let first = kit
        .publish("a", &notification("LINK-1", &["node:b"]))
        .await?;
    eventually!(Duration::from_secs(15), "b receives the first", {
        ensure!(kit.received_ids("b").await?.contains(&first));
        Ok(())
    });
    // b accepts the link a dials; b's node.toml loses it.
    let b = kit.node("b").node.clone();
    let url = format!("https://{}", kit.addr("a")?);
    let changes = tidewire_node::server::apply_links(&b, &[]);
    assert_eq!(changes.removed, ["a"], "{changes:?}");
    eventually!(Duration::from_secs(20), "a dials b again and is refused", {
        ensure!(kit.refused("b", "not_a_link").await? > 0, "not refused yet");
        let a = links(&kit, "a").await?;
        ensure!(
            a.iter().any(|(p, up, e)| p == "b"
                && !up
                && e.contains("`b` has no [[link]] to `a`")
                && e.contains("node.toml and send it SIGHUP")),
            "a's links: {a:?}"
        );
        Ok(())
    });
    assert!(
        links(&kit, "b").await?.is_empty(),
        "b shows no link it does not have"
    );

    let waiting = kit
        .publish("a", &notification("LINK-2", &["node:b"]))
        .await?;
    let unknown =
        tidewire_node::server::apply_links(&b, &[("lagos".parse()?, "https://127.0.0.1:9".into())]);
    assert_eq!(unknown.unknown, ["lagos"], "{unknown:?}");
    assert!(!unknown.is_change(), "{unknown:?}");
    let back = tidewire_node::server::apply_links(&b, &[("a".parse()?, url)]);
    assert_eq!(back.added, ["a"], "{back:?}");
    eventually!(Duration::from_secs(20), "the waiting copy reaches b", {
        ensure!(kit.received_ids("b").await?.contains(&waiting));
        Ok(())
    });
    kit.stop().await;
    Ok(())
}

/// A link whose URL changes at run time is dialed at the new URL (here a proxy in front of the
/// same peer, which the test then cuts: the link goes down with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_moved_to_a_new_url_without_a_restart_is_dialed_there() -> anyhow::Result<()> {
    let kit = Kit::start(&["a", "b"], &["a:b"]).await?;
    let proxy = Proxy::start(kit.addr("b")?).await?;
    let a = kit.node("a").node.clone();
    let moved = tidewire_node::server::apply_links(
        &a,
        &[("b".parse()?, format!("https://{}", proxy.addr))],
    );
    assert_eq!(moved.moved, ["b"], "{moved:?}");
    let id = kit
        .publish("a", &notification("MOVED-1", &["node:b"]))
        .await?;
    eventually!(Duration::from_secs(20), "b receives through the new URL", {
        ensure!(kit.received_ids("b").await?.contains(&id));
        ensure!(proxy.forwarded() > 0, "nothing through the proxy");
        Ok(())
    });
    proxy.cut();
    eventually!(
        Duration::from_secs(20),
        "the link goes down with the proxy",
        {
            let l = links(&kit, "a").await?;
            ensure!(
                l.iter().any(|(p, up, _)| p == "b" && !up),
                "a's links: {l:?}"
            );
            Ok(())
        }
    );
    kit.stop().await;
    Ok(())
}

/// A node taken out of a peer's roster (it left the federation) that still dials it is
/// refused, and counted as `not_in_roster`: it is not an impostor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_left_the_roster_is_refused_as_such_not_as_an_impostor() -> anyhow::Result<()> {
    let kit = Kit::start(&["a", "b"], &["a:b"]).await?;
    let roster_path = kit.dir().join("roster.toml");
    let mut roster = tidewire_core::keys::Roster::load(&roster_path)?;
    roster.remove("a").context("a is in the roster")?;
    std::fs::write(&roster_path, roster.to_toml())?;
    // b lets a go, as SIGHUP does with a roster and a node.toml both without it.
    let b = kit.node("b").node.clone();
    let r = b.reload_roster_for(&[])?;
    assert_eq!(r.removed, ["a"], "{r:?}");
    tidewire_node::server::apply_links(&b, &[]);
    eventually!(Duration::from_secs(20), "a dials b again and is refused", {
        ensure!(
            kit.refused("b", "not_in_roster").await? > 0,
            "not refused yet"
        );
        Ok(())
    });
    assert_eq!(kit.refused("b", "impersonation").await?, 0);
    kit.stop().await;
    Ok(())
}
