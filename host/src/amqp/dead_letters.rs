//! The check that every dead-letter exchange a config names has a queue bound to it.
//!
//! Warren dead-letters a rejected message itself: it publishes a copy (mandatory, confirmed)
//! to the handler's dead-letter exchange and acks the original only once the copy landed in a
//! queue. A copy that lands nowhere is not taken for landed: the original is kept and retried
//! as a host-side failure ([`super::consumer::HOST_RETRIES`] times, with a backoff), then
//! rejected to the broker — which drops it unless the queue has a dead-letter policy of its
//! own. That is logged at ERROR and counted, never silent; and this check says so at start
//! (and after a config reload), before any message is at stake.
//!
//! AMQP cannot list bindings, so the check publishes a probe: mandatory, an empty body,
//! header `x-warren-probe`, and `expiration = "0"`, so that a queue that has one drops it at
//! once (unless a consumer is waiting on that queue at that very moment, which then sees one
//! empty message marked as a probe). Warren's dead-letter exchanges are fanout: one probe per
//! exchange answers for every routing key.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

use super::broker::{Delivered, Publisher};
use super::topology::Topology;

/// The header that marks a probe; a dead-letter consumer may drop messages carrying it.
pub const PROBE_HEADER: &str = "x-warren-probe";

/// Every dead-letter exchange `topology` dead-letters to, once each.
pub fn exchanges(topology: &Topology) -> Vec<String> {
    let mut names: Vec<String> = topology
        .consumers
        .iter()
        .flat_map(|c| {
            c.dead_letter_exchange.iter().chain(c.routes.iter().filter_map(|r| r.dead_letter_exchange.as_ref()))
        })
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The dead-letter exchanges of `topology` with no queue bound to them, by probing each
/// through `publisher` (which must publish one at a time: a return is matched to its publish).
/// A probe the broker did not confirm is reported as a warning line, not as unbound.
pub async fn unbound(publisher: &Publisher, topology: &Topology) -> Vec<String> {
    let mut unbound = Vec::new();
    for exchange in exchanges(topology) {
        let mut headers = FieldTable::default();
        headers.insert(PROBE_HEADER.into(), AMQPValue::LongString(LongString::from("dead-letter check")));
        let probe = BasicProperties::default().with_headers(headers).with_expiration("0".into()).with_delivery_mode(1);
        match publisher.unmetered().publish(&exchange, "warren.probe", b"", probe).await {
            Ok(Delivered::Unroutable) => unbound.push(exchange),
            Ok(Delivered::Routed | Delivered::Written) => {}
            Err(error) => {
                tracing::warn!(%exchange, %error, "could not check the dead-letter exchange for a bound queue")
            }
        }
    }
    unbound
}

/// Logs one warning per dead-letter exchange of `topology` that has no queue bound.
pub async fn warn_if_unbound(publisher: &Publisher, topology: &Topology) {
    for exchange in unbound(publisher, topology).await {
        tracing::warn!(
            %exchange,
            "dead-letter exchange '{exchange}' has no queue bound: a message rejected to it cannot be kept there, so it is retried as a host-side failure, then rejected to the broker, which drops it unless the queue has a dead-letter policy of its own (logged at ERROR). Bind a queue to '{exchange}'"
        );
    }
}
