//! The embedded backend: one `redb` file (`[keyvalue] path`, default `warren-kv` beside the
//! config) for the buckets of one host.
//!
//! Every write is its own transaction, committed with redb's `Durability::Immediate` (written
//! and fsync'd before the guest's call returns): a value a plugin wrote before a crash or a
//! SIGKILL is there after the restart, and a write torn by the crash is never seen (redb's
//! copy-on-write commit; the file is checked and repaired on open). The file is locked while
//! the host runs: a second host on it is refused with [`KeyValueError::Locked`].
//!
//! All buckets share one table; a record's key is `<bucket> NUL <key>` (bucket names hold no
//! NUL). Reads run on the calling thread (microseconds, no I/O for cached pages); writes, which
//! wait for the disk, run on the blocking pool. A `list-keys` cursor is the number of keys
//! already returned.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{KeyValueError, incremented};

/// The one table: `<bucket> NUL <key>` → value.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("warren_keyvalue");

/// Whether a store could be opened at `path`: its folder exists and is writable.
pub fn probe(path: &Path) -> Result<(), KeyValueError> {
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let fail = |reason: String| KeyValueError::Folder { path: path.display().to_string(), reason };
    let meta = std::fs::metadata(folder).map_err(|e| fail(format!("its folder {}: {e}", folder.display())))?;
    if !meta.is_dir() {
        return Err(fail(format!("{} is not a folder", folder.display())));
    }
    if meta.permissions().readonly() {
        return Err(fail(format!("its folder {} is read-only", folder.display())));
    }
    Ok(())
}

/// An open store file.
pub struct Embedded {
    db: Arc<Database>,
    path: PathBuf,
}

/// `<bucket> NUL <key>`.
fn record_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut record = Vec::with_capacity(bucket.len() + 1 + key.len());
    record.extend_from_slice(bucket.as_bytes());
    record.push(0);
    record.extend_from_slice(key.as_bytes());
    record
}

impl Embedded {
    /// Opens (or creates) the store at `path` and takes its lock.
    pub fn open(path: &Path) -> Result<Embedded, KeyValueError> {
        let shown = path.display().to_string();
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => KeyValueError::Locked { path: shown.clone() },
            other => KeyValueError::Open { path: shown.clone(), reason: other.to_string() },
        })?;
        let store = Embedded { db: Arc::new(db), path: path.to_path_buf() };
        // The table exists from the start, so a read never meets a missing table.
        store.write(|_| Ok(()))?;
        Ok(store)
    }

    fn failed(&self, reason: impl std::fmt::Display) -> KeyValueError {
        KeyValueError::Embedded { path: self.path.display().to_string(), reason: reason.to_string() }
    }

    /// Runs `work` in one write transaction and commits it (durably).
    fn write<T>(
        &self,
        work: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Result<T, redb::StorageError>,
    ) -> Result<T, KeyValueError> {
        let txn = self.db.begin_write().map_err(|e| self.failed(e))?;
        let result = {
            let mut table = txn.open_table(TABLE).map_err(|e| self.failed(e))?;
            work(&mut table).map_err(|e| self.failed(e))?
        };
        txn.commit().map_err(|e| self.failed(e))?;
        Ok(result)
    }

    /// Like [`Embedded::write`], on the blocking pool (a commit waits for the disk).
    async fn write_off_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> Result<Result<T, KeyValueError>, redb::StorageError>
        + Send
        + 'static,
    ) -> Result<T, KeyValueError> {
        let this = Embedded { db: self.db.clone(), path: self.path.clone() };
        let joined = tokio::task::spawn_blocking(move || this.write(work)).await;
        joined.map_err(|e| self.failed(e))??
    }

    /// Runs `work` on a read transaction's table.
    fn read<T>(
        &self,
        work: impl FnOnce(&redb::ReadOnlyTable<&[u8], &[u8]>) -> Result<T, redb::StorageError>,
    ) -> Result<T, KeyValueError> {
        let txn = self.db.begin_read().map_err(|e| self.failed(e))?;
        let table = txn.open_table(TABLE).map_err(|e| self.failed(e))?;
        work(&table).map_err(|e| self.failed(e))
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KeyValueError> {
        let record = record_key(bucket, key);
        self.read(|table| Ok(table.get(record.as_slice())?.map(|v| v.value().to_vec())))
    }

    pub async fn exists(&self, bucket: &str, key: &str) -> Result<bool, KeyValueError> {
        let record = record_key(bucket, key);
        self.read(|table| Ok(table.get(record.as_slice())?.is_some()))
    }

    pub async fn get_many(
        &self,
        bucket: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KeyValueError> {
        self.read(|table| {
            keys.into_iter()
                .map(|key| {
                    let value = table.get(record_key(bucket, &key).as_slice())?.map(|v| v.value().to_vec());
                    Ok(value.map(|v| (key, v)))
                })
                .collect()
        })
    }

    pub async fn list_keys(
        &self,
        bucket: &str,
        cursor: Option<u64>,
        page: u32,
    ) -> Result<(Vec<String>, Option<u64>), KeyValueError> {
        let prefix = record_key(bucket, "");
        let skip = cursor.unwrap_or(0);
        self.read(|table| {
            let mut keys = Vec::new();
            let mut more = false;
            for entry in table.range(prefix.as_slice()..)?.skip(usize::try_from(skip).unwrap_or(usize::MAX)) {
                let (record, _) = entry?;
                let Some(key) = record.value().strip_prefix(prefix.as_slice()) else { break };
                if keys.len() == page as usize {
                    more = true;
                    break;
                }
                keys.push(String::from_utf8_lossy(key).into_owned());
            }
            let next = more.then(|| skip + keys.len() as u64);
            Ok((keys, next))
        })
    }

    pub async fn set_many(&self, bucket: &str, pairs: Vec<(String, Vec<u8>)>) -> Result<(), KeyValueError> {
        let records: Vec<_> = pairs.into_iter().map(|(k, v)| (record_key(bucket, &k), v)).collect();
        self.write_off_thread(move |table| {
            for (record, value) in &records {
                table.insert(record.as_slice(), value.as_slice())?;
            }
            Ok(Ok(()))
        })
        .await
    }

    pub async fn delete_many(&self, bucket: &str, keys: Vec<String>) -> Result<(), KeyValueError> {
        let records: Vec<_> = keys.iter().map(|k| record_key(bucket, k)).collect();
        self.write_off_thread(move |table| {
            for record in &records {
                table.remove(record.as_slice())?;
            }
            Ok(Ok(()))
        })
        .await
    }

    pub async fn increment(&self, bucket: &str, key: String, delta: u64) -> Result<u64, KeyValueError> {
        let record = record_key(bucket, &key);
        self.write_off_thread(move |table| {
            let current = table.get(record.as_slice())?.map(|v| v.value().to_vec());
            let next = match incremented(&key, current.as_deref(), delta) {
                Ok(next) => next,
                Err(e) => return Ok(Err(e)),
            };
            table.insert(record.as_slice(), next.to_string().as_bytes())?;
            Ok(Ok(next))
        })
        .await
    }

    pub async fn compare_and_swap(
        &self,
        bucket: &str,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, KeyValueError> {
        let record = record_key(bucket, &key);
        self.write_off_thread(move |table| {
            let current = table.get(record.as_slice())?.map(|v| v.value().to_vec());
            if current != expected {
                return Ok(Ok(false));
            }
            table.insert(record.as_slice(), value.as_slice())?;
            Ok(Ok(true))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Embedded, PathBuf) {
        let path = std::env::temp_dir().join(format!("warren-kv-test-{}", uuid::Uuid::new_v4()));
        (Embedded::open(&path).unwrap(), path)
    }

    #[tokio::test]
    async fn values_counters_and_swaps_in_buckets_of_their_own() {
        let (kv, path) = store();
        kv.set_many("a", vec![("k".into(), b"1".to_vec())]).await.unwrap();
        assert_eq!(kv.get("a", "k").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get("b", "k").await.unwrap(), None, "buckets do not share keys");
        assert_eq!(kv.increment("a", "k".into(), 41).await.unwrap(), 42);
        assert_eq!(kv.get("a", "k").await.unwrap(), Some(b"42".to_vec()), "counters are decimal text");
        assert!(!kv.compare_and_swap("a", "k".into(), Some(b"1".to_vec()), b"x".to_vec()).await.unwrap());
        assert!(kv.compare_and_swap("a", "k".into(), Some(b"42".to_vec()), b"x".to_vec()).await.unwrap());
        assert!(kv.compare_and_swap("a", "new".into(), None, b"y".to_vec()).await.unwrap());
        assert!(matches!(kv.increment("a", "k".into(), 1).await, Err(KeyValueError::NotANumber { .. })));
        kv.delete_many("a", vec!["k".into()]).await.unwrap();
        assert!(!kv.exists("a", "k").await.unwrap());
        drop(kv);
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test]
    async fn list_keys_pages_with_a_cursor_and_stays_in_its_bucket() {
        let (kv, path) = store();
        let pairs = (0..5).map(|i| (format!("k{i}"), vec![i])).collect();
        kv.set_many("a", pairs).await.unwrap();
        kv.set_many("ab", vec![("other".into(), vec![])]).await.unwrap();
        let (first, cursor) = kv.list_keys("a", None, 2).await.unwrap();
        assert_eq!((first, cursor), (vec!["k0".to_string(), "k1".to_string()], Some(2)));
        let (rest, cursor) = kv.list_keys("a", Some(4), 2).await.unwrap();
        assert_eq!((rest, cursor), (vec!["k4".to_string()], None));
        drop(kv);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_second_opener_is_told_what_to_do() {
        let (kv, path) = store();
        let error = Embedded::open(&path).err().expect("the file is locked").to_string();
        assert!(error.contains("open in another process") && error.contains("redis://"), "{error}");
        drop(kv);
        std::fs::remove_file(path).unwrap();
    }
}
