//! File descriptors: the open-file limit raised at start and checked against `--max-connections`,
//! and the process figures exported beside the gateway's own metrics.
//!
//! Container runtimes often start a process at a soft `RLIMIT_NOFILE` of 1024 with a far higher
//! hard limit; a gateway that kept the soft one would fail its 1,000th accept with `EMFILE`. Every
//! connection takes two descriptors once it is relayed (the client's socket and the app's), so
//! [`raise_nofile`] raises the soft limit to the hard one and refuses a hard limit below
//! [`needed`], with a message that names both numbers and the two ways out.

use std::fmt;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

/// Descriptors the gateway keeps besides its connections: listeners, the admin port's
/// connections, certificate and token files, the runtime's own, standard streams, and the
/// refused connections being answered (at most
/// [`MAX_ANSWERED_REFUSALS`](crate::proxy::MAX_ANSWERED_REFUSALS)).
pub const RESERVED: u64 = 64;

/// The descriptors `max_connections` relayed connections need.
pub fn needed(max_connections: u64) -> u64 {
    max_connections.saturating_mul(2).saturating_add(RESERVED)
}

/// The open-file limits after [`raise_nofile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nofile {
    /// The soft limit the process started with.
    pub was: u64,
    /// The soft limit now (the hard one, unless raising it failed).
    pub soft: u64,
    pub hard: u64,
}

/// The open-file limit cannot hold `--max-connections`.
#[derive(Debug, thiserror::Error)]
pub enum NofileError {
    #[error("cannot read the open-file limit: {0}")]
    Read(nix::Error),
    #[error(
        "the open-file limit is {limit} but --max-connections {max_connections} needs {needed} \
         descriptors (two per connection and {RESERVED} more): raise the container runtime's \
         nofile limit or lower --max-connections (gateway.maxConnections) to {fits} or less"
    )]
    TooLow {
        limit: u64,
        max_connections: u64,
        needed: u64,
        fits: u64,
    },
}

/// Raises the soft open-file limit to the hard one and checks that the hard one holds
/// `max_connections`. A soft limit that cannot be raised is kept (and checked in its place).
pub fn raise_nofile(max_connections: u64) -> Result<Nofile, NofileError> {
    let (was, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(NofileError::Read)?;
    let soft = if was < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        was
    };
    check(soft, max_connections)?;
    Ok(Nofile { was, soft, hard })
}

/// Refuses a limit below what `max_connections` needs.
fn check(limit: u64, max_connections: u64) -> Result<(), NofileError> {
    let needed = needed(max_connections);
    if limit < needed {
        return Err(NofileError::TooLow {
            limit,
            max_connections,
            needed,
            fits: limit.saturating_sub(RESERVED) / 2,
        });
    }
    Ok(())
}

/// The process figures, read from `/proc/self` at each scrape: `process_open_fds`,
/// `process_max_fds`, `process_resident_memory_bytes` (the names every Prometheus client library
/// uses, so existing dashboards and alerts apply), and `longconn_gateway_tasks` (the runtime's
/// live tasks); and `process_start_time_seconds`, the time the collector was made, at start,
/// which changes when the gateway restarts. A figure that cannot be read is left out of that
/// scrape.
#[derive(Debug)]
pub struct ProcessCollector {
    /// When the process started, in Unix seconds.
    started: f64,
}

impl ProcessCollector {
    /// The collector of a process that started now.
    pub fn started_now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            started: since_epoch.as_secs_f64(),
        }
    }

    fn open_fds() -> Option<u64> {
        let dir = std::fs::read_dir("/proc/self/fd").ok()?;
        // The directory's own descriptor, open while it is read, is not one of the process's.
        Some((dir.count() as u64).saturating_sub(1))
    }

    fn max_fds() -> Option<u64> {
        getrlimit(Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft)
    }

    fn resident_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kib * 1024)
    }

    fn tasks() -> Option<u64> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        Some(handle.metrics().num_alive_tasks() as u64)
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let figures: [(&str, &str, Option<u64>); 4] = [
            (
                "process_open_fds",
                "Open file descriptors",
                Self::open_fds(),
            ),
            (
                "process_max_fds",
                "The open-file limit (soft, as raised at start)",
                Self::max_fds(),
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory",
                Self::resident_bytes(),
            ),
            (
                "longconn_gateway_tasks",
                "Tasks alive in the gateway's runtime (about one per connection and session)",
                Self::tasks(),
            ),
        ];
        for (name, help, value) in figures {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            gauge.encode(metric)?;
        }
        let metric = encoder.encode_descriptor(
            "process_start_time_seconds",
            "When the gateway started, Unix seconds",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.started).encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_connection_needs_two_descriptors_and_the_reserve() {
        assert_eq!(needed(10_000), 20_064);
        assert_eq!(needed(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_limit_below_the_need_is_refused_with_what_would_fit() {
        check(20_064, 10_000).expect("exactly enough");
        let err = check(1024, 10_000).expect_err("too low").to_string();
        assert!(
            err.contains("the open-file limit is 1024 but")
                && err.contains("--max-connections 10000 needs 20064")
                && err.contains("to 480 or less"),
            "{err}"
        );
    }
}
