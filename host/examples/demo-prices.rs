//! The price service of the outbound HTTP demo (`warren-enrich.toml`): answers
//! `GET /price/<sku>` with `{"sku": "<sku>", "price": <price>}` from a small table, 404 for
//! other skus, and prints each request with the `traceparent` it carried.
//!
//! ```text
//! cargo run -p warren --example demo-prices [ADDRESS]      # default 127.0.0.1:8080
//! ```

use std::time::Instant;

const PRICES: [(&str, f64); 4] = [("A1", 2.5), ("B2", 4.0), ("C3", 12.75), ("D4", 0.99)];

fn main() {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let server = tiny_http::Server::http(&address).unwrap_or_else(|e| {
        eprintln!("cannot listen on {address}: {e}");
        std::process::exit(1);
    });
    println!("price service on http://{address}: GET /price/<sku> for {PRICES:?}");
    let started = Instant::now();
    for request in server.incoming_requests() {
        let path = request.url().to_string();
        let traceparent = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("traceparent"))
            .map_or_else(|| "-".to_string(), |h| h.value.to_string());
        let sku = path.strip_prefix("/price/").unwrap_or_default();
        let found = PRICES.iter().find(|(known, _)| *known == sku);
        println!(
            "{:>8.3}s {} {path} traceparent={traceparent} -> {}",
            started.elapsed().as_secs_f64(),
            request.method(),
            if found.is_some() { 200 } else { 404 }
        );
        let response = match found {
            Some((sku, price)) => {
                let json = tiny_http::Header::from_bytes("content-type", "application/json").expect("a valid header");
                tiny_http::Response::from_string(format!(r#"{{"sku":"{sku}","price":{price}}}"#)).with_header(json)
            }
            None => tiny_http::Response::from_string(format!("no price for '{sku}'\n")).with_status_code(404),
        };
        let _ = request.respond(response);
    }
}
