//! longconn-gateway: the per-pod gateway that terminates long-lived client connections,
//! proxies them to the app in the same pod, and drains them when the operator asks.

pub mod api;
