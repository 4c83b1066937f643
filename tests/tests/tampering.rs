//! Proves invariant 7 on the wire: an envelope whose disclosed value was altered after sealing is
//! refused by the first node that receives it (the `Ack` names the reason `tampered_field`), is
//! counted and recorded there, and is never forwarded — while an intact envelope sent right after
//! it over the same link does reach the next node. The test plays node `a` itself, with `a`'s real
//! TLS certificate and signing key, so the only thing wrong is the flipped byte.

use std::time::Duration;

use anyhow::Context;
use tidewire_core::envelope;
use tidewire_core::keys::SigningKey;
use tidewire_proto::v1 as pb;
use tidewire_proto::v1::link_frame::Frame;
use tidewire_testkit::{Kit, eventually, notification, relayed_by};

/// Seals `case_ref` as `a` and relays it to `b`, as node `a` would.
fn sealed_by_a(key: &SigningKey, case_ref: &str) -> anyhow::Result<(String, envelope::Envelope)> {
    relayed_by(
        key,
        "a",
        "b",
        &notification(case_ref, &["node:b", "node:c"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_envelope_is_refused_counted_and_not_forwarded() -> anyhow::Result<()> {
    let kit = Kit::builder(&["a", "b", "c"], &["a:b", "b:c"])?
        .without("a")
        .start()
        .await?;
    let dir = kit.dir().to_owned();
    let key = SigningKey::load(&dir.join("a/a.key"))?;

    let (bad_id, mut bad) = sealed_by_a(&key, "TAMPERED-1")?;
    let field = bad
        .fields
        .iter_mut()
        .find(|f| f.path == "vessel.name")
        .context("vessel.name is disclosed")?;
    assert_eq!(field.value, &b"\"MV Example\""[..]);
    let mut value = field.value.to_vec();
    value[1] ^= 0x01; // "MV Example" -> "LV Example": still valid JSON, no longer committed
    field.value = value.into();
    let (good_id, good) = sealed_by_a(&key, "INTACT-1")?;

    let (tx, mut inbound) = kit.link_as("b", "a").await?;
    let frame = |f: Frame| pb::LinkFrame { frame: Some(f) };
    for (seq, env) in [(1, &bad), (2, &good)] {
        tx.send(frame(Frame::Transfer(pb::Transfer {
            seq,
            envelope: envelope::encode(env).into(),
            destinations: vec!["b".into(), "c".into()],
            hops_left: 4,
            ..Default::default()
        })))
        .await?;
    }

    // Read b's frames until both transfers are acknowledged, keeping the refusals.
    let mut refusals = Vec::new();
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(f) = inbound.message().await? {
            if let Some(Frame::Ack(ack)) = f.frame {
                refusals.extend(ack.refused);
                if ack.up_to >= 2 {
                    return Ok(());
                }
            }
        }
        anyhow::bail!("b closed the link before acknowledging")
    })
    .await;
    acked.context("b did not acknowledge both transfers within 10 s")??;
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].seq, 1);
    assert_eq!(refusals[0].reason, "tampered_field");
    assert!(refusals[0].detail.contains("vessel.name"), "{refusals:?}");

    // Counted and recorded at b.
    assert_eq!(kit.refused("b", "tampered_field").await?, 1);
    let ledger = kit.audit("b", "refused").await?;
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert!(ledger[0].detail_json.contains("tampered_field"));
    assert_eq!(ledger[0].destination, "node:a");

    // The intact one crosses b and reaches c; the tampered one, sent first, never does.
    eventually!(Duration::from_secs(15), "c receives the intact envelope", {
        let got = kit.received_ids("c").await?;
        anyhow::ensure!(got.contains(&good_id), "c received {got:?}");
        Ok(())
    });
    assert_eq!(kit.received_ids("c").await?, vec![good_id]);
    assert!(!kit.received_ids("b").await?.contains(&bad_id));
    assert_eq!(kit.refused("c", "tampered_field").await?, 0);
    drop(tx);
    kit.stop().await;
    Ok(())
}
