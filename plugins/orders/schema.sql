-- The orders plugin's table, in the database warren-orders.toml grants as `orders`.
-- Apply it once, before the host serves orders (it is safe to apply again):
--   psql -h 127.0.0.1 -U postgres -d orders -f plugins/orders/schema.sql
-- The plugin only inserts and reads; it never changes the schema itself.
CREATE TABLE IF NOT EXISTS orders (
    id         text PRIMARY KEY,           -- the client's order id: a redelivery inserts nothing
    amount     bigint NOT NULL CHECK (amount > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
