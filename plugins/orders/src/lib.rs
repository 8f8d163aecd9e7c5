//! `orders`: answers `order.create` requests by storing the order in Postgres (table
//! `orders`, `schema.sql`), publishing `order.created` on the `events` stream and asking service
//! `billing` for an invoice (`invoice.create`); when billing's response arrives it publishes
//! `order.invoiced`.
//!
//! Config (see `warren-orders.toml`): a `[[request]]` for `order.create`, a `[[response]]`
//! from `billing` for `invoice.create`, `[database.orders]`, and `[plugin.orders]` granting
//! `publish = ["events"]`, `request = ["billing"]` and `databases = ["orders"]` with
//! `transaction = true`: the insert commits only when the handler answers, so a failure after
//! it (a send refused, billing not reachable) leaves no row and the message is settled as its
//! error says.
//!
//! Idempotent: a message handled twice (committed, then the host stopped before the ack) finds
//! its row, answers as the first time did, and sends nothing again — the first time's event
//! and invoice request were confirmed before its commit.

use serde::{Deserialize, Serialize};
use warren_guest::{HandlerError, Message, Response, call_json, host, pg};

/// The database this plugin is granted (`[plugin.orders] databases = ["orders"]`).
pub const DATABASE: &str = "orders";

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

#[derive(Debug, Serialize, PartialEq)]
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

/// What taking an order does outside the plugin: the table and the host's sends. The plugin
/// uses [`Live`]; the unit tests a recording fake.
pub trait Effects {
    /// Inserts the order unless one with its id is stored; `true` when it inserted.
    fn insert(&mut self, order: &CreateOrder, amount: i64) -> Result<bool, HandlerError>;
    /// Publishes `order.created` on `events`.
    fn announce(&mut self, event: &OrderCreated) -> Result<(), HandlerError>;
    /// Sends `invoice.create` to `billing`.
    fn bill(&mut self, request: &InvoiceRequest) -> Result<(), HandlerError>;
}

/// The Postgres table (in the call's transaction) and the host.
pub struct Live;

impl Effects for Live {
    fn insert(&mut self, order: &CreateOrder, amount: i64) -> Result<bool, HandlerError> {
        let inserted = pg::Connection::open(DATABASE)?.execute(
            "INSERT INTO orders (id, amount) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[pg::text(&order.id), pg::ParameterValue::Int64(amount)],
        );
        match inserted {
            Ok(rows) => Ok(rows == 1),
            Err(error) if pg::sqlstate(&error) == Some("42P01") => Err(HandlerError::Failed(format!(
                "{}: create the table first: psql -d <the orders database> -f plugins/orders/schema.sql",
                pg::describe(&error)
            ))),
            Err(error) => Err(error.into()),
        }
    }

    fn announce(&mut self, event: &OrderCreated) -> Result<(), HandlerError> {
        host::publish_json("events", "order.created", event)
    }

    fn bill(&mut self, request: &InvoiceRequest) -> Result<(), HandlerError> {
        host::send_request_json("billing", "invoice.create", request)
    }
}

/// `order.create` on the host: the order into Postgres, then the event and billing's request.
pub fn create(order: CreateOrder) -> Result<Created, HandlerError> {
    take(order, &mut Live)
}

/// The amount as the table stores it; an order without one, or beyond `bigint`, is refused.
fn amount(order: &CreateOrder) -> Result<i64, HandlerError> {
    match i64::try_from(order.amount) {
        Ok(0) => Err(HandlerError::BadRequest(format!("order {} has no amount", order.id))),
        Ok(amount) => Ok(amount),
        Err(_) => Err(HandlerError::BadRequest(format!("order {}: amount {} is too large", order.id, order.amount))),
    }
}

/// Checks the order, stores it and, the first time only, announces it and asks billing. Any
/// error after the insert rolls it back (`transaction = true`): nothing is kept of a message
/// that failed.
pub fn take(order: CreateOrder, effects: &mut impl Effects) -> Result<Created, HandlerError> {
    let amount = amount(&order)?;
    if effects.insert(&order, amount)? {
        effects.announce(&OrderCreated { id: order.id.clone(), amount: order.amount })?;
        effects.bill(&InvoiceRequest { order: order.id.clone(), amount: order.amount })?;
    }
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
    use std::collections::BTreeMap;

    /// A table in memory and the sends it was asked for; `billing_refused` makes `bill` fail
    /// as a send the config does not grant does.
    #[derive(Default)]
    struct Recorded {
        table: BTreeMap<String, i64>,
        events: Vec<OrderCreated>,
        invoices: Vec<InvoiceRequest>,
        billing_refused: bool,
    }

    impl Effects for Recorded {
        fn insert(&mut self, order: &CreateOrder, amount: i64) -> Result<bool, HandlerError> {
            if self.table.contains_key(&order.id) {
                return Ok(false);
            }
            self.table.insert(order.id.clone(), amount);
            Ok(true)
        }

        fn announce(&mut self, event: &OrderCreated) -> Result<(), HandlerError> {
            self.events.push(OrderCreated { id: event.id.clone(), amount: event.amount });
            Ok(())
        }

        fn bill(&mut self, request: &InvoiceRequest) -> Result<(), HandlerError> {
            if self.billing_refused {
                return Err(HandlerError::Failed("may not send to billing".into()));
            }
            self.invoices.push(InvoiceRequest { order: request.order.clone(), amount: request.amount });
            Ok(())
        }
    }

    fn order(id: &str, amount: u64) -> CreateOrder {
        CreateOrder { id: id.into(), amount }
    }

    #[test]
    fn an_order_is_stored_announced_and_billed() {
        let mut effects = Recorded::default();
        let created = take(order("o-1", 42), &mut effects).unwrap();
        assert_eq!(created, Created { id: "o-1".into(), status: "created".into() });
        assert_eq!(effects.table.get("o-1"), Some(&42));
        assert_eq!(effects.events, [OrderCreated { id: "o-1".into(), amount: 42 }]);
        assert_eq!(effects.invoices, [InvoiceRequest { order: "o-1".into(), amount: 42 }]);
    }

    #[test]
    fn an_order_handled_again_is_answered_the_same_and_sends_nothing_twice() {
        let mut effects = Recorded::default();
        let first = take(order("o-1", 42), &mut effects).unwrap();
        let again = take(order("o-1", 42), &mut effects).unwrap();
        assert_eq!(first, again);
        assert_eq!((effects.events.len(), effects.invoices.len()), (1, 1));
    }

    #[test]
    fn a_refused_send_after_the_insert_fails_the_call() {
        // The host rolls the insert back when the handler fails (transaction = true).
        let mut effects = Recorded { billing_refused: true, ..Recorded::default() };
        assert!(matches!(take(order("o-1", 42), &mut effects), Err(HandlerError::Failed(_))));
    }

    #[test]
    fn an_order_without_amount_or_beyond_bigint_is_a_bad_request() {
        let mut effects = Recorded::default();
        for amount in [0, u64::MAX] {
            assert!(matches!(take(order("o-1", amount), &mut effects), Err(HandlerError::BadRequest(_))), "{amount}");
        }
        assert!(effects.table.is_empty(), "a refused order is never stored");
    }

    #[test]
    fn unknown_keys_are_bad_requests() {
        let message = Message { routing_key: "x".into(), body: b"{}".to_vec(), content_type: None, headers: vec![] };
        assert!(matches!(handle(message), Err(HandlerError::BadRequest(_))));
    }
}
