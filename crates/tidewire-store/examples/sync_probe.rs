//! Diagnostic: apply + sync cost of the sled store as it grows, with envelope-sized values.
//! `cargo run --release -p tidewire-store --example sync_probe`
use std::time::Instant;
use tidewire_store::{Op, SledStore, Space, Store};

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SledStore::open(dir.path()).expect("open");
    let mut k = 0u64;
    for round in 0..8 {
        let t = Instant::now();
        let batches = 40;
        for _ in 0..batches {
            let ops: Vec<Op> = (0..64)
                .map(|_| {
                    k += 1;
                    let mut key = rand_key(k).to_vec();
                    key.extend_from_slice(b"maoc-n");
                    Op::put(Space::Notifications, key, vec![7u8; 3600])
                })
                .collect();
            s.apply(&ops).expect("apply");
            s.sync().expect("sync");
        }
        let per = t.elapsed() / batches;
        eprintln!(
            "after {:>6} entries: {:?} per batch of 64 (apply + sync), {:.0} entries/s",
            k,
            per,
            64.0 / per.as_secs_f64()
        );
        let _ = round;
    }
}

fn rand_key(k: u64) -> [u8; 16] {
    // Spread like random notification ids.
    let x = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&x.to_be_bytes());
    out[8..].copy_from_slice(&x.rotate_left(17).to_be_bytes());
    out
}
