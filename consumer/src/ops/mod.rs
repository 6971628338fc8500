//! What operators watch: Prometheus metrics (`metrics`), the health that
//! `/healthz` reports (`health`) and the HTTP server for both (`http`).

pub mod health;
pub mod http;
pub mod metrics;
