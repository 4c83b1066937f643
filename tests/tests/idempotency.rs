//! Proves that an idempotency key makes publish retries safe: a retry after the first publish
//! is durable gets its id back, and retries that arrive while the first is still in flight (a
//! client that timed out during a slow fsync, a stream that repeats itself) wait for it
//! instead of publishing a second notification.

use std::time::Duration;

use anyhow::ensure;
use tidewire_proto::v1 as pb;
use tidewire_testkit::{Kit, counter, notification};

fn request(case_ref: &str, key: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        notification_json: notification(case_ref, &["node:b"]).to_string(),
        idempotency_key: key.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_key_gets_the_first_id_and_publishes_nothing_new()
-> anyhow::Result<()> {
    let kit = Kit::start(&["a", "b"], &["a:b"]).await?;
    let mut client = pb::publisher_client::PublisherClient::new(kit.channel("a").await?);
    let first = client
        .publish(request("RETRY-1", "maoc-n/RETRY-1"))
        .await?
        .into_inner();
    ensure!(!first.duplicate, "the first publish is not a duplicate");
    let again = client
        .publish(request("RETRY-1", "maoc-n/RETRY-1"))
        .await?
        .into_inner();
    ensure!(again.duplicate, "the retry is answered as a duplicate");
    ensure!(
        (again.id.as_str(), again.origin_seq) == (first.id.as_str(), first.origin_seq),
        "the retry gets the first id and origin seq: {again:?} against {first:?}"
    );
    let feed = kit.deliveries("b", 1, Duration::from_secs(15)).await?;
    ensure!(feed[0].id == first.id);
    let a = kit.status("a").await?;
    ensure!(counter(&a, "published") == 1, "{:?}", a.counters);
    kit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_while_the_first_is_in_flight_wait_for_it_instead_of_publishing_again()
-> anyhow::Result<()> {
    let kit = Kit::start(&["a", "b"], &["a:b"]).await?;
    let channel = kit.channel("a").await?;
    const KEY: &str = "maoc-n/INFLIGHT-1";

    // Eight unary publishes with one key at once, and a stream that repeats it three times
    // (one batch: the repeats meet the first before it is durable).
    let unary = (0..8).map(|_| {
        let mut c = pb::publisher_client::PublisherClient::new(channel.clone());
        async move { anyhow::Ok(c.publish(request("INFLIGHT-1", KEY)).await?.into_inner()) }
    });
    let stream = async {
        let reqs = futures::stream::iter((0..3).map(|_| request("INFLIGHT-1", KEY)));
        let mut replies = pb::publisher_client::PublisherClient::new(channel.clone())
            .publish_stream(reqs)
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = futures::StreamExt::next(&mut replies).await {
            out.push(r?);
        }
        anyhow::Ok(out)
    };
    let (unary, streamed) = tokio::join!(futures::future::join_all(unary), stream);
    let mut replies = streamed?;
    for r in unary {
        replies.push(r?);
    }
    ensure!(replies.len() == 11, "{replies:?}");
    ensure!(
        replies.iter().all(|r| r.error_code == 0),
        "every publish succeeded: {replies:?}"
    );
    let id = &replies[0].id;
    ensure!(
        replies.iter().all(|r| &r.id == id),
        "every reply names the one notification: {replies:?}"
    );
    ensure!(
        replies.iter().filter(|r| !r.duplicate).count() == 1,
        "exactly one reply is the original: {replies:?}"
    );

    let feed = kit.deliveries("b", 1, Duration::from_secs(15)).await?;
    ensure!(&feed[0].id == id);
    let a = kit.status("a").await?;
    ensure!(counter(&a, "published") == 1, "{:?}", a.counters);
    kit.stop().await;
    Ok(())
}

/// An idempotency key names one notification. A retry may write it differently (its keys in
/// another order, pretty-printed) and still gets the first id; a different notification under
/// a key already used is refused with ALREADY_EXISTS and publishes nothing, instead of being
/// answered with the first one's id and silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_notification_is_refused_and_publishes_nothing()
-> anyhow::Result<()> {
    let kit = Kit::start(&["a", "b"], &["a:b"]).await?;
    const KEY: &str = "maoc-n/REUSE-1";
    let mut client = pb::publisher_client::PublisherClient::new(kit.channel("a").await?);
    let first = client.publish(request("REUSE-1", KEY)).await?.into_inner();

    // The same notification written another way: keys reversed, pretty-printed, 5.610.
    let n = notification("REUSE-1", &["node:b"]);
    let reversed: serde_json::Map<String, serde_json::Value> = n
        .as_object()
        .expect("an object")
        .iter()
        .rev()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let rewritten = serde_json::to_string_pretty(&reversed)?.replace("5.61", "5.610");
    let again = client
        .publish(pb::PublishRequest {
            notification_json: rewritten,
            idempotency_key: KEY.into(),
        })
        .await?
        .into_inner();
    ensure!(again.duplicate && again.id == first.id, "{again:?}");

    let check_refused = async |client: &mut pb::publisher_client::PublisherClient<_>| {
        let e = client
            .publish(request("REUSE-2", KEY))
            .await
            .expect_err("another notification under a used key");
        ensure!(e.code() == tonic::Code::AlreadyExists, "{e:?}");
        ensure!(
            e.message().contains(KEY) && e.message().contains(&first.id),
            "names the key and the notification it was used for: {}",
            e.message()
        );
        Ok(())
    };
    // The first publish is durable by now: this checks the key's stored record.
    check_refused(&mut client).await?;

    let audit = kit.audit("a", "published").await?;
    ensure!(audit.len() == 1, "one publish on the ledger: {audit:?}");
    kit.stop().await;
    Ok(())
}
