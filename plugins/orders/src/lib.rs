//! `orders`: answers `order.create` requests, publishes `order.created` on the `events`
//! stream, asks service `billing` for an invoice (`invoice.create`), and when billing's
//! response arrives publishes `order.invoiced`.
//!
//! Config (see `warren-orders.toml`): a `[[request]]` for `order.create`, a `[[response]]`
//! from `billing` for `invoice.create`, and `[plugin.orders]` granting `publish = ["events"]`
//! and `request = ["billing"]`.

use serde::{Deserialize, Serialize};
use warren_guest::{HandlerError, Message, Response, call_json, host};

#[derive(Debug, Deserialize)]
pub struct CreateOrder {
    pub id: String,
    pub amount: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct OrderCreated {
    pub id: String,
    pub amount: u64,
}

#[derive(Debug, Serialize)]
pub struct InvoiceRequest {
    pub order: String,
    pub amount: u64,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct Invoice {
    pub order: String,
    pub invoice: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Created {
    pub id: String,
    pub status: String,
}

/// `order.create`: record the event, ask billing, answer at once.
pub fn create(order: CreateOrder) -> Result<Created, HandlerError> {
    if order.amount == 0 {
        return Err(HandlerError::BadRequest(format!("order {} has no amount", order.id)));
    }
    host::publish_json("events", "order.created", &OrderCreated { id: order.id.clone(), amount: order.amount })?;
    host::send_request_json(
        "billing",
        "invoice.create",
        &InvoiceRequest { order: order.id.clone(), amount: order.amount },
    )?;
    Ok(Created { id: order.id, status: "created".into() })
}

/// Billing's answer to `invoice.create`: announce that the order is invoiced.
pub fn invoiced(invoice: Invoice) -> Result<(), HandlerError> {
    host::publish_json("events", "order.invoiced", &invoice)
}

/// Dispatches on the routing key: the request, or billing's response.
pub fn handle(message: Message) -> Result<Response, HandlerError> {
    match message.routing_key.as_str() {
        "order.create" => call_json(create, message),
        "invoice.create" => call_json(invoiced, message).map(|_| Response::new(Vec::new())),
        other => Err(HandlerError::BadRequest(format!("orders does not handle '{other}'"))),
    }
}

warren_guest::export!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_without_amount_is_a_bad_request() {
        let order = CreateOrder { id: "o-1".into(), amount: 0 };
        assert!(matches!(create(order), Err(HandlerError::BadRequest(_))));
    }

    #[test]
    fn unknown_keys_are_bad_requests() {
        let message = Message { routing_key: "x".into(), body: b"{}".to_vec(), content_type: None, headers: vec![] };
        assert!(matches!(handle(message), Err(HandlerError::BadRequest(_))));
    }
}
