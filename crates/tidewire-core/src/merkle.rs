//! Merkle trees for signing rounds: one signature over the root of many messages, each message
//! carrying its inclusion path to that root.
//!
//! The tree is the one of RFC 9162 §2.1 (Certificate Transparency v2): a leaf hashes as
//! `SHA-256(0x00 ‖ data)`, an interior node as `SHA-256(0x01 ‖ left ‖ right)`, and a list of `n`
//! leaves splits at the largest power of two below `n`. The prefixes keep a leaf from passing for
//! a node. A path alone can fit trees of neighbouring sizes (the first leaf of 3 and of 4 has the
//! same path), so the signed round message includes the tree size with the root: together they
//! fix the tree's shape, and a path proves one index in one tree and nothing else. Verification is §2.1.3.2's algorithm.

use sha2::{Digest, Sha256};

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// Most leaves one signing round may have: a path is then at most this many bits' worth of
/// hashes (`MAX_PATH`), which bounds what a receiver hashes per entry.
pub const MAX_LEAVES: usize = 1 << MAX_PATH;

/// Longest inclusion path a receiver accepts.
pub const MAX_PATH: usize = 16;

/// The hash of a leaf: its data is the domain-separated message the round signs for it.
pub fn leaf_hash(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of `leaves` and every leaf's inclusion path, in leaf order. `leaves` must not be
/// empty.
pub fn build(leaves: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
    assert!(!leaves.is_empty(), "a merkle tree needs at least one leaf");
    let depth = usize::BITS - (leaves.len() - 1).leading_zeros();
    let mut paths = vec![Vec::with_capacity(depth as usize); leaves.len()];
    let root = subtree(leaves, &mut paths);
    (root, paths)
}

fn subtree(leaves: &[Hash], paths: &mut [Vec<Hash>]) -> Hash {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = split(leaves.len());
    let (lp, rp) = paths.split_at_mut(k);
    let left = subtree(&leaves[..k], lp);
    let right = subtree(&leaves[k..], rp);
    lp.iter_mut().for_each(|p| p.push(right));
    rp.iter_mut().for_each(|p| p.push(left));
    node_hash(&left, &right)
}

/// The largest power of two below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root that `leaf` at `index` of a tree of `size` leaves reaches along `path`, or `None` if
/// the path does not fit that position in that tree (RFC 9162 §2.1.3.2).
pub fn root_from_path(index: u64, size: u64, leaf: &Hash, path: &[Hash]) -> Option<Hash> {
    if index >= size || path.len() > MAX_PATH {
        return None;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n as u32)
            .map(|i| leaf_hash(&[&i.to_be_bytes()]))
            .collect()
    }

    /// RFC 9162's recursive definition, written out plainly, to check `build` against.
    fn mth(l: &[Hash]) -> Hash {
        if l.len() == 1 {
            return l[0];
        }
        let k = split(l.len());
        node_hash(&mth(&l[..k]), &mth(&l[k..]))
    }

    #[test]
    fn one_leaf_is_its_own_root_with_an_empty_path() {
        let l = leaves(1);
        let (root, paths) = build(&l);
        assert_eq!(root, l[0]);
        assert_eq!(paths, vec![Vec::<Hash>::new()]);
        assert_eq!(root_from_path(0, 1, &l[0], &[]), Some(root));
    }

    #[test]
    fn split_is_the_largest_power_of_two_below() {
        assert_eq!(
            [2, 3, 4, 5, 8, 9, 64, 65].map(split),
            [1, 2, 2, 4, 4, 8, 32, 64]
        );
    }

    proptest! {
        #[test]
        fn every_path_leads_its_leaf_to_the_root(n in 1usize..300) {
            let l = leaves(n);
            let (root, paths) = build(&l);
            prop_assert_eq!(root, mth(&l));
            for (i, (leaf, path)) in l.iter().zip(&paths).enumerate() {
                prop_assert_eq!(root_from_path(i as u64, n as u64, leaf, path), Some(root));
            }
        }

        #[test]
        fn a_path_proves_only_its_own_index_leaf_and_depth(
            n in 2usize..200, pick in any::<prop::sample::Index>(), other in any::<prop::sample::Index>(),
        ) {
            let l = leaves(n);
            let (root, paths) = build(&l);
            let i = pick.index(n);
            let j = other.index(n);
            if j != i {
                prop_assert_ne!(root_from_path(j as u64, n as u64, &l[i], &paths[i]), Some(root));
                prop_assert_ne!(root_from_path(i as u64, n as u64, &l[j], &paths[i]), Some(root));
            }
            // A path has the depth of its tree. (Trees of neighbouring sizes can share a path:
            // that is why a round signature signs the size with the root.)
            prop_assert_ne!(root_from_path(i as u64, 2 * n as u64, &l[i], &paths[i]), Some(root));
            let mut cut = paths[i].clone();
            cut.pop();
            prop_assert_ne!(root_from_path(i as u64, n as u64, &l[i], &cut), Some(root));
            let mut flipped = paths[i].clone();
            flipped[0][0] ^= 1;
            prop_assert_ne!(root_from_path(i as u64, n as u64, &l[i], &flipped), Some(root));
        }
    }

    #[test]
    fn an_index_beyond_the_tree_or_an_overlong_path_is_refused() {
        let l = leaves(4);
        let (_, paths) = build(&l);
        assert_eq!(root_from_path(4, 4, &l[0], &paths[0]), None);
        assert_eq!(root_from_path(0, 0, &l[0], &[]), None);
        let long = vec![[0u8; 32]; MAX_PATH + 1];
        assert_eq!(root_from_path(0, u64::MAX, &l[0], &long), None);
    }
}
