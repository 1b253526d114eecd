//! The status a LongConnService should show, computed from what the reconciler observed.
//!
//! [`compute`] is pure: it takes the observations and `now`, keeps every condition's
//! `lastTransitionTime` when its status did not change, and so returns exactly the old status
//! when nothing changed (the reconciler then writes nothing).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::autoscale::SCALING_ACTIVE;
use crate::certs::Lifetime;
use crate::crd::{
    AutoscalingStatus, CertificateStatus, GatewayRecord, LongConnService, LongConnServiceStatus,
    RebalanceStatus, RolloutStatus,
};
use crate::desired::ObservedRevision;
use crate::disruption::needed_ready;
use crate::labels;
use crate::rollout::{self, Verdict};

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const CERTIFICATE_READY: &str = "CertificateReady";
pub const MONITORING_READY: &str = "MonitoringReady";

/// Something that keeps the LongConnService from being fully realised (Degraded=True).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason from a closed set (`OwnershipConflict`, `ApplyFailed`, ...).
    pub reason: &'static str,
    pub message: String,
}

/// The state of the serving certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertFacts {
    /// A usable certificate is in `secret`; `lifetime` when it could be read.
    Ready {
        secret: String,
        lifetime: Option<Lifetime>,
        reason: &'static str,
        message: String,
    },
    /// No usable certificate yet.
    NotReady {
        reason: &'static str,
        message: String,
    },
    /// `tls.mode` is Disabled.
    Disabled,
}

/// The state of the ServiceMonitor and the PrometheusRule beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MonitoringFacts {
    /// The ServiceMonitor is made, and the PrometheusRule when `rule`.
    Created {
        rule: bool,
    },
    /// The cluster does not serve the ServiceMonitor API.
    ApiMissing,
    /// The ServiceMonitor is made; the PrometheusRule is asked for but its API is not served.
    RuleApiMissing,
    Disabled,
}

/// Everything [`compute`] needs.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub update_revision: &'a str,
    pub revisions: &'a [ObservedRevision],
    /// The update revision's Deployment reports ProgressDeadlineExceeded.
    pub update_stalled: bool,
    /// The update revision's Deployment could not be applied this time (the API server refused
    /// it, or another object holds its name): the message of the [`Problem`] collected for it.
    pub update_refused: Option<&'a str>,
    pub problems: &'a [Problem],
    pub certificate: &'a CertFacts,
    pub monitoring: MonitoringFacts,
    /// Open sessions reported by the gateways.
    pub active_sessions: i64,
    /// The rollout's record, as [`rollout::step`] left it.
    pub rollout: Option<&'a RolloutStatus>,
    /// The rollout's verdict on Progressing, when it has one (drop budget, rollback).
    pub progressing: Option<&'a Verdict>,
    pub sessions_preserved: &'a Verdict,
    /// The gateways' accounting records, as the rollout left them.
    pub gateways: &'a [GatewayRecord],
    /// The session autoscaling's ScalingActive verdict and status, while it is on.
    pub autoscaling: Option<(&'a Verdict, &'a AutoscalingStatus)>,
    /// The rebalancing's record, as [`rollout::step`] left it.
    pub rebalance: Option<&'a RebalanceStatus>,
    pub now: Timestamp,
}

/// The status to write.
pub fn compute(lcs: &LongConnService, facts: &Facts) -> LongConnServiceStatus {
    let old = lcs.status.clone().unwrap_or_default();
    let name = lcs.metadata.name.as_deref().unwrap_or_default();
    let generation = lcs.metadata.generation;
    let want = lcs.spec.replicas;
    let replicas: i32 = facts.revisions.iter().map(|r| r.current_replicas).sum();
    let ready: i32 = facts.revisions.iter().map(|r| r.ready_replicas).sum();
    let update = facts
        .revisions
        .iter()
        .find(|r| r.revision == facts.update_revision);
    let updated = update.map_or(0, |r| r.current_replicas);
    let updated_ready = update.map_or(0, |r| r.ready_replicas);
    let old_pods: i32 = facts
        .revisions
        .iter()
        .filter(|r| r.revision != facts.update_revision)
        .map(|r| r.current_replicas)
        .sum();
    // Complete once the rollout says so too: the old Deployments count no pod as soon as the
    // last one is terminating, before its drain's end is recorded and it is gone.
    let complete = updated_ready >= want
        && old_pods == 0
        && updated == want
        && facts.rollout.is_none_or(|r| r.finished_at.is_some());

    let mut conditions = Conditions {
        old: &old.conditions,
        new: Vec::new(),
        generation,
        now: facts.now,
    };

    let needed = needed_ready(lcs);
    if want == 0 {
        conditions.set(
            AVAILABLE,
            true,
            "ScaledToZero",
            "spec.replicas is 0".to_owned(),
        );
    } else if ready >= needed {
        conditions.set(
            AVAILABLE,
            true,
            "MinimumReplicasAvailable",
            format!("{ready} of {want} pods ready; at least {needed} needed"),
        );
    } else {
        conditions.set(
            AVAILABLE,
            false,
            "MinimumReplicasUnavailable",
            format!(
                "{ready} of {want} pods ready; at least {needed} needed. \
                 See `kubectl get pods -l {}={name}`",
                labels::SERVICE
            ),
        );
    }

    let rev = facts.update_revision;
    if let Some(verdict) = facts.progressing {
        conditions.set(
            PROGRESSING,
            verdict.status,
            verdict.reason,
            verdict.message.clone(),
        );
    } else if let Some(refusal) = facts.update_refused {
        conditions.set(
            PROGRESSING,
            false,
            "RevisionRefused",
            format!("revision {rev} cannot be applied, so none of its pods can start: {refusal}"),
        );
    } else if facts.update_stalled {
        conditions.set(
            PROGRESSING,
            false,
            "ProgressDeadlineExceeded",
            format!(
                "revision {rev} made no progress within spec.rollout.progressDeadline ({}): \
                 its pods do not become ready, so no old pod is drained. \
                 See `kubectl describe deployment {}`",
                lcs.spec.rollout.progress_deadline,
                labels::names::deployment(name, rev)
            ),
        );
    } else if complete {
        conditions.set(
            PROGRESSING,
            true,
            "NewRevisionAvailable",
            format!("revision {rev} serves all {want} pods"),
        );
    } else {
        conditions.set(
            PROGRESSING,
            true,
            "RolloutInProgress",
            format!(
                "revision {rev}: {updated_ready} of {want} pods ready, {old_pods} old pods left"
            ),
        );
    }

    match facts.problems.first() {
        Some(first) => {
            let message = facts
                .problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            conditions.set(DEGRADED, true, first.reason, message);
        }
        None => conditions.set(
            DEGRADED,
            false,
            "AsExpected",
            "every object is as desired".to_owned(),
        ),
    }

    let certificate = match facts.certificate {
        CertFacts::Ready {
            secret,
            lifetime,
            reason,
            message,
        } => {
            conditions.set(CERTIFICATE_READY, true, reason, message.clone());
            Some(CertificateStatus {
                secret_name: secret.clone(),
                not_after: lifetime.map(|l| Time(l.not_after)),
                renew_at: lifetime.map(|l| Time(l.renew_at())),
            })
        }
        CertFacts::NotReady { reason, message } => {
            conditions.set(CERTIFICATE_READY, false, reason, message.clone());
            None
        }
        CertFacts::Disabled => {
            conditions.set(
                CERTIFICATE_READY,
                true,
                "TLSDisabled",
                "tls.mode is Disabled: clients connect in plain text".to_owned(),
            );
            None
        }
    };

    match facts.monitoring {
        MonitoringFacts::Created { rule } => conditions.set(
            MONITORING_READY,
            true,
            "ServiceMonitorReady",
            if rule {
                format!(
                    "ServiceMonitor {name} scrapes the gateways' /metrics; PrometheusRule {name} \
                     alerts on them"
                )
            } else {
                format!("ServiceMonitor {name} scrapes the gateways' /metrics")
            },
        ),
        MonitoringFacts::RuleApiMissing => conditions.set(
            MONITORING_READY,
            false,
            "PrometheusRuleAPIMissing",
            format!(
                "ServiceMonitor {name} scrapes the gateways' /metrics, but the cluster does not \
                 serve monitoring.coreos.com/v1 PrometheusRule, so nothing alerts on them: \
                 install the Prometheus Operator's PrometheusRule CRD, or set \
                 spec.monitoring.prometheusRule.enabled=false"
            ),
        ),
        MonitoringFacts::ApiMissing => conditions.set(
            MONITORING_READY,
            false,
            "ServiceMonitorAPIMissing",
            "the cluster does not serve monitoring.coreos.com/v1 ServiceMonitor: install the \
             Prometheus Operator CRDs, or set spec.monitoring.serviceMonitor.enabled=false"
                .to_owned(),
        ),
        MonitoringFacts::Disabled => conditions.set(
            MONITORING_READY,
            true,
            "Disabled",
            "spec.monitoring.serviceMonitor.enabled is false".to_owned(),
        ),
    }

    let preserved = facts.sessions_preserved;
    conditions.set(
        rollout::SESSIONS_PRESERVED,
        preserved.status,
        preserved.reason,
        preserved.message.clone(),
    );

    if let Some((verdict, _)) = facts.autoscaling {
        conditions.set(
            SCALING_ACTIVE,
            verdict.status,
            verdict.reason,
            verdict.message.clone(),
        );
    }

    // Conditions this computation does not own are carried over (ScalingActive it owns: it
    // goes when the session autoscaling is turned off).
    let mut all = conditions.new;
    for c in &old.conditions {
        if c.type_ != SCALING_ACTIVE && !all.iter().any(|n| n.type_ == c.type_) {
            all.push(c.clone());
        }
    }

    LongConnServiceStatus {
        observed_generation: generation,
        replicas,
        ready_replicas: ready,
        updated_replicas: updated,
        selector: Some(labels::selector_string(&labels::pods(name))),
        active_sessions: facts.active_sessions,
        current_revision: if complete {
            Some(rev.to_owned())
        } else {
            old.current_revision
                .clone()
                .or_else(|| largest_old_revision(facts))
        },
        update_revision: Some(rev.to_owned()),
        conditions: all,
        rollout: facts.rollout.cloned(),
        certificate,
        gateways: facts.gateways.to_vec(),
        autoscaling: facts.autoscaling.map(|(_, status)| status.clone()),
        rebalance: facts.rebalance.cloned(),
        // Recorded by the plan once this status is known (crate::history).
        history: old.history.clone(),
    }
}

fn largest_old_revision(facts: &Facts) -> Option<String> {
    facts
        .revisions
        .iter()
        .filter(|r| r.revision != facts.update_revision && r.current_replicas > 0)
        .max_by_key(|r| r.current_replicas)
        .map(|r| r.revision.clone())
}

/// Builds the new condition list, keeping transition times of unchanged statuses.
struct Conditions<'a> {
    old: &'a [Condition],
    new: Vec<Condition>,
    generation: Option<i64>,
    now: Timestamp,
}

impl Conditions<'_> {
    fn set(&mut self, type_: &str, status: bool, reason: &str, message: String) {
        let status = if status { "True" } else { "False" }.to_owned();
        let last_transition_time = self
            .old
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or(Time(self.now), |c| c.last_transition_time.clone());
        self.new.push(Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message,
            observed_generation: self.generation,
            last_transition_time,
        });
    }
}

/// The condition of `type_`, if set.
pub fn condition<'a>(status: &'a LongConnServiceStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;

    fn lcs(replicas: i32) -> LongConnService {
        LongConnService::test()
            .replicas(replicas)
            .generation(4)
            .build()
    }

    fn rev(revision: &str, pods: i32, ready: i32) -> ObservedRevision {
        ObservedRevision {
            revision: revision.to_owned(),
            replicas: pods,
            current_replicas: pods,
            ready_replicas: ready,
        }
    }

    fn compute_at(
        lcs: &LongConnService,
        revisions: &[ObservedRevision],
        now: &str,
    ) -> LongConnServiceStatus {
        compute_with(lcs, revisions, now, |_| {})
    }

    static NO_DRAINS: LazyLock<Verdict> = LazyLock::new(|| Verdict {
        status: true,
        reason: "NoDrains",
        message: "no pod has been drained yet".to_owned(),
    });

    /// [`compute`] with plain facts that `change` adjusts.
    fn compute_with<'a>(
        lcs: &LongConnService,
        revisions: &'a [ObservedRevision],
        now: &str,
        change: impl FnOnce(&mut Facts<'a>),
    ) -> LongConnServiceStatus {
        let mut facts = Facts {
            update_revision: "new",
            revisions,
            update_stalled: false,
            update_refused: None,
            problems: &[],
            certificate: &CertFacts::Disabled,
            monitoring: MonitoringFacts::Disabled,
            active_sessions: 0,
            rollout: None,
            progressing: None,
            sessions_preserved: &NO_DRAINS,
            gateways: &[],
            autoscaling: None,
            rebalance: None,
            now: now.parse().expect("time"),
        };
        change(&mut facts);
        compute(lcs, &facts)
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time_so_status_is_stable() {
        let mut lcs = lcs(3);
        let first = compute_at(&lcs, &[rev("new", 3, 3)], "2026-01-01T00:00:00Z");
        lcs.status = Some(first.clone());
        let again = compute_at(&lcs, &[rev("new", 3, 3)], "2026-01-01T01:00:00Z");
        assert_eq!(again, first, "nothing changed, so nothing to write");

        let degraded = compute_at(&lcs, &[rev("new", 3, 0)], "2026-01-01T02:00:00Z");
        let available = condition(&degraded, AVAILABLE).expect("Available");
        assert_eq!(available.status, "False");
        assert_eq!(
            available.last_transition_time.0.to_string(),
            "2026-01-01T02:00:00Z"
        );
        assert_eq!(available.observed_generation, Some(4));
    }

    #[test]
    fn a_rollout_is_in_progress_until_old_pods_are_gone() {
        let lcs = lcs(3);
        let status = compute_at(
            &lcs,
            &[rev("old", 1, 1), rev("new", 3, 3)],
            "2026-01-01T00:00:00Z",
        );
        let progressing = condition(&status, PROGRESSING).expect("Progressing");
        assert_eq!(progressing.reason, "RolloutInProgress");
        assert_eq!(
            progressing.message,
            "revision new: 3 of 3 pods ready, 1 old pods left"
        );
        assert_eq!(status.current_revision.as_deref(), Some("old"));
        assert_eq!(status.replicas, 4);
        assert_eq!(
            status.selector.as_deref(),
            Some("longconn.dev/service=chat")
        );

        let done = compute_at(&lcs, &[rev("new", 3, 3)], "2026-01-01T00:01:00Z");
        assert_eq!(
            condition(&done, PROGRESSING).expect("Progressing").reason,
            "NewRevisionAvailable"
        );
        assert_eq!(done.current_revision.as_deref(), Some("new"));

        // The last old pod terminating (its Deployment counts none) while its drain's end is
        // not recorded yet: still in progress, so that the condition changes once, with the
        // rollout's record.
        let removing = crate::crd::RolloutStatus {
            phase: crate::crd::RolloutPhase::Removing,
            ..Default::default()
        };
        let last_leaving =
            compute_with(&lcs, &[rev("new", 3, 3)], "2026-01-01T00:01:00Z", |facts| {
                facts.rollout = Some(&removing)
            });
        assert_eq!(
            condition(&last_leaving, PROGRESSING)
                .expect("Progressing")
                .reason,
            "RolloutInProgress"
        );
    }

    #[test]
    fn a_revision_the_api_server_refuses_is_not_progressing_and_says_why() {
        let lcs = lcs(3);
        let refusal = "applying Deployment chat-new: Deployment.apps \"chat-new\" is invalid: \
                       spec.template.spec.containers: Required value";
        let problems = [Problem {
            reason: "ApplyFailed",
            message: refusal.to_owned(),
        }];
        let status = compute_with(&lcs, &[rev("old", 3, 3)], "2026-01-01T00:00:00Z", |f| {
            f.update_refused = Some(refusal);
            f.problems = &problems;
        });
        let progressing = condition(&status, PROGRESSING).expect("Progressing");
        assert_eq!(progressing.status, "False");
        assert_eq!(progressing.reason, "RevisionRefused");
        assert!(
            progressing
                .message
                .starts_with("revision new cannot be applied")
                && progressing.message.contains(refusal),
            "{}",
            progressing.message
        );
        let degraded = condition(&status, DEGRADED).expect("Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ApplyFailed")
        );
        assert_eq!(status.current_revision.as_deref(), Some("old"));
    }

    #[test]
    fn the_rollout_verdict_outranks_a_refused_revision() {
        let lcs = lcs(3);
        let paused = Verdict {
            status: false,
            reason: "DropBudgetExceeded",
            message: "paused".to_owned(),
        };
        let status = compute_with(&lcs, &[rev("old", 3, 3)], "2026-01-01T00:00:00Z", |f| {
            f.update_refused = Some("refused");
            f.progressing = Some(&paused);
        });
        let progressing = condition(&status, PROGRESSING).expect("Progressing");
        assert_eq!(progressing.reason, "DropBudgetExceeded");
    }
}
