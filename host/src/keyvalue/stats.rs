//! The key-value numbers `/metrics` shows: operations by plugin, bucket, operation and outcome
//! (`ok`, `error`, `timeout`, `refused`), and their latency by plugin, bucket and operation.
//! Labels stay bounded: an operation only reaches a bucket the config granted (a refused
//! `open` is logged, never counted under the name the guest asked for).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const KV_BUCKETS: [f64; 11] = [0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25];

/// One latency histogram.
#[derive(Default, Clone)]
pub struct Histogram {
    pub buckets: [u64; KV_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

/// (plugin, bucket, operation): shared names, so counting allocates nothing.
type Labels = (Arc<str>, Arc<str>, &'static str);
/// (plugin, bucket, operation, outcome).
pub type OperationLabels = (String, String, &'static str, &'static str);

/// Every plugin's key-value operations since start.
#[derive(Default)]
pub struct KeyValueStats {
    inner: Mutex<Counts>,
}

/// Operations by labels and outcome; latency by labels.
type Counts = (HashMap<(Labels, &'static str), u64>, HashMap<Labels, Histogram>);

/// The host's key-value numbers.
pub fn stats() -> &'static KeyValueStats {
    static STATS: OnceLock<KeyValueStats> = OnceLock::new();
    STATS.get_or_init(KeyValueStats::default)
}

impl KeyValueStats {
    /// One operation `op` of `plugin` on `bucket` ended with `outcome` after `took`.
    pub fn record(
        &self,
        plugin: &Arc<str>,
        bucket: &Arc<str>,
        op: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        let labels = (plugin.clone(), bucket.clone(), op);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner.0.entry((labels.clone(), outcome)).or_default() += 1;
        let histogram = inner.1.entry(labels).or_default();
        let seconds = took.as_secs_f64();
        for (n, bound) in histogram.buckets.iter_mut().zip(KV_BUCKETS) {
            if seconds <= bound {
                *n += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// Operations by (plugin, bucket, operation, outcome), in that order.
    pub fn operations(&self) -> Vec<(OperationLabels, u64)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let all = inner.0.iter().map(|(((p, b, op), outcome), n)| ((p.to_string(), b.to_string(), *op, *outcome), *n));
        all.collect::<BTreeMap<_, _>>().into_iter().collect()
    }

    /// Latency by (plugin, bucket, operation), in that order.
    pub fn latency(&self) -> Vec<((String, String, &'static str), Histogram)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let all = inner.1.iter().map(|((p, b, op), h)| ((p.to_string(), b.to_string(), *op), h.clone()));
        all.collect::<BTreeMap<_, _>>().into_iter().collect()
    }
}
