//! A PostgreSQL server of the test's own, for what the default one must never suffer: a
//! restart. [`PgServer::start`] runs `initdb` into a fresh folder under the system temp dir and
//! starts a postmaster on a free loopback port (trust auth, user `postgres`); [`PgServer::stop`]
//! and [`PgServer::start_again`] stop it and bring it back on the same port and data, the way
//! an operator's restart does. Dropping the guard stops the server and removes its folder,
//! also when the test fails. The default server at 127.0.0.1:5432 is never touched.
//!
//! The binaries are Debian's (`/usr/lib/postgresql/<version>/bin`, the newest there). Postgres
//! refuses to run as root, so when the tests run as root the server runs as user `postgres`
//! (through `runuser`), which owns the folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running (or stopped) server of the test's own; stopped and removed on drop.
pub struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    /// The loopback port it listens on, the same across restarts.
    pub port: u16,
}

impl PgServer {
    /// Initialises a cluster in a new folder and starts it; returns once it accepts. Panics
    /// (saying what to install) when this machine has no Postgres binaries.
    pub fn start() -> PgServer {
        let bin =
            newest_bin().expect("Postgres binaries under /usr/lib/postgresql/<version>/bin (Debian's postgresql)");
        let data = std::env::temp_dir().join(format!("warren-pg-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        std::fs::create_dir_all(&data).expect("the server's folder");
        if running_as_root() {
            must(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data).output(), "chown");
        }
        let port = crate::free_address().port();
        let server = PgServer { bin, data, port };
        let pgdata = server.data.join("data");
        server.run("initdb", &["-A", "trust", "-U", "postgres", "--no-sync", "-D", path(&pgdata)]);
        server.start_again();
        server
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Starts the stopped server again (same data, same port); returns once it accepts.
    pub fn start_again(&self) {
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off", self.port, path(&self.data));
        let log = self.data.join("server.log");
        self.run("pg_ctl", &["-D", path(&self.data.join("data")), "-l", path(&log), "-o", &options, "-w", "start"]);
    }

    /// Stops the server (`fast`: running statements are cancelled and connections closed, as
    /// in a restart); returns once it is down.
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", path(&self.data.join("data")), "-m", "fast", "-w", "stop"]);
    }

    /// Runs one of the server's binaries; panics with its output when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        must(self.command(program).args(args).output(), program);
    }

    /// One of the server's binaries, run as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        let binary = self.bin.join(program);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(binary);
            command
        } else {
            Command::new(binary)
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let pgdata = self.data.join("data");
        if pgdata.join("postmaster.pid").exists() {
            let _ = self.command("pg_ctl").args(["-D", path(&pgdata), "-m", "immediate", "-w", "stop"]).output();
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that holds `pg_ctl`.
fn newest_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn path(p: &Path) -> &str {
    p.to_str().expect("the temp dir's path is UTF-8")
}

fn must(output: std::io::Result<Output>, what: &str) {
    let output = output.unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
