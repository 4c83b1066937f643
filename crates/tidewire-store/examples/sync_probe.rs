//! Measures apply + sync latency of the sled store (diagnostic).
use std::time::Instant;
use tidewire_store::{Op, SledStore, Space, Store};
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    for batch in [1usize, 64, 256] {
        let t = Instant::now();
        let n = 50;
        for i in 0..n {
            let ops: Vec<Op> = (0..batch)
                .map(|j| {
                    Op::put(
                        Space::Feed,
                        ((i * batch + j) as u64).to_be_bytes().to_vec(),
                        vec![7u8; 1200],
                    )
                })
                .collect();
            s.apply(&ops).unwrap();
            let t2 = Instant::now();
            s.sync().unwrap();
            if i == n - 1 {
                eprintln!("  last sync {:?}", t2.elapsed());
            }
        }
        let per = t.elapsed() / n as u32;
        eprintln!(
            "batch {batch}: {:?} per apply+sync, {:.0} msgs/s",
            per,
            batch as f64 / per.as_secs_f64()
        );
    }
}
