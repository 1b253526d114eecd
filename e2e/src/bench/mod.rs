//! Benchmarks on the local control plane that print their figures beside an anchor measured in
//! the same run. [`operator`]: what the operator costs the API server, against plain
//! Deployments; [`report`]: its figures, targets and table.

pub mod operator;
pub mod report;
