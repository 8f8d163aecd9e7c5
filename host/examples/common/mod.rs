//! Measuring helpers shared by the benchmark examples: a closed-loop load on one routing key,
//! latency percentiles and CPU time read from `/proc`.
#![allow(dead_code)] // each example uses its own share

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use warren::amqp::client::Client;

/// The `p` quantile (0..=1) of `sorted` latencies; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let last = sorted.len().saturating_sub(1);
    sorted.get(((sorted.len() as f64 * p) as usize).min(last)).copied().unwrap_or_default()
}

/// A duration in microseconds.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// CPU seconds (user + system) used so far by process `pid` (`self` for this one).
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|t| t.parse::<f64>().ok()).sum());
    ticks / 100.0 // USER_HZ
}

/// What a load run measured.
pub struct Load {
    /// Every request's round trip, sorted.
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl Load {
    /// Answered requests per second.
    pub fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p` latency quantile in microseconds.
    pub fn percentile_us(&self, p: f64) -> f64 {
        micros(percentile(&self.latencies, p))
    }
}

/// Keeps `in_flight` requests with `body` outstanding on `key` for `seconds`, each answered
/// before its worker sends the next.
pub async fn keep_in_flight(
    client: &Arc<Client>,
    key: &'static str,
    body: &[u8],
    in_flight: usize,
    seconds: f64,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let body = Arc::new(body.to_vec());
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (client, stop, body) = (client.clone(), stop.clone(), body.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                client.call(key, &body, Duration::from_secs(60)).await.expect("answered");
                latencies.push(start.elapsed());
            }
            latencies
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<Duration> = workers.join_all().await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    latencies.sort();
    Load { latencies, elapsed }
}

/// Deletes what a benchmark's service declared on the broker (goamqp declares its request
/// queue and exchanges durable), so a run leaves nothing behind. Best effort: a benchmark's
/// figures are already printed when this runs.
pub async fn remove_service(broker_url: &str, service: &str) {
    let url = broker_url.split(',').next().unwrap_or(broker_url).trim();
    let Ok(connection) = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let queue = format!("{service}.direct.exchange.request.queue");
        let _ = channel.queue_delete(queue.as_str().into(), Default::default()).await;
        for exchange in [format!("{service}.direct.exchange.request"), format!("{service}.headers.exchange.response")] {
            let _ = channel.exchange_delete(exchange.as_str().into(), Default::default()).await;
        }
    }
    let _ = connection.close(200, "done".into()).await;
}
