//! Helpers shared by the end-to-end tests of this crate: start a federation, publish, read
//! ledgers, and wait (bounded) for a condition. Each test binary uses a subset.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use tidewire::demo::LocalFederation;
use tidewire_proto::v1 as pb;
use tonic::transport::Channel;

/// Starts `nodes` with `links` in a temp dir and waits until routes converge.
pub async fn federation(nodes: &[&str], links: &[&str]) -> (tempfile::TempDir, LocalFederation) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let f = LocalFederation::start(&tmp.path().join("f"), nodes, links)
        .await
        .expect("start federation");
    f.converge(Duration::from_secs(20)).await.expect("converge");
    (tmp, f)
}

/// The README's line: maoc-n – dakar – accra, converged.
pub async fn line() -> (tempfile::TempDir, LocalFederation) {
    federation(
        &["maoc-n", "dakar", "accra"],
        &["maoc-n:dakar", "dakar:accra"],
    )
    .await
}

/// An Admin client on `node`, as the federation's admin identity.
pub async fn admin(f: &LocalFederation, node: &str) -> pb::admin_client::AdminClient<Channel> {
    pb::admin_client::AdminClient::new(f.conn(node).connect().await.expect("connect"))
}

/// Publishes on an open channel, with idempotency key `key` (none if empty), and returns the
/// node's answer.
pub async fn publish_keyed_on(ch: Channel, n: &serde_json::Value, key: &str) -> pb::PublishReply {
    pb::publisher_client::PublisherClient::new(ch)
        .publish(pb::PublishRequest {
            notification_json: n.to_string(),
            idempotency_key: key.to_owned(),
        })
        .await
        .expect("publish")
        .into_inner()
}

/// Publishes on an open channel and returns the id.
pub async fn publish_on(ch: Channel, n: &serde_json::Value) -> String {
    publish_keyed_on(ch, n, "").await.id
}

/// Publishes at `node` and returns the id.
pub async fn publish(f: &LocalFederation, node: &str, n: &serde_json::Value) -> String {
    publish_on(f.conn(node).connect().await.expect("connect"), n).await
}

/// Publishes `ns` at `node` on one `PublishStream` and returns their ids in order; every one
/// must be acknowledged.
pub async fn publish_stream(
    f: &LocalFederation,
    node: &str,
    ns: &[serde_json::Value],
) -> Vec<String> {
    let reqs: Vec<pb::PublishRequest> = ns
        .iter()
        .map(|n| pb::PublishRequest {
            notification_json: n.to_string(),
            idempotency_key: String::new(),
        })
        .collect();
    let ch = f.conn(node).connect().await.expect("connect");
    let mut replies = pb::publisher_client::PublisherClient::new(ch)
        .publish_stream(futures::stream::iter(reqs))
        .await
        .expect("publish stream")
        .into_inner();
    let mut ids = Vec::with_capacity(ns.len());
    while let Some(r) = replies.message().await.expect("publish reply") {
        assert_eq!(r.error_code, 0, "refused: {}", r.error_message);
        ids.push(r.id);
    }
    assert_eq!(ids.len(), ns.len(), "every publish acknowledged");
    ids
}

/// Ledger entries of `node` for a notification (empty = any) and event (empty = any).
pub async fn audit(f: &LocalFederation, node: &str, id: &str, event: &str) -> Vec<pb::AuditEntry> {
    let mut admin = admin(f, node).await;
    let mut all: Vec<pb::AuditEntry> = Vec::new();
    // Page by page: a reply holds at most about 3 MiB of entries.
    loop {
        let page = admin
            .audit_query(pb::AuditQueryRequest {
                notification: id.into(),
                event: event.into(),
                limit: u32::MAX,
                after: all.last().map_or(0, |e| e.seq),
                ..Default::default()
            })
            .await
            .expect("audit")
            .into_inner()
            .entries;
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// How many `event` entries `node`'s ledger has for `id`.
pub async fn events(f: &LocalFederation, node: &str, id: &str, event: &str) -> usize {
    audit(f, node, id, event).await.len()
}

/// Whether `node`'s ledger has an `event` entry for `id`.
pub async fn has(f: &LocalFederation, node: &str, id: &str, event: &str) -> bool {
    events(f, node, id, event).await > 0
}

/// Polls `cond` every 50 ms until it holds; fails the test after `within`.
pub async fn wait_for<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `n` small alerts at `node` for `audience` (case refs `MAOC-2026-0000`, …) and
/// returns their ids in publish order.
pub async fn publish_alerts(
    f: &LocalFederation,
    node: &str,
    audience: &str,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let alert = serde_json::json!({
            "kind": "alert", "case_ref": format!("MAOC-2026-{i:04}"),
            "routes": ["atlantic.west-africa"], "handling": "H0",
            "audience": [audience], "fields": {"narrative": "queued"}
        });
        ids.push(publish(f, node, &alert).await);
    }
    ids
}

/// `node`'s status.
pub async fn status(f: &LocalFederation, node: &str) -> pb::StatusReply {
    admin(f, node)
        .await
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// The backlog `node` reports for each link, by peer.
pub async fn backlogs(f: &LocalFederation, node: &str) -> std::collections::BTreeMap<String, u64> {
    status(f, node)
        .await
        .links
        .into_iter()
        .map(|l| (l.peer, l.backlog))
        .collect()
}

/// Waits (bounded) until `node` has nothing queued for any peer.
pub async fn wait_drained(f: &LocalFederation, node: &str, within: Duration) {
    wait_for(within, &format!("{node}'s backlog to drain"), async || {
        backlogs(f, node).await.values().all(|b| *b == 0)
    })
    .await;
}

/// A counter of `node`'s status (0 if it has none by that name).
pub async fn counter(f: &LocalFederation, node: &str, name: &str) -> u64 {
    status(f, node)
        .await
        .counters
        .get(name)
        .copied()
        .unwrap_or(0)
}

/// Sets `key = value` in the `[limits]` of `node`'s `node.toml` (which must be stopped):
/// replaces the line if the file has it, adds it to the table otherwise.
pub fn set_limit(f: &LocalFederation, node: &str, key: &str, value: &str) {
    let path = f.dir.join(node).join("node.toml");
    let text = std::fs::read_to_string(&path).expect("node.toml");
    let setting = format!("{key} = {value}");
    let edited = match text.lines().find(|l| l.starts_with(&format!("{key} ="))) {
        Some(line) => text.replace(line, &setting),
        None => text.replacen("[limits]", &format!("[limits]\n{setting}"), 1),
    };
    assert_ne!(edited, text, "{} has no [limits] table", path.display());
    std::fs::write(&path, edited).expect("write node.toml");
}
