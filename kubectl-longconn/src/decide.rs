//! What each command that changes a LongConnService sends: a pure decision from the object as
//! read to the merge patch and the words saying what it did, or a refusal saying why not.
//!
//! The patches carry no `resourceVersion`: the operator writes the status every second while a
//! rollout moves, and the annotations name the revision (and step) they act on, so a patch
//! decided on an older read acts on nothing newer: a stale promote promotes nothing, a stale
//! abort aborts a revision no longer rolled out, a stale undo names a record by its number, and
//! numbers are not reused.

use longconn_operator::crd::{LongConnService, PauseCause, RolloutStatus};
use longconn_operator::steps::{ABORT, PROMOTE, Stage, UNDO};
use serde_json::{Value, json};

use crate::history;

/// A change to send: the merge patch, and what it does in words.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// None when the object already is as asked.
    pub patch: Option<Value>,
    pub message: String,
}

/// Why a command does nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{name} has no rollout recorded yet: nothing to {what}")]
    NoRollout { name: String, what: &'static str },
    #[error(
        "{name} is not held at a pause step (phase {phase}): nothing to promote{hint}",
        hint = hint(name, *paused_by)
    )]
    NotAtPauseStep {
        name: String,
        phase: String,
        paused_by: Option<PauseCause>,
    },
    #[error("{name} runs revision {current}, the revision its spec asks for: no rollout to abort")]
    NothingToAbort { name: String, current: String },
    #[error("{name} has no revision history yet (status.history is empty)")]
    NoHistory { name: String },
    #[error(
        "{name} has no revision {number} in its history; it has {}",
        list(numbers)
    )]
    NoSuchRevision {
        name: String,
        number: i64,
        numbers: Vec<i64>,
    },
    #[error("{name}'s spec asks for no revision recorded in its history yet: nothing to undo")]
    NothingAsked { name: String },
    #[error(
        "{name} has no completed revision before revision {number} ({revision}), the one its \
         spec asks for: nothing to undo; kubectl longconn history {name} lists the revisions"
    )]
    NothingBefore {
        name: String,
        number: i64,
        revision: String,
    },
    #[error("{name} is already at revision {number} ({revision}): its spec asks for it")]
    AlreadyAt {
        name: String,
        number: i64,
        revision: String,
    },
}

fn list(numbers: &[i64]) -> String {
    let numbers: Vec<String> = numbers.iter().map(i64::to_string).collect();
    numbers.join(", ")
}

fn hint(name: &str, paused_by: Option<PauseCause>) -> String {
    match paused_by {
        Some(PauseCause::Spec) => format!(
            "; it is held by spec.rollout.paused: resume it with kubectl longconn resume {name}"
        ),
        _ => String::new(),
    }
}

pub fn name(lcs: &LongConnService) -> String {
    lcs.metadata.name.clone().unwrap_or_default()
}

fn annotation(lcs: &LongConnService, key: &str) -> Option<String> {
    lcs.metadata.annotations.as_ref()?.get(key).cloned()
}

fn annotate(key: &str, value: &str) -> Value {
    json!({"metadata": {"annotations": {key: value}}})
}

/// Sets annotation `key` to `value` (`sent` says so), or sends nothing while it is set so
/// already and the operator has yet to act on it (`pending` says so).
fn set_once(
    lcs: &LongConnService,
    key: &str,
    value: &str,
    sent: String,
    pending: String,
) -> Change {
    if annotation(lcs, key).is_some_and(|v| v.trim() == value) {
        return Change {
            patch: None,
            message: pending,
        };
    }
    Change {
        patch: Some(annotate(key, value)),
        message: sent,
    }
}

/// The update revision and the rollout last recorded.
fn rollout<'a>(
    lcs: &'a LongConnService,
    what: &'static str,
) -> Result<(&'a str, &'a RolloutStatus), Refused> {
    let status = lcs.status.as_ref();
    let update = status.and_then(|s| s.update_revision.as_deref());
    let rollout = status.and_then(|s| s.rollout.as_ref());
    match (update, rollout) {
        (Some(update), Some(r)) => Ok((update, r)),
        _ => Err(Refused::NoRollout {
            name: name(lcs),
            what,
        }),
    }
}

/// `promote`: ends the pause step the rollout is held at (`full`: every step left), with the
/// [`PROMOTE`] annotation `<updateRevision>/<step>` (or `/full`).
pub fn promote(lcs: &LongConnService, full: bool) -> Result<Change, Refused> {
    let (update, r) = rollout(lcs, "promote")?;
    let step = r.step.and_then(|s| usize::try_from(s).ok());
    let step = match (r.paused_by, step) {
        (Some(PauseCause::Step), Some(step)) if r.revision == update => step,
        _ => {
            return Err(Refused::NotAtPauseStep {
                name: name(lcs),
                phase: format!("{:?}", r.phase),
                paused_by: r.paused_by,
            });
        }
    };
    let value = if full {
        format!("{update}/full")
    } else {
        format!("{update}/{step}")
    };
    let what = if full {
        let steps = lcs.spec.rollout.steps.len();
        format!(
            "skipped every step left of revision {update}'s rollout (from step {} of {steps})",
            step + 1
        )
    } else {
        format!("promoted revision {update}, {}", Stage::describe(lcs, step))
    };
    Ok(Change {
        patch: Some(annotate(PROMOTE, &value)),
        message: format!("{what} ({PROMOTE}={value})"),
    })
}

/// `pause` (`paused: true`) and `resume` (`false`): `spec.rollout.paused`.
pub fn pause(lcs: &LongConnService, paused: bool) -> Change {
    let name = name(lcs);
    let (now, verb, already) = match paused {
        true => (
            "paused",
            "holds any rollout or scale-down at its next safe point: no drain starts, the drains under way finish",
            "paused already",
        ),
        false => ("resumed", "no longer holds its rollouts", "not paused"),
    };
    if lcs.spec.rollout.paused == paused {
        return Change {
            patch: None,
            message: format!("{name} is {already} (spec.rollout.paused: {paused})"),
        };
    }
    Change {
        patch: Some(json!({"spec": {"rollout": {"paused": paused}}})),
        message: format!("{now} {name}: spec.rollout.paused: {paused}; it {verb}"),
    }
}

/// `abort`: rolls the revision being rolled out back to `status.currentRevision`, with the
/// [`ABORT`] annotation `<updateRevision>`; the new revision's pods are drained, not cut.
pub fn abort(lcs: &LongConnService) -> Result<Change, Refused> {
    let status = lcs.status.as_ref();
    let update = status.and_then(|s| s.update_revision.as_deref());
    let current = status.and_then(|s| s.current_revision.as_deref());
    let (update, current) = match (update, current) {
        (Some(update), Some(current)) if update != current => (update, current),
        (_, Some(current)) => {
            return Err(Refused::NothingToAbort {
                name: name(lcs),
                current: current.to_owned(),
            });
        }
        _ => {
            return Err(Refused::NoRollout {
                name: name(lcs),
                what: "abort",
            });
        }
    };
    Ok(set_once(
        lcs,
        ABORT,
        update,
        format!(
            "aborted revision {update}: rolling back to revision {current}, the new pods' sessions moved, not cut ({ABORT}={update})"
        ),
        format!(
            "revision {update} is aborted already ({ABORT}={update}); rolling back to revision {current}"
        ),
    ))
}

/// `undo`: returns the pods' spec to an earlier revision of `status.history` with the [`UNDO`]
/// annotation `<number>`: revision `to`, or else the one before the revision the pods run. A
/// rollout under way may be undone; the revision the spec asks for already may not.
pub fn undo(lcs: &LongConnService, to: Option<i64>) -> Result<Change, Refused> {
    let record = match to {
        Some(number) => history::numbered(lcs, number)?,
        None => history::last_complete(lcs)?,
    };
    let name = name(lcs);
    let (number, revision) = (record.number, record.revision.as_str());
    let update = lcs
        .status
        .as_ref()
        .and_then(|s| s.update_revision.as_deref());
    if update == Some(revision) {
        return Err(Refused::AlreadyAt {
            name,
            number,
            revision: revision.to_owned(),
        });
    }
    let value = number.to_string();
    let follow = format!("kubectl longconn status {name} --watch follows it");
    Ok(set_once(
        lcs,
        UNDO,
        &value,
        format!("{name}: returning to revision {number} ({revision}); {follow} ({UNDO}={value})"),
        format!(
            "{name} is returning to revision {number} ({revision}) already; {follow} ({UNDO}={value})"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, annotate};

    #[test]
    fn promote_ends_the_pause_step_the_rollout_waits_at() {
        let change = promote(&fixtures::waiting_for_promotion(), false);
        assert_eq!(
            change,
            Ok(Change {
                patch: Some(json!({"metadata": {"annotations": {"longconn.dev/promote": "b/1"}}})),
                message: "promoted revision b, step 2 of 4: pause until promoted \
                          (longconn.dev/promote=b/1)"
                    .to_owned(),
            })
        );
    }

    #[test]
    fn promote_full_skips_every_step_left() {
        let change = promote(&fixtures::timed_pause(), true);
        assert_eq!(
            change,
            Ok(Change {
                patch: Some(
                    json!({"metadata": {"annotations": {"longconn.dev/promote": "b/full"}}})
                ),
                message: "skipped every step left of revision b's rollout (from step 4 of 4) \
                          (longconn.dev/promote=b/full)"
                    .to_owned(),
            })
        );
    }

    #[test]
    fn promote_is_refused_unless_a_pause_step_holds_the_rollout() {
        for (lcs, phase) in [
            (fixtures::draining(), "Draining"),
            (fixtures::complete(), "Complete"),
        ] {
            let refused = promote(&lcs, false).expect_err("nothing to promote");
            assert_eq!(
                refused.to_string(),
                format!("chat is not held at a pause step (phase {phase}): nothing to promote")
            );
        }
        let by_spec = promote(&fixtures::paused_by_spec(), true).expect_err("paused by the spec");
        assert_eq!(
            by_spec.to_string(),
            "chat is not held at a pause step (phase Paused): nothing to promote; it is held by \
             spec.rollout.paused: resume it with kubectl longconn resume chat"
        );
        let none = promote(&fixtures::no_status(), false).expect_err("no status");
        assert_eq!(
            none.to_string(),
            "chat has no rollout recorded yet: nothing to promote"
        );
    }

    #[test]
    fn promote_is_refused_when_the_pause_recorded_is_of_another_revision() {
        let mut lcs = fixtures::waiting_for_promotion();
        if let Some(status) = lcs.status.as_mut() {
            status.update_revision = Some("c".to_owned());
        }
        assert!(matches!(
            promote(&lcs, false),
            Err(Refused::NotAtPauseStep { .. })
        ));
    }

    #[test]
    fn pause_and_resume_set_spec_rollout_paused_once() {
        let running = fixtures::draining();
        let paused = pause(&running, true);
        assert_eq!(
            paused.patch,
            Some(json!({"spec": {"rollout": {"paused": true}}}))
        );
        assert_eq!(
            pause(&running, false).patch,
            None,
            "not paused: nothing to resume"
        );
        let held = fixtures::paused_by_spec();
        assert_eq!(pause(&held, true).patch, None, "paused already");
        let resumed = pause(&held, false);
        assert_eq!(
            resumed.patch,
            Some(json!({"spec": {"rollout": {"paused": false}}}))
        );
        assert_eq!(
            resumed.message,
            "resumed chat: spec.rollout.paused: false; it no longer holds its rollouts"
        );
    }

    #[test]
    fn abort_names_the_revision_being_rolled_out() {
        let change = abort(&fixtures::waiting_for_promotion()).expect("a rollout to abort");
        assert_eq!(
            change.patch,
            Some(json!({"metadata": {"annotations": {"longconn.dev/abort": "b"}}}))
        );
        assert_eq!(
            change.message,
            "aborted revision b: rolling back to revision a, the new pods' sessions moved, not \
             cut (longconn.dev/abort=b)"
        );
    }

    #[test]
    fn abort_is_refused_without_a_rollout_to_another_revision() {
        let refused = abort(&fixtures::complete()).expect_err("up to date");
        assert_eq!(
            refused.to_string(),
            "chat runs revision b, the revision its spec asks for: no rollout to abort"
        );
        let none = abort(&fixtures::no_status()).expect_err("no status");
        assert_eq!(
            none.to_string(),
            "chat has no rollout recorded yet: nothing to abort"
        );
    }

    #[test]
    fn undo_returns_to_the_last_revision_that_completed_before_the_one_asked_for() {
        // b rolls out; z (5) was aborted: back to a (4), the one the pods run.
        let change = undo(&fixtures::with_history(), None).expect("a revision before b");
        assert_eq!(
            change,
            Change {
                patch: Some(json!({"metadata": {"annotations": {"longconn.dev/undo": "4"}}})),
                message: "chat: returning to revision 4 (a); kubectl longconn status chat \
                          --watch follows it (longconn.dev/undo=4)"
                    .to_owned(),
            }
        );
    }

    #[test]
    fn undo_to_a_revision_names_its_number_even_during_a_rollout() {
        // While b rolls out: 4 is a, the revision the pods run; 5 is z, aborted once.
        for (number, revision) in [(4, "a"), (5, "z"), (1, "w")] {
            let change = undo(&fixtures::with_history(), Some(number)).expect("in the history");
            assert_eq!(
                change.patch,
                Some(
                    json!({"metadata": {"annotations": {"longconn.dev/undo": number.to_string()}}})
                )
            );
            assert!(
                change.message.starts_with(&format!(
                    "chat: returning to revision {number} ({revision});"
                )),
                "{}",
                change.message
            );
        }
    }

    #[test]
    fn undo_is_refused_to_the_revision_the_spec_asks_for() {
        let refused = undo(&fixtures::with_history(), Some(6)).expect_err("b is asked for");
        assert_eq!(
            refused.to_string(),
            "chat is already at revision 6 (b): its spec asks for it"
        );
        let mut returned = fixtures::complete();
        fixtures::set_history(
            &mut returned,
            "[{number: 1, revision: b}, {number: 2, revision: x, outcome: {result: Complete}}, \
             {number: 3, revision: b}]",
        );
        assert_eq!(
            undo(&returned, Some(1)),
            Err(Refused::AlreadyAt {
                name: "chat".to_owned(),
                number: 1,
                revision: "b".to_owned(),
            }),
            "an older record of the revision asked for"
        );
        assert_eq!(undo(&returned, None).map(|c| c.patch.is_some()), Ok(true));
    }

    #[test]
    fn undo_is_refused_to_a_number_not_in_the_history() {
        let refused = undo(&fixtures::with_history(), Some(9)).expect_err("no revision 9");
        assert_eq!(
            refused.to_string(),
            "chat has no revision 9 in its history; it has 1, 2, 3, 4, 5, 6"
        );
    }

    #[test]
    fn undo_is_refused_without_a_revision_to_return_to() {
        let none = fixtures::waiting_for_promotion();
        for to in [None, Some(1)] {
            assert_eq!(
                undo(&none, to).map_err(|e| e.to_string()),
                Err("chat has no revision history yet (status.history is empty)".to_owned())
            );
        }
        let mut first = fixtures::with_history();
        if let Some(status) = first.status.as_mut() {
            status.history.retain(|r| r.number >= 5);
        }
        assert_eq!(
            undo(&first, None).map_err(|e| e.to_string()),
            Err(
                "chat has no completed revision before revision 6 (b), the one its spec asks \
                 for: nothing to undo; kubectl longconn history chat lists the revisions"
                    .to_owned()
            )
        );
        let mut unrecorded = fixtures::with_history();
        if let Some(status) = unrecorded.status.as_mut() {
            status.update_revision = Some("q".to_owned());
        }
        assert_eq!(
            undo(&unrecorded, None).map_err(|e| e.to_string()),
            Err(
                "chat's spec asks for no revision recorded in its history yet: nothing to undo"
                    .to_owned()
            )
        );
    }

    #[test]
    fn undo_sends_nothing_while_the_same_undo_waits_for_the_operator() {
        let mut lcs = fixtures::with_history();
        annotate(&mut lcs, UNDO, "4");
        let change = undo(&lcs, None).expect("undone already");
        assert_eq!(change.patch, None);
        assert_eq!(
            change.message,
            "chat is returning to revision 4 (a) already; kubectl longconn status chat --watch \
             follows it (longconn.dev/undo=4)"
        );
        annotate(&mut lcs, UNDO, "5");
        assert!(undo(&lcs, None).expect("another undo").patch.is_some());
    }

    #[test]
    fn abort_sends_nothing_once_the_revision_is_aborted() {
        let change = abort(&fixtures::rolling_back()).expect("aborted already");
        assert_eq!(change.patch, None);
        let mut older = fixtures::rolling_back();
        annotate(&mut older, ABORT, "z");
        assert!(abort(&older).expect("a rollout to abort").patch.is_some());
    }
}
