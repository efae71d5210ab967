//! nbde-server: Tang's API per device, the policy that decides whether to take part in a
//! recovery, and the decision history; embedded SQLite.

pub mod api;
pub mod client;
pub mod config;
pub mod curve;
pub mod error;
pub mod http;
pub mod kek;
pub mod keys;
pub mod liveness;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod ratelimit;
pub mod serve;
pub mod store;
pub mod tang_dir;
pub mod webhooks;
