//! `warren bench`: a closed-loop load client for any goamqp service, Go or Warren. Its every
//! frame is goamqp's (no correlation id, header `service` only, one channel with
//! `basic.qos(prefetch, global)`, no publisher confirms), so a service is measured as a Go
//! client would load it. It keeps N requests in flight for a duration or a count, and
//! reports answered requests per second and latency percentiles. With `--against`, two or
//! more services are measured in alternating slices of one run, so their ratios are honest
//! on a noisy machine. Before loading, one confirmed request to each service checks that
//! something serves the key (goamqp's unconfirmed requests would just go unanswered).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{self, Call, Client, ClientError, ClientOptions, generated_client_name};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    pub service: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// Requests kept outstanding at once.
    pub in_flight: usize,
    /// How long to measure each service in all (split into alternating slices).
    pub duration: Duration,
    /// Stop each service after this many answers instead (then there is one slice each).
    pub count: Option<u64>,
    /// Other services to measure in the same run.
    pub against: Vec<String>,
    /// Slices each service's `duration` is split into when several are compared (A B A B …);
    /// more, shorter slices even out a machine whose load comes and goes.
    pub slices: u32,
    /// The client's `basic.qos` (global), as goamqp's `WithPrefetchLimit`.
    pub prefetch: u16,
    /// How long one request may wait for its answer before the run fails.
    pub timeout: Duration,
}

/// One service's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub service: String,
    pub requests: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

/// Slices each service gets by default when several are compared by duration (A B A B A B).
pub const SLICES: u32 = 3;

/// Runs `plan` against the broker at `broker_url`; one result per service, the first one
/// the plan's `service`.
pub async fn run(broker_url: &str, plan: &BenchPlan) -> Result<Vec<BenchResult>, ClientError> {
    let mut services = vec![plan.service.clone()];
    services.extend(plan.against.iter().cloned());
    let mut clients = Vec::new();
    for service in &services {
        let probe = Call {
            service: service.clone(),
            routing_key: plan.routing_key.clone(),
            body: plan.body.clone(),
            client: None,
            timeout: plan.timeout,
        };
        client::request(broker_url, &probe).await?;
        let options = ClientOptions::goamqp(plan.prefetch);
        let name = generated_client_name();
        clients.push(Arc::new(
            Client::connect_with(broker_url, service, &name, &[plan.routing_key.as_str()], options).await?,
        ));
    }
    let slices = if plan.count.is_some() || services.len() == 1 { 1 } else { plan.slices.max(1) };
    let mut samples: Vec<(Vec<Duration>, Duration)> = vec![(Vec::new(), Duration::ZERO); services.len()];
    for _ in 0..slices {
        for (client, (latencies, elapsed)) in clients.iter().zip(samples.iter_mut()) {
            let slice = load(client, plan, plan.duration / slices).await?;
            latencies.extend(slice.0);
            *elapsed += slice.1;
        }
    }
    for client in clients {
        if let Ok(client) = Arc::try_unwrap(client) {
            client.close().await;
        }
    }
    Ok(services
        .into_iter()
        .zip(samples)
        .map(|(service, (latencies, elapsed))| summarize(service, latencies, elapsed))
        .collect())
}

/// Keeps `plan.in_flight` requests outstanding on `client` for `duration` (or until
/// `plan.count` answers); returns each round trip and the time it all took.
async fn load(
    client: &Arc<Client>,
    plan: &BenchPlan,
    duration: Duration,
) -> Result<(Vec<Duration>, Duration), ClientError> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..plan.in_flight.max(1) {
        let (client, stop, sent, plan) = (client.clone(), stop.clone(), sent.clone(), plan.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if plan.count.is_some_and(|count| sent.fetch_add(1, Ordering::Relaxed) >= count) {
                    break;
                }
                let start = Instant::now();
                client.call(&plan.routing_key, &plan.body, plan.timeout).await?;
                latencies.push(start.elapsed());
            }
            Ok::<_, ClientError>(latencies)
        });
    }
    if plan.count.is_none() {
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut latencies = Vec::new();
    for worker in workers.join_all().await {
        latencies.extend(worker?);
    }
    Ok((latencies, started.elapsed()))
}

fn summarize(service: String, mut latencies: Vec<Duration>, elapsed: Duration) -> BenchResult {
    latencies.sort();
    let us = |p: f64| percentile(&latencies, p).as_secs_f64() * 1e6;
    let seconds = elapsed.as_secs_f64();
    BenchResult {
        service,
        requests: latencies.len() as u64,
        seconds,
        per_second: latencies.len() as f64 / seconds.max(f64::EPSILON),
        p50_us: us(0.50),
        p90_us: us(0.90),
        p99_us: us(0.99),
        p999_us: us(0.999),
    }
}

/// The `p` quantile (0..=1) of `sorted` latencies; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let last = sorted.len().saturating_sub(1);
    sorted.get(((sorted.len() as f64 * p) as usize).min(last)).copied().unwrap_or_default()
}

/// The results as a table, with the ratio of each service's throughput to the first's.
pub fn table(results: &[BenchResult]) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{:<28} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        "SERVICE", "REQUESTS", "REQ/S", "P50 µs", "P90 µs", "P99 µs", "P99.9 µs", "RATIO"
    );
    let base = results.first().map_or(1.0, |r| r.per_second.max(f64::EPSILON));
    for r in results {
        let _ = writeln!(
            out,
            "{:<28} {:>9} {:>10.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>7.2}",
            r.service,
            r.requests,
            r.per_second,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.p999_us,
            r.per_second / base
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_from_the_sorted_latencies() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&sorted, 0.999), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn the_table_gives_each_service_its_ratio_to_the_first() {
        let result = |service: &str, per_second| BenchResult {
            service: service.into(),
            requests: 10,
            seconds: 1.0,
            per_second,
            p50_us: 1.0,
            p90_us: 2.0,
            p99_us: 3.0,
            p999_us: 4.0,
        };
        let text = table(&[result("go", 4000.0), result("warren", 5000.0), result("warren-goamqp", 6000.0)]);
        assert!(text.lines().nth(2).unwrap().trim_end().ends_with("1.25"), "{text}");
        assert!(text.lines().nth(3).unwrap().trim_end().ends_with("1.50"), "{text}");
    }
}
