//! Leader election with fencing: only one replica reconciles, and a leader that cannot renew its
//! Lease stops before the Lease can expire and another replica take it over.
//!
//! The Lease is held with `kube-lease-manager` (maintained, built on kube's and k8s-openapi's
//! current versions, taking the Lease with server-side apply so two replicas never both acquire
//! it), which renews it `grace` before it expires ([`TIMING`]). The manager reports a lost Lease
//! only once it can read the Lease again, so a leader cut off from the API server (a partition,
//! an API server that does not answer) would keep acting after another replica took over. So the
//! manager's client records when each successful write of the Lease was sent
//! ([`lease_client`]): that is the renewal the other replicas go by. A leader acts only once it
//! has seen a renewal of its own succeed, and stops at [`LeaseTiming::fence`], `margin` before the
//! Lease expires after its last renewal. The decision is pure ([`LeaseTiming`], on explicit
//! instants); [`Leadership`] is the async shell around the manager.

use std::fmt;
use std::time::Duration;

use http::{Method, Request};
use kube::Client;
use kube::client::Body;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

/// How long a renewal holds the Lease, how early the holder renews, and how long before the
/// Lease would expire a leader that could not renew stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// The Lease's `leaseDurationSeconds`: other replicas take it over this long after the
    /// holder's last renewal.
    pub duration: Duration,
    /// The holder renews this long before the Lease expires.
    pub grace: Duration,
    /// A leader stops acting this long before the Lease expires when it has not renewed it: room
    /// for clock skew between nodes and for the process to stop.
    pub margin: Duration,
}

/// The operator's Lease timing: renewed 8 s after each renewal, so a failed renewal is retried
/// for 4 s before the leader stops, 12 s after its last renewal and 3 s before the Lease
/// expires.
pub const TIMING: LeaseTiming = LeaseTiming {
    duration: Duration::from_secs(15),
    grace: Duration::from_secs(7),
    margin: Duration::from_secs(3),
};

impl LeaseTiming {
    /// When a leader whose last successful renewal was sent at `renewed` must have stopped acting.
    pub fn fence(&self, renewed: Instant) -> Instant {
        renewed + self.duration.saturating_sub(self.margin)
    }

    /// Whether a leader whose last successful renewal was sent at `renewed` may still act at `now`.
    pub fn may_act(&self, renewed: Instant, now: Instant) -> bool {
        now < self.fence(renewed)
    }
}

/// Why a leader stopped acting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// The manager found another holder on the Lease.
    Taken,
    /// No renewal succeeded in time: the last one was sent this long ago.
    NotRenewed { since: Duration },
    /// The leader election task ended.
    Stopped,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Taken => f.write_str("another replica holds the leader Lease"),
            Lost::NotRenewed { since } => write!(
                f,
                "the leader Lease was last renewed {}s ago and could not be renewed since; \
                 stopping before it expires",
                since.as_secs()
            ),
            Lost::Stopped => f.write_str("leader election stopped"),
        }
    }
}

/// What can go wrong while campaigning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("setting up leader election on Lease {lease}: {source}")]
    Setup {
        lease: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error("leader election on Lease {lease} stopped before this replica became the leader")]
    Stopped { lease: String },
}

/// A client for the lease manager: `client`, recording in `renewed` when each successful write
/// (PATCH) of the Lease was sent. The manager uses its client for the one Lease only.
pub fn lease_client(client: &Client, renewed: watch::Sender<Option<Instant>>) -> Client {
    let inner = client.clone();
    let renewed = std::sync::Arc::new(renewed);
    let service = tower::service_fn(move |request: Request<Body>| {
        let inner = inner.clone();
        let renewed = renewed.clone();
        async move {
            let write = request.method() == Method::PATCH;
            let sent = Instant::now();
            let response = inner.send(request).await?;
            if write && response.status().is_success() {
                renewed.send_replace(Some(sent));
            }
            Ok::<_, kube::Error>(response)
        }
    });
    Client::new(service, client.default_namespace())
}

/// This replica's identity on the Lease: the pod name.
pub fn identity() -> String {
    std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("longconn-operator-{}", std::process::id()))
}

/// The leader Lease, held. Dropping it closes the manager's channel, so the manager releases the
/// Lease.
pub struct Leadership {
    lease: String,
    is_leader: watch::Receiver<bool>,
    renewed: watch::Receiver<Option<Instant>>,
    _task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Campaigns for Lease `lease` in `namespace` as `identity` and returns once this replica
    /// holds it and has seen a renewal of its own succeed (a restarted replica that the Lease
    /// still names waits for its next renewal).
    pub async fn acquire(
        client: &Client,
        lease: &str,
        namespace: &str,
        identity: &str,
    ) -> Result<Self, Error> {
        let (renewed_tx, renewed) = watch::channel(None);
        let manager = LeaseManagerBuilder::new(lease_client(client, renewed_tx), lease)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(TIMING.duration.as_secs())
            .with_grace(TIMING.grace.as_secs())
            .build()
            .await
            .map_err(|source| Error::Setup {
                lease: lease.to_owned(),
                source,
            })?;
        let (is_leader, task) = manager.watch().await;
        let mut leadership = Leadership {
            lease: lease.to_owned(),
            is_leader,
            renewed,
            _task: task,
        };
        info!(identity, lease, "waiting to become the leader");
        leadership.until_confirmed().await?;
        info!(identity, lease, "became the leader");
        Ok(leadership)
    }

    /// Waits until the manager says this replica holds the Lease and a renewal of its own is
    /// recent enough to act on.
    async fn until_confirmed(&mut self) -> Result<(), Error> {
        let lease = self.lease.clone();
        let stopped = |_| Error::Stopped {
            lease: lease.clone(),
        };
        loop {
            if *self.is_leader.borrow_and_update() {
                let since = Instant::now();
                let renewed = *self.renewed.borrow_and_update();
                if renewed.is_some_and(|at| TIMING.may_act(at, since)) {
                    return Ok(());
                }
            }
            tokio::select! {
                changed = self.is_leader.changed() => changed.map_err(stopped)?,
                changed = self.renewed.changed() => changed.map_err(stopped)?,
            }
        }
    }

    /// Resolves when this replica must stop acting: the manager found another holder, or no
    /// renewal succeeded before [`LeaseTiming::fence`].
    pub async fn lost(&mut self) -> Lost {
        lost(&mut self.is_leader, &mut self.renewed, TIMING).await
    }
}

/// [`Leadership::lost`] on the manager's channels, with `timing`.
async fn lost(
    is_leader: &mut watch::Receiver<bool>,
    renewed: &mut watch::Receiver<Option<Instant>>,
    timing: LeaseTiming,
) -> Lost {
    loop {
        if !*is_leader.borrow_and_update() {
            return Lost::Taken;
        }
        let Some(last) = *renewed.borrow_and_update() else {
            return Lost::NotRenewed {
                since: Duration::ZERO,
            };
        };
        tokio::select! {
            changed = is_leader.changed() => if changed.is_err() { return Lost::Stopped },
            changed = renewed.changed() => if changed.is_err() { return Lost::Stopped },
            () = tokio::time::sleep_until(timing.fence(last)) => {
                return Lost::NotRenewed { since: last.elapsed() };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: LeaseTiming = LeaseTiming {
        duration: Duration::from_secs(15),
        grace: Duration::from_secs(7),
        margin: Duration::from_secs(3),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_leader_stops_margin_before_the_lease_expires_after_its_last_renewal() {
        let renewed = Instant::now();
        assert_eq!(TEST.fence(renewed), renewed + secs(12));
        assert!(TEST.may_act(renewed, renewed + secs(11)));
        assert!(!TEST.may_act(renewed, renewed + secs(12)));
        assert!(!TEST.may_act(renewed, renewed + secs(15)), "expired");
    }

    #[test]
    fn a_renewal_moves_the_fence_and_the_renewal_is_due_before_it() {
        let first = Instant::now();
        let due = first + TEST.duration - TEST.grace;
        assert!(due < TEST.fence(first), "a failed renewal gets retried");
        let second = first + secs(8);
        assert!(TEST.may_act(second, first + secs(19)));
        assert!(!TEST.may_act(second, first + secs(20)));
    }

    #[test]
    fn the_operator_stops_before_other_replicas_may_take_the_lease() {
        let renewed = Instant::now();
        let expires = renewed + TIMING.duration;
        assert!(TIMING.fence(renewed) < expires);
        assert!(
            TIMING.grace > TIMING.margin,
            "the renewal comes before the fence"
        );
        assert!(TIMING.margin >= secs(1));
    }

    /// The lease manager's ends of the channels that `watch()` and [`lease_client`] feed.
    struct Manager {
        is_leader: watch::Sender<bool>,
        renewed: watch::Sender<Option<Instant>>,
    }

    /// A leader's channels, renewed at `renewed_at`, and the manager's ends.
    fn channels(
        renewed_at: Instant,
    ) -> (
        Manager,
        watch::Receiver<bool>,
        watch::Receiver<Option<Instant>>,
    ) {
        let (is_leader, leader_rx) = watch::channel(true);
        let (renewed, renewed_rx) = watch::channel(Some(renewed_at));
        (Manager { is_leader, renewed }, leader_rx, renewed_rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_stops_before_the_lease_expires() {
        let start = Instant::now();
        let (_manager, mut leader, mut renewed) = channels(start);
        let lost = lost(&mut leader, &mut renewed, TEST).await;
        assert_eq!(lost, Lost::NotRenewed { since: secs(12) });
        assert_eq!(Instant::now(), start + secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn each_renewal_keeps_the_leader_acting() {
        let start = Instant::now();
        let (manager, mut leader, mut renewed) = channels(start);
        let renewals = tokio::spawn(async move {
            for n in 1..=3 {
                tokio::time::sleep_until(start + secs(8 * n)).await;
                manager.renewed.send_replace(Some(Instant::now()));
            }
            manager
        });
        let lost = lost(&mut leader, &mut renewed, TEST).await;
        assert_eq!(lost, Lost::NotRenewed { since: secs(12) });
        assert_eq!(Instant::now(), start + secs(24 + 12));
        drop(renewals.await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_the_manager_finds_replaced_stops_at_once() {
        let start = Instant::now();
        let (manager, mut leader, mut renewed) = channels(start);
        let _manager = tokio::spawn(async move {
            tokio::time::sleep(secs(5)).await;
            manager.is_leader.send_replace(false);
            manager
        });
        assert_eq!(lost(&mut leader, &mut renewed, TEST).await, Lost::Taken);
        assert_eq!(Instant::now(), start + secs(5));
    }

    /// A client whose requests are answered with `status` by a mock API server.
    fn answering(status: u16) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, http::Response<Body>>();
        tokio::spawn(async move {
            while let Some((_request, send)) = handle.next_request().await {
                let response = http::Response::builder()
                    .status(status)
                    .body(Body::from(br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","code":200}"#.to_vec()))
                    .expect("response");
                send.send_response(response);
            }
        });
        Client::new(service, "default")
    }

    async fn send(client: &Client, method: Method) {
        let request = Request::builder()
            .method(method)
            .uri("/apis/coordination.k8s.io/v1/namespaces/ns/leases/lease")
            .body(Body::empty())
            .expect("request");
        client.send(request).await.expect("sent");
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_client_records_when_a_successful_write_was_sent() {
        let (tx, rx) = watch::channel(None);
        let client = lease_client(&answering(200), tx);
        send(&client, Method::GET).await;
        assert_eq!(*rx.borrow(), None, "a read renews nothing");
        let sent = Instant::now();
        send(&client, Method::PATCH).await;
        assert_eq!(*rx.borrow(), Some(sent));

        let (tx, rx) = watch::channel(None);
        let client = lease_client(&answering(500), tx);
        send(&client, Method::PATCH).await;
        assert_eq!(*rx.borrow(), None, "a refused write renews nothing");
    }
}
