//! `billing`: the orders demo's billing service, standing in for the Go service the `orders`
//! plugin asks (`warren-billing.toml` serves it as service `billing`). It answers
//! `invoice.create` with an invoice number for the order; nothing is kept.

use serde::{Deserialize, Serialize};
use warren_guest::HandlerError;

#[derive(Debug, Deserialize)]
pub struct InvoiceRequest {
    pub order: String,
    pub amount: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Invoice {
    pub order: String,
    pub invoice: String,
}

/// `invoice.create`: the invoice of one order, numbered after it.
pub fn invoice(request: InvoiceRequest) -> Result<Invoice, HandlerError> {
    if request.amount == 0 {
        return Err(HandlerError::BadRequest(format!("order {} has nothing to invoice", request.order)));
    }
    Ok(Invoice { invoice: format!("inv-{}", request.order), order: request.order })
}

warren_guest::export_json!(invoice);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_gets_an_invoice_named_after_it() {
        let invoice = invoice(InvoiceRequest { order: "o-1".into(), amount: 42 }).unwrap();
        assert_eq!(invoice, Invoice { order: "o-1".into(), invoice: "inv-o-1".into() });
    }

    #[test]
    fn nothing_to_invoice_is_a_bad_request() {
        let refused = invoice(InvoiceRequest { order: "o-1".into(), amount: 0 });
        assert!(matches!(refused, Err(HandlerError::BadRequest(_))));
    }
}
