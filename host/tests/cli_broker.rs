//! `warren run` when the broker is not there or refuses it (issue 15, "Bad input"), black-box
//! with the real binary: it waits for a broker that is not up yet, logging each try, and keeps
//! running; `--fail-fast` exits non-zero at once; a refused login is said in words, with no
//! log line of lapin's before it. The config serves nothing, so no plugin needs building and
//! nothing is declared on any broker.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Running;

/// A fresh folder with a `warren.toml` that serves nothing, removed when dropped.
struct Project {
    dir: PathBuf,
}

impl Project {
    fn new(what: &str) -> Project {
        let service = format!("t-{what}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let dir = std::env::temp_dir().join(format!("warren-cli-broker-{service}"));
        std::fs::create_dir_all(dir.join("out")).unwrap();
        std::fs::write(dir.join("warren.toml"), format!("[service]\nname = \"{service}\"\nplugins = \"out\"\n"))
            .unwrap();
        Project { dir }
    }

    /// `warren run --config <project> ARGS` with `WARREN_BROKER_URL` = `url`, stderr piped.
    fn run(&self, url: &str, args: &[&str]) -> Running {
        Running::spawn(
            Command::new(env!("CARGO_BIN_EXE_warren"))
                .arg("run")
                .args(args)
                .arg("--config")
                .arg(self.dir.join("warren.toml"))
                .env_remove("RUST_LOG")
                .env_remove("WARREN_BROKER_PASSWORD")
                .env("WARREN_BROKER_URL", url)
                .env("NO_COLOR", "1")
                .stdout(Stdio::null()),
        )
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Nothing listens on 127.0.0.1:1.
const NOWHERE: &str = "amqp://guest:secret@127.0.0.1:1/%2f";

#[test]
fn run_waits_for_a_broker_that_is_not_up_and_keeps_running() {
    let project = Project::new("waits");
    let started = Instant::now();
    let mut run = project.run(NOWHERE, &[]);
    let first = run.wait_for("the broker does not answer yet; waiting", Duration::from_secs(30));
    assert!(first.contains("attempt=1"), "{first}");
    assert!(first.contains("cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f"), "{first}");
    assert!(!first.contains("secret"), "the password is not printed: {first}");
    // The backoff starts at 0.5 s and doubles: the third try comes within a few seconds.
    let third = run.wait_for("attempt=3", Duration::from_secs(30));
    assert!(third.contains("the broker does not answer yet; waiting"), "{third}");
    assert!(run.child.try_wait().unwrap().is_none(), "warren run still runs after {:?}", started.elapsed());
}

#[test]
fn run_fail_fast_exits_at_once_when_no_broker_answers() {
    let project = Project::new("failfast");
    let started = Instant::now();
    let (status, lines) = project.run(NOWHERE, &["--fail-fast"]).exit(Duration::from_secs(30));
    let took = started.elapsed();
    let text = lines.join("\n");
    assert!(!status.success(), "--fail-fast exits non-zero: {status}\n{text}");
    assert!(took < Duration::from_secs(15), "--fail-fast exits at once, not after retries ({took:?})");
    let last = lines.last().map(String::as_str).unwrap_or_default();
    assert!(last.starts_with("error: cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/%2f"), "{text}");
    assert!(!text.contains("waiting"), "no retry with --fail-fast:\n{text}");
    assert!(!text.contains("secret"), "the password is not printed:\n{text}");
}

/// A wrong password against the local broker: one error saying the broker refused the user,
/// at once (waiting would not fix it), and no log line of lapin's before it.
#[test]
fn run_with_a_wrong_password_says_the_broker_refused_the_user() {
    let project = Project::new("creds");
    let url = "amqp://guest:not-the-password@127.0.0.1:5672/%2f";
    for args in [&[][..], &["--fail-fast"][..]] {
        let (status, lines) = project.run(url, args).exit(Duration::from_secs(30));
        let text = lines.join("\n");
        assert!(!status.success(), "{args:?}: {status}\n{text}");
        let last = lines.last().map(String::as_str).unwrap_or_default();
        assert!(
            last.starts_with("error: the broker at amqp://guest:***@127.0.0.1:5672/%2f refused user 'guest'"),
            "{args:?}:\n{text}"
        );
        assert!(!text.contains("not-the-password"), "the password is not printed:\n{text}");
        assert!(!text.contains("Is the broker running"), "{text}");
        assert!(!text.to_lowercase().contains("lapin"), "no lapin log line before Warren's message:\n{text}");
        assert!(!lines.iter().any(|l| l.contains("ERROR")), "no ERROR log line, only the error:\n{text}");
    }
}
