//! An in-memory store for unit tests of the layers above; same semantics, no durability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::{Entry, Op, Space, Store, StoreError};

type Map = BTreeMap<(Space, Vec<u8>), Vec<u8>>;

/// A store that lives in memory.
#[derive(Debug, Default)]
pub struct MemStore {
    map: Mutex<Map>,
}

impl MemStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Map>, StoreError> {
        self.map
            .lock()
            .map_err(|_| StoreError::Io("memory store lock poisoned".into()))
    }
}

impl Store for MemStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.get(&(space, key.to_vec())).cloned())
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let map = self.lock()?;
        Ok(map
            .range((space, from.max(prefix).to_vec())..)
            .take_while(|((s, k), _)| *s == space && k.starts_with(prefix))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last(&self, space: Space, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
        let map = self.lock()?;
        Ok(map
            .range((space, prefix.to_vec())..)
            .take_while(|((s, k), _)| *s == space && k.starts_with(prefix))
            .last()
            .map(|((_, k), v)| (k.clone(), v.clone())))
    }

    fn floor(&self, space: Space, prefix: &[u8], at: &[u8]) -> Result<Option<Entry>, StoreError> {
        let map = self.lock()?;
        Ok(map
            .range(..=(space, at.to_vec()))
            .next_back()
            .filter(|((s, k), _)| *s == space && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone())))
    }

    fn count(&self, space: Space, prefix: &[u8]) -> Result<u64, StoreError> {
        Ok(self.scan(space, prefix, prefix, usize::MAX)?.len() as u64)
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut map = self.lock()?;
        for op in ops {
            match op {
                Op::Put { space, key, value } => {
                    map.insert((*space, key.clone()), value.clone());
                }
                Op::Delete { space, key } => {
                    map.remove(&(*space, key.clone()));
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
