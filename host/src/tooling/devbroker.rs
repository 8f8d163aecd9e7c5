//! `warren dev` without set-up: when no broker answers at the configured URLs and
//! `rabbitmq-server` is installed, a private single RabbitMQ node is started for the session
//! (its data under the build folder, on a free port of 127.0.0.1) and stopped when `warren
//! dev` exits. It is started by the same harness the tests and CI use (`.ci/rabbit-nodes`,
//! compiled into this binary and written to the build folder).

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::config::Config;

/// The node harness, as shipped in the repository.
const HARNESS: &str = include_str!("../../../.ci/rabbit-nodes");

/// A private node could not be started.
#[derive(Debug, thiserror::Error)]
#[error(
    "no broker answers at {urls}, and starting a private one for `warren dev` failed: {reason}. Start RabbitMQ yourself (`rabbitmq-server -detached`) or set broker.url"
)]
pub struct DevBrokerError {
    urls: String,
    reason: String,
}

/// A private node that lives as long as this value.
pub struct DevBroker {
    harness: PathBuf,
    dir: PathBuf,
    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub url: String,
}

impl DevBroker {
    /// Starts a private node in `<build_dir>/rabbitmq-dev` when none of `config`'s broker
    /// URLs answers and `rabbitmq-server` is installed; `None` when a broker answers or
    /// RabbitMQ is not installed (then `warren run` waits for one, as usual).
    pub fn start_if_needed(config: &Config, build_dir: &Path) -> Result<Option<DevBroker>, DevBrokerError> {
        if config.broker.urls.iter().any(|url| answers(url)) || !installed() {
            return Ok(None);
        }
        let urls = config.broker.urls.iter().map(|u| crate::config::redact_url(u)).collect::<Vec<_>>().join(", ");
        let failed = |reason: String| DevBrokerError { urls: urls.clone(), reason };
        let build_dir = std::path::absolute(build_dir).map_err(|e| failed(e.to_string()))?;
        std::fs::create_dir_all(&build_dir)
            .map_err(|e| failed(format!("cannot create {}: {e}", build_dir.display())))?;
        let harness = build_dir.join("rabbit-nodes");
        std::fs::write(&harness, HARNESS).map_err(|e| failed(format!("cannot write {}: {e}", harness.display())))?;
        let dir = build_dir.join("rabbitmq-dev");
        let port = free_port().map_err(|e| failed(format!("no free port on 127.0.0.1: {e}")))?;
        tracing::info!(
            %urls,
            port,
            data = %dir.display(),
            "no broker answers: starting a private RabbitMQ for warren dev on 127.0.0.1 (stopped when warren dev exits)"
        );
        run(&harness, &["dev-up", &dir.display().to_string(), &port.to_string()]).map_err(failed)?;
        Ok(Some(DevBroker { harness, dir, url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f") }))
    }
}

impl Drop for DevBroker {
    fn drop(&mut self) {
        match run(&self.harness, &["dev-down", &self.dir.display().to_string()]) {
            Ok(()) => tracing::info!(data = %self.dir.display(), "private RabbitMQ stopped"),
            Err(error) => {
                tracing::warn!(%error, "could not stop the private RabbitMQ; stop it with `rabbitmqctl -n warren-dev-<port>@localhost stop`")
            }
        }
    }
}

/// Whether something accepts TCP connections at the URL's host and port (within 1 s).
fn answers(url: &str) -> bool {
    let Ok(uri) = url.parse::<lapin::uri::AMQPUri>() else { return false };
    let addresses: Vec<SocketAddr> =
        (uri.authority.host.as_str(), uri.authority.port).to_socket_addrs().map(Iterator::collect).unwrap_or_default();
    addresses.iter().any(|address| TcpStream::connect_timeout(address, Duration::from_secs(1)).is_ok())
}

/// Whether `rabbitmq-server` is on the PATH.
fn installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("rabbitmq-server").is_file()))
}

/// A port the kernel says is free now, below the range the node's distribution port
/// (PORT + 20000) needs.
fn free_port() -> std::io::Result<u16> {
    for _ in 0..20 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if port <= 45_000 {
            return Ok(port);
        }
    }
    // The kernel kept handing out high ports: take one from the harness's own range.
    Ok(5690)
}

/// Runs the harness; its last line of output explains a failure.
fn run(harness: &Path, args: &[&str]) -> Result<(), String> {
    let output = Command::new("bash").arg(harness).args(args).output().map_err(|e| format!("cannot run bash: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    Err(said.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("the harness failed").trim().to_string())
}
