//! The LongConnServices the tests read: `default/chat`, 4 replicas, rolling from revision `a` to
//! `b` through `[{replicas: 1}, {pause: {}}, {replicas: 50%}, {pause: {duration: 5m}}]`, at
//! each point a person may look at it; then the same rollout with its revision history, and
//! judged by a health gate.

use longconn_operator::crd::{
    AnalysisSpec, AnalysisStatus, LongConnService, LongConnServiceStatus, RevisionRecord,
    RolloutPhase,
};
use longconn_operator::steps::ABORT;

const STEPS: &str = "[{replicas: 1}, {pause: {}}, {replicas: 50%}, {pause: {duration: 5m}}]";

/// The canary service with the status given as YAML.
pub fn with_status(yaml: &str) -> LongConnService {
    let status: LongConnServiceStatus =
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("status {yaml}: {e}"));
    LongConnService::test()
        .replicas(4)
        .steps(STEPS)
        .status(status)
        .build()
}

/// The canary service before the operator wrote any status.
pub fn no_status() -> LongConnService {
    LongConnService::test().replicas(4).steps(STEPS).build()
}

/// Held at step 2 (`pause: {}`) until someone promotes it.
pub fn waiting_for_promotion() -> LongConnService {
    with_status(
        r#"
replicas: 5
readyReplicas: 5
updatedReplicas: 1
activeSessions: 1180
currentRevision: a
updateRevision: b
rollout:
  revision: b
  phase: Paused
  step: 1
  stepStartedAt: "2026-01-01T00:02:10Z"
  pausedBy: Step
  startedAt: "2026-01-01T00:00:00Z"
  podsDrained: 1
  sessionsMigrated: 298
  sessionsMovedAgain: 3
  attemptsRefused: 2
  draining:
  - pod: chat-a-7d4f9-x2k8p
    revision: a
    startedAt: "2026-01-01T00:01:05Z"
    sessionsAtStart: 300
    migrated: 298
    closedByClient: 2
    finishedAt: "2026-01-01T00:02:05Z"
gateways:
- {pod: chat-a-7d4f9-m9q2w, sessions: 301}
- {pod: chat-a-7d4f9-t5v7n, sessions: 296}
- {pod: chat-a-7d4f9-x2k8p, sessions: 0}
- {pod: chat-a-7d4f9-z8r4c, sessions: 284}
- {pod: chat-b-5c8d2-h6j3k, sessions: 299}
conditions:
- type: Progressing
  status: "False"
  reason: WaitingForPromotion
  message: "revision b, step 2 of 4: pause until promoted: promote it with kubectl longconn promote chat"
  lastTransitionTime: "2026-01-01T00:02:10Z"
- type: SessionsPreserved
  status: "True"
  reason: NoSessionsDropped
  message: "revision b: 1 pods drained, 298 sessions migrated, 0 dropped"
  lastTransitionTime: "2026-01-01T00:02:05Z"
"#,
    )
}

/// At step 4 (`pause: {duration: 5m}`), which ends by itself.
pub fn timed_pause() -> LongConnService {
    with_status(
        r#"
replicas: 4
readyReplicas: 4
updatedReplicas: 2
activeSessions: 1176
currentRevision: a
updateRevision: b
rollout:
  revision: b
  phase: Paused
  step: 3
  stepStartedAt: "2026-01-01T00:06:30Z"
  pausedBy: Step
  startedAt: "2026-01-01T00:00:00Z"
  podsDrained: 2
  sessionsMigrated: 594
  sessionsMovedAgain: 5
  attemptsRefused: 4
gateways:
- {pod: chat-a-7d4f9-m9q2w, sessions: 298}
- {pod: chat-a-7d4f9-z8r4c, sessions: 290}
- {pod: chat-b-5c8d2-h6j3k, sessions: 301}
- {pod: chat-b-5c8d2-q7w1e, sessions: 287}
conditions:
- type: Progressing
  status: "True"
  reason: StepPaused
  message: "revision b, step 4 of 4: pause for 5m; it goes on at 2026-01-01T00:11:30Z"
  lastTransitionTime: "2026-01-01T00:06:30Z"
- type: SessionsPreserved
  status: "True"
  reason: NoSessionsDropped
  message: "revision b: 2 pods drained, 594 sessions migrated, 0 dropped"
  lastTransitionTime: "2026-01-01T00:06:25Z"
"#,
    )
}

/// Held by `spec.rollout.paused` during step 3 (`replicas: 50%`).
pub fn paused_by_spec() -> LongConnService {
    let mut lcs = with_status(
        r#"
replicas: 5
readyReplicas: 5
updatedReplicas: 2
activeSessions: 1183
currentRevision: a
updateRevision: b
rollout:
  revision: b
  phase: Paused
  step: 2
  stepStartedAt: "2026-01-01T00:04:00Z"
  pausedBy: Spec
  startedAt: "2026-01-01T00:00:00Z"
  podsDrained: 1
  sessionsMigrated: 298
conditions:
- type: Progressing
  status: "False"
  reason: RolloutPaused
  message: "spec.rollout.paused holds revision b: no drain starts until it is cleared (kubectl longconn resume chat)"
  lastTransitionTime: "2026-01-01T00:04:30Z"
"#,
    );
    lcs.spec.rollout.paused = true;
    lcs
}

/// Step 3 (`replicas: 50%`): one old pod drained, one draining.
pub fn draining() -> LongConnService {
    with_status(
        r#"
replicas: 5
readyReplicas: 5
updatedReplicas: 2
activeSessions: 1179
currentRevision: a
updateRevision: b
rollout:
  revision: b
  phase: Draining
  step: 2
  stepStartedAt: "2026-01-01T00:04:00Z"
  startedAt: "2026-01-01T00:00:00Z"
  podsDrained: 1
  sessionsMigrated: 298
  sessionsMovedAgain: 3
  sessionsDropped: 1
  attemptsRefused: 2
  draining:
  - pod: chat-a-7d4f9-x2k8p
    revision: a
    startedAt: "2026-01-01T00:01:05Z"
    sessionsAtStart: 300
    migrated: 298
    closedByClient: 1
    dropped: 1
    finishedAt: "2026-01-01T00:02:05Z"
  - pod: chat-a-7d4f9-t5v7n
    revision: a
    startedAt: "2026-01-01T00:05:12Z"
    sessionsAtStart: 296
    active: 171
    migrated: 124
    closedByClient: 1
gateways:
- {pod: chat-a-7d4f9-m9q2w, sessions: 301}
- {pod: chat-a-7d4f9-t5v7n, sessions: 171}
- {pod: chat-a-7d4f9-z8r4c, sessions: 284}
- {pod: chat-b-5c8d2-h6j3k, sessions: 299}
- {pod: chat-b-5c8d2-q7w1e, sessions: 124}
conditions:
- type: Progressing
  status: "True"
  reason: RolloutInProgress
  message: "revision b, step 3 of 4: grow the new revision to 50% of replicas (2 pods)"
  lastTransitionTime: "2026-01-01T00:00:00Z"
- type: SessionsPreserved
  status: "False"
  reason: SessionsDropped
  message: "revision b: 1 pods drained, 298 sessions migrated, 1 dropped"
  lastTransitionTime: "2026-01-01T00:02:05Z"
"#,
    )
}

/// The draining rollout, stopped once it dropped more sessions than `maxDroppedSessions` (0).
pub fn drop_budget_exceeded() -> LongConnService {
    let mut lcs = draining();
    if let Some(status) = lcs.status.as_mut() {
        if let Some(r) = status.rollout.as_mut() {
            r.phase = RolloutPhase::Paused;
            r.draining.retain(|d| d.finished_at.is_some());
        }
        status.gateways.retain(|g| g.pod != "chat-a-7d4f9-t5v7n");
    }
    progressing(
        &mut lcs,
        "False",
        "DropBudgetExceeded",
        "revision b: 1 sessions dropped, more than spec.rollout.maxDroppedSessions (0); the \
         rollout is paused; raise spec.rollout.maxDroppedSessions or change the template to go on",
    );
    lcs
}

/// Sets the Progressing condition's status, reason and message.
fn progressing(lcs: &mut LongConnService, status: &str, reason: &str, message: &str) {
    let conditions = lcs.status.iter_mut().flat_map(|s| &mut s.conditions);
    for c in conditions.filter(|c| c.type_ == "Progressing") {
        c.status = status.to_owned();
        c.reason = reason.to_owned();
        c.message = message.to_owned();
    }
}

/// Every step done, every old pod drained and gone.
pub fn complete() -> LongConnService {
    with_status(
        r#"
replicas: 4
readyReplicas: 4
updatedReplicas: 4
activeSessions: 1181
currentRevision: b
updateRevision: b
rollout:
  revision: b
  phase: Complete
  step: 4
  stepStartedAt: "2026-01-01T00:11:30Z"
  startedAt: "2026-01-01T00:00:00Z"
  finishedAt: "2026-01-01T00:14:02Z"
  podsDrained: 4
  sessionsMigrated: 1187
  sessionsMovedAgain: 9
  attemptsRefused: 6
  balance: "1.04"
gateways:
- {pod: chat-b-5c8d2-h6j3k, sessions: 302}
- {pod: chat-b-5c8d2-l4p9s, sessions: 291}
- {pod: chat-b-5c8d2-q7w1e, sessions: 300}
- {pod: chat-b-5c8d2-v2n6d, sessions: 288}
conditions:
- type: Progressing
  status: "True"
  reason: NewRevisionAvailable
  message: "revision b is available"
  lastTransitionTime: "2026-01-01T00:14:02Z"
- type: SessionsPreserved
  status: "True"
  reason: NoSessionsDropped
  message: "revision b: 4 pods drained, 1187 sessions migrated, 0 dropped"
  lastTransitionTime: "2026-01-01T00:14:02Z"
"#,
    )
}

/// Revision `b` aborted with the annotation: its pod is being drained back to revision `a`.
pub fn rolling_back() -> LongConnService {
    let mut lcs = with_status(
        r#"
replicas: 5
readyReplicas: 5
updatedReplicas: 1
activeSessions: 1180
currentRevision: a
updateRevision: b
rollout:
  revision: b
  phase: RollingBack
  step: 1
  stepStartedAt: "2026-01-01T00:02:10Z"
  startedAt: "2026-01-01T00:00:00Z"
  podsDrained: 1
  sessionsMigrated: 298
  draining:
  - pod: chat-b-5c8d2-h6j3k
    revision: b
    startedAt: "2026-01-01T00:03:40Z"
    sessionsAtStart: 299
    active: 82
    migrated: 217
gateways:
- {pod: chat-a-7d4f9-m9q2w, sessions: 301}
- {pod: chat-a-7d4f9-t5v7n, sessions: 296}
- {pod: chat-a-7d4f9-z8r4c, sessions: 284}
- {pod: chat-a-7d4f9-k3d8f, sessions: 217}
- {pod: chat-b-5c8d2-h6j3k, sessions: 82}
conditions:
- type: Progressing
  status: "True"
  reason: RollingBack
  message: "revision b was aborted (longconn.dev/abort annotation); rolling back to revision a. Change the spec to try again"
  lastTransitionTime: "2026-01-01T00:03:35Z"
"#,
    );
    annotate(&mut lcs, ABORT, "b");
    lcs
}

/// Revision `b` aborted, and back on revision `a`.
pub fn aborted() -> LongConnService {
    let mut lcs = with_status(
        r#"
replicas: 4
readyReplicas: 4
updatedReplicas: 0
activeSessions: 1178
currentRevision: a
updateRevision: b
rollout:
  revision: b
  phase: RollingBack
  step: 1
  stepStartedAt: "2026-01-01T00:02:10Z"
  startedAt: "2026-01-01T00:00:00Z"
  finishedAt: "2026-01-01T00:04:45Z"
  podsDrained: 2
  sessionsMigrated: 597
gateways:
- {pod: chat-a-7d4f9-k3d8f, sessions: 298}
- {pod: chat-a-7d4f9-m9q2w, sessions: 301}
- {pod: chat-a-7d4f9-t5v7n, sessions: 295}
- {pod: chat-a-7d4f9-z8r4c, sessions: 284}
conditions:
- type: Progressing
  status: "False"
  reason: Aborted
  message: "revision b was aborted (longconn.dev/abort annotation); rolled back to revision a. Change the spec to try again"
  lastTransitionTime: "2026-01-01T00:04:45Z"
- type: SessionsPreserved
  status: "True"
  reason: NoSessionsDropped
  message: "revision b: 2 pods drained, 597 sessions migrated, 0 dropped"
  lastTransitionTime: "2026-01-01T00:04:45Z"
"#,
    );
    annotate(&mut lcs, ABORT, "b");
    lcs
}

pub fn annotate(lcs: &mut LongConnService, key: &str, value: &str) {
    lcs.metadata
        .annotations
        .get_or_insert_default()
        .insert(key.to_owned(), value.to_owned());
}

/// Sets `status.history` from its YAML.
pub fn set_history(lcs: &mut LongConnService, yaml: &str) {
    let history: Vec<RevisionRecord> =
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("history {yaml}: {e}"));
    lcs.status.get_or_insert_default().history = history;
}

/// Revision `b` waiting for promotion, after one revision of each ending: `w` complete, `x`
/// rolled back, `y` superseded, `a` complete (the pods run it), `z` aborted by the health gate.
pub fn with_history() -> LongConnService {
    let mut lcs = waiting_for_promotion();
    set_history(
        &mut lcs,
        r#"
- number: 1
  revision: w
  createdAt: "2025-12-01T09:00:00Z"
  change: first revision
  outcome: {result: Complete, finishedAt: "2025-12-01T09:01:10Z"}
- number: 2
  revision: x
  createdAt: "2025-12-08T10:00:00Z"
  change: "image: chat:1.4 → chat:1.5"
  outcome:
    result: RolledBack
    finishedAt: "2025-12-08T10:04:30Z"
    podsDrained: 2
    sessionsMigrated: 591
    sessionsDropped: 3
    message: "3 sessions dropped, more than spec.rollout.maxDroppedSessions (0)"
- number: 3
  revision: y
  createdAt: "2025-12-09T11:00:00Z"
  change: "image: chat:1.5 → chat:1.5.1"
  outcome: {result: Superseded, finishedAt: "2025-12-09T11:02:00Z", podsDrained: 1, sessionsMigrated: 297}
- number: 4
  revision: a
  createdAt: "2025-12-09T11:02:00Z"
  change: "image: chat:1.5.1 → chat:1.5.2; env LOG_LEVEL: debug → info; resources.limits.memory: 512Mi → 1Gi"
  outcome: {result: Complete, finishedAt: "2025-12-09T11:15:40Z", podsDrained: 4, sessionsMigrated: 1190}
- number: 5
  revision: z
  createdAt: "2025-12-20T14:00:00Z"
  change: "image: chat:1.5.2 → chat:1.6"
  outcome:
    result: Aborted
    finishedAt: "2025-12-20T14:06:10Z"
    podsDrained: 1
    sessionsMigrated: 296
    message: "the health gate: upstream refused 12.0% of 50 attempts, 0.0% of 300 on the stable pods: more than 5 points above"
- number: 6
  revision: b
  createdAt: "2026-01-01T00:00:00Z"
  change: "env LOG_LEVEL: info → warn"
"#,
    );
    lcs
}

/// Sets `spec.rollout.analysis` to its defaults and `status.rollout.analysis`: since the
/// rollout's start, the update revision's counts as given (YAML), the stable ones', and the
/// verdict (YAML fields, if any).
fn set_analysis(lcs: &mut LongConnService, update: &str, verdict: &str) {
    let yaml = format!(
        "since: \"2026-01-01T00:00:00Z\"\nupdate: {update}\nstable: {{attempts: 300, \
         upstreamRefused: 0, upstreamUnavailable: 1, serverErrors: 2, dropped: 0}}\n{verdict}"
    );
    let analysis: AnalysisStatus =
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("analysis {yaml}: {e}"));
    lcs.spec.rollout.analysis = Some(AnalysisSpec::default());
    if let Some(r) = lcs.status.as_mut().and_then(|s| s.rollout.as_mut()) {
        r.analysis = Some(analysis);
    }
}

/// Revision `b` waiting for promotion, its health gate judging it against revision `a`.
pub fn gate_judging() -> LongConnService {
    let mut lcs = waiting_for_promotion();
    set_analysis(
        &mut lcs,
        "{attempts: 50, upstreamRefused: 1, upstreamUnavailable: 0, serverErrors: 1, dropped: 0}",
        "",
    );
    lcs
}

/// Revision `b` failed its health gate, which aborted it: its pod is drained back to `a`.
pub fn gate_failed() -> LongConnService {
    let mut lcs = rolling_back();
    lcs.metadata.annotations = None;
    set_analysis(
        &mut lcs,
        "{attempts: 50, upstreamRefused: 6, upstreamUnavailable: 0, serverErrors: 1, dropped: 0}",
        "failed: UpstreamRefused\nmessage: \"upstream refused 12.0% of 50 attempts, 0.0% of 300 \
         on the stable pods: more than 5 points above\"",
    );
    progressing(
        &mut lcs,
        "True",
        "RollingBack",
        "revision b failed its health gate (UpstreamRefused); rolling back to revision a. Change \
         the spec to try again",
    );
    lcs
}
