//! Shared helpers for the integration tests (filled in below).
