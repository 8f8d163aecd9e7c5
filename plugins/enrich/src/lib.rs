//! `enrich`: prices a line of an order by asking an HTTP price service.
//!
//! `{"sku": "A1", "qty": 2}` → `GET $PRICES_URL/price/A1` → `{"sku": "A1", "price": 2.5}` →
//! `{"sku": "A1", "qty": 2, "unit_price": 2.5, "total": 5.0}`.
//!
//! A line may name its supplier's catalogue (`"catalogue": "https://prices.supplier.example"`):
//! the message picks the URL, the host's allowlist decides whether it may be called. A line
//! that asks for it (`"announce": true`) is also published as event `line.priced` on the
//! default stream (granted with `publish = ["events"]`).
//!
//! Config (see `warren-enrich.toml`): `[plugin.enrich] http = ["http://127.0.0.1:8080"]`
//! grants the price service's origin, and `env = ["PRICES_URL"]` may tell the plugin where it
//! is (default `http://127.0.0.1:8080`). Outcomes: a body without a `sku` is `bad-request`;
//! an unknown sku (404), an origin not granted or an answer over the host's cap is `failed`;
//! a price service that is down or answers 5xx is `retry`; one that does not answer in time
//! ends the call at its deadline (`timeout_ms`).
//!
//! The same plugin in Python and JavaScript: `tests/fixtures/enrich-py`, `tests/fixtures/enrich-js`.

use serde::{Deserialize, Serialize};
use warren_guest::{HandlerError, http};

/// Where the price service is when `PRICES_URL` is not granted.
pub const DEFAULT_PRICES_URL: &str = "http://127.0.0.1:8080";

#[derive(Debug, Deserialize)]
pub struct Line {
    pub sku: String,
    #[serde(default = "one")]
    pub qty: u32,
    /// The price service to ask (`$PRICES_URL` when absent).
    #[serde(default)]
    pub catalogue: Option<String>,
    /// Publish the priced line as event `line.priced` too.
    #[serde(default)]
    pub announce: bool,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
pub struct Price {
    pub price: f64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Priced {
    pub sku: String,
    pub qty: u32,
    pub unit_price: f64,
    pub total: f64,
}

/// The price service's base URL.
pub fn prices_url() -> String {
    std::env::var("PRICES_URL").unwrap_or_else(|_| DEFAULT_PRICES_URL.to_string())
}

/// Prices `line` with `price` (what the service said).
pub fn priced(line: Line, price: Price) -> Priced {
    let total = (price.price * f64::from(line.qty) * 100.0).round() / 100.0;
    Priced { sku: line.sku, qty: line.qty, unit_price: price.price, total }
}

pub fn enrich(line: Line) -> Result<Priced, HandlerError> {
    if line.sku.is_empty() || !line.sku.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(HandlerError::BadRequest(format!("'{}' is not a sku", line.sku)));
    }
    let base = line.catalogue.clone().unwrap_or_else(prices_url);
    let url = format!("{}/price/{}", base.trim_end_matches('/'), line.sku);
    let price: Price = match http::get_json(&url) {
        Err(http::Error::Status { status: 404, .. }) => {
            return Err(HandlerError::Failed(format!("unknown sku '{}'", line.sku)));
        }
        other => other?,
    };
    let announce = line.announce;
    let priced = priced(line, price);
    if announce {
        warren_guest::host::publish_json("events", "line.priced", &priced)?;
    }
    Ok(priced)
}

warren_guest::export_json!(enrich);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_priced_to_the_cent() {
        let line = Line { sku: "A1".into(), qty: 3, catalogue: None, announce: false };
        let priced = priced(line, Price { price: 0.1 });
        assert_eq!(priced, Priced { sku: "A1".into(), qty: 3, unit_price: 0.1, total: 0.3 });
    }

    #[test]
    fn a_sku_that_would_change_the_url_is_refused() {
        for sku in ["", "../admin", "a/b", "x?y=1"] {
            let error = enrich(Line { sku: sku.into(), qty: 1, catalogue: None, announce: false }).unwrap_err();
            assert!(matches!(error, HandlerError::BadRequest(_)), "{sku}: {error:?}");
        }
    }
}
