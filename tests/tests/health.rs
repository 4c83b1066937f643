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

/// One plain HTTP/1.1 request to `addr`; the status line and the body.
async fn http_get(addr: std::net::SocketAddr, request: &str) -> anyhow::Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    sock.write_all(request.as_bytes()).await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_string(&mut text)).await??;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    Ok((
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    ))
}

/// DESIGN's metrics surface: Prometheus text on a port of its own, with the node's counters,
/// refusals by reason, and each link's state and backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text_on_their_own_port() -> anyhow::Result<()> {
    let kit = Kit::builder(&["a", "b"], &["a:b"])?
        .with_metrics("a")?
        .start()
        .await?;
    let addr = kit.node("a").metrics_addr.context("a serves metrics")?;
    kit.publish(
        "a",
        &tidewire_testkit::notification("MAOC-2026-0001", &["node:b"]),
    )
    .await?;
    tidewire_testkit::eventually(Duration::from_secs(20), "b receives it", async || {
        let n = kit.received_ids("b").await?.len();
        ensure!(n == 1, "{n} received");
        Ok(())
    })
    .await;

    let get = "GET /metrics HTTP/1.1\r\nhost: a\r\n\r\n";
    let (status, body) = http_get(addr, get).await?;
    assert_eq!(status, "HTTP/1.1 200 OK");
    for line in [
        "# TYPE tidewire_published_total counter",
        "tidewire_published_total{node=\"a\"} 1",
        "tidewire_link_up{node=\"a\",peer=\"b\"} 1",
        "# TYPE tidewire_refused_total counter",
        "tidewire_store_writable{node=\"a\"} 1",
        "tidewire_store_replayed_at_start{node=\"a\"} 0",
    ] {
        assert!(body.lines().any(|l| l == line), "no `{line}` in:\n{body}");
    }
    let log_bytes = body
        .lines()
        .find_map(|l| l.strip_prefix("tidewire_store_log_bytes{node=\"a\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        log_bytes.is_some_and(|b| b > 0),
        "the store's log holds the publish:\n{body}"
    );
    let commits = body
        .lines()
        .find_map(|l| l.strip_prefix("tidewire_store_commit_duration_seconds_count{node=\"a\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        commits.is_some_and(|n| n >= 1),
        "the publish was a synced commit:\n{body}"
    );
    // The commit histogram: cumulative buckets ending at +Inf, which counts every commit.
    let bucket = |le: &str| {
        body.lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "tidewire_store_commit_duration_seconds_bucket{{node=\"a\",le=\"{le}\"}} "
                ))
            })
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (fast, slowest, all) = (bucket("0.0005"), bucket("5"), bucket("+Inf"));
    assert!(
        fast.is_some() && fast <= slowest && slowest <= all && all == commits,
        "commit histogram buckets {fast:?} <= {slowest:?} <= {all:?} (+Inf, every commit):\n{body}"
    );
    for name in [
        "tidewire_store_slow_commits_total",
        "tidewire_store_longest_commit_seconds",
        "tidewire_store_commit_duration_seconds_sum",
    ] {
        assert!(
            body.lines()
                .any(|l| l.starts_with(&format!("{name}{{node=\"a\"}} "))),
            "no `{name}` in:\n{body}"
        );
    }
    // The backlog drains to 0 once b acknowledges.
    tidewire_testkit::eventually(
        Duration::from_secs(20),
        "a's backlog to b at 0",
        async || {
            let (_, body) = http_get(addr, get).await?;
            ensure!(
                body.lines()
                    .any(|l| l == "tidewire_link_backlog{node=\"a\",peer=\"b\"} 0"),
                "{body}"
            );
            Ok(())
        },
    )
    .await;

    let (status, _) = http_get(addr, "GET /elsewhere HTTP/1.1\r\n\r\n").await?;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = http_get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await?;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    kit.stop().await;
    Ok(())
}

/// What waits at a node, by destination, shows in `status` and on the metrics page, including
/// copies for a destination no route reaches (no link's backlog counts those): a line a–b–c
/// with c never started holds at a what a publishes for c, "no route", with when it arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_what_waits_for_each_destination_even_without_a_route() -> anyhow::Result<()> {
    let kit = Kit::builder(&["a", "b", "c"], &["a:b", "b:c"])?
        .with_metrics("a")?
        .without("c")
        .start()
        .await?;
    let before = tidewire_core::timefmt::now_ms();
    // The publisher hears it at once: c is a destination no route reaches yet.
    let reply = tidewire_proto::v1::publisher_client::PublisherClient::new(kit.channel("a").await?)
        .publish(tidewire_proto::v1::PublishRequest {
            notification_json: tidewire_testkit::notification("MAOC-2026-0101", &["node:c"])
                .to_string(),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (reply.destinations.as_slice(), reply.unrouted.as_slice()),
        (&["c".to_owned()][..], &["c".to_owned()][..]),
        "{reply:?}"
    );
    kit.publish(
        "a",
        &tidewire_testkit::notification("MAOC-2026-0102", &["node:c"]),
    )
    .await?;
    let s = kit.status("a").await?;
    let queue = s
        .queues
        .iter()
        .find(|q| q.destination == "c")
        .with_context(|| format!("a queue for c in {:?}", s.queues))?;
    assert_eq!(queue.backlog, 2, "{queue:?}");
    assert_eq!(queue.next_hop, "", "no route reaches c: {queue:?}");
    assert!(
        queue.oldest_waiting_ms >= before - 1000
            && queue.oldest_waiting_ms <= tidewire_core::timefmt::now_ms(),
        "the first publish's time: {queue:?}"
    );
    // No link counts them: the only link, to b, is up and has nothing for b or behind it.
    assert!(
        s.links
            .iter()
            .all(|l| l.backlog == 0 && l.oldest_waiting_ms == 0),
        "{:?}",
        s.links
    );
    let addr = kit.node("a").metrics_addr.context("a serves metrics")?;
    let (_, body) = http_get(addr, "GET /metrics HTTP/1.1\r\nhost: a\r\n\r\n").await?;
    let line = "tidewire_destination_backlog{node=\"a\",destination=\"c\",routed=\"false\"} 2";
    assert!(body.lines().any(|l| l == line), "no `{line}` in:\n{body}");
    kit.stop().await;

    // A peer that is down: what waits for it counts in that link's backlog, with its age.
    let kit = Kit::builder(&["a", "b"], &["a:b"])?
        .without("b")
        .start()
        .await?;
    kit.publish(
        "a",
        &tidewire_testkit::notification("MAOC-2026-0103", &["node:b"]),
    )
    .await?;
    let s = kit.status("a").await?;
    let link = s
        .links
        .iter()
        .find(|l| l.peer == "b")
        .context("a's link to b")?;
    assert!(
        !link.up && link.backlog == 1 && link.oldest_waiting_ms > 0,
        "{link:?}"
    );
    kit.stop().await;
    Ok(())
}
