//! Diagnostic: publish rate at one node with and without gRPC, to see where a publish's time
//! goes. `cargo run --release -p tidewire --example publish_probe`
use std::time::Instant;

use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir()?;
    let f = tidewire::demo::LocalFederation::start(&tmp.path().join("f"), &["maoc-n"], &[]).await?;
    let node = f.nodes["maoc-n"].node.clone();
    let json = serde_json::json!({
        "kind": "alert", "routes": ["atlantic.west-africa"], "handling": "H0", "audience": ["node:maoc-n"],
        "fields": {"persons": (0..6).map(|i| serde_json::json!({"name": format!("P{i}"), "dob": "1979-03-02", "nationality": "CO", "role": "crew", "id": "X"})).collect::<Vec<_>>(),
                   "vessel": {"name": "MV", "imo": "1", "flag": "TG", "mmsi": "2", "lat": 1.0, "lon": 2.0}, "cargo": {"a": 1, "b": 2, "c": 3}, "narrative": "n"}
    })
    .to_string();
    for conc in [1usize, 16, 256] {
        let n = 4000;
        let t = Instant::now();
        futures::stream::iter(0..n)
            .map(|_| {
                let node = node.clone();
                let json = json.clone();
                async move {
                    node.publish(&json, "", &tidewire_node::Author::anyone("probe"))
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(conc)
            .for_each(|r| async move { r.expect("publish") })
            .await;
        println!(
            "in-process publish, concurrency {conc:>3}: {:.0}/s",
            n as f64 / t.elapsed().as_secs_f64()
        );
    }
    let t = Instant::now();
    for _ in 0..4000 {
        let n = tidewire_core::Notification::from_json(json.as_bytes())?;
        let key = node.key();
        let env = tidewire_core::envelope::seal(
            &n,
            node.id(),
            key,
            tidewire_core::NotificationId::generate(),
            1,
            1,
        );
        let _ = tidewire_core::envelope::inspect(&env)?;
    }
    println!(
        "parse + seal + inspect alone: {:.0}/s",
        4000.0 / t.elapsed().as_secs_f64()
    );
    f.stop().await;
    Ok(())
}
