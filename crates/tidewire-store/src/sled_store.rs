//! The sled implementation. All spaces live in one sled tree, keyed `space byte ‖ key`, so that
//! one `apply_batch` is atomic across spaces.
//!
//! Durability: sled's `flush()` ends in `sync_file_range`, which is not an fsync (no drive cache
//! flush, no metadata). [`SledStore::sync`] therefore follows it with `sync_all` on a handle kept
//! open on sled's data file, so that "synced" survives a power cut, not only a process crash.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::{Entry, Op, Space, Store, StoreError};

/// A store in a directory on disk.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    files: Mutex<Vec<File>>,
    dir: PathBuf,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish()
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn full_key(space: Space, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(space as u8);
    k.extend_from_slice(key);
    k
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(1000))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| open_err(format!("{e} (is another node using this data directory?)")))?;
        let tree = db
            .open_tree("tidewire")
            .map_err(|e| open_err(e.to_string()))?;
        let store = SledStore {
            db,
            tree,
            files: Mutex::new(Vec::new()),
            dir: dir.to_owned(),
        };
        store.refresh_files()?;
        Ok(store)
    }

    /// Opens the handles that [`Store::sync`] fsyncs.
    fn refresh_files(&self) -> Result<(), StoreError> {
        // sled creates its `db` file on open; the directory handle covers new snapshot files.
        let files = vec![
            File::open(self.dir.join("db")).map_err(io)?,
            File::open(&self.dir).map_err(io)?,
        ];
        *self
            .files
            .lock()
            .map_err(|_| StoreError::Io("file handle lock poisoned".into()))? = files;
        Ok(())
    }
}

impl Store for SledStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(full_key(space, key))
            .map_err(io)?
            .map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let p = full_key(space, prefix);
        let start = full_key(space, from.max(prefix));
        let mut out = Vec::new();
        for item in self.tree.range(start..) {
            let (k, v) = item.map_err(io)?;
            if !k.starts_with(&p) || out.len() >= limit {
                break;
            }
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn last(&self, space: Space, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
        let p = full_key(space, prefix);
        match self.tree.scan_prefix(&p).next_back() {
            Some(item) => {
                let (k, v) = item.map_err(io)?;
                Ok(Some((k[1..].to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn count(&self, space: Space, prefix: &[u8]) -> Result<u64, StoreError> {
        Ok(self.tree.scan_prefix(full_key(space, prefix)).count() as u64)
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put { space, key, value } => {
                    batch.insert(full_key(*space, key), value.as_slice())
                }
                Op::Delete { space, key } => batch.remove(full_key(*space, key)),
            }
        }
        self.tree.apply_batch(batch).map_err(io)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(io)?;
        let files = self
            .files
            .lock()
            .map_err(|_| StoreError::Io("file handle lock poisoned".into()))?;
        for f in files.iter() {
            f.sync_all().map_err(io)?;
        }
        Ok(())
    }
}
