//! longconn-drain-api: the drain API of longconn's gateway, for both of its ends.
//!
//! Every gateway serves `POST /drain` and `GET /drain` on its admin port, behind a bearer token;
//! the operator drains gateways and reads their reports through them, and so does the gateway's
//! own `drain` subcommand in a pod's preStop hook. This crate holds what both ends share and
//! nothing else: [`wire`], the request and report types as they travel as JSON, and [`client`],
//! the two calls ([`report`], [`start_drain`]) with their typed [`Error`].

pub mod client;
pub mod wire;

pub use client::{CALL_TIMEOUT, Error, Result, report, start_drain};
pub use wire::{DrainReport, DrainRequest, DrainState, DrainStrategy, MAX_CLOSE_REASON_BYTES};
