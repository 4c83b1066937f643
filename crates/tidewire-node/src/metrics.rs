//! Prometheus text exposition on a separate port, from the node's own counters.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::node::Node;

/// Renders the counters in the Prometheus text format.
pub fn render(node: &Node) -> String {
    let (counters, refused) = node.counters.snapshot();
    let mut out = String::new();
    let id = node.id();
    for (name, v) in counters {
        if name == "refused" {
            continue;
        }
        out.push_str(&format!(
            "# TYPE tidewire_{name}_total counter\ntidewire_{name}_total{{node=\"{id}\"}} {v}\n"
        ));
    }
    out.push_str("# TYPE tidewire_refused_total counter\n");
    for (reason, v) in refused {
        out.push_str(&format!(
            "tidewire_refused_total{{node=\"{id}\",reason=\"{reason}\"}} {v}\n"
        ));
    }
    out.push_str("# TYPE tidewire_link_up gauge\n");
    for (peer, l) in node.links.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        out.push_str(&format!(
            "tidewire_link_up{{node=\"{id}\",peer=\"{peer}\"}} {}\n",
            u8::from(l.up)
        ));
    }
    out.push_str("# TYPE tidewire_link_backlog gauge\n");
    for (peer, queued) in node.link_backlogs() {
        out.push_str(&format!(
            "tidewire_link_backlog{{node=\"{id}\",peer=\"{peer}\"}} {queued}\n"
        ));
    }
    // Copies queued by destination, including those no route reaches yet (no link counts
    // them), and how long the oldest of each has waited.
    out.push_str("# TYPE tidewire_destination_backlog gauge\n");
    let queues = node.queues();
    for q in &queues {
        out.push_str(&format!(
            "tidewire_destination_backlog{{node=\"{id}\",destination=\"{}\",routed=\"{}\"}} {}\n",
            q.dest,
            q.next_hop.is_some(),
            q.queued
        ));
    }
    // How long the copy that has waited longest on each link has waited: what to alert on
    // when a link stays down for hours.
    out.push_str("# TYPE tidewire_link_oldest_waiting_seconds gauge\n");
    let now = tidewire_core::timefmt::now_ms();
    for (peer, since) in node.link_oldest_waiting(&queues) {
        out.push_str(&format!(
            "tidewire_link_oldest_waiting_seconds{{node=\"{id}\",peer=\"{peer}\"}} {:.3}\n",
            (now - since).max(0) as f64 / 1000.0
        ));
    }
    out.push_str(&format!(
        "# TYPE tidewire_uptime_seconds gauge\ntidewire_uptime_seconds{{node=\"{id}\"}} {}\n",
        node.uptime_s()
    ));
    let commits = node.commit_stats();
    let store = node.store.stats();
    for (name, kind, v) in [
        (
            "store_writable",
            "gauge",
            f64::from(u8::from(node.store_writable())),
        ),
        ("store_log_bytes", "gauge", store.log_bytes as f64),
        ("store_log_segments", "gauge", f64::from(store.log_segments)),
        (
            "store_replayed_at_start",
            "gauge",
            store.replayed_at_open as f64,
        ),
        ("store_slow_commits_total", "counter", commits.slow as f64),
        (
            "store_longest_commit_seconds",
            "gauge",
            commits.longest_us as f64 / 1e6,
        ),
    ] {
        out.push_str(&format!(
            "# TYPE tidewire_{name} {kind}\ntidewire_{name}{{node=\"{id}\"}} {v}\n"
        ));
    }
    // How long synced commits took, as a histogram (its `_count` counts them, its `_sum` is
    // their time together): every publish and acknowledgement waits for one, so its upper
    // buckets are the disk's share of the tail latency.
    out.push_str("# TYPE tidewire_store_commit_duration_seconds histogram\n");
    let mut within = 0;
    for (bound, n) in tidewire_store::COMMIT_BUCKETS_US.iter().zip(commits.within) {
        within += n;
        out.push_str(&format!(
            "tidewire_store_commit_duration_seconds_bucket{{node=\"{id}\",le=\"{}\"}} {within}\n",
            *bound as f64 / 1e6
        ));
    }
    out.push_str(&format!(
        "tidewire_store_commit_duration_seconds_bucket{{node=\"{id}\",le=\"+Inf\"}} {}\n\
         tidewire_store_commit_duration_seconds_sum{{node=\"{id}\"}} {}\n\
         tidewire_store_commit_duration_seconds_count{{node=\"{id}\"}} {}\n",
        commits.synced,
        commits.total_us as f64 / 1e6,
        commits.synced
    ));
    out
}

/// Answers every HTTP request on `listener` with the metrics page.
pub async fn serve(node: Arc<Node>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut sock, _)) = accepted else {
            continue;
        };
        let conn = node.clone();
        node.tracker.spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                sock.read(&mut buf),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            // The request line: `GET /metrics HTTP/1.1`.
            let line = std::str::from_utf8(&buf[..n])
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("");
            let mut parts = line.split_whitespace();
            let (status, body) = match (parts.next(), parts.next()) {
                (Some("GET"), Some("/metrics" | "/")) => ("200 OK", render(&conn)),
                (Some("GET"), _) => ("404 Not Found", "metrics are at /metrics\n".to_owned()),
                _ => (
                    "405 Method Not Allowed",
                    "use GET /metrics\n".to_owned(),
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }.in_current_span());
    }
}
