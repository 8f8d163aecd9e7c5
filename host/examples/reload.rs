//! Hot-reload benchmark: steady request load on one plugin while its file is replaced by
//! rename several times (alternating the `echo` and `greet` components).
//!
//! ```text
//! cargo run -p warren -- build            # target/plugins/{echo,greet}.wasm
//! cargo run --release -p warren --example reload -- [SWAPS] [IN_FLIGHT]
//! ```
//!
//! Prints, per swap, the time from the rename to the first answer by the new version; the
//! throughput of each second of the run; and how many requests were sent and answered.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::remove_service;
use tokio::sync::Mutex;
use warren::amqp::client::Client;
use warren::config::Config;
use warren::server::Server;

const BODY: &[u8] = br#"{"name":"Ada"}"#;
const GREETING: &[u8] = br#"{"greeting":"Hello, Ada!"}"#;

fn arg(n: usize, default: usize) -> usize {
    std::env::args().nth(n).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn deploy(dir: &Path, bytes: &[u8]) {
    let temp = dir.join(".hello.wasm.tmp");
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, dir.join("hello.wasm")).unwrap();
}

#[tokio::main]
async fn main() {
    let (swaps, in_flight) = (arg(1, 5), arg(2, 100));
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let (echo, greet) =
        (std::fs::read(built.join("echo.wasm")).unwrap(), std::fs::read(built.join("greet.wasm")).unwrap());
    let dir: PathBuf = std::env::temp_dir().join("warren-reload-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.wasm"), &echo).unwrap();

    let service = "warren-reload-bench";
    let text = format!(
        "[service]\nname = \"{service}\"\nplugins = \"{}\"\n[[request]]\nrouting_key = \"hello\"\nplugin = \"hello\"\n",
        dir.display()
    );
    let config = Config::parse(Path::new("bench.toml"), &text, std::env::var("WARREN_BROKER_URL").ok()).unwrap();
    let server = Server::start(&config).await.unwrap_or_else(|e| panic!("{e}"));
    let client = Arc::new(Client::connect_transient(&config.broker_url, service, &["hello"]).await.unwrap());

    // Load: `in_flight` workers, each sending one request after another; every answer is
    // timestamped with whether greet (rather than echo) gave it.
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::<(Duration, bool)>::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (client, stop, answers) = (client.clone(), stop.clone(), answers.clone());
        workers.spawn(async move {
            let (mut sent, mut answered) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                sent += 1;
                if let Ok(reply) = client.call("hello", BODY, Duration::from_secs(30)).await {
                    answered += 1;
                    answers.lock().await.push((start.elapsed(), reply.body == GREETING));
                }
            }
            (sent, answered)
        });
    }

    let mut renames = Vec::new();
    for swap in 0..swaps {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let to_greet = swap % 2 == 0;
        renames.push((start.elapsed(), to_greet));
        deploy(&dir, if to_greet { &greet } else { &echo });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut answered) = (0, 0);
    for (s, a) in workers.join_all().await {
        sent += s;
        answered += a;
    }

    let answers = answers.lock().await;
    println!("hot reload under load: {swaps} swaps by rename, {in_flight} requests in flight");
    for (at, to_greet) in &renames {
        let first = answers.iter().filter(|(t, g)| t > at && g == to_greet).map(|(t, _)| *t).min();
        match first {
            Some(t) => println!(
                "  swap at {:>5.2} s: new version's first answer after {:.0} ms",
                at.as_secs_f64(),
                (t - *at).as_secs_f64() * 1e3
            ),
            None => println!("  swap at {:>5.2} s: the new version never answered", at.as_secs_f64()),
        }
    }
    let seconds = answers.iter().map(|(t, _)| t.as_secs()).max().unwrap_or(0);
    let per_second: Vec<String> =
        (0..=seconds).map(|s| answers.iter().filter(|(t, _)| t.as_secs() == s).count().to_string()).collect();
    println!("  answers per second: {}", per_second.join(" "));
    println!("  sent {sent}, answered {answered}, lost {}", sent - answered);
    println!("  live: {:?}", server.plugins().iter().map(|p| (p.name.clone(), p.generation)).collect::<Vec<_>>());

    Arc::into_inner(client).expect("workers done").close().await;
    server.stop().await.unwrap();
    remove_service(&config.broker_url, service).await;
}
