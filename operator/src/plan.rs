//! Plan: from one [`Observation`], everything a reconcile records and does. Pure: it talks to
//! no API server and reads no clock (the observation carries `now`).
//!
//! The [`Outcome`] lists, in the order the reconciler performs them: the status to record
//! (with the rollout's accounting), the Events and metrics that follow it, the gateways to
//! drain, the pods to mark for removal, the manifests to apply, the Deployments of other
//! revisions to resize and the owned objects to delete. The reconciler records first and acts
//! after, so every side effect follows a recorded decision.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::autoscale::{self, History, Recorded};
use crate::compare;
use crate::crd::{
    HealthTally, LongConnService, LongConnServiceStatus, RevisionRecord, RolloutPhase,
};
use crate::desired::{self, CertBundle, Manifest, Observed, ServiceRouting, Settings};
use crate::history;
use crate::kinds::Kind;
use crate::labels::{self, names};
use crate::observe::Observation;
use crate::placement::ServiceFacts;
use crate::revision;
use crate::rollout::{self, Note, Plan};
use crate::status::{self, CertFacts, Facts, MonitoringFacts, Problem};

/// Requeue when nothing is in motion: catches drift the watches cannot see.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Requeue while a rollout or a drain is in motion. Gateway reports and pod changes wake the
/// reconcile sooner; this is the floor.
pub const ROLLOUT_POLL: Duration = Duration::from_secs(5);
/// How soon to look again while a drain waits for the routing to settle.
pub const ROUTING_POLL: Duration = Duration::from_secs(1);
/// Requeue while a rollout waits for a person (drop budget spent, progress deadline): only a
/// change of the spec or of the pods moves it on, and those wake the reconcile.
pub const PAUSED_POLL: Duration = Duration::from_secs(60);
/// How often `status.activeSessions` and the gateways' recorded sessions are refreshed.
pub const SESSIONS_RECORD: Duration = Duration::from_secs(30);
/// How long a status change that is only counts and words (see [`urgent_change`]) may wait
/// after the last status write, so that the changes of a burst go out in one write.
pub const COUNTS_RECORD: Duration = Duration::from_secs(5);

/// What makes a status change go out at once, as the first field that changed (None: it may
/// wait). Anything does but the live counts (pods, ready pods, open sessions, the session
/// autoscaling's counts, the health gate's running counts, the progress of a drain under way
/// other than its drops), the words of conditions, the gateways recorded with nothing counted
/// yet, and a finished drain's entry leaving
/// `status.rollout.draining` once its pod is gone (with the phase going from Removing back to
/// Surging). Verdicts (a condition's status or reason), the rollout's accounting (each drain's
/// start and end, the totals), the certificate, revisions and restart losses go out at once;
/// counts may wait [`COUNTS_RECORD`] to be written with the next change. A rollout's step never
/// waits for them: every action is planned from the caches and from what is recorded at once.
pub fn urgent_change(old: &LongConnServiceStatus, new: &LongConnServiceStatus) -> Option<String> {
    fn verdicts(status: &LongConnServiceStatus) -> LongConnServiceStatus {
        let mut status = status.clone();
        status.replicas = 0;
        status.ready_replicas = 0;
        status.updated_replicas = 0;
        status.active_sessions = 0;
        for condition in &mut status.conditions {
            condition.message.clear();
        }
        status.gateways.retain(|g| g.lost_counted > 0);
        for gateway in &mut status.gateways {
            gateway.sessions = 0;
        }
        // The health gate's running counts; its window and failed signal are verdicts.
        if let Some(a) = status.rollout.as_mut().and_then(|r| r.analysis.as_mut()) {
            a.update = HealthTally::default();
            a.stable = HealthTally::default();
            a.message.clear();
        }
        // A finished drain leaving the record (what it moved is in the totals already), and
        // the phase that follows (Removing back to Surging), are words.
        if let Some(r) = status.rollout.as_mut() {
            r.draining.retain(|d| d.finished_at.is_none());
            // A drain's progress is counts until it finishes (its drops are verdicts): the
            // totals take what it moved only then, and a report lost before that counts what
            // it had at the last reading, kept in memory as well. A new leader has only the
            // recorded one, at most COUNTS_RECORD old: a pod lost right then counts the
            // sessions moved in that time as dropped too (more, never fewer).
            for d in &mut r.draining {
                d.active = 0;
                d.migrated = 0;
                d.closed_by_client = 0;
                d.moved_again = 0;
                d.refused = 0;
            }
            if r.phase == RolloutPhase::Removing {
                r.phase = RolloutPhase::Surging;
            }
        }
        if let Some(a) = status.autoscaling.as_mut() {
            a.desired_replicas = 0;
            a.current_replicas = 0;
            a.sessions_per_pod = 0;
        }
        status
    }
    let (old, new) = (verdicts(old), verdicts(new));
    (old != new).then(|| compare::first_change(&old, &new).unwrap_or_default())
}

/// The certificate decisions (mode SelfSigned issues; the others inspect).
#[derive(Clone, Debug)]
pub struct Certificate {
    /// Mode SelfSigned: the material the Secrets should hold.
    pub bundle: Option<CertBundle>,
    pub facts: CertFacts,
    /// When to look again (the next renewal, or the next step of a CA rotation).
    pub renew_at: Option<Timestamp>,
    /// An Event about what was issued.
    pub note: Option<Note>,
    /// Certificates issued (for the metric).
    pub issued: u64,
}

/// What the API server refused when the manifests were last applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    pub problems: Vec<Problem>,
    /// The message of the refused update revision's Deployment, if it was.
    pub update: Option<String>,
}

/// Everything [`plan`] needs besides the observation.
pub struct Input<'a> {
    pub lcs: &'a LongConnService,
    pub observation: &'a Observation,
    pub settings: &'a Settings,
    pub certificate: Certificate,
    /// The admin token to keep (the Secret's, or a fresh one when there is none).
    pub admin_token: String,
    /// What the last attempt to apply the manifests refused.
    pub refused: Refusals,
    /// Record the gateways' open sessions now.
    pub refresh_sessions: bool,
    /// The session autoscaling's recent recommendations and scale events.
    pub history: &'a History,
}

/// A Warning Event about a condition that turned bad: its reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub reason: String,
    pub message: String,
}

/// What one reconcile records and does.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The status to record; None when it is already as it should be.
    pub status: Option<LongConnServiceStatus>,
    /// The rollout's step: drains, deletion costs, replicas, Events, metrics.
    pub rollout: Plan,
    /// Events about conditions that turned bad.
    pub warnings: Vec<Warning>,
    pub manifests: Vec<Manifest>,
    /// Deployments of other revisions to resize: name and replicas.
    pub scale: Vec<(String, i32)>,
    /// Owned objects no longer desired.
    pub orphans: Vec<(Kind, String)>,
    /// The session autoscaling's decision, while `autoscaling.targetSessionsPerPod` is set.
    pub autoscale: Option<Recorded>,
    /// Certificates issued, counted once the status holding them is recorded.
    pub certificates_issued: u64,
    pub requeue: Duration,
}

/// Works out what to record and do.
pub fn plan(input: Input) -> Outcome {
    let lcs = input.lcs;
    let observation = input.observation;
    let now = observation.now;
    let name = lcs.name_any();
    let update_revision = revision::of(lcs, input.settings);
    let update_stalled = observation.stalled.contains(&update_revision);
    let rollout = rollout::step(&rollout::Input {
        lcs,
        update_revision: &update_revision,
        revisions: &observation.revisions,
        pods: &observation.pods,
        service: &observation.service,
        update_stalled,
        refresh_sessions: input.refresh_sessions,
        now,
    });

    let observed = Observed {
        update_replicas: rollout.replicas.get(&update_revision).copied(),
        admin_token: input.admin_token,
        certificate: input.certificate.bundle,
        apis: observation.apis,
        routing: service_routing(&observation.service, &rollout, now),
    };
    let mut manifests = desired::desired(lcs, &observed, input.settings);

    let scale = observation
        .owned
        .of_kind(Kind::Deployment)
        .filter(|d| d.metadata.deletion_timestamp.is_none())
        .filter_map(|d| {
            let revision = d.labels().get(labels::REVISION)?;
            let replicas = *rollout.replicas.get(revision)?;
            let current = d.data["spec"]["replicas"].as_i64();
            (*revision != update_revision && current != Some(i64::from(replicas)))
                .then(|| (d.name_any(), replicas))
        })
        .collect();

    // Hooks that keep a pod from draining itself are a problem of the spec, reported with the
    // API server's refusals.
    let mut problems = input.refused.problems.clone();
    problems.extend(
        desired::unchained_pre_stop_hooks(lcs)
            .iter()
            .map(|hook| Problem {
                reason: "UnchainedPreStopHook",
                message: hook.to_string(),
            }),
    );
    let old = lcs.status.clone().unwrap_or_default();
    let autoscale = scaling(
        lcs,
        &old,
        observation,
        &rollout,
        input.history,
        input.refresh_sessions,
    );
    let m = &lcs.spec.monitoring;
    let apis = observation.apis;
    let monitoring = match (
        m.service_monitor.enabled,
        apis.service_monitor,
        m.prometheus_rule.enabled,
        apis.prometheus_rule,
    ) {
        (false, ..) => MonitoringFacts::Disabled,
        (true, false, ..) => MonitoringFacts::ApiMissing,
        (true, true, true, false) => MonitoringFacts::RuleApiMissing,
        (true, true, rule, _) => MonitoringFacts::Created { rule },
    };
    let new_status = status::compute(
        lcs,
        &Facts {
            update_revision: &update_revision,
            revisions: &observation.revisions,
            update_stalled,
            update_refused: input.refused.update.as_deref(),
            problems: &problems,
            certificate: &input.certificate.facts,
            monitoring,
            active_sessions: rollout.active_sessions,
            rollout: rollout.rollout.as_ref(),
            progressing: rollout.progressing.as_ref(),
            sessions_preserved: &rollout.sessions_preserved,
            gateways: &rollout.gateways,
            autoscaling: autoscale.as_ref().map(|a| (&a.verdict, &a.status)),
            rebalance: rollout.rebalance.as_ref(),
            now,
        },
    );
    let mut new_status = new_status;
    new_status.history = revisions(lcs, observation, &update_revision, &new_status);
    // The update revision's ControllerRevision, numbered as its record; its pod fields are
    // written once (a ControllerRevision's data cannot change).
    if let Some(record) = new_status.history.last() {
        let data = observation
            .owned
            .pod_fields(&name, &update_revision)
            .cloned()
            .unwrap_or_else(|| history::PodFields::of(&lcs.spec).to_json());
        manifests.push(desired::controller_revision(
            lcs,
            &update_revision,
            record.number,
            data,
        ));
    }
    let uid = lcs.uid().unwrap_or_default();
    let keep: Vec<String> = rollout
        .replicas
        .keys()
        .map(|revision| names::deployment(&name, revision))
        .collect();
    let recorded: Vec<String> = new_status
        .history
        .iter()
        .map(|r| names::controller_revision(&name, &r.revision))
        .collect();
    let orphans = observation
        .owned
        .iter()
        .filter(|(kind, object)| {
            let object_name = object.name_any();
            let wanted = manifests
                .iter()
                .any(|m| m.kind == *kind && m.name == object_name)
                || *kind == Kind::Deployment && keep.contains(&object_name)
                || *kind == Kind::ControllerRevision && recorded.contains(&object_name);
            !wanted
                && object.owner_references().iter().any(|o| o.uid == uid)
                && object.metadata.deletion_timestamp.is_none()
        })
        .map(|(kind, object)| (kind, object.name_any()))
        .collect();
    let warnings = turned_bad(&old, &new_status);
    let mut rollout = rollout;
    let certificates_issued = input.certificate.issued;
    rollout.events.splice(0..0, input.certificate.note);
    rollout
        .events
        .extend(autoscale.as_ref().and_then(Recorded::note));

    let mut requeue = if rollout.paused {
        PAUSED_POLL
    } else if rollout.active {
        ROLLOUT_POLL
    } else if observation.pods.iter().any(|p| p.report.is_some()) {
        SESSIONS_RECORD
    } else {
        RESYNC
    };
    if rollout.routing_pending {
        // The proxies follow a label change within about a second.
        requeue = requeue.min(ROUTING_POLL);
    }
    if autoscale.is_some() {
        requeue = requeue.min(autoscale::PERIOD);
    }
    // A timed pause's end and a certificate's renewal: look again then (a time already past,
    // in a second).
    for at in [rollout.wake_at, input.certificate.renew_at]
        .into_iter()
        .flatten()
    {
        let until = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
        requeue = requeue.min(until.max(Duration::from_secs(1)));
    }
    Outcome {
        status: (old != new_status).then_some(new_status),
        rollout,
        warnings,
        manifests,
        scale,
        orphans,
        autoscale,
        certificates_issued,
        requeue,
    }
}

/// The client Service's selector as the rollout decides it, with the time of its last change:
/// now when it changes (a new Service needs none: nothing was routed before it).
fn service_routing(service: &ServiceFacts, rollout: &Plan, now: Timestamp) -> ServiceRouting {
    let changes = service.exists && service.revision != rollout.selects;
    ServiceRouting {
        revision: rollout.selects.clone(),
        changed_at: if changes {
            Some(now)
        } else {
            service.changed_at
        },
    }
}

/// The revision records after this reconcile ([`history`]).
fn revisions(
    lcs: &LongConnService,
    observation: &Observation,
    update_revision: &str,
    status: &LongConnServiceStatus,
) -> Vec<RevisionRecord> {
    let name = lcs.name_any();
    let in_use: BTreeSet<String> = observation
        .revisions
        .iter()
        .map(|r| r.revision.clone())
        .collect();
    let input = history::Input {
        lcs,
        update: update_revision,
        current: status.current_revision.as_deref(),
        rollout: status.rollout.as_ref(),
        in_use: &in_use,
        now: observation.now,
    };
    history::record(&input, |before| {
        let before = before.and_then(|r| observation.owned.pod_fields(&name, &r.revision));
        history::change(before, &history::PodFields::of(&lcs.spec).to_json())
    })
}

/// The session autoscaling's decision and its record, while `targetSessionsPerPod` is set.
/// The pods the rollout drains or removes are left out, with their sessions; a scale-down waits
/// while the rollout moves pods.
fn scaling(
    lcs: &LongConnService,
    old: &LongConnServiceStatus,
    observation: &Observation,
    rollout: &Plan,
    history: &History,
    refresh_sessions: bool,
) -> Option<Recorded> {
    let spec = lcs
        .spec
        .autoscaling
        .as_ref()
        .filter(|a| a.target_sessions_per_pod.is_some())?;
    let leaving = |pod: &rollout::PodFacts| {
        rollout
            .rollout
            .as_ref()
            .is_some_and(|r| r.draining.iter().any(|e| e.pod == pod.name))
    };
    let pods = autoscale::Pods::of(&observation.pods, leaving);
    let cpu = spec.target_cpu_utilization.map(|_| {
        let unread = || Err("the pods' CPU has not been read yet".to_owned());
        match &observation.cpu_used {
            Some(Ok(used)) => autoscale::Cpu::of(&observation.pods, leaving, used),
            Some(Err(why)) => Err(why.clone()),
            None => unread(),
        }
    });
    let scaling = autoscale::Input {
        now: observation.now,
        current: lcs.spec.replicas,
        spec,
        pods: &pods,
        rollout_busy: rollout.active || rollout.paused,
        history,
        cpu: cpu.as_ref(),
    };
    let decision = autoscale::decide(&scaling);
    Some(autoscale::record(
        old,
        &scaling,
        &decision,
        refresh_sessions,
    ))
}

/// Warning Events for the Degraded, CertificateReady and MonitoringReady conditions that turn
/// bad or change their words.
fn turned_bad(old: &LongConnServiceStatus, new: &LongConnServiceStatus) -> Vec<Warning> {
    [
        (status::DEGRADED, "True"),
        (status::CERTIFICATE_READY, "False"),
        (status::MONITORING_READY, "False"),
    ]
    .into_iter()
    .filter_map(|(type_, bad)| {
        let c = status::condition(new, type_)?;
        let changed = status::condition(old, type_)
            .is_none_or(|o| o.status != c.status || o.message != c.message);
        (c.status == bad && changed).then(|| Warning {
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::ServedApis;
    use crate::observe::{Owned, UserSecret};
    use crate::status::CertFacts;

    fn must_record_now(old: &LongConnServiceStatus, new: &LongConnServiceStatus) -> bool {
        urgent_change(old, new).is_some()
    }

    fn observation() -> Observation {
        Observation {
            now: "2026-01-01T00:00:00Z".parse().expect("time"),
            apis: ServedApis::default(),
            owned: Owned::default(),
            admin_token: None,
            pods: Vec::new(),
            admin: Default::default(),
            finalizer_at: Default::default(),
            revisions: Vec::new(),
            stalled: Vec::new(),
            service: ServiceFacts::default(),
            user_secret: UserSecret::NotUsed,
            cpu_used: None,
        }
    }

    #[test]
    fn counts_and_words_may_wait_but_verdicts_and_accounting_may_not() {
        use crate::crd::{GatewayRecord, RolloutStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
        let available = |status: &str, message: &str| Condition {
            type_: status::AVAILABLE.to_owned(),
            status: status.to_owned(),
            reason: "MinimumReplicasAvailable".to_owned(),
            message: message.to_owned(),
            observed_generation: Some(1),
            last_transition_time: Time("2026-01-01T00:00:00Z".parse().expect("time")),
        };
        let old = LongConnServiceStatus {
            replicas: 3,
            ready_replicas: 3,
            active_sessions: 40,
            conditions: vec![available("True", "3 of 3 pods ready")],
            gateways: vec![GatewayRecord {
                pod: "a-1".to_owned(),
                lost_counted: 0,
                sessions: 40,
            }],
            ..LongConnServiceStatus::default()
        };
        let changed = |f: &dyn Fn(&mut LongConnServiceStatus)| {
            let mut new = old.clone();
            f(&mut new);
            must_record_now(&old, &new)
        };
        assert!(!changed(&|s| {
            s.replicas = 4;
            s.ready_replicas = 2;
            s.active_sessions = 50;
            s.conditions[0].message = "2 of 4 pods ready".to_owned();
            s.gateways[0].sessions = 50;
            s.gateways.push(GatewayRecord {
                pod: "b-1".to_owned(),
                lost_counted: 0,
                sessions: 3,
            });
        }));
        assert!(changed(&|s| s.conditions[0].status = "False".to_owned()));
        assert!(
            changed(&|s| s.gateways[0].lost_counted = 2),
            "a restart loss"
        );
        assert!(changed(&|s| s.rollout = Some(RolloutStatus::default())));
        assert!(changed(&|s| s.update_revision = Some("b".to_owned())));
    }

    #[test]
    fn a_finished_drain_leaving_the_record_may_wait() {
        use crate::crd::{DrainingPod, RolloutStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let at = Time("2026-01-01T00:00:00Z".parse().expect("time"));
        let entry = |pod: &str, finished: bool| DrainingPod {
            pod: pod.to_owned(),
            migrated: 100,
            finished_at: finished.then(|| at.clone()),
            ..DrainingPod::default()
        };
        let with = |phase, draining| LongConnServiceStatus {
            rollout: Some(RolloutStatus {
                phase,
                pods_drained: 1,
                sessions_migrated: 100,
                draining,
                ..RolloutStatus::default()
            }),
            ..LongConnServiceStatus::default()
        };
        let removing = with(RolloutPhase::Removing, vec![entry("a-1", true)]);
        // Its pod gone, the finished entry leaves: nothing counted changes.
        assert!(!must_record_now(
            &removing,
            &with(RolloutPhase::Surging, Vec::new())
        ));
        // A drain that finishes, one that starts, and the end are recorded at once.
        assert!(must_record_now(
            &with(RolloutPhase::Draining, vec![entry("a-1", false)]),
            &removing
        ));
        assert!(must_record_now(
            &removing,
            &with(RolloutPhase::Draining, vec![entry("a-2", false)])
        ));
        assert!(must_record_now(
            &removing,
            &with(RolloutPhase::Complete, Vec::new())
        ));
    }

    fn plan_for(lcs: &LongConnService, observation: &Observation) -> Outcome {
        plan(Input {
            lcs,
            observation,
            settings: &Settings::default(),
            certificate: Certificate {
                bundle: None,
                facts: CertFacts::Disabled,
                renew_at: None,
                note: None,
                issued: 0,
            },
            admin_token: "t".to_owned(),
            refused: Refusals::default(),
            refresh_sessions: true,
            history: &History::default(),
        })
    }

    #[test]
    fn a_pod_being_drained_is_left_out_of_the_session_count_and_holds_a_scale_down() {
        use crate::crd::{DrainingPod, RolloutStatus};
        use crate::desired::ObservedRevision;
        use crate::rollout::PodFacts;
        use longconn_drain_api::DrainReport;
        let mut lcs = LongConnService::test().replicas(3).build();
        lcs.spec.autoscaling = Some(
            serde_json::from_value(serde_json::json!({
                "minReplicas": 1, "maxReplicas": 10, "targetSessionsPerPod": 100
            }))
            .expect("autoscaling"),
        );
        let revision = revision::of(&lcs, &Settings::default());
        let mut observation = observation();
        let pod = |name: &str, active: u64| PodFacts {
            name: name.to_owned(),
            revision: revision.clone(),
            running: true,
            ready: true,
            report: Some(DrainReport {
                active,
                ..DrainReport::default()
            }),
            ..PodFacts::default()
        };
        observation.pods = vec![pod("a-1", 500), pod("a-2", 40), pod("a-3", 40)];
        observation.revisions = vec![ObservedRevision {
            revision: revision.clone(),
            replicas: 3,
            current_replicas: 3,
            ready_replicas: 3,
        }];
        // a-1's drain was asked for; its gateway has not taken the request yet.
        lcs.status = Some(LongConnServiceStatus {
            rollout: Some(RolloutStatus {
                revision: revision.clone(),
                draining: vec![DrainingPod {
                    pod: "a-1".to_owned(),
                    revision: revision.clone(),
                    started_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        observation.now,
                    )),
                    sessions_at_start: 500,
                    active: 500,
                    ..DrainingPod::default()
                }],
                ..RolloutStatus::default()
            }),
            ..LongConnServiceStatus::default()
        });
        let outcome = plan_for(&lcs, &observation);
        let scaling = outcome.autoscale.expect("the session autoscaling is on");
        assert_eq!(scaling.scale_to, None);
        assert_eq!(scaling.verdict.reason, "ScaleDownHeldDuringRollout");
        assert!(
            scaling
                .verdict
                .message
                .starts_with("sessions 80 over 2 pods, target 100 per pod: 1 pod; scale-down held"),
            "{}",
            scaling.verdict.message
        );
        assert_eq!(scaling.status.current_replicas, 2);
        assert_eq!(outcome.requeue, crate::plan::ROLLOUT_POLL);
        let status = outcome.status.expect("a status");
        let active = status::condition(&status, autoscale::SCALING_ACTIVE).expect("condition");
        assert_eq!(active.reason, "ScaleDownHeldDuringRollout");
        assert_eq!(status.autoscaling, Some(scaling.status));
    }

    #[test]
    fn without_a_session_target_there_is_no_scaling_active_condition() {
        let mut lcs = LongConnService::test().build();
        lcs.status = Some(LongConnServiceStatus {
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: autoscale::SCALING_ACTIVE.to_owned(),
                status: "True".to_owned(),
                reason: "ValidSessionCount".to_owned(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    "2026-01-01T00:00:00Z".parse().expect("time"),
                ),
            }],
            ..LongConnServiceStatus::default()
        });
        let outcome = plan_for(&lcs, &observation());
        assert!(outcome.autoscale.is_none());
        let status = outcome.status.expect("a status");
        assert!(status::condition(&status, autoscale::SCALING_ACTIVE).is_none());
        assert_eq!(outcome.requeue, RESYNC);
    }

    #[test]
    fn a_pre_stop_hook_that_cannot_be_chained_shows_as_degraded() {
        let mut lcs = LongConnService::test().build();
        lcs.spec.template = serde_json::from_value(serde_json::json!({"spec": {"containers": [{
            "name": "app", "image": "app",
            "lifecycle": {"preStop": {"httpGet": {"path": "/bye", "port": 8080}}}
        }]}}))
        .expect("template");
        let outcome = plan_for(&lcs, &observation());
        let status = outcome.status.expect("a status to record");
        let degraded = status::condition(&status, status::DEGRADED).expect("Degraded");
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "UnchainedPreStopHook");
        assert!(
            degraded
                .message
                .contains("container app has a httpGet preStop hook")
        );
        assert!(
            outcome
                .warnings
                .iter()
                .any(|w| w.reason == "UnchainedPreStopHook"),
            "and a Warning Event: {:?}",
            outcome.warnings
        );
    }
}
