//! State that outlives a message: buckets of keys and values, through the standard
//! `wasi:keyvalue@0.2.0-draft` (and Warren's `keyvalue-cas`).
//!
//! ```no_run
//! use warren_guest::{HandlerError, kv};
//!
//! fn count(name: &str) -> Result<u64, HandlerError> {
//!     let counters = kv::Bucket::open("counters")?;
//!     Ok(counters.increment(name, 1)?)
//! }
//! ```
//!
//! A plugin may open only the buckets its config grants (`[plugin.<name>] keyvalue =
//! ["counters"]`); any other is [`Error::AccessDenied`]. Where the values live is the host's
//! choice (`[keyvalue]`: an embedded file for one host, Redis for several); every operation
//! counts against the call's deadline and the host's caps (value size, operations per call).
//! Counters are decimal text: `get` of a counter at 42 reads `b"42"`. `?` on an [`Error`] in a
//! handler gives the right outcome: denied → `failed`, anything else → `retry`.
//!
//! A plugin that never calls these functions does not import `wasi:keyvalue` at all.
//! (Natively, outside a host, these calls panic.)

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::HandlerError;
use crate::bindings::warren::plugin::keyvalue_cas;
use crate::bindings::wasi::keyvalue::{atomics, batch, store};

pub use store::Error;

/// What [`Bucket::get_many`] answers: for each key asked, the key and its value, or `None`.
pub type Entries = Vec<Option<(String, Vec<u8>)>>;

impl From<Error> for HandlerError {
    /// Not granted: the message can never succeed (`failed`). Any other failure (the store
    /// down, the deadline near) may pass: `retry`.
    fn from(error: Error) -> Self {
        match error {
            Error::AccessDenied => HandlerError::Failed("key-value bucket not granted to this plugin".into()),
            Error::NoSuchStore => HandlerError::Failed("this host has no key-value store".into()),
            Error::Other(why) => HandlerError::Retry(why),
        }
    }
}

/// An open bucket.
pub struct Bucket {
    inner: store::Bucket,
}

impl Bucket {
    /// Opens the bucket `name` (granted in the host's config).
    pub fn open(name: &str) -> Result<Bucket, Error> {
        store::open(name).map(|inner| Bucket { inner })
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.inner.get(key)
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.inner.set(key, value)
    }

    /// Deletes `key` (nothing happens when it does not exist).
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        self.inner.delete(key)
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &str) -> Result<bool, Error> {
        self.inner.exists(key)
    }

    /// Every key of the bucket, page by page (the host caps a page's size).
    pub fn keys(&self) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.inner.list_keys(cursor)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Adds `delta` to the counter `key` (a missing key counts from 0) and returns the new
    /// value; atomic, also across hosts sharing a Redis.
    pub fn increment(&self, key: &str, delta: u64) -> Result<u64, Error> {
        atomics::increment(&self.inner, key, delta)
    }

    /// Sets `key` to `value` only if its value is `expected` (`None`: only if it does not
    /// exist); whether it did. Atomic, also across hosts sharing a Redis.
    pub fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, Error> {
        keyvalue_cas::compare_and_swap(&self.inner, key, expected, value)
    }

    /// The values of `keys` in one round trip (`None` for a missing key).
    pub fn get_many(&self, keys: &[String]) -> Result<Entries, Error> {
        batch::get_many(&self.inner, keys)
    }

    /// Sets several keys in one round trip (not atomic as a whole).
    pub fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<(), Error> {
        batch::set_many(&self.inner, pairs)
    }

    /// The value of `key` parsed as JSON; `None` when it does not exist.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, HandlerError> {
        let Some(bytes) = self.get(key)? else { return Ok(None) };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| HandlerError::Failed(format!("the value of '{key}' is not the JSON expected: {e}")))
    }

    /// Sets `key` to `value` as JSON.
    pub fn set_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), HandlerError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| HandlerError::Failed(format!("cannot serialise the value of '{key}': {e}")))?;
        Ok(self.set(key, &bytes)?)
    }
}
