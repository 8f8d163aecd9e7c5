//! A shutdown signal shared by every task: fired once, observed by all.

use tokio::sync::watch;

/// Fires the shutdown signal.
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A handle tasks wait on; clone one per task.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new trigger and the handle it fires.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Tells every [`Shutdown`] handle to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has been fired (at once if it already was).
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which is as good as fired.
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// SIGHUP, the conventional "reload your config" signal. Never fires off Unix.
pub fn hangups() -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    #[cfg(unix)]
    if let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                if tx.send(()).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_handle_sees_the_signal_even_late_ones() {
        let (trigger, mut early) = channel();
        let mut late = early.clone();
        trigger.fire();
        early.wait().await;
        late.wait().await;
        let mut cloned_after = early.clone();
        cloned_after.wait().await;
    }
}
