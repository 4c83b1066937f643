//! Proves invariant 6 under a race: when the same notification reaches a node over two links at
//! the same moment (a mesh with redundant paths, or a resend after a reroute), the node delivers
//! it once and counts the other copy as a duplicate. The test plays the two upstream nodes `a`
//! and `b` itself (with their real certificates and signing keys) so that both copies of every
//! notification arrive concurrently at the real node `c`.

use std::time::Duration;

use anyhow::Context;
use tidewire_core::envelope::{self, Hop};
use tidewire_core::keys::SigningKey;
use tidewire_core::{NodeId, Notification, NotificationId, timefmt};
use tidewire_proto::v1 as pb;
use tidewire_proto::v1::link_frame::Frame;
use tidewire_testkit::{Kit, counter, counts, notification};

const N: u64 = 200;

fn hop<'a>(node: &'a NodeId, key: &'a SigningKey, to: &'a NodeId) -> Hop<'a> {
    Hop {
        node,
        key,
        to,
        at_ms: timefmt::now_ms(),
        policy_version: "",
        withhold: Vec::new(),
        substitute: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_arriving_at_once_over_two_links_are_delivered_once() -> anyhow::Result<()> {
    let kit = Kit::builder(&["a", "b", "c"], &["a:c", "b:c"])?
        .without("a")
        .without("b")
        .start()
        .await?;
    let dir = kit.dir().to_owned();
    let (ka, kb) = (
        SigningKey::load(&dir.join("a/a.key"))?,
        SigningKey::load(&dir.join("b/b.key"))?,
    );
    let (a, b, c): (NodeId, NodeId, NodeId) = ("a".parse()?, "b".parse()?, "c".parse()?);
    // Every notification: published at a, once sent straight to c, once relayed a -> b -> c.
    let (mut direct, mut relayed) = (Vec::new(), Vec::new());
    for i in 0..N {
        let n = Notification::from_value(&notification(&format!("TWICE-{i}"), &["node:c"]))?;
        let sealed = envelope::seal(
            &n,
            &a,
            &ka,
            NotificationId::generate(),
            i + 1,
            timefmt::now_ms(),
        );
        direct.push(envelope::relay(&sealed, hop(&a, &ka, &c)));
        let at_b = envelope::relay(&sealed, hop(&a, &ka, &b));
        relayed.push(envelope::relay(&at_b, hop(&b, &kb, &c)));
    }

    let mut senders = Vec::new();
    for (who, envelopes) in [("a", direct), ("b", relayed)] {
        let (tx, mut inbound) = kit.link_as("c", who).await?;
        // One transfer at a time, each acknowledged before the next, so that the two links
        // interleave copy by copy.
        senders.push(tokio::spawn(async move {
            for (seq, env) in (1..).zip(envelopes) {
                tx.send(pb::LinkFrame {
                    frame: Some(Frame::Transfer(pb::Transfer {
                        seq,
                        envelope: envelope::encode(&env).into(),
                        destinations: vec!["c".into()],
                        hops_left: 4,
                        ..Default::default()
                    })),
                })
                .await?;
                loop {
                    let f = inbound.message().await?.context("c closed the link")?;
                    if let Some(Frame::Ack(ack)) = f.frame {
                        anyhow::ensure!(ack.refused.is_empty(), "{:?}", ack.refused);
                        if ack.up_to >= seq {
                            break;
                        }
                    }
                }
            }
            Ok::<_, anyhow::Error>(tx)
        }));
    }
    let mut links = Vec::new();
    for s in senders {
        links.push(tokio::time::timeout(Duration::from_secs(20), s).await???);
    }

    // Every copy was acknowledged, so everything is durable at c by now.
    let ids = kit.received_ids("c").await?;
    let twice: Vec<_> = counts(&ids).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} notifications delivered more than once",
        twice.len()
    );
    assert_eq!(ids.len() as u64, N);
    let s = kit.status("c").await?;
    assert_eq!(counter(&s, "delivered"), N, "{:?}", s.counters);
    assert_eq!(
        counter(&s, "duplicates"),
        N,
        "the other copy of each is dropped"
    );
    drop(links);
    kit.stop().await;
    Ok(())
}
