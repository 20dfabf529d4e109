//! The integration tests, as one test binary: each area is a module, and
//! they share the helpers of [`common`] (real backends that answer with
//! their name, the proxy started in-process on port 0, a client that can
//! connect from any 127.0.0.0/8 source address).
//!
//! One binary links the crate once, which keeps a new user's first
//! `cargo test` short; `cargo test --test it AREA` runs one area, e.g.
//! `cargo test --test it hygiene`.

mod common;

mod architecture;

mod admin;
mod admin_write;
mod backend_http1;
mod cli;
mod config_files;
mod discovery;
mod dns;
mod failures;
mod faults;
mod grpc;
mod hash_routing;
mod hashing_properties;
mod headers;
mod health;
mod http2;
mod hygiene;
mod lifecycle;
mod live_pool;
mod policies;
mod proxy_interop;
mod proxy_protocol;
mod relay;
mod routes;
mod session_properties;
mod session_scenario;
mod sessions;
mod tcp;
mod tls;
mod upgrade;
