//! Diagnostic: how long a node's writes wait for the group commit, at a given arrival rate.
//!
//! `cargo run --release -p tidewire-store --example commit_latency [RATE] [COUNT] [ordered|random]`
//!
//! Submits `COUNT` batches (default 20,000) to a [`Committer`] over a fresh sled store, paced at
//! `RATE` batches a second (default 5,000; 0: as fast as they are answered, 256 in flight).
//! Each batch is what a node writes for one notification it receives: the envelope (1 KiB,
//! kept in the log), its seen mark, an outbox item and a feed entry (small values), and an
//! overwrite of a per-origin counter. The envelope and seen mark are keyed by the notification's
//! id: `ordered` (the default) makes ids as a node does, time first, and `random` makes 16 random
//! bytes, as nodes did before. Prints the time from submitting a batch to its receipt answering
//! (p50, p90, p99, max), the batches per second, and the CPU time the process used per batch.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidewire_store::{Committer, Op, SledStore, Space, Store};

/// 64 bits from a counter, scattered (splitmix64).
fn scatter(i: u64) -> u64 {
    let mut z = i
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn batch(i: u64, ordered: bool) -> Vec<Op> {
    let seq = i.to_be_bytes();
    let mut id = Vec::with_capacity(16);
    if ordered {
        id.extend_from_slice(&seq);
    } else {
        id.extend_from_slice(&scatter(i ^ 0xA5A5).to_be_bytes());
    }
    id.extend_from_slice(&scatter(i).to_be_bytes());
    vec![
        Op::put(
            Space::Notifications,
            id.clone(),
            vec![(i % 251) as u8; 1024],
        ),
        Op::put(Space::Seen, id, Vec::new()),
        Op::put(Space::Outbox, seq.to_vec(), seq.repeat(6)),
        Op::put(Space::Feed, seq.to_vec(), seq.repeat(4)),
        Op::put(Space::Meta, b"origin:maoc-n".to_vec(), seq.to_vec()),
    ]
}

/// CPU time of this process so far (user and system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn main() {
    let mut ordered = true;
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter(|a| match a.as_str() {
            "ordered" | "random" => {
                ordered = a == "ordered";
                false
            }
            _ => true,
        })
        .map(|a| a.parse().expect("RATE and COUNT are numbers"))
        .collect();
    let rate = args.first().copied().unwrap_or(5_000);
    let count = args.get(1).copied().unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("open"));
    let committer = Committer::start(store);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cpu_before = cpu_time();
    let (latencies, took) = runtime.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
        let window = Arc::new(tokio::sync::Semaphore::new(256));
        let started = Instant::now();
        for i in 0..count {
            if rate > 0 {
                let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            let permit = window.clone().acquire_owned().await.expect("window");
            let receipt = committer.submit(batch(i, ordered));
            let submitted = Instant::now();
            let tx = tx.clone();
            tokio::spawn(async move {
                Committer::wait(receipt).await.expect("commit");
                let _ = tx.send(submitted.elapsed());
                drop(permit);
            });
        }
        drop(tx);
        let mut latencies = Vec::with_capacity(count as usize);
        while let Some(d) = rx.recv().await {
            latencies.push(d);
        }
        (latencies, started.elapsed())
    });
    let mut us: Vec<u64> = latencies.iter().map(|d| d.as_micros() as u64).collect();
    us.sort_unstable();
    let at = |q: f64| us[((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1];
    let cpu = cpu_time().saturating_sub(cpu_before);
    println!(
        "{} {} batches in {:.2} s ({:.0} /s, CPU {:.1} µs each): submit to receipt p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        if ordered { "ordered" } else { "random" },
        us.len(),
        took.as_secs_f64(),
        us.len() as f64 / took.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / us.len().max(1) as f64,
        at(0.50) as f64 / 1000.0,
        at(0.90) as f64 / 1000.0,
        at(0.99) as f64 / 1000.0,
        us.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
}
