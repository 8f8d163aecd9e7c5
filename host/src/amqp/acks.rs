//! Acks one consumer channel's deliveries with as few frames and thread hand-offs as the
//! contract allows.
//!
//! Every delivery a consumer takes is registered here, in delivery-tag order. A handled
//! delivery asks for its ack; one task per channel sends what is ready: the run of ready tags
//! that starts at the oldest outstanding delivery goes as one `basic.ack` with `multiple`
//! (RabbitMQ acks every tag up to it), any ready tag behind a delivery still being handled
//! goes alone. Nothing waits for a batch to fill: the task first lets the other handlers that
//! are ready to run finish (so under load their acks join one frame), then sends at once. A
//! slow message never holds back the acks of the faster ones after it (they go alone), and a
//! multiple ack never covers a delivery still being handled, rejected or requeued: those
//! leave the outstanding set only after their own frame was written.
//!
//! An ack is handed to the connection and not waited for: waiting for lapin's I/O thread to
//! report the write costs a thread wake-up per frame, and an ack that never reaches the
//! broker (the connection drops) leaves the message unacked, so RabbitMQ redelivers it —
//! at-least-once either way.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::{Notify, oneshot};

/// A delivery's number on its channel.
pub type DeliveryTag = u64;

/// The acks of one consumer channel.
pub struct Acks {
    channel: Channel,
    state: Mutex<Pending>,
    ready: Arc<Notify>,
}

impl Drop for Acks {
    /// Wakes the sender task so it sees it is no longer needed and ends.
    fn drop(&mut self) {
        self.ready.notify_one();
    }
}

/// The deliveries of a channel not yet settled, and those of them asking for an ack.
#[derive(Default)]
struct Pending {
    outstanding: BTreeSet<DeliveryTag>,
    asking: BTreeMap<DeliveryTag, oneshot::Sender<lapin::Result<()>>>,
}

/// The frames that ack what is ready: at most one `multiple` ack and any single ones.
#[derive(Debug, PartialEq, Eq)]
struct AckFrames {
    /// The last tag of the run that starts at the oldest outstanding delivery, and how many
    /// deliveries the run acks.
    run: Option<(DeliveryTag, usize)>,
    /// Ready tags behind a delivery still being handled.
    single: Vec<DeliveryTag>,
}

impl Pending {
    /// Takes what is ready out of the pending set and says which frames ack it.
    fn take_ready(&mut self) -> (AckFrames, Vec<oneshot::Sender<lapin::Result<()>>>) {
        let mut run: Option<(DeliveryTag, usize)> = None;
        while let Some(&oldest) = self.outstanding.first()
            && self.asking.contains_key(&oldest)
        {
            self.outstanding.remove(&oldest);
            run = Some((oldest, run.map_or(1, |(_, n)| n + 1)));
        }
        let single: Vec<DeliveryTag> =
            self.asking.keys().copied().filter(|tag| run.is_none_or(|(last, _)| *tag > last)).collect();
        for tag in &single {
            self.outstanding.remove(tag);
        }
        let waiters = std::mem::take(&mut self.asking).into_values().collect();
        (AckFrames { run, single }, waiters)
    }
}

impl Acks {
    /// The acks of `channel`, with the task that sends them (it ends when `Acks` is dropped
    /// by everyone else).
    pub fn start(channel: Channel) -> Arc<Acks> {
        let ready = Arc::new(Notify::new());
        let acks = Arc::new(Acks { channel, state: Mutex::default(), ready: ready.clone() });
        let sender = Arc::downgrade(&acks);
        tokio::spawn(async move {
            loop {
                // A notification sent while the last acks went out is kept as a permit.
                ready.notified().await;
                // Let the other tasks that are ready to run (handlers finishing) ask first.
                tokio::task::yield_now().await;
                let Some(acks) = sender.upgrade() else { return };
                acks.send_ready().await;
            }
        });
        acks
    }

    /// Registers a delivery as taken; call it in delivery order, before it is handled.
    pub fn taken(&self, tag: DeliveryTag) {
        self.state.lock().expect("acks lock").outstanding.insert(tag);
    }

    /// Acks `tag` (alone or with others) and returns once its frame was handed to the
    /// connection (not yet written), or with the error that closed the channel.
    pub async fn ack(&self, tag: DeliveryTag) -> lapin::Result<()> {
        let (done, answer) = oneshot::channel();
        self.state.lock().expect("acks lock").asking.insert(tag, done);
        self.ready.notify_one();
        match answer.await {
            Ok(result) => result,
            // The sender task is gone: the consumer stopped, the broker redelivers.
            Err(_) => Err(lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Closed, "basic.ack").into()),
        }
    }

    /// Forgets `tag` after it was settled another way (rejected, requeued): call it once
    /// that frame was written, so no multiple ack is sent before it.
    pub fn settled_otherwise(&self, tag: DeliveryTag) {
        self.state.lock().expect("acks lock").outstanding.remove(&tag);
        self.ready.notify_one();
    }

    async fn send_ready(&self) {
        let (frames, waiters) = self.state.lock().expect("acks lock").take_ready();
        if waiters.is_empty() {
            return;
        }
        let mut result = Ok(());
        let frames = frames
            .run
            .map(|(last, count)| (last, count > 1))
            .into_iter()
            .chain(frames.single.into_iter().map(|tag| (tag, false)));
        for (tag, multiple) in frames {
            if result.is_ok() {
                // The first poll queues the frame (or fails on a closed channel); the rest of
                // the future only waits for the write.
                let ack = self.channel.basic_ack(tag, BasicAckOptions { multiple });
                result = futures_lite::future::poll_once(ack).await.unwrap_or(Ok(()));
            }
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(outstanding: &[u64], asking: &[u64]) -> Pending {
        let mut pending = Pending::default();
        pending.outstanding.extend(outstanding);
        for tag in asking {
            pending.asking.insert(*tag, oneshot::channel().0);
        }
        pending
    }

    #[test]
    fn the_run_from_the_oldest_delivery_is_one_multiple_ack() {
        let mut p = pending(&[1, 2, 3, 4], &[1, 2, 3]);
        let (frames, waiters) = p.take_ready();
        assert_eq!(frames, AckFrames { run: Some((3, 3)), single: vec![] });
        assert_eq!(waiters.len(), 3);
        assert_eq!(p.outstanding.iter().copied().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn acks_behind_a_slow_delivery_go_alone_and_never_cover_it() {
        let mut p = pending(&[5, 6, 7, 9], &[6, 7, 9]);
        let (frames, _) = p.take_ready();
        assert_eq!(frames, AckFrames { run: None, single: vec![6, 7, 9] });
        assert_eq!(p.outstanding.iter().copied().collect::<Vec<_>>(), vec![5], "5 is still being handled");
    }

    #[test]
    fn a_rejected_delivery_no_longer_blocks_the_run() {
        // 2 was rejected (settled otherwise) and left the outstanding set.
        let mut p = pending(&[1, 3], &[1, 3]);
        let (frames, _) = p.take_ready();
        assert_eq!(frames, AckFrames { run: Some((3, 2)), single: vec![] });
    }

    #[test]
    fn a_lone_ack_is_not_multiple_and_nothing_ready_sends_nothing() {
        let mut p = pending(&[8, 9], &[8]);
        assert_eq!(p.take_ready().0, AckFrames { run: Some((8, 1)), single: vec![] });
        assert_eq!(p.take_ready().0, AckFrames { run: None, single: vec![] });
    }
}
