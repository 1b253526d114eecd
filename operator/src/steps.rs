//! Rollout steps and pauses: how far a new revision may grow now, and whether drains may start.
//!
//! `spec.rollout.steps` stage a rollout: a `replicas` step grows the new revision to a size
//! (its old pods drained as in any rollout), a `pause` step waits, for a duration or until a
//! person promotes the rollout. The step in progress is recorded in `status.rollout.step`, with
//! when it began, so an operator that restarts carries on where the last one was. Everything
//! here is pure: [`Stage::of`] reads the recorded step, the spec, the annotations a person sets
//! ([`PROMOTE`], with `kubectl longconn promote`) and how far the new revision has come, moves
//! past the steps that are done, and answers with the most pods the new revision may have now
//! ([`Stage::cap`]) and whether anything holds the rollout ([`Stage::held`]).
//!
//! `spec.rollout.paused` holds any rollout or scale-down at its next safe point: no drain
//! starts and the new revision does not grow, while the drains under way finish and are
//! recorded (a pod someone else deletes still hands over its drain: it is going anyway).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::{LongConnService, PauseCause, RolloutStep};
use crate::disruption;

/// The annotation that ends a pause step waiting for a person: `<revision>/<step>` promotes
/// that step of that revision's rollout, `<revision>/full` skips every step left.
pub const PROMOTE: &str = "longconn.dev/promote";
/// The annotation that aborts a rollout: `<revision>` (the one being rolled out) goes back to
/// the current revision, its pods drained as a rollback's are.
pub const ABORT: &str = "longconn.dev/abort";
/// The annotation that returns the pods' spec to an earlier revision: `<number>` of
/// `status.history` (`kubectl longconn undo`). The operator puts that revision's pod-shaping
/// fields back into the spec, removes the annotation in the same write, and the return rolls
/// out like any change.
pub const UNDO: &str = "longconn.dev/undo";

/// Where a new revision has come so far, as observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Pods of the new revision Ready and staying.
    pub new_serving: i32,
    /// Pods of the new revision that exist and are not leaving.
    pub new_live: i32,
    /// Pods of other revisions still serving (not drained, not being drained).
    pub old_serving: i32,
    /// Drains under way.
    pub draining: usize,
}

/// What the steps allow now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stage {
    /// The step in progress; None when the rollout has no steps (or this is no rollout).
    pub step: Option<usize>,
    /// When that step began.
    pub started_at: Option<Timestamp>,
    /// The most pods the new revision may serve with now; None: as many as `replicas`.
    pub cap: Option<i32>,
    /// What holds the rollout: no drain starts.
    pub held: Option<PauseCause>,
    /// When the pause in progress ends by itself.
    pub until: Option<Timestamp>,
}

/// The pods a `replicas` step asks of `want`; None for a pause.
pub fn size(step: &RolloutStep, want: i32) -> Option<i32> {
    let replicas = step.replicas.as_ref()?;
    Some(disruption::scaled(replicas, want, true).clamp(0, want))
}

/// The size the new revision may have at step `index`: the last `replicas` step's up to it (0
/// before the first); None once every step is done.
pub fn cap(steps: &[RolloutStep], index: usize, want: i32) -> Option<i32> {
    if index >= steps.len() {
        return None;
    }
    Some(
        steps[..=index]
            .iter()
            .rev()
            .find_map(|s| size(s, want))
            .unwrap_or(0),
    )
}

/// A `replicas` step is done when the new revision serves with its size, no drain is under way
/// and the old revisions keep no more than the rest of `want`.
fn reached(size: i32, want: i32, progress: &Progress) -> bool {
    progress.new_serving >= size && progress.draining == 0 && progress.old_serving <= want - size
}

/// Whether step `index` of `revision`'s rollout is promoted by the [`PROMOTE`] annotation;
/// `Some(true)` when every step left is.
fn promoted(lcs: &LongConnService, revision: &str, index: usize) -> Option<bool> {
    let value = lcs.metadata.annotations.as_ref()?.get(PROMOTE)?;
    let (rev, step) = value.trim().split_once('/')?;
    if rev != revision {
        return None;
    }
    match step {
        "full" => Some(true),
        n => (n.parse::<usize>().ok()? == index).then_some(false),
    }
}

/// Whether the [`ABORT`] annotation asks to abort `revision`'s rollout.
pub fn aborted(lcs: &LongConnService, revision: &str) -> bool {
    lcs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ABORT))
        .is_some_and(|v| v.trim() == revision)
}

impl Stage {
    /// The stage of `revision`'s rollout: `recorded` is the step `status.rollout` holds and
    /// when it began (None for a rollout that starts now), `progress` how far the new revision
    /// has come. `staged` says whether steps apply at all: a rollout to a new revision, not a
    /// rollback nor a scale-down.
    pub fn of(
        lcs: &LongConnService,
        revision: &str,
        staged: bool,
        recorded: Option<(usize, Option<Timestamp>)>,
        progress: &Progress,
        now: Timestamp,
    ) -> Stage {
        let spec = &lcs.spec.rollout;
        let want = lcs.spec.replicas;
        let mut stage = Stage::default();
        if staged && !spec.steps.is_empty() {
            let (mut index, recorded_at) = recorded.unwrap_or((0, None));
            let mut started_at = recorded_at.unwrap_or(now);
            while index < spec.steps.len() {
                let step = &spec.steps[index];
                let done = match (size(step, want), &step.pause) {
                    (Some(size), _) => reached(size, want, progress),
                    (None, pause) => match promoted(lcs, revision, index) {
                        Some(true) => {
                            index = spec.steps.len();
                            break;
                        }
                        Some(false) => true,
                        None => {
                            let duration = pause.as_ref().and_then(|p| p.duration.as_ref());
                            match duration.and_then(|d| d.to_std().ok()) {
                                Some(d) => {
                                    let until = started_at
                                        + SignedDuration::try_from(d)
                                            .unwrap_or(SignedDuration::MAX);
                                    stage.until = Some(until);
                                    now >= until
                                }
                                None => false,
                            }
                        }
                    },
                };
                if !done {
                    break;
                }
                stage.until = None;
                index += 1;
                started_at = now;
            }
            if index < spec.steps.len() && spec.steps[index].pause.is_some() {
                stage.held = Some(PauseCause::Step);
            }
            stage.cap = cap(&spec.steps, index, want);
            stage.step = Some(index);
            stage.started_at = Some(started_at);
        }
        if spec.paused {
            stage.held = Some(PauseCause::Spec);
            if staged {
                let live = progress.new_live.max(0);
                stage.cap = Some(stage.cap.map_or(live, |c| c.min(live)));
            }
        }
        stage
    }

    /// The words for step `index` of `lcs`'s rollout, for Events and conditions.
    pub fn describe(lcs: &LongConnService, index: usize) -> String {
        let steps = &lcs.spec.rollout.steps;
        let Some(step) = steps.get(index) else {
            return format!("every step of {} done", steps.len());
        };
        let what = match (&step.replicas, &step.pause) {
            (Some(IntOrString::Int(n)), _) => format!("grow the new revision to {n} pods"),
            (Some(IntOrString::String(p)), _) => format!(
                "grow the new revision to {p} of replicas ({} pods)",
                size(step, lcs.spec.replicas).unwrap_or(0)
            ),
            (None, Some(p)) => match &p.duration {
                Some(d) => format!("pause for {d}"),
                None => "pause until promoted".to_owned(),
            },
            (None, None) => "nothing".to_owned(),
        };
        format!("step {} of {}: {what}", index + 1, steps.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PauseStep;
    use crate::duration::Duration;

    fn replicas(n: IntOrString) -> RolloutStep {
        RolloutStep {
            replicas: Some(n),
            pause: None,
        }
    }

    fn pause(duration: Option<&'static str>) -> RolloutStep {
        RolloutStep {
            replicas: None,
            pause: Some(PauseStep {
                duration: duration.map(Duration::from_static),
            }),
        }
    }

    fn canary() -> LongConnService {
        let mut lcs = LongConnService::test().replicas(4).build();
        lcs.spec.rollout.steps = vec![
            replicas(IntOrString::Int(1)),
            pause(None),
            replicas(IntOrString::String("50%".to_owned())),
            pause(Some("5m")),
        ];
        lcs
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn annotate(lcs: &mut LongConnService, key: &str, value: &str) {
        lcs.metadata
            .annotations
            .get_or_insert_default()
            .insert(key.to_owned(), value.to_owned());
    }

    const T0: &str = "2026-01-01T00:00:00Z";

    #[test]
    fn sizes_are_the_last_replicas_step_so_far_and_percentages_round_up() {
        let lcs = canary();
        let steps = &lcs.spec.rollout.steps;
        let caps: Vec<Option<i32>> = (0..5).map(|i| cap(steps, i, 4)).collect();
        assert_eq!(caps, [Some(1), Some(1), Some(2), Some(2), None]);
        assert_eq!(cap(steps, 2, 3), Some(2), "50% of 3 rounds up");
        assert_eq!(
            cap(&[pause(None)], 0, 3),
            Some(0),
            "a pause first: nothing grows"
        );
        assert_eq!(size(&replicas(IntOrString::Int(9)), 3), Some(3));
    }

    #[test]
    fn a_rollout_starts_at_its_first_step_and_moves_on_once_the_size_serves() {
        let lcs = canary();
        let start = Stage::of(&lcs, "b", true, None, &Progress::default(), at(T0));
        assert_eq!(
            (start.step, start.cap, start.held),
            (Some(0), Some(1), None)
        );
        assert_eq!(start.started_at, Some(at(T0)));
        let recorded = Some((0, Some(at(T0))));
        let draining = Progress {
            new_serving: 1,
            new_live: 1,
            old_serving: 3,
            draining: 1,
        };
        let later = at("2026-01-01T00:00:30Z");
        let still = Stage::of(&lcs, "b", true, recorded, &draining, later);
        assert_eq!((still.step, still.started_at), (Some(0), Some(at(T0))));
        let done = Progress {
            draining: 0,
            ..draining
        };
        let paused = Stage::of(&lcs, "b", true, recorded, &done, later);
        assert_eq!(
            (paused.step, paused.cap, paused.held),
            (Some(1), Some(1), Some(PauseCause::Step))
        );
        assert_eq!(paused.started_at, Some(later), "the pause begins now");
        assert_eq!(paused.until, None, "no duration: until promoted");
    }

    #[test]
    fn a_pause_without_duration_waits_for_its_own_promotion() {
        let mut lcs = canary();
        let progress = Progress {
            new_serving: 1,
            new_live: 1,
            old_serving: 3,
            draining: 0,
        };
        let recorded = Some((1, Some(at(T0))));
        let now = at("2026-01-02T00:00:00Z");
        for stale in ["a/1", "b/0", "b/3", "b", "nonsense"] {
            annotate(&mut lcs, PROMOTE, stale);
            let stage = Stage::of(&lcs, "b", true, recorded, &progress, now);
            assert_eq!(stage.step, Some(1), "{stale} promotes nothing");
        }
        annotate(&mut lcs, PROMOTE, "b/1");
        let promoted = Stage::of(&lcs, "b", true, recorded, &progress, now);
        assert_eq!(
            (promoted.step, promoted.cap, promoted.held),
            (Some(2), Some(2), None)
        );
        annotate(&mut lcs, PROMOTE, "b/full");
        let full = Stage::of(&lcs, "b", true, recorded, &progress, now);
        assert_eq!((full.step, full.cap, full.held), (Some(4), None, None));
    }

    #[test]
    fn a_timed_pause_ends_by_itself_and_says_when() {
        let lcs = canary();
        let progress = Progress {
            new_serving: 2,
            new_live: 2,
            old_serving: 2,
            draining: 0,
        };
        let recorded = Some((3, Some(at(T0))));
        let waiting = Stage::of(
            &lcs,
            "b",
            true,
            recorded,
            &progress,
            at("2026-01-01T00:04:59Z"),
        );
        assert_eq!(
            (waiting.step, waiting.held, waiting.until),
            (
                Some(3),
                Some(PauseCause::Step),
                Some(at("2026-01-01T00:05:00Z"))
            )
        );
        let over = Stage::of(
            &lcs,
            "b",
            true,
            recorded,
            &progress,
            at("2026-01-01T00:05:00Z"),
        );
        assert_eq!((over.step, over.cap, over.held), (Some(4), None, None));
    }

    #[test]
    fn paused_in_the_spec_holds_drains_and_the_new_revision_s_growth() {
        let mut lcs = canary();
        lcs.spec.rollout.paused = true;
        let progress = Progress {
            new_serving: 0,
            new_live: 1,
            old_serving: 4,
            draining: 0,
        };
        let stage = Stage::of(&lcs, "b", true, None, &progress, at(T0));
        assert_eq!((stage.cap, stage.held), (Some(1), Some(PauseCause::Spec)));
        let scale_down = Stage::of(&lcs, "a", false, None, &progress, at(T0));
        assert_eq!(
            (scale_down.step, scale_down.cap, scale_down.held),
            (None, None, Some(PauseCause::Spec)),
            "outside a rollout only the drains are held"
        );
    }

    #[test]
    fn no_steps_apply_outside_a_staged_rollout() {
        let lcs = canary();
        let none = Stage::of(&lcs, "a", false, None, &Progress::default(), at(T0));
        assert_eq!(none, Stage::default());
    }

    #[test]
    fn the_abort_annotation_names_the_revision_it_aborts() {
        let mut lcs = canary();
        assert!(!aborted(&lcs, "b"));
        annotate(&mut lcs, ABORT, "a");
        assert!(!aborted(&lcs, "b"));
        annotate(&mut lcs, ABORT, "b");
        assert!(aborted(&lcs, "b"));
    }
}
