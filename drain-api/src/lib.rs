//! longconn-drain-api: the drain API of longconn's gateway, for both of its ends.
//!
//! Every gateway serves `POST /drain` and `GET /drain` on its admin port, behind a bearer token;
//! the operator drains gateways and reads their reports through them, and so does the gateway's
//! own `drain` subcommand in a pod's preStop hook. Beside them, `POST /rebalance` and `GET
//! /rebalance` move a share of the sessions of a gateway that keeps serving (after a scale-up,
//! from the hottest gateways to the new ones). This crate holds what both ends share and nothing
//! else: [`wire`], the request and report types as they travel as JSON, and [`client`], the calls
//! ([`report`], [`start_drain`], [`rebalance_report`], [`start_rebalance`]) with their typed
//! [`Error`].

pub mod client;
pub mod wire;

pub use client::{
    CALL_TIMEOUT, Error, Result, rebalance_report, report, start_drain, start_rebalance,
};
pub use wire::{
    DrainReport, DrainRequest, DrainState, DrainStrategy, Health, MAX_CLOSE_REASON_BYTES,
    MAX_KEEP_MOVED_FOR, MAX_REBALANCE_ID_BYTES, RebalanceReport, RebalanceRequest, RebalanceState,
    valid_rebalance_id,
};
