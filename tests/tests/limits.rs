//! Message-size limits on a link. An envelope over the receiver's `limits.max_message_bytes`
//! sent by a peer that did not learn that limit (an older node: its hello says nothing of it) is
//! refused by itself, with the `Ack` refusal `too_large`, while the link stays up and carries the
//! next envelope. Before, the frame around it failed to decode and took the whole link down, at
//! every attempt. The test plays node `a` with its real certificate and signing key.

use std::time::Duration;

use anyhow::Context;
use tidewire_core::envelope;
use tidewire_core::keys::SigningKey;
use tidewire_proto::v1 as pb;
use tidewire_proto::v1::link_frame::Frame;
use tidewire_testkit::{Kit, eventually, notification, relayed_by};

/// Seals `n` as `a` and relays it to `b`, as node `a` would; returns its id and its bytes.
fn from_a(key: &SigningKey, n: &serde_json::Value) -> anyhow::Result<(String, Vec<u8>)> {
    let (id, env) = relayed_by(key, "a", "b", n)?;
    Ok((id, envelope::encode(&env)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_over_the_receivers_limit_is_refused_alone_and_the_link_stays_up()
-> anyhow::Result<()> {
    const LIMIT: usize = 65_536;
    let builder = Kit::builder(&["a", "b"], &["a:b"])?.without("a");
    let config = builder.dir().join("b/node.toml");
    let text = std::fs::read_to_string(&config)?;
    let edited = text.replacen(
        "max_message_bytes = 4194304",
        &format!("max_message_bytes = {LIMIT}"),
        1,
    );
    anyhow::ensure!(
        edited != text,
        "b's node.toml has no max_message_bytes line"
    );
    std::fs::write(&config, edited)?;
    let kit = builder.start().await?;
    let key = SigningKey::load(&kit.dir().join("a/a.key"))?;

    // Two fields of 40 KiB: each within the per-field limit, together over b's envelope limit.
    let mut large = notification("LARGE-1", &["node:b"]);
    large["fields"]["narrative"] = "x".repeat(40 * 1024).into();
    large["fields"]["annex"] = "y".repeat(40 * 1024).into();
    let (large_id, large) = from_a(&key, &large)?;
    assert!(large.len() > LIMIT, "{} bytes", large.len());
    let (small_id, small) = from_a(&key, &notification("SMALL-1", &["node:b"]))?;

    let (tx, mut inbound) = kit.link_as("b", "a").await?;
    for (seq, env) in [(1, large), (2, small)] {
        tx.send(pb::LinkFrame {
            frame: Some(Frame::Transfer(pb::Transfer {
                seq,
                envelope: env.into(),
                destinations: vec!["b".into()],
                hops_left: 4,
                ..Default::default()
            })),
        })
        .await?;
    }
    let mut refusals = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(f) = inbound.message().await? {
            if let Some(Frame::Ack(ack)) = f.frame {
                refusals.extend(ack.refused);
                if ack.up_to >= 2 {
                    return Ok(());
                }
            }
        }
        anyhow::bail!("b closed the link before acknowledging both")
    })
    .await
    .context("b did not acknowledge both transfers within 10 s")??;
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(
        (refusals[0].seq, refusals[0].reason.as_str()),
        (1, "too_large")
    );

    assert_eq!(kit.refused("b", "too_large").await?, 1);
    eventually!(Duration::from_secs(10), "b keeps the small one", {
        let got = kit.received_ids("b").await?;
        anyhow::ensure!(got.contains(&small_id), "b received {got:?}");
        Ok(())
    });
    assert!(!kit.received_ids("b").await?.contains(&large_id));
    drop(tx);
    kit.stop().await;
    Ok(())
}
