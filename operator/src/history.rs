//! Revision history and undo.
//!
//! Every revision of the pods' spec is recorded in `status.history` with a number, when it
//! came, what changed from the one before ([`change`]) and how its rollout ended (complete,
//! rolled back, aborted or superseded, with the pods drained and the sessions moved and
//! dropped). Beside each record a ControllerRevision `<name>-<revision>` keeps the spec fields
//! that shape its pods ([`PodFields`]); the last `spec.rollout.revisionHistoryLimit` records
//! (and the revisions in use) are kept, the rest pruned with their ControllerRevisions.
//!
//! `kubectl longconn undo` sets the [`steps::UNDO`] annotation to a record's number; the
//! reconciler then writes that revision's [`PodFields`] back into the spec, removing the
//! annotation in the same write ([`undo`]), and the return rolls out as any change does, its
//! sessions moved. A revision returned to takes the next number, as a Deployment's does.
//! Everything here is pure.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::crd::{
    DrainSpec, GatewaySpec, LongConnService, LongConnServiceSpec, RevisionOutcome, RevisionRecord,
    RevisionResult, RolloutPhase, RolloutStatus, TlsSpec,
};
use crate::steps;

/// The spec fields that shape a pod: what a revision is made of, and what undo puts back.
/// Everything else (replicas, rollout, disruption, autoscaling, monitoring, the Service) is
/// left as it is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodFields {
    pub template: PodTemplateSpec,
    pub gateway: GatewaySpec,
    pub tls: TlsSpec,
    pub drain: DrainSpec,
}

impl PodFields {
    pub fn of(spec: &LongConnServiceSpec) -> Self {
        Self {
            template: spec.template.clone(),
            gateway: spec.gateway.clone(),
            tls: spec.tls.clone(),
            drain: spec.drain.clone(),
        }
    }

    /// Puts these fields into `spec`.
    pub fn restore(self, spec: &mut LongConnServiceSpec) {
        spec.template = self.template;
        spec.gateway = self.gateway;
        spec.tls = self.tls;
        spec.drain = self.drain;
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The most differences [`change`] names; the rest are counted.
const CHANGES_NAMED: usize = 3;
/// The longest value [`change`] shows; longer ones are cut.
const VALUE_CHARS: usize = 40;

/// What changed from `before` to `after`, in words: the paths of the values that differ
/// (`template.spec.containers[app].image: echo:1 → echo:2`), list items named by their `name`
/// when they have one. No `before` (the first revision): "created".
pub fn change(before: Option<&Value>, after: &Value) -> String {
    let Some(before) = before else {
        return "created".to_owned();
    };
    let mut differences = Vec::new();
    diff("", before, after, &mut differences);
    if differences.is_empty() {
        return "no change in the pods' fields".to_owned();
    }
    let mut words = differences
        .iter()
        .take(CHANGES_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if differences.len() > CHANGES_NAMED {
        let _ = write!(words, " (and {} more)", differences.len() - CHANGES_NAMED);
    }
    words
}

fn diff(path: &str, before: &Value, after: &Value, out: &mut Vec<String>) {
    if before == after {
        return;
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for key in keys {
                let none = Value::Null;
                diff(
                    &join(key),
                    b.get(key).unwrap_or(&none),
                    a.get(key).unwrap_or(&none),
                    out,
                );
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (i, (b, a)) in b.iter().zip(a).enumerate() {
                let item = a["name"]
                    .as_str()
                    .filter(|name| b["name"].as_str() == Some(*name))
                    .map_or_else(|| i.to_string(), str::to_owned);
                diff(&format!("{path}[{item}]"), b, a, out);
            }
        }
        _ => out.push(format!("{path}: {} → {}", shown(before), shown(after))),
    }
}

fn shown(value: &Value) -> String {
    let text = match value {
        Value::Null => "unset".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!("{} items", items.len()),
        Value::Object(_) => "{…}".to_owned(),
        other => other.to_string(),
    };
    if text.chars().count() > VALUE_CHARS {
        let cut: String = text.chars().take(VALUE_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// What [`record`] needs.
pub struct Input<'a> {
    pub lcs: &'a LongConnService,
    /// The revision the spec asks for.
    pub update: &'a str,
    /// `status.currentRevision` as this reconcile records it.
    pub current: Option<&'a str>,
    /// `status.rollout` as this reconcile records it.
    pub rollout: Option<&'a RolloutStatus>,
    /// Revisions with a Deployment: kept whatever the limit.
    pub in_use: &'a BTreeSet<String>,
    pub now: Timestamp,
}

/// The records after this reconcile: a new record when the spec asks for a revision that is
/// not the newest (the one it replaces ends as superseded unless its rollout had ended), the
/// outcome of the newest once its rollout ends, and the oldest beyond the limit dropped.
/// `change` says what changed from the record before the new one.
pub fn record(
    input: &Input,
    change: impl FnOnce(Option<&RevisionRecord>) -> String,
) -> Vec<RevisionRecord> {
    let old = input
        .lcs
        .status
        .as_ref()
        .map_or(&[][..], |s| s.history.as_slice());
    let mut records = old.to_vec();
    if records.last().is_none_or(|r| r.revision != input.update) {
        let words = change(records.last());
        if let Some(last) = records.last_mut()
            && last.outcome.is_none()
        {
            let recorded = input.lcs.status.as_ref().and_then(|s| s.rollout.as_ref());
            last.outcome = Some(outcome(
                RevisionResult::Superseded,
                recorded.filter(|r| r.revision == last.revision),
                format!("replaced by revision {} before it completed", input.update),
            ));
        }
        let number = records.iter().map(|r| r.number).max().unwrap_or(0) + 1;
        records.retain(|r| r.revision != input.update);
        records.push(RevisionRecord {
            number,
            revision: input.update.to_owned(),
            created_at: Some(Time(input.now)),
            change: words,
            outcome: None,
        });
    }
    if let Some(last) = records.last_mut()
        && last.outcome.is_none()
    {
        last.outcome = ended(input);
    }
    prune(records, input)
}

/// The newest revision's outcome, once its rollout has ended.
fn ended(input: &Input) -> Option<RevisionOutcome> {
    let update = input.update;
    match input.rollout.filter(|r| r.revision == update) {
        Some(r) if r.phase == RolloutPhase::RollingBack && r.finished_at.is_some() => {
            let failed = r.analysis.as_ref().and_then(|a| {
                let signal = a.failed.as_deref()?;
                Some(format!("the health gate failed on {signal}: {}", a.message))
            });
            Some(match failed {
                Some(message) => outcome(RevisionResult::Aborted, Some(r), message),
                None if steps::aborted(input.lcs, update) => outcome(
                    RevisionResult::Aborted,
                    Some(r),
                    format!("aborted with the {} annotation", steps::ABORT),
                ),
                None => outcome(
                    RevisionResult::RolledBack,
                    Some(r),
                    format!(
                        "{} sessions dropped, more than spec.rollout.maxDroppedSessions ({})",
                        r.sessions_dropped, input.lcs.spec.rollout.max_dropped_sessions
                    ),
                ),
            })
        }
        Some(r) if r.phase == RolloutPhase::Complete && r.finished_at.is_some() => {
            Some(outcome(RevisionResult::Complete, Some(r), String::new()))
        }
        // No rollout of its own: the first revision, once its pods run.
        None if input.current == Some(update) => {
            Some(outcome(RevisionResult::Complete, None, String::new()))
        }
        _ => None,
    }
}

fn outcome(
    result: RevisionResult,
    rollout: Option<&RolloutStatus>,
    message: String,
) -> RevisionOutcome {
    RevisionOutcome {
        result,
        finished_at: rollout.and_then(|r| r.finished_at.clone()),
        pods_drained: rollout.map_or(0, |r| r.pods_drained),
        sessions_migrated: rollout.map_or(0, |r| r.sessions_migrated),
        sessions_dropped: rollout.map_or(0, |r| r.sessions_dropped),
        message,
    }
}

/// The records kept: the revisions in use (the spec's, the pods') and the newest
/// `revisionHistoryLimit` of the others, oldest first.
fn prune(records: Vec<RevisionRecord>, input: &Input) -> Vec<RevisionRecord> {
    let limit = usize::try_from(input.lcs.spec.rollout.revision_history_limit).unwrap_or(0);
    let in_use = |r: &RevisionRecord| {
        r.revision == input.update
            || input.current == Some(r.revision.as_str())
            || input.in_use.contains(&r.revision)
    };
    let others = records.iter().filter(|r| !in_use(r)).count();
    let mut dropping = others.saturating_sub(limit);
    records
        .into_iter()
        .filter(|r| {
            let drop = dropping > 0 && !in_use(r);
            dropping -= usize::from(drop);
            !drop
        })
        .collect()
}

/// What the [`steps::UNDO`] annotation asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Undo {
    /// A JSON Patch of the LongConnService: the revision's fields back in the spec, the
    /// annotation removed, on the condition that the object is still the one read.
    Return {
        patch: Value,
        number: i64,
        revision: String,
    },
    /// The annotation cannot be followed: it is removed, and the words say why.
    Refused { patch: Value, message: String },
}

/// The JSON Pointer of the undo annotation.
fn annotation_pointer() -> String {
    format!("/metadata/annotations/{}", steps::UNDO.replace('/', "~1"))
}

/// Follows the [`steps::UNDO`] annotation, when set: the record it names, and the fields its
/// ControllerRevision keeps (`stored`, by revision).
pub fn undo(lcs: &LongConnService, stored: impl Fn(&str) -> Option<PodFields>) -> Option<Undo> {
    let asked = lcs.metadata.annotations.as_ref()?.get(steps::UNDO)?;
    let version = lcs.metadata.resource_version.clone().unwrap_or_default();
    let mut patch = vec![
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": version}),
        json!({"op": "remove", "path": annotation_pointer()}),
    ];
    let records = lcs
        .status
        .as_ref()
        .map_or(&[][..], |s| s.history.as_slice());
    let refuse = |message: String| Undo::Refused {
        patch: Value::Array(patch.clone()),
        message: format!("{}: {asked:?}: {message}", steps::UNDO),
    };
    let Ok(number) = asked.trim().parse::<i64>() else {
        return Some(refuse("not a revision number".to_owned()));
    };
    let Some(record) = records.iter().find(|r| r.number == number) else {
        let numbers: Vec<String> = records.iter().map(|r| r.number.to_string()).collect();
        return Some(refuse(format!(
            "no revision {number} in status.history (there are: {})",
            if numbers.is_empty() {
                "none".to_owned()
            } else {
                numbers.join(", ")
            }
        )));
    };
    let Some(fields) = stored(&record.revision) else {
        return Some(refuse(format!(
            "the pod fields of revision {number} ({}) are not kept",
            record.revision
        )));
    };
    let mut spec = lcs.spec.clone();
    fields.restore(&mut spec);
    patch.push(json!({"op": "replace", "path": "/spec", "value": spec}));
    Some(Undo::Return {
        patch: Value::Array(patch),
        number,
        revision: record.revision.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AnalysisStatus, LongConnServiceStatus};
    use crate::desired::Settings;
    use crate::revision;

    fn lcs(image: &str) -> LongConnService {
        LongConnService::test().image(image).build()
    }

    fn with_history(mut lcs: LongConnService, history: Vec<RevisionRecord>) -> LongConnService {
        lcs.status = Some(LongConnServiceStatus {
            history,
            ..LongConnServiceStatus::default()
        });
        lcs
    }

    fn record_of(number: i64, revision: &str, outcome: Option<RevisionResult>) -> RevisionRecord {
        RevisionRecord {
            number,
            revision: revision.to_owned(),
            created_at: None,
            change: String::new(),
            outcome: outcome.map(|result| RevisionOutcome {
                result,
                ..RevisionOutcome::default()
            }),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn input<'a>(
        lcs: &'a LongConnService,
        update: &'a str,
        current: Option<&'a str>,
        rollout: Option<&'a RolloutStatus>,
        in_use: &'a BTreeSet<String>,
    ) -> Input<'a> {
        Input {
            lcs,
            update,
            current,
            rollout,
            in_use,
            now: at("2026-01-01T00:00:00Z"),
        }
    }

    fn numbers(records: &[RevisionRecord]) -> Vec<(i64, &str)> {
        records
            .iter()
            .map(|r| (r.number, r.revision.as_str()))
            .collect()
    }

    #[test]
    fn restoring_a_revision_s_fields_gives_back_that_revision() {
        // Two specs that differ everywhere: the fields of the one put into the other give the
        // same pods, so an undo returns to exactly the revision it names.
        let settings = Settings::default();
        let mut a = lcs("echo:1");
        let mut b = LongConnService::test()
            .image("echo:2")
            .replicas(7)
            .steps("[{replicas: 1}]")
            .build();
        b.spec.gateway.max_connections = 5;
        b.spec.gateway.image = Some("gateway:7".to_owned());
        b.spec.drain.timeout = crate::duration::Duration::from_static("7m");
        a.spec
            .service
            .annotations
            .insert("a".to_owned(), "b".to_owned());
        let fields = PodFields::of(&b.spec);
        let mut restored = a.clone();
        fields.restore(&mut restored.spec);
        assert_eq!(
            revision::of(&restored, &settings),
            revision::of(&b, &settings)
        );
        assert_ne!(revision::of(&a, &settings), revision::of(&b, &settings));
        // And the rest of the spec stays as it was.
        assert_eq!(restored.spec.replicas, a.spec.replicas);
        assert_eq!(restored.spec.service, a.spec.service);
        assert_eq!(restored.spec.rollout, a.spec.rollout);
    }

    #[test]
    fn a_change_names_the_paths_that_differ_and_counts_the_rest() {
        let a = PodFields::of(&lcs("echo:1").spec).to_json();
        let b = PodFields::of(&lcs("echo:2").spec).to_json();
        assert_eq!(change(None, &a), "created");
        assert_eq!(change(Some(&a), &a), "no change in the pods' fields");
        let words = change(Some(&a), &b);
        assert!(
            words.contains("image: echo:1 → echo:2")
                && words.starts_with("template.spec.containers["),
            "{words}"
        );
        let mut many = b.clone();
        for key in ["w", "x", "y", "z"] {
            many["gateway"][key] = json!(1);
        }
        let words = change(Some(&a), &many);
        assert!(words.ends_with("(and 2 more)"), "{words}");
        assert!(words.contains("gateway.w: unset → 1"), "{words}");
    }

    #[test]
    fn a_new_revision_is_numbered_after_the_newest_and_supersedes_one_still_rolling_out() {
        let none = BTreeSet::new();
        let first = lcs("echo:1");
        let records = record(&input(&first, "a", None, None, &none), |_| {
            "created".to_owned()
        });
        assert_eq!(numbers(&records), [(1, "a")]);
        assert_eq!(records[0].outcome, None, "in progress until its pods run");
        let ran = with_history(first.clone(), records);
        let records = record(
            &input(&ran, "a", Some("a"), None, &none),
            |_| unreachable!(),
        );
        assert_eq!(
            records[0].outcome.as_ref().map(|o| o.result),
            Some(RevisionResult::Complete)
        );

        // b starts rolling out, then c replaces it before it completes.
        let with_a = with_history(first.clone(), records);
        let records = record(&input(&with_a, "b", Some("a"), None, &none), |before| {
            assert_eq!(before.map(|r| r.revision.as_str()), Some("a"));
            "image".to_owned()
        });
        let rolling = RolloutStatus {
            revision: "b".to_owned(),
            phase: RolloutPhase::Draining,
            pods_drained: 1,
            sessions_migrated: 9,
            ..RolloutStatus::default()
        };
        let mut with_b = with_history(first.clone(), records);
        with_b.status.get_or_insert_default().rollout = Some(rolling);
        let records = record(&input(&with_b, "c", Some("a"), None, &none), |_| {
            "image".to_owned()
        });
        assert_eq!(numbers(&records), [(1, "a"), (2, "b"), (3, "c")]);
        let b = records[1].outcome.as_ref().expect("b ended");
        assert_eq!(
            (b.result, b.pods_drained, b.sessions_migrated),
            (RevisionResult::Superseded, 1, 9)
        );
        assert!(
            b.message.contains("replaced by revision c"),
            "{}",
            b.message
        );
    }

    #[test]
    fn a_revision_returned_to_takes_the_next_number() {
        let none = BTreeSet::new();
        let lcs = with_history(
            lcs("echo:1"),
            vec![
                record_of(1, "a", Some(RevisionResult::Complete)),
                record_of(2, "b", Some(RevisionResult::Complete)),
            ],
        );
        let records = record(&input(&lcs, "a", Some("b"), None, &none), |before| {
            assert_eq!(before.map(|r| r.number), Some(2));
            "back".to_owned()
        });
        assert_eq!(numbers(&records), [(2, "b"), (3, "a")]);
        assert_eq!(records[1].outcome, None);
    }

    #[test]
    fn each_way_a_rollout_ends_is_recorded_with_its_accounting() {
        let none = BTreeSet::new();
        let base = with_history(
            lcs("echo:1"),
            vec![
                record_of(1, "a", Some(RevisionResult::Complete)),
                record_of(2, "b", None),
            ],
        );
        let ended_as = |lcs: &LongConnService, rollout: RolloutStatus| {
            let records = record(
                &input(lcs, "b", Some("a"), Some(&rollout), &none),
                |_| unreachable!(),
            );
            records[1].outcome.clone()
        };
        let done = |phase| RolloutStatus {
            revision: "b".to_owned(),
            phase,
            finished_at: Some(Time(at("2026-01-01T00:05:00Z"))),
            pods_drained: 3,
            sessions_migrated: 40,
            sessions_dropped: 2,
            ..RolloutStatus::default()
        };
        let complete = ended_as(&base, done(RolloutPhase::Complete)).expect("complete");
        assert_eq!(
            (
                complete.result,
                complete.pods_drained,
                complete.sessions_migrated,
                complete.sessions_dropped
            ),
            (RevisionResult::Complete, 3, 40, 2)
        );
        let rolled_back = ended_as(&base, done(RolloutPhase::RollingBack)).expect("rolled back");
        assert_eq!(rolled_back.result, RevisionResult::RolledBack);
        assert!(
            rolled_back.message.contains("2 sessions dropped"),
            "{}",
            rolled_back.message
        );

        let mut gated = done(RolloutPhase::RollingBack);
        gated.analysis = Some(AnalysisStatus {
            failed: Some("UpstreamRefused".to_owned()),
            message: "upstream refused: 30.0% of 40 attempts".to_owned(),
            ..AnalysisStatus::default()
        });
        let aborted = ended_as(&base, gated).expect("aborted");
        assert_eq!(aborted.result, RevisionResult::Aborted);
        assert!(
            aborted.message.contains("UpstreamRefused"),
            "{}",
            aborted.message
        );

        let mut annotated = base.clone();
        annotated
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(steps::ABORT.to_owned(), "b".to_owned());
        let aborted = ended_as(&annotated, done(RolloutPhase::RollingBack)).expect("aborted");
        assert_eq!(aborted.result, RevisionResult::Aborted);

        // Still rolling back, or still draining: no outcome yet.
        let mut going = done(RolloutPhase::RollingBack);
        going.finished_at = None;
        assert_eq!(ended_as(&base, going), None);
        assert_eq!(ended_as(&base, done(RolloutPhase::Draining)), None);
    }

    #[test]
    fn the_oldest_records_beyond_the_limit_go_but_never_one_in_use() {
        let mut service = lcs("echo:1");
        service.spec.rollout.revision_history_limit = 2;
        let complete = Some(RevisionResult::Complete);
        let service = with_history(
            service,
            (1..=5)
                .map(|n| record_of(n, &format!("r{n}"), complete))
                .collect(),
        );
        // r1 still has pods: kept. r5 is current, r6 new: in use. Of r2..r4, the newest 2.
        let in_use = BTreeSet::from(["r1".to_owned()]);
        let records = record(&input(&service, "r6", Some("r5"), None, &in_use), |_| {
            String::new()
        });
        assert_eq!(
            numbers(&records),
            [(1, "r1"), (3, "r3"), (4, "r4"), (5, "r5"), (6, "r6")]
        );
        let mut none_kept = service.clone();
        none_kept.spec.rollout.revision_history_limit = 0;
        let records = record(&input(&none_kept, "r6", Some("r5"), None, &in_use), |_| {
            String::new()
        });
        assert_eq!(numbers(&records), [(1, "r1"), (5, "r5"), (6, "r6")]);
    }

    #[test]
    fn undo_writes_the_named_revision_s_fields_back_and_removes_the_annotation() {
        let old = lcs("echo:1");
        let mut now = with_history(
            lcs("echo:2"),
            vec![
                record_of(1, "a", Some(RevisionResult::Complete)),
                record_of(2, "b", None),
            ],
        );
        now.metadata.resource_version = Some("42".to_owned());
        now.spec.replicas = 5;
        let stored = |revision: &str| (revision == "a").then(|| PodFields::of(&old.spec));
        assert_eq!(undo(&now, stored), None, "no annotation, nothing to do");
        now.metadata
            .annotations
            .get_or_insert_default()
            .insert(steps::UNDO.to_owned(), "1".to_owned());
        let Some(Undo::Return {
            patch,
            number,
            revision,
        }) = undo(&now, stored)
        else {
            panic!("undo to revision 1");
        };
        assert_eq!((number, revision.as_str()), (1, "a"));
        assert_eq!(
            patch[0],
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": "42"})
        );
        assert_eq!(
            patch[1],
            json!({"op": "remove", "path": "/metadata/annotations/longconn.dev~1undo"})
        );
        let mut spec: LongConnServiceSpec =
            serde_json::from_value(patch[2]["value"].clone()).expect("a spec");
        assert_eq!(patch[2]["op"], "replace");
        assert_eq!(spec.replicas, 5, "the replicas stay as they are");
        spec.replicas = old.spec.replicas;
        assert_eq!(PodFields::of(&spec), PodFields::of(&old.spec));
    }

    #[test]
    fn an_undo_that_cannot_be_followed_is_refused_with_the_reason_and_removed() {
        let mut now = with_history(
            lcs("echo:2"),
            vec![record_of(3, "a", None), record_of(4, "b", None)],
        );
        let stored = |revision: &str| (revision == "b").then(|| PodFields::of(&lcs("echo:2").spec));
        for (asked, why) in [
            ("one", "not a revision number"),
            ("7", "no revision 7 in status.history (there are: 3, 4)"),
            ("3", "the pod fields of revision 3 (a) are not kept"),
        ] {
            now.metadata
                .annotations
                .get_or_insert_default()
                .insert(steps::UNDO.to_owned(), asked.to_owned());
            let Some(Undo::Refused { patch, message }) = undo(&now, stored) else {
                panic!("{asked}: refused");
            };
            assert!(message.ends_with(why), "{message}");
            assert_eq!(
                patch.as_array().map(Vec::len),
                Some(2),
                "only the annotation goes"
            );
        }
    }
}
