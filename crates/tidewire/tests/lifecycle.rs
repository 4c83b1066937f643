//! Origin rules on a notification's life (DESIGN invariant 3), with real nodes: an expired
//! notification is never forwarded, and a signed recall deletes the content at every node that
//! holds it.

use std::time::{Duration, Instant};

use tidewire::demo::LocalFederation;
use tidewire_proto::v1 as pb;

async fn publish(f: &LocalFederation, node: &str, n: serde_json::Value) -> String {
    pb::publisher_client::PublisherClient::new(f.conn(node).connect().await.expect("connect"))
        .publish(pb::PublishRequest {
            notification_json: n.to_string(),
            idempotency_key: String::new(),
        })
        .await
        .expect("publish")
        .into_inner()
        .id
}

async fn events(f: &LocalFederation, node: &str, id: &str, event: &str) -> usize {
    pb::admin_client::AdminClient::new(f.conn(node).connect().await.expect("connect"))
        .audit_query(pb::AuditQueryRequest {
            notification: id.into(),
            event: event.into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .entries
        .len()
}

async fn held(f: &LocalFederation, node: &str, id: &str) -> bool {
    pb::admin_client::AdminClient::new(f.conn(node).connect().await.expect("connect"))
        .cases_list(pb::CasesListRequest { limit: 0 })
        .await
        .expect("cases")
        .into_inner()
        .items
        .iter()
        .any(|i| i.id == id)
}

async fn until(within: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pair() -> (tempfile::TempDir, LocalFederation) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let f = LocalFederation::start(
        &tmp.path().join("f"),
        &["maoc-n", "dakar"],
        &["maoc-n:dakar"],
    )
    .await
    .expect("start");
    f.converge(Duration::from_secs(20)).await.expect("converge");
    (tmp, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_notification_is_never_forwarded() {
    let (_tmp, f) = pair().await;
    let expired = publish(&f, "maoc-n", serde_json::json!({
        "kind": "alert", "routes": ["atlantic.west-africa"], "handling": "H0",
        "audience": ["node:dakar"], "expires_at": "2020-01-01T00:00:00Z", "fields": {"narrative": "stale"}
    }))
    .await;
    let fresh = publish(
        &f,
        "maoc-n",
        serde_json::json!({
            "kind": "alert", "routes": ["atlantic.west-africa"], "handling": "H0",
            "audience": ["node:dakar"], "fields": {"narrative": "current"}
        }),
    )
    .await;
    // The fresh one, queued after the expired one, arrives: the expired one was resolved first.
    until(
        Duration::from_secs(10),
        "the fresh notification at dakar",
        async || events(&f, "dakar", &fresh, "received").await > 0,
    )
    .await;
    assert_eq!(events(&f, "dakar", &expired, "received").await, 0);
    assert_eq!(
        events(&f, "maoc-n", &expired, "expired").await,
        1,
        "the origin records why it did not send"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_recall_deletes_the_content_where_it_is_held() {
    let (_tmp, f) = pair().await;
    let id = publish(
        &f,
        "maoc-n",
        serde_json::json!({
            "kind": "vessel_of_interest", "routes": ["atlantic.west-africa"], "handling": "H1",
            "audience": ["node:dakar"], "fields": {"vessel": {"name": "MV Wrong", "imo": "9000001"}}
        }),
    )
    .await;
    until(Duration::from_secs(10), "dakar to hold it", async || {
        held(&f, "dakar", &id).await
    })
    .await;
    let recall = publish(
        &f,
        "maoc-n",
        serde_json::json!({
            "kind": "recall", "routes": ["atlantic.west-africa"], "handling": "H1",
            "audience": ["node:dakar"], "recalls": id, "fields": {"reason": "vessel misidentified"}
        }),
    )
    .await;
    until(
        Duration::from_secs(10),
        "the recall to reach dakar",
        async || events(&f, "dakar", &recall, "received").await > 0,
    )
    .await;
    assert!(
        !held(&f, "dakar", &id).await,
        "dakar must no longer hold the recalled content"
    );
    assert!(
        !held(&f, "maoc-n", &id).await,
        "the origin deletes its own copy too"
    );
    assert_eq!(events(&f, "dakar", &id, "recalled").await, 1);
    f.stop().await;
}
