//! Diagnostic: apply + sync cost of the sled store as it grows, with envelope-sized values.
//!
//! `cargo run --release -p tidewire-store --example sync_probe [SCENARIO...]`
//!
//! Scenarios (default: `large small mixed churn read`), each in a fresh store, batches of 64 with
//! one `apply` + one `sync` per batch, as the group-commit thread does:
//! - `large`: 64 puts of 3.6 KiB values (envelopes).
//! - `small`: 64 puts of 40-byte values.
//! - `size=N`: 64 puts of N-byte values.
//! - `mixed`: 64 notifications as a node stores them: per notification one 3.6 KiB envelope and
//!   six small values (8–60 bytes) in other spaces, one of them an overwrite of the same key.
//! - `churn`: `mixed`, and each batch also deletes the envelopes and outbox items written 50
//!   batches earlier (delivered and expired), so old values die as new ones arrive.
//! - `read`: after a `large` load, random `get`s and 64-entry `scan`s of the envelopes.
//!
//! `threshold=N` sets the blob threshold of the scenarios after it (default
//! `tidewire_store::BLOB_THRESHOLD`): `size=300 threshold=256 size=300` compares a 300-byte
//! value kept in sled with one in the blob log.
use std::path::Path;
use std::time::{Duration, Instant};
use tidewire_store::{Op, SledOptions, SledStore, Space, Store};

const ROUNDS: u32 = 8;
const BATCHES: u32 = 40;
const PER_BATCH: u64 = 64;
const ENVELOPE: usize = 3600;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenarios: Vec<String> = if args.is_empty() {
        ["large", "small", "mixed", "churn", "read"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args
    };
    let mut opts = SledOptions::default();
    for s in &scenarios {
        if let Some(n) = s.strip_prefix("threshold=").and_then(|n| n.parse().ok()) {
            opts.blob_threshold = n;
            println!("blob threshold {n} bytes");
            continue;
        }
        match s.as_str() {
            "large" => puts(opts, "large (3.6 KiB values)", ENVELOPE),
            "small" => puts(opts, "small (40 B values)", 40),
            "mixed" => mixed(opts, false),
            "churn" => mixed(opts, true),
            "read" => reads(opts),
            other => match other.strip_prefix("size=").and_then(|n| n.parse().ok()) {
                Some(n) => puts(opts, &format!("size={n} B"), n),
                None => eprintln!("unknown scenario {other:?}"),
            },
        }
    }
}

fn open(dir: &Path, opts: SledOptions) -> SledStore {
    SledStore::open_with(dir, opts).expect("open")
}

/// Prints one round and returns its entries/s.
fn report(unit: &str, total: u64, entries: u64, apply: Duration, sync: Duration) -> f64 {
    let el = apply + sync;
    let rate = entries as f64 / el.as_secs_f64();
    eprintln!(
        "  after {total:>6} {unit}: {:>8.0} {unit}/s  \
         (apply {:>6.2} ms, sync {:>6.2} ms per batch)",
        rate,
        apply.as_secs_f64() * 1e3 / BATCHES as f64,
        sync.as_secs_f64() * 1e3 / BATCHES as f64,
    );
    rate
}

/// CPU time of this process so far, all threads (user + system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let field = |i: usize| -> u64 {
        after_comm
            .split_whitespace()
            .nth(i)
            .and_then(|f| f.parse().ok())
            .unwrap_or(0)
    };
    // utime and stime, fields 14 and 15 of the line, in USER_HZ (100/s) ticks.
    Duration::from_millis((field(11) + field(12)) * 10)
}

fn cpu_report(name: &str, unit: &str, items: u64, cpu: Duration) {
    println!(
        "{name}: {:.1} us CPU per {unit} (process, all threads)",
        cpu.as_secs_f64() * 1e6 / items as f64
    );
}

fn summary(name: &str, unit: &str, mut rates: Vec<f64>) {
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "{name}: median {median:.0} {unit}/s (min {:.0}, max {:.0}) over {} rounds",
        rates[0],
        rates[rates.len() - 1],
        rates.len()
    );
}

fn timed(s: &SledStore, ops: &[Op], apply: &mut Duration, sync: &mut Duration) {
    let t = Instant::now();
    s.apply(ops).expect("apply");
    let t2 = Instant::now();
    s.sync().expect("sync");
    *apply += t2 - t;
    *sync += t2.elapsed();
}

fn puts(opts: SledOptions, name: &str, size: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path(), opts);
    eprintln!("{name}:");
    let mut k = 0u64;
    let mut rates = Vec::new();
    let cpu = cpu_time();
    for _ in 0..ROUNDS {
        let (mut a, mut y) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..BATCHES {
            let ops: Vec<Op> = (0..PER_BATCH)
                .map(|_| {
                    k += 1;
                    Op::put(Space::Notifications, note_key(k), value(k, size))
                })
                .collect();
            timed(&s, &ops, &mut a, &mut y);
        }
        rates.push(report("entries", k, PER_BATCH * BATCHES as u64, a, y));
    }
    summary(name, "entries", rates);
    cpu_report(name, "entry", k, cpu_time() - cpu);
}

/// One notification's writes, as `Node::ingest` stores a copy for the local node.
fn notification(n: u64, ops: &mut Vec<Op>) {
    let id = rand_key(n);
    ops.push(Op::put(
        Space::Notifications,
        note_key(n),
        value(n, ENVELOPE),
    ));
    ops.push(Op::put(Space::Seen, id.to_vec(), value(n, 8)));
    let mut fwd = id.to_vec();
    fwd.extend_from_slice(b"accra");
    ops.push(Op::put(Space::Seen, fwd, value(n, 8)));
    ops.push(Op::put(
        Space::Meta,
        b"origin_seq".to_vec(),
        n.to_be_bytes().to_vec(),
    ));
    ops.push(Op::put(Space::Feed, n.to_be_bytes().to_vec(), value(n, 24)));
    ops.push(Op::put(Space::Outbox, outbox_key(n), value(n, 40)));
    ops.push(Op::put(
        Space::Ledger,
        n.to_be_bytes().to_vec(),
        value(n, 60),
    ));
}

fn mixed(opts: SledOptions, churn: bool) {
    let name = if churn {
        "churn (mixed + deletes of 50-batch-old envelopes and outbox items)"
    } else {
        "mixed (per notification: 3.6 KiB envelope + 6 small values)"
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path(), opts);
    eprintln!("{name}:");
    let mut n = 0u64;
    let mut rates = Vec::new();
    let mut ops_rates = Vec::new();
    let cpu = cpu_time();
    for _ in 0..ROUNDS {
        let (mut a, mut y) = (Duration::ZERO, Duration::ZERO);
        let mut ops_total = 0u64;
        for _ in 0..BATCHES {
            let mut ops = Vec::new();
            for _ in 0..PER_BATCH {
                n += 1;
                notification(n, &mut ops);
                let old = n.wrapping_sub(50 * PER_BATCH);
                if churn && old >= 1 && old < n {
                    ops.push(Op::delete(Space::Notifications, note_key(old)));
                    ops.push(Op::delete(Space::Outbox, outbox_key(old)));
                }
            }
            ops_total += ops.len() as u64;
            timed(&s, &ops, &mut a, &mut y);
        }
        let notes = PER_BATCH * BATCHES as u64;
        rates.push(report("notifications", n, notes, a, y));
        ops_rates.push(ops_total as f64 / (a + y).as_secs_f64());
    }
    summary(name, "notifications", rates);
    summary(name, "ops", ops_rates);
    cpu_report(name, "notification", n, cpu_time() - cpu);
}

fn reads(opts: SledOptions) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path(), opts);
    let total = 20_000u64;
    for chunk in (1..=total).collect::<Vec<_>>().chunks(64) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|&k| Op::put(Space::Notifications, note_key(k), value(k, ENVELOPE)))
            .collect();
        s.apply(&ops).expect("apply");
    }
    s.sync().expect("sync");
    let t = Instant::now();
    let gets = 20_000u64;
    let mut bytes = 0usize;
    for i in 0..gets {
        let k = 1 + (i.wrapping_mul(7919) % total);
        bytes += s
            .get(Space::Notifications, &note_key(k))
            .expect("get")
            .expect("present")
            .len();
    }
    let el = t.elapsed();
    assert_eq!(bytes, gets as usize * ENVELOPE);
    println!(
        "read: {:.0} gets/s of 3.6 KiB values",
        gets as f64 / el.as_secs_f64()
    );
    let t = Instant::now();
    let scans = 500u64;
    let mut n = 0;
    for i in 0..scans {
        let from = rand_key(1 + i * 37 % total);
        n += s
            .scan(Space::Notifications, b"", &from[..2], 64)
            .expect("scan")
            .len();
    }
    let el = t.elapsed();
    println!(
        "read: {:.0} scanned entries/s (64-entry scans of 3.6 KiB values)",
        n as f64 / el.as_secs_f64()
    );
}

/// A value of `size` bytes that differs between keys.
fn value(k: u64, size: usize) -> Vec<u8> {
    let seed = k.wrapping_mul(0x2545_F491_4F6C_DD1D).to_be_bytes();
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        let n = (size - v.len()).min(seed.len());
        v.extend_from_slice(&seed[..n]);
    }
    v
}

fn note_key(k: u64) -> Vec<u8> {
    let mut key = rand_key(k).to_vec();
    key.extend_from_slice(b"maoc-n");
    key
}

fn outbox_key(k: u64) -> Vec<u8> {
    let mut key = b"accra\x00".to_vec();
    key.extend_from_slice(&k.to_be_bytes());
    key
}

fn rand_key(k: u64) -> [u8; 16] {
    // Spread like random notification ids.
    let x = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&x.to_be_bytes());
    out[8..].copy_from_slice(&x.rotate_left(17).to_be_bytes());
    out
}
