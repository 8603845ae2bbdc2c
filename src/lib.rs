//! abstractgateway: a durable run gateway (API-compatible with the Python AbstractGateway) with an
//! in-process inference engine.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod providers;
pub mod runtime;
pub mod security;
pub mod store;
pub mod util;
