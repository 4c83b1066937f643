//! A filter in front of the spaces that are asked mostly about keys they do not hold (the
//! seen-set: every notification a node receives is looked up there, and nearly all are new;
//! publishers' idempotency keys, likewise at every publish that has one).
//! A sled lookup walks the tree from its root, a few microseconds for a key that is not there;
//! the filter answers "certainly not stored" for most such keys in a few tens of nanoseconds.
//!
//! It is a Bloom filter that grows by layers instead of being rebuilt: when a layer has taken
//! its capacity, a new one twice its size takes the next keys, and a key may be stored if any
//! layer says so. Each layer errs on about 1 % of absent keys. A key is never removed (a
//! deleted key costs one sled lookup until the store is next opened, when the filter is built
//! again from what sled holds). It never answers "absent" for a key it was given.

use std::hash::Hasher;

/// Bits per key a layer is sized for: with [`HASHES`] probes, about 1 % false positives.
const BITS_PER_KEY: u64 = 10;
/// Probes per key.
const HASHES: u64 = 7;
/// The first layer's capacity, at least.
const MIN_CAPACITY: u64 = 1 << 16;

/// The filter; see the module documentation.
#[derive(Debug)]
pub(crate) struct KeyFilter {
    layers: Vec<Layer>,
}

/// The hash of `key` a filter uses. Fixed, not seeded per process: keys that collide on purpose
/// only make their lookups go to sled, as they all did without the filter.
pub(crate) fn hash(key: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(key);
    h.finish()
}

#[derive(Debug)]
struct Layer {
    bits: Vec<u64>,
    /// Mask of a bit index (the layer holds a power of two of bits).
    mask: u64,
    capacity: u64,
    count: u64,
}

impl Layer {
    fn new(capacity: u64) -> Layer {
        let bits = (capacity * BITS_PER_KEY).next_power_of_two().max(64);
        Layer {
            bits: vec![0; (bits / 64) as usize],
            mask: bits - 1,
            capacity,
            count: 0,
        }
    }

    fn insert(&mut self, hash: u64) {
        for b in probes(hash, self.mask) {
            self.bits[(b / 64) as usize] |= 1 << (b % 64);
        }
        self.count += 1;
    }

    fn may_contain(&self, hash: u64) -> bool {
        probes(hash, self.mask).all(|b| self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0)
    }
}

/// The bit indexes of `hash` in a layer of `mask + 1` bits (double hashing from its halves).
fn probes(hash: u64, mask: u64) -> impl Iterator<Item = u64> {
    let (h1, h2) = (hash & 0xffff_ffff, (hash >> 32) | 1);
    (0..HASHES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) & mask)
}

impl KeyFilter {
    /// An empty filter sized for `expected` keys at first (it grows past that).
    pub(crate) fn with_capacity(expected: u64) -> KeyFilter {
        KeyFilter {
            layers: vec![Layer::new(expected.max(MIN_CAPACITY))],
        }
    }

    /// Adds `key`.
    pub(crate) fn insert(&mut self, key: &[u8]) {
        self.insert_hash(hash(key));
    }

    /// Adds the key whose [`hash`] is `hash`.
    pub(crate) fn insert_hash(&mut self, hash: u64) {
        let last = self.layers.last().expect("a filter has a layer");
        if last.count >= last.capacity {
            let next = Layer::new(last.capacity * 2);
            self.layers.push(next);
        }
        self.layers
            .last_mut()
            .expect("a filter has a layer")
            .insert(hash);
    }

    /// False only if `key` was never inserted.
    pub(crate) fn may_contain(&self, key: &[u8]) -> bool {
        let hash = hash(key);
        self.layers.iter().any(|l| l.may_contain(hash))
    }

    /// Bytes of memory its bits take.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bits.len() * 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn a_key_inserted_is_never_reported_absent(
            keys in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..40), 0..400),
            capacity in 1u64..200,
        ) {
            let mut f = KeyFilter::with_capacity(capacity);
            // Small layers, so that the test crosses several of them.
            f.layers = vec![Layer::new(capacity)];
            for (i, k) in keys.iter().enumerate() {
                f.insert(k);
                for earlier in &keys[..=i] {
                    proptest::prop_assert!(f.may_contain(earlier));
                }
            }
        }
    }

    #[test]
    fn absent_keys_are_mostly_reported_absent_as_the_filter_grows() {
        let mut f = KeyFilter::with_capacity(0);
        let key = |i: u64| {
            let mut k = vec![2u8];
            k.extend_from_slice(&i.to_be_bytes());
            k
        };
        // Four times the first layer's capacity: three layers.
        let n = 4 * MIN_CAPACITY;
        for i in 0..n {
            f.insert(&key(i));
        }
        assert_eq!(f.layers.len(), 3, "grown by layers of doubling capacity");
        assert!((0..n).all(|i| f.may_contain(&key(i))));
        let false_positives = (n..n + 100_000).filter(|i| f.may_contain(&key(*i))).count();
        assert!(
            false_positives < 4_000,
            "{false_positives} of 100,000 absent keys reported as maybe stored"
        );
        assert!(f.bytes() < 2 * 1024 * 1024, "{} bytes", f.bytes());
    }
}
