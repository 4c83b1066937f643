//! The mutation of the quick in-suite fuzzers: random items written over, inserted into or cut
//! out of a valid input. Generic over bytes and characters, and dependency-free, so that the
//! policy crate's fuzzer includes this same file (`#[path]`) instead of a copy.

/// Overwrites, inserts or removes `junk` in `items` at `at` (a fraction of the length), as
/// `how % 3` picks.
pub fn mutated<T: Copy>(mut items: Vec<T>, how: u8, at: f64, junk: &[T]) -> Vec<T> {
    let i = ((items.len() as f64) * at) as usize;
    match how % 3 {
        0 => {
            for (k, x) in junk.iter().enumerate() {
                if let Some(slot) = items.get_mut(i + k) {
                    *slot = *x;
                }
            }
        }
        1 => {
            items.splice(i..i, junk.iter().copied());
        }
        _ => {
            let end = (i + junk.len()).min(items.len());
            items.drain(i..end);
        }
    }
    items
}
