//! Operations: what the server counts and how it is watched.
//!
//! - `stats`: shared counters ([`crate::Stats`]) and a log-line rate limiter.
//! - `metrics`: the HTTP endpoint: `/metrics` (Prometheus), `/healthz`
//!   and `/readyz`.
//! - `http`: HTTP/1.1 connections that cannot lock a listener out (idle
//!   and half-sent ones closed after short deadlines).
//! - `summary`: a periodic one-line summary of the counters in the log.
//! - `process`: the process's own figures (CPU, memory) from `/proc`.
//! - `accept`: the accept loop every listener shares, which survives
//!   running out of descriptors and counts it.
//!
//! Uses nothing of the crate's outside this folder.

pub(crate) mod accept;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod process;
pub(crate) mod stats;
pub(crate) mod summary;
