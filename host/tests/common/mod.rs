//! What the black-box tests of `warren run` share: a child process whose stderr lines are
//! read as they come, waited for by content, killed when dropped.
#![allow(dead_code)] // each test binary uses its own share

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `warren run` process, killed when dropped (a failed test leaves nothing running).
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Waits up to `wait` for a stderr line holding `needle`.
    pub fn wait_for(&mut self, needle: &str, wait: Duration) -> String {
        let until = Instant::now() + wait;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("warren run never printed '{needle}' within {wait:?}; it printed:\n{}", self.seen.join("\n"));
    }

    /// Waits up to `wait` for the process to exit: its status and every stderr line.
    pub fn exit(mut self, wait: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let until = Instant::now() + wait;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < until, "warren run did not exit within {wait:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends with the process: everything it read is in the channel.
        let mut lines = std::mem::take(&mut self.seen);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            lines.push(line);
        }
        (status, lines)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Spawns `command` with stderr piped, its lines read on a thread of their own.
    pub fn spawn(command: &mut Command) -> Running {
        let mut child = command.stderr(Stdio::piped()).spawn().expect("starting warren");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines, seen: Vec::new() }
    }
}
