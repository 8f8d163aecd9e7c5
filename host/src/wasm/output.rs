//! A guest's stdout and stderr, and the lines it sends through the host's `log` import:
//! every complete line goes to the host log as it is written, tagged with the plugin, up to
//! one budget per call shared by all three; past it the rest is dropped with one note.
//! Writing never fails, so a plugin that prints a lot never fails its message. The last
//! lines of stdout and stderr are also kept to explain a fault.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Bytes of output (stdout, stderr and `log` together) one call may send to the host log
/// before the rest is dropped.
pub const OUTPUT_BUDGET: usize = 64 * 1024;
/// Longest single line logged; longer lines are cut with a note.
const MAX_LINE: usize = 4 * 1024;
/// How much of the latest output is kept to explain a fault.
const TAIL: usize = 2 * 1024;

/// One call's output sink, shared by its stdout and stderr.
#[derive(Clone)]
pub struct GuestOutput {
    state: Arc<Mutex<State>>,
    stream: &'static str,
}

struct State {
    plugin: Arc<str>,
    /// Bytes of the line being written, not yet ended by a newline.
    partial: Vec<u8>,
    /// Bytes logged so far in this call.
    logged: usize,
    /// Bytes dropped past the budget.
    dropped: usize,
    /// The latest output, for a fault's explanation.
    tail: Vec<u8>,
}

impl GuestOutput {
    /// A sink for `plugin`'s stdout; [`GuestOutput::stderr`] shares its budget.
    pub fn new(plugin: Arc<str>) -> GuestOutput {
        let state = State { plugin, partial: Vec::new(), logged: 0, dropped: 0, tail: Vec::new() };
        GuestOutput { state: Arc::new(Mutex::new(state)), stream: "stdout" }
    }

    /// The same sink, as stderr.
    pub fn stderr(&self) -> GuestOutput {
        GuestOutput { state: self.state.clone(), stream: "stderr" }
    }

    /// Starts a call's budget afresh (an instance that serves several messages keeps its sink).
    pub fn begin_call(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.logged, state.dropped) = (0, 0);
        state.partial.clear();
        state.tail.clear();
    }

    /// Takes `bytes` the guest wrote: logs each complete line within the budget.
    fn take(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.keep_tail(bytes);
        for &byte in bytes {
            if byte == b'\n' {
                let line = std::mem::take(&mut state.partial);
                state.log(self.stream, &line);
            } else if state.partial.len() <= MAX_LINE {
                state.partial.push(byte);
            }
        }
    }

    /// Logs a line the guest sent through the host's `log` import, at its level, within the
    /// call's output budget.
    pub fn host_log(&self, level: super::LogLevel, message: &str) {
        use super::LogLevel;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(message) = state.admit(message.as_bytes()) else { return };
        let plugin = &*state.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    /// Logs what is left unfinished and, if anything was dropped, one note saying how much.
    /// Called once the call ends.
    pub fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.partial.is_empty() {
            let line = std::mem::take(&mut state.partial);
            state.log(self.stream, &line);
        }
        if state.dropped > 0 {
            tracing::warn!(
                plugin = %state.plugin,
                dropped_bytes = state.dropped,
                budget_bytes = OUTPUT_BUDGET,
                "plugin output over its budget for one call: the rest was dropped"
            );
            state.dropped = 0;
        }
    }

    /// The latest output, one line, for a fault's explanation.
    pub fn tail(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&state.tail).trim().replace('\n', " | ")
    }
}

impl State {
    fn keep_tail(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(&bytes[bytes.len().saturating_sub(TAIL)..]);
        let excess = self.tail.len().saturating_sub(TAIL);
        self.tail.drain(..excess);
    }

    fn log(&mut self, stream: &str, line: &[u8]) {
        if let Some(text) = self.admit(line) {
            tracing::info!(plugin = %self.plugin, stream, "{text}");
        }
    }

    /// `line` as it may be logged (escaped, cut past [`MAX_LINE`] with a note), what is
    /// kept of it counted against the budget; `None` (and counted as dropped) once the
    /// budget is spent.
    fn admit(&mut self, line: &[u8]) -> Option<String> {
        let kept = &line[..line.len().min(MAX_LINE)];
        if self.logged + kept.len() > OUTPUT_BUDGET {
            self.dropped += kept.len() + 1;
            return None;
        }
        self.logged += kept.len() + 1;
        let text = sanitize(&String::from_utf8_lossy(kept));
        Some(format!("{text}{}", if kept.len() < line.len() { " […line cut]" } else { "" }))
    }
}

/// A guest's text with control characters (newlines, escapes) shown as escapes, so a plugin
/// cannot forge log lines or colour the operator's terminal.
pub fn sanitize(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .flat_map(|c| if c.is_control() && c != '\t' { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect()
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.take(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(sanitize("plain"), "plain");
        assert_eq!(sanitize("a\nb\x1b[31m"), "a\\nb\\u{1b}[31m");
    }

    #[test]
    fn output_past_the_budget_is_dropped_and_counted() {
        let output = GuestOutput::new("p".into());
        let line = vec![b'x'; 1023];
        for _ in 0..(OUTPUT_BUDGET / 1024 + 10) {
            output.take(&line);
            output.take(b"\n");
        }
        let state = output.state.lock().unwrap();
        assert!(state.logged <= OUTPUT_BUDGET);
        assert_eq!(state.dropped, 10 * 1024);
        assert!(state.tail.len() <= TAIL);
    }

    #[test]
    fn the_log_import_shares_the_output_budget() {
        let output = GuestOutput::new("p".into());
        let line = "y".repeat(1023);
        for _ in 0..(OUTPUT_BUDGET / 1024) {
            output.host_log(crate::wasm::LogLevel::Info, &line);
        }
        output.take(b"printed after the budget\n");
        output.host_log(crate::wasm::LogLevel::Error, &line);
        let state = output.state.lock().unwrap();
        assert_eq!(state.logged, OUTPUT_BUDGET, "log lines count like printed ones");
        assert_eq!(state.dropped, "printed after the budget".len() + 1 + 1024, "past it, both are dropped");
        drop(state);
        output.begin_call();
        output.host_log(crate::wasm::LogLevel::Info, "a new call");
        assert_eq!(output.state.lock().unwrap().logged, "a new call".len() + 1, "each call has its own");
    }
}
