//! The `warren` command line (SPEC §3). Command names and flags are a public interface:
//! scripts and other teams' tooling call them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::amqp::bench::{self, BenchPlan};
use crate::amqp::client::{self, Call, ClientError};
use crate::amqp::topology::Topology;
use crate::config::{self, Config, ConfigError};
use crate::server::{Server, ServerError};
use crate::shutdown;
use crate::tooling::builder::{self, BuildError};
use crate::tooling::dev::SourceWatcher;
use crate::tooling::devbroker::DevBroker;

/// Run message handlers as WebAssembly components on RabbitMQ, wire-compatible with goamqp.
///
/// Typical use: `warren build` compiles the plugins under plugins/ (Rust, Python, JavaScript, Go) into .wasm files,
/// `warren run` serves them. The config (warren.toml) names the service, the broker and which
/// plugin handles which routing key.
#[derive(Debug, Parser)]
#[command(name = "warren", version, propagate_version = true)]
pub struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// A plugin language for `warren new`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Lang {
    Rust,
    #[value(alias = "py")]
    Python,
    #[value(alias = "javascript")]
    Js,
    #[value(alias = "golang")]
    Go,
}

impl From<Lang> for builder::Language {
    fn from(lang: Lang) -> builder::Language {
        match lang {
            Lang::Rust => builder::Language::Rust,
            Lang::Python => builder::Language::Python,
            Lang::Js => builder::Language::JavaScript,
            Lang::Go => builder::Language::Go,
        }
    }
}

/// What a plugin made by `warren new` keeps its state in, besides the default key-value
/// bucket (`--with`; more kinds may follow).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum WithState {
    /// A Postgres table written in the call's transaction (Rust plugins).
    Postgres,
}

impl From<WithState> for crate::tooling::scaffold::With {
    fn from(with: WithState) -> crate::tooling::scaffold::With {
        match with {
            WithState::Postgres => crate::tooling::scaffold::With::Postgres,
        }
    }
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where plugins are built from and to (`build` and `dev`).
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[arg(long, default_value = config::DEFAULT_CONFIG_FILE)]
    pub config: PathBuf,
    /// Folder whose sub-folders are plugins (with a Cargo.toml, pyproject.toml, package.json or go.mod).
    #[arg(long, default_value = "plugins")]
    pub source: PathBuf,
    /// Build folder (cargo's target folder; Python, JavaScript and Go tools and outputs).
    #[arg(long, default_value = "target/plugin-build")]
    pub target_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build every plugin under --source (Rust, Python, JavaScript or Go, told by its manifest)
    /// into a component in the config's plugins folder.
    Build(BuildArgs),
    /// Declare the topology, load the plugins and serve until Ctrl-C or SIGTERM; a plugin
    /// whose .wasm changes is hot-reloaded.
    Run {
        #[arg(long, default_value = config::DEFAULT_CONFIG_FILE)]
        config: PathBuf,
        /// Exit at once when no broker answers, instead of waiting for one with the
        /// reconnect backoff (for scripts).
        #[arg(long)]
        fail_fast: bool,
    },
    /// Build, then run, rebuilding a plugin whenever its source under --source changes.
    Dev(BuildArgs),
    /// Validate the config and every plugin (a component of the right world) without a broker.
    Check {
        #[arg(long, default_value = config::DEFAULT_CONFIG_FILE)]
        config: PathBuf,
    },
    /// Print every exchange, queue (with arguments) and binding `run` would declare.
    Topology {
        #[arg(long, default_value = config::DEFAULT_CONFIG_FILE)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long, conflicts_with = "mermaid")]
        json: bool,
        /// Print a mermaid flowchart (goamqp's README style, goamqp's names) instead of a
        /// table: paste it into a ```mermaid block of your docs.
        #[arg(long)]
        mermaid: bool,
    },
    /// Create a plugin under plugins/ that builds and answers at once, with its unit test.
    New {
        /// The plugin's name (lowercase letters, digits, '-').
        name: String,
        /// Folder to create it in.
        #[arg(long, default_value = "plugins")]
        source: PathBuf,
        /// The language to write it in (built with cargo, componentize-py or componentize-js).
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        /// Keep its state in this instead of a key-value bucket: `postgres` (a table written in
        /// the call's transaction; Rust only).
        #[arg(long = "with", value_enum, value_delimiter = ',')]
        with: Vec<WithState>,
    },
    /// Send one request as a goamqp client and print the response body on stdout.
    ///
    /// Example: warren request demo greet '{"name":"Ada"}'
    Request {
        /// The service to ask (its requests go to <service>.direct.exchange.request).
        service: String,
        /// The request's routing key.
        routing_key: String,
        /// The request body; `-` reads it from stdin; empty when left out.
        body: Option<String>,
        /// This client's own service name (the `service` header of the request). Responses
        /// come to <service>.headers.exchange.response.queue.<client>, declared durable as goamqp
        /// does (it stays, and runs with the same name share it). Default: a name of this run's
        /// own, warren-cli-<8 random hex>, whose exclusive reply queue is removed when the run ends.
        #[arg(long)]
        client: Option<String>,
        /// How long to wait for the response.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Broker URL (default: WARREN_BROKER_URL, else broker.url of --config when it exists, else the local broker).
        #[arg(long)]
        broker_url: Option<String>,
        #[arg(long, default_value = config::DEFAULT_CONFIG_FILE)]
        config: PathBuf,
    },
    /// Load any goamqp service (Go or Warren) as a goamqp client would: keep N requests in
    /// flight, print req/s and latency percentiles; with --against, other services in
    /// alternating slices of one run.
    ///
    /// Example: warren bench gosvc echo '{"data":"x"}' --inflight 100 --duration 10 --against demo,demog
    Bench {
        /// The service to load.
        service: String,
        /// The requests' routing key.
        routing_key: String,
        /// The request body (empty when left out).
        body: Option<String>,
        /// Requests kept outstanding at once.
        #[arg(long, default_value_t = 100)]
        inflight: usize,
        /// Seconds to measure each service (split into alternating slices with --against).
        #[arg(long, default_value_t = 10.0, conflicts_with = "count")]
        duration: f64,
        /// Stop after this many answers per service instead.
        #[arg(long)]
        count: Option<u64>,
        /// Other services, measured in the same run (comma-separated, or the flag repeated).
        #[arg(long, value_delimiter = ',')]
        against: Vec<String>,
        /// With --against: slices each service's duration is split into, alternating.
        #[arg(long, default_value_t = bench::SLICES)]
        slices: u32,
        /// The client's prefetch (`basic.qos`, global, as goamqp's `WithPrefetchLimit`);
        /// goamqp's default is 20.
        #[arg(long, default_value_t = client::GOAMQP_PREFETCH)]
        prefetch: u16,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How long one request may wait for its answer.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Broker URL (default: WARREN_BROKER_URL, else the first of --config's, else the local broker).
        #[arg(long)]
        broker_url: Option<String>,
        #[arg(long, default_value = config::DEFAULT_CONFIG_FILE)]
        config: PathBuf,
    },
}

/// Info and above, without lapin's own lines: Warren reports every broker failure itself, in
/// words (lapin logs an error for every channel on a clean `connection.close()`, its own
/// ERROR before Warren's explanation of a refused login, and a dump of each returned message).
/// `RUST_LOG=info,lapin=debug` shows them again.
pub const DEFAULT_LOG_FILTER: &str = "info,lapin=off";

/// A command that failed; each variant's message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Scaffold(#[from] crate::tooling::scaffold::ScaffoldError),
    #[error(transparent)]
    DevBroker(#[from] crate::tooling::devbroker::DevBrokerError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Cli {
    /// Logs to stderr; `RUST_LOG` filters (default [`DEFAULT_LOG_FILTER`]).
    pub fn init_logging(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

/// Runs one command to completion.
pub fn run(cli: Cli) -> Result<(), CliError> {
    // Before any other thread exists: `warren dev` may start a private broker and point
    // this process's config (and its reloads) at it through WARREN_BROKER_URL.
    let _dev_broker = match &cli.command {
        Command::Dev(BuildArgs { config, target_dir, .. }) => dev_broker(config, target_dir)?,
        _ => None,
    };
    // Tokio's threads get the usual 8 MiB, not the large default the binary sets for
    // lapin's I/O threads (`IO_THREAD_STACK`).
    let runtime = tokio::runtime::Builder::new_multi_thread().thread_stack_size(8 << 20).enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Build(BuildArgs { config, source, target_dir }) => {
                let config = Config::load(&config)?;
                for plugin in build(&source, &config, &target_dir).await? {
                    println!("{}", plugin.wasm.display());
                }
                Ok(())
            }
            Command::Dev(BuildArgs { config, source, target_dir }) => {
                let config = Config::load(&config)?;
                build(&source, &config, &target_dir).await?;
                let _sources =
                    SourceWatcher::start(&source, config.plugins_dir.clone(), target_dir).map_err(ServerError::from)?;
                serve(&config, false).await
            }
            Command::Run { config, fail_fast } => serve(&Config::load(&config)?, fail_fast).await,
            Command::Check { config } => check(&config).await,
            Command::New { name, source, lang, with } => {
                use crate::tooling::scaffold;
                let with: Vec<scaffold::With> = with.into_iter().map(Into::into).collect();
                let dir = scaffold::new_plugin(&source, &name, lang.into(), &with)?;
                println!("created {}", dir.display());
                println!("test it: {}", scaffold::test_command(&dir, lang.into()));
                print!("next: {}", scaffold::next_steps(&dir, &name, &with));
                Ok(())
            }
            Command::Topology { config, json, mermaid } => {
                let config = Config::load(&config)?;
                let topology = Topology::for_config(&config);
                if mermaid {
                    print!("{}", topology.to_mermaid(&config));
                } else if json {
                    println!("{}", serde_json::to_string_pretty(&topology).expect("topology serialises"));
                } else {
                    print!("{}", topology.to_table());
                }
                Ok(())
            }
            Command::Request { service, routing_key, body, client, timeout_ms, broker_url, config } => {
                let broker_url = client_broker_url(broker_url, &config);
                let body = match body.as_deref() {
                    Some("-") => {
                        let mut bytes = Vec::new();
                        std::io::stdin().read_to_end(&mut bytes)?;
                        bytes
                    }
                    Some(text) => text.as_bytes().to_vec(),
                    None => Vec::new(),
                };
                let call = Call { service, routing_key, body, client, timeout: Duration::from_millis(timeout_ms) };
                let reply = client::request(&broker_url, &call).await?;
                let mut stdout = std::io::stdout();
                stdout.write_all(&reply.body)?;
                if std::io::IsTerminal::is_terminal(&stdout) {
                    writeln!(stdout)?;
                }
                Ok(())
            }
            Command::Bench {
                service,
                routing_key,
                body,
                inflight,
                duration,
                count,
                against,
                slices,
                prefetch,
                json,
                timeout_ms,
                broker_url,
                config,
            } => {
                let plan = BenchPlan {
                    service,
                    routing_key,
                    body: body.unwrap_or_default().into_bytes(),
                    in_flight: inflight,
                    duration: Duration::from_secs_f64(duration.max(0.1)),
                    count,
                    against,
                    slices,
                    prefetch,
                    timeout: Duration::from_millis(timeout_ms),
                };
                let results = bench::run(&client_broker_url(broker_url, &config), &plan).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&results).expect("results serialise"));
                } else {
                    print!("{}", bench::table(&results));
                }
                Ok(())
            }
        }
    })
}

/// The broker a one-shot client (`request`, `bench`) talks to: `--broker-url`, else the
/// first of WARREN_BROKER_URL's list, else the first URL of the config file if there is one,
/// else the local broker.
fn client_broker_url(given: Option<String>, config: &Path) -> String {
    let from_env = || {
        std::env::var(config::BROKER_URL_ENV).ok().and_then(|list| list.split(',').next().map(|u| u.trim().to_string()))
    };
    given
        .or_else(from_env)
        .or_else(|| config.exists().then(|| Config::load(config).ok()).flatten().map(|c| c.broker_url))
        .unwrap_or_else(|| config::DEFAULT_BROKER_URL.to_string())
}

/// `warren dev` on a machine where nothing answers at the configured broker but RabbitMQ is
/// installed: a private node for this session (stopped when the returned value drops).
fn dev_broker(config: &Path, target_dir: &Path) -> Result<Option<DevBroker>, CliError> {
    let config = Config::load(config)?;
    let broker = DevBroker::start_if_needed(&config, target_dir)?;
    if let Some(broker) = &broker {
        // SAFETY: called from `run` before the tokio runtime (or any other thread of this
        // process) is started, so nothing reads the environment concurrently.
        unsafe { std::env::set_var(config::BROKER_URL_ENV, &broker.url) };
    }
    Ok(broker)
}

/// Builds every plugin under `source` into the config's plugins folder; only the plugins
/// the config serves need their toolchain.
async fn build(source: &Path, config: &Config, target_dir: &Path) -> Result<Vec<builder::Built>, CliError> {
    let (source, out, target) = (source.to_path_buf(), config.plugins_dir.clone(), target_dir.to_path_buf());
    let served = config.plugin_names();
    let built = tokio::task::spawn_blocking(move || {
        builder::build_plugins(&source, &out, &target, |name| served.iter().any(|s| s == name))
    });
    Ok(built.await.expect("the build task panicked")?)
}

/// `warren run`: start (waiting for the broker unless `fail_fast`), print the live
/// plugins, serve until a signal.
async fn serve(config: &Config, fail_fast: bool) -> Result<(), CliError> {
    let server = if fail_fast {
        Server::start(config).await?
    } else {
        tokio::select! {
            server = Server::start_waiting(config) => server?,
            _ = shutdown::signal() => return Ok(()),
        }
    };
    println!("{:<16} {:>4}  {:<12}  {:<8}  FILE", "PLUGIN", "GEN", "SHA-256", "CODE");
    for p in server.plugins() {
        let source = format!("{:?}", p.source).to_lowercase();
        println!("{:<16} {:>4}  {:<12}  {:<8}  {}", p.name, p.generation, &p.hash[..12], source, p.path.display());
    }
    // The first signal drains gracefully; a second one exits at once.
    let first_signal = async {
        shutdown::signal().await;
        tokio::spawn(async {
            shutdown::signal().await;
            eprintln!("second signal: exiting now; unacked messages are redelivered by RabbitMQ");
            std::process::exit(130);
        });
    };
    server.serve(first_signal).await?;
    Ok(())
}

/// `warren check`: the config, then every plugin, each problem on its own line.
async fn check(path: &Path) -> Result<(), CliError> {
    let config = Config::load(path)?;
    // The runtime `run` would use, cache included: a checked plugin starts without compiling.
    let runtime = Server::runtime_for(&config, &Topology::for_config(&config))?;
    crate::wasm::plugins::Plugins::load_all(&runtime, &config).await.map_err(ServerError::from)?;
    crate::server::check_keyvalue(&config).await?;
    println!("{}: ok ({} plugins: {})", path.display(), config.plugin_names().len(), config.plugin_names().join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `warren bench gtuned echo ARGS…`'s other services and slices.
    fn parse_bench(args: &[&str]) -> (Vec<String>, u32) {
        let cli = Cli::try_parse_from(["warren", "bench", "gtuned", "echo"].iter().chain(args)).expect("parses");
        match cli.command {
            Command::Bench { against, slices, .. } => (against, slices),
            other => panic!("not bench: {other:?}"),
        }
    }

    #[test]
    fn bench_against_takes_several_services_by_comma_or_repeated_flag() {
        assert_eq!(parse_bench(&[]), (vec![], bench::SLICES));
        assert_eq!(parse_bench(&["--against", "demo"]).0, ["demo"]);
        assert_eq!(parse_bench(&["--against", "demo,demog"]).0, ["demo", "demog"]);
        assert_eq!(
            parse_bench(&["--against", "demo", "--against", "demog", "--slices", "12"]),
            (vec!["demo".into(), "demog".into()], 12)
        );
    }
}
