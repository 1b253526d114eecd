//! What each command that changes a LongConnService sends: a pure decision from the object as
//! read to the merge patch and the words saying what it did, or a refusal saying why not.
//!
//! The patches carry no `resourceVersion`: the operator writes the status every second while a
//! rollout moves, and the annotations name the revision (and step) they act on, so a patch
//! decided on an older read acts on nothing newer: a stale promote promotes nothing, a stale
//! abort aborts a revision no longer rolled out.

use longconn_operator::crd::{LongConnService, PauseCause, RolloutStatus};
use longconn_operator::steps::{ABORT, PROMOTE, Stage};
use serde_json::{Value, json};

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
}

fn hint(name: &str, paused_by: Option<PauseCause>) -> String {
    match paused_by {
        Some(PauseCause::Spec) => format!(
            "; it is held by spec.rollout.paused: resume it with kubectl longconn resume {name}"
        ),
        _ => String::new(),
    }
}

fn name(lcs: &LongConnService) -> String {
    lcs.metadata.name.clone().unwrap_or_default()
}

fn annotation(lcs: &LongConnService, key: &str) -> Option<String> {
    lcs.metadata.annotations.as_ref()?.get(key).cloned()
}

fn annotate(key: &str, value: &str) -> Value {
    json!({"metadata": {"annotations": {key: value}}})
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
    if annotation(lcs, ABORT).is_some_and(|v| v.trim() == update) {
        return Ok(Change {
            patch: None,
            message: format!(
                "revision {update} is aborted already ({ABORT}={update}); rolling back to revision {current}"
            ),
        });
    }
    Ok(Change {
        patch: Some(annotate(ABORT, update)),
        message: format!(
            "aborted revision {update}: rolling back to revision {current}, the new pods' sessions moved, not cut ({ABORT}={update})"
        ),
    })
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
    fn abort_sends_nothing_once_the_revision_is_aborted() {
        let change = abort(&fixtures::rolling_back()).expect("aborted already");
        assert_eq!(change.patch, None);
        let mut older = fixtures::rolling_back();
        annotate(&mut older, ABORT, "z");
        assert!(abort(&older).expect("a rollout to abort").patch.is_some());
    }
}
