//! Proves that `grpc.health.v1.Health` tells the truth over the node's real mTLS port: every
//! service reports `SERVING` while the node runs, and a stopping node tells its watchers
//! `NOT_SERVING` and ends their streams instead of being held open by them.

use std::time::Duration;

use anyhow::{Context, ensure};
use tidewire_testkit::Kit;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_while_running_and_not_serving_when_the_node_stops() -> anyhow::Result<()>
{
    let kit = Kit::start(&["a"], &[]).await?;
    let mut health = HealthClient::new(kit.channel("a").await?);
    for service in [
        "",
        "tidewire.v1.Federation",
        "tidewire.v1.Publisher",
        "tidewire.v1.Subscriber",
        "tidewire.v1.Admin",
    ] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .with_context(|| format!("health check of `{service}`"))?
            .into_inner();
        assert_eq!(
            reply.status(),
            ServingStatus::Serving.into(),
            "service `{service}`"
        );
    }
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "tidewire.v1.Publisher".into(),
        })
        .await?
        .into_inner();
    let first = watch.message().await?.context("the watch sent nothing")?;
    assert_eq!(first.status(), ServingStatus::Serving.into());

    // A watcher must not keep the node from stopping.
    ensure!(
        tokio::time::timeout(Duration::from_secs(20), kit.stop())
            .await
            .is_ok(),
        "the node did not stop within 20 s while a health watch was open"
    );
    let mut seen = Vec::new();
    while let Ok(Some(m)) = watch.message().await {
        seen.push(m.status());
    }
    assert!(
        seen.contains(&ServingStatus::NotServing.into()),
        "the watcher was not told: {seen:?}"
    );
    Ok(())
}
