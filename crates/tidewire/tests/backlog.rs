//! A backlog survives its node's restart and drains when the peer returns: notifications
//! queued at maoc-n for a stopped dakar are still counted in maoc-n's status after maoc-n
//! itself restarts (the outbox index is rebuilt from the store), and reach dakar, once each,
//! when dakar comes back.

mod common;

use std::time::Duration;

use common::{events, federation, publish_alerts, wait_for};
use tidewire::demo::LocalFederation;

async fn backlog_to(f: &LocalFederation, node: &str, peer: &str) -> u64 {
    common::backlogs(f, node)
        .await
        .get(peer)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_counted_after_a_restart_and_drains_when_the_peer_returns() {
    let (_tmp, mut f) = federation(&["maoc-n", "dakar"], &["maoc-n:dakar"]).await;
    f.stop_node("dakar").await.expect("stop dakar");
    let ids = publish_alerts(&f, "maoc-n", "node:dakar", 3).await;
    assert_eq!(backlog_to(&f, "maoc-n", "dakar").await, 3);

    f.stop_node("maoc-n").await.expect("stop maoc-n");
    f.restart_node("maoc-n").await.expect("restart maoc-n");
    assert_eq!(
        backlog_to(&f, "maoc-n", "dakar").await,
        3,
        "the restarted node counts the backlog it kept on disk"
    );

    f.restart_node("dakar").await.expect("restart dakar");
    wait_for(Duration::from_secs(20), "the backlog to drain", || async {
        backlog_to(&f, "maoc-n", "dakar").await == 0
    })
    .await;
    for id in &ids {
        assert_eq!(events(&f, "dakar", id, "received").await, 1, "{id}");
    }
    f.stop().await;
}
