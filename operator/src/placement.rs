//! Where new sessions go: which pods the client Service sends new connections to.
//!
//! The client Service selects the pods of one revision (`longconn.dev/revision` in its
//! selector, [`selects`]) labelled `longconn.dev/accepting: "true"`; pods start with the label
//! from their template, and the operator sets it to `"false"` to take a pod out of the Service
//! without touching its readiness (its PodDisruptionBudget, its Deployment's availability and
//! the sessions it holds are unaffected: established connections keep their path). [`place`]
//! decides the revision the Service selects and the label of every pod of it, from the same
//! view a rollout step has:
//! - pods being drained, drained or on their way out never accept;
//! - the **receivers** are the Ready pods of the target revision that stay. As soon as there is
//!   one, the Service selects the target revision alone: the pods of every other revision
//!   leave it together, in one write of the Service, and keep their labels (they will all be
//!   drained: a session that moved onto one of them would move again); the target revision's
//!   pods a scale-down is about to drain stop accepting. Until there is one, the Service keeps
//!   the revision it selects while a pod of it serves (every revision once none does), and
//!   every pod it selects accepts as before,
//!   except that a pod stopped for being full stays stopped while another accepts and the
//!   first receivers are on their way ([`View::receivers_coming`]): they will stop it again;
//! - while sessions are on their way (drains under way, or the one about to start), the
//!   receivers that accept are ones that can take the incoming sessions in even shares (a
//!   Service spreads new connections evenly over its endpoints, not in proportion to room)
//!   below [`FULL`] times the mean, failing that below [`LIMIT`]; a round of rebalancing tries
//!   below the mean first ([`View::rebalancing`]: the sessions it moves stay where they land
//!   for ten minutes, so a receiver filled with them to [`FULL`] could not hand them on when a
//!   scale-up then lowers the mean). During a rollout
//!   ([`View::rolling`]: pods of another revision are left) the receivers stay for good, and
//!   they are chosen with the fewest label changes ([`receivers_for`]): those accepting now
//!   are kept where they have room, and those with the most room added until there are enough.
//!   Otherwise (a scale-down, a round of rebalancing) a receiver may be the next to be drained,
//!   so the sessions go to the fewest receivers with the most room, which then
//!   hold the most and are drained last: a session moves once even when the scale-downs
//!   follow each other. When no choice takes them, every receiver accepts; a rollout step then
//!   waits instead, while sessions are still on their way or receivers are starting (see
//!   `rollout::pick`);
//! - with nothing on its way, every receiver below its share accepts; a receiver at [`FULL`]
//!   times the mean stops, and starts again once back at the mean, so that new clients fill
//!   the emptier pods; but during a rollout a receiver that stopped stays stopped while another
//!   accepts, since the next drain would stop it again. One receiver always accepts.
//!
//! Each label change is a PATCH of a pod, and each change of the Service's selector one of the
//! Service: taking the old pods out by the selector and keeping the labels that still serve is
//! what holds a rollout to fewer than two changes per pod drained (the model test counts them).
//!
//! A drain starts only once the routing has [`settled`] ([`all_settled`]): the Service selects
//! the revision it should, the pod to drain and every other pod carry the label they should,
//! the EndpointSlices show it (the pods the selector leaves out are out of them), and
//! [`SETTLE`] has passed since the last change of a label or of the selector, so that every
//! node's proxy has followed (kube-proxy applies endpoint changes at most once a second by
//! default). Its clients then reconnect only to pods that stay
//! and have room: each session moves once.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::rollout::PodFacts;

/// How long after a change of a pod's label the routing counts as settled.
pub const SETTLE: SignedDuration = SignedDuration::from_secs(2);
/// A receiver with this many times the mean sessions per pod stops taking new ones.
pub const FULL: f64 = 1.1;
/// Sessions on their way may fill a receiver up to this many times the mean when they would not
/// fit below [`FULL`]: the balance a rollout or scale-down aims to end within.
pub const LIMIT: f64 = 1.25;

/// The client Service as observed: which revision its selector names, and when the operator
/// last changed that.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceFacts {
    /// The Service exists.
    pub exists: bool,
    /// The `longconn.dev/revision` its selector names; None when it selects every revision.
    pub revision: Option<String>,
    /// When the operator last changed the revision it selects.
    pub changed_at: Option<Timestamp>,
}

/// What [`place`] looks at.
pub struct View<'a> {
    pub pods: &'a [PodFacts],
    /// The client Service as observed.
    pub service: &'a ServiceFacts,
    /// The revision the pods converge on.
    pub target: &'a str,
    /// Pods the LongConnService should have (`spec.replicas`).
    pub replicas: i32,
    /// Pods being drained, drained, or on their way out.
    pub leaving: &'a BTreeSet<String>,
    /// Pods of the target revision a scale-down drains next.
    pub excess: &'a BTreeSet<String>,
    /// Open sessions of each pod, as last known.
    pub sessions: &'a BTreeMap<String, i64>,
    /// A rollout is under way: pods of another revision are left to drain.
    pub rolling: bool,
    /// The target revision's first pods are on their way (the rollout began, or one of them was
    /// created, within `rollout::START_GRACE`); it counts only while there is no receiver.
    pub receivers_coming: bool,
    /// The sessions on their way are a round of rebalancing's: a session stays where it lands
    /// for `rebalance::KEEP_MOVED_FOR`, so the receivers take them up to the mean before
    /// [`FULL`] (a receiver filled with moved sessions to [`FULL`] is left over the bound by a
    /// scale-up that follows, and cannot hand them on).
    pub rebalancing: bool,
}

/// Where new sessions go.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    /// The revision the client Service should select ([`selects`]); None: every revision.
    pub selected: Option<String>,
    /// The `longconn.dev/accepting` value each pod not terminating should carry; a pod the
    /// Service's selector leaves out keeps the label it has.
    pub accepting: BTreeMap<String, bool>,
    /// Receivers there are: Ready pods of the target revision that stay.
    pub receivers: usize,
    /// The incoming sessions fit the accepting receivers in even shares, each below its share.
    pub fits: bool,
}

impl View<'_> {
    fn sessions_of(&self, pod: &str) -> i64 {
        self.sessions.get(pod).copied().unwrap_or(0)
    }

    /// Sessions per pod once everything is in place.
    fn mean(&self) -> f64 {
        let total: i64 = self.sessions.values().sum();
        total as f64 / f64::from(self.replicas.max(1))
    }
}

/// Decides every pod's label for `incoming` sessions on their way to the receivers.
pub fn place(view: &View, incoming: i64) -> Placement {
    let receivers: Vec<&PodFacts> = view
        .pods
        .iter()
        .filter(|p| {
            p.revision == view.target
                && p.running
                && p.ready
                && !p.terminating
                && !view.leaving.contains(&p.name)
                && !view.excess.contains(&p.name)
        })
        .collect();
    let selected = selects(view, &receivers);
    let mut accepting = BTreeMap::new();
    for pod in view
        .pods
        .iter()
        .filter(|p| !p.terminating && !left_out(selected.as_deref(), p))
    {
        let starting = pod.revision == view.target && !(pod.running && pod.ready);
        if starting && !pod.running {
            // Not started: in no endpoint whatever its label, so it keeps the one it has (a
            // change would be a write for nothing, and one that never starts, Pending without
            // a node, would be written again whenever it counts as never started).
            continue;
        }
        let stays = !view.leaving.contains(&pod.name) && !view.excess.contains(&pod.name);
        // Without a receiver, every pod that stays for now keeps accepting; a pod of the
        // target revision that is not Ready yet keeps its template's label: it receives once
        // Ready, and an empty pod has room.
        accepting.insert(
            pod.name.clone(),
            stays && (receivers.is_empty() || starting),
        );
    }
    if receivers.is_empty() && view.receivers_coming {
        hold_stopped(view, &mut accepting);
    }
    let mean = view.mean();
    let full = (mean * FULL).ceil() as i64;
    let room = |p: &PodFacts| full - view.sessions_of(&p.name);
    let mut by_room = receivers.clone();
    by_room.sort_by(|a, b| room(b).cmp(&room(a)).then_with(|| a.name.cmp(&b.name)));
    let (chosen, fits): (Vec<&PodFacts>, bool) = if incoming > 0 {
        let limits: &[f64] = if view.rebalancing {
            &[1.0, FULL, LIMIT]
        } else {
            &[FULL, LIMIT]
        };
        let choose =
            |limit: f64| receivers_for(view, &by_room, incoming, mean * limit, view.rolling);
        match limits.iter().find_map(|&limit| choose(limit)) {
            Some(chosen) => (chosen, true),
            None => (by_room.clone(), false),
        }
    } else {
        let open: Vec<&PodFacts> = by_room
            .iter()
            .copied()
            .filter(|p| {
                let sessions = view.sessions_of(&p.name);
                match p.accepting {
                    Some(false) => !view.rolling && (sessions as f64) < mean.max(1.0),
                    _ => sessions < full.max(1),
                }
            })
            .collect();
        let open = if open.is_empty() {
            by_room.iter().copied().take(1).collect()
        } else {
            open
        };
        (open, true)
    };
    for pod in chosen {
        accepting.insert(pod.name.clone(), true);
    }
    Placement {
        selected,
        accepting,
        receivers: receivers.len(),
        fits: fits && !receivers.is_empty(),
    }
}

/// The revision the client Service selects: the target revision once it has a receiver, and
/// until then the one it selects now while a pod of that revision serves (a Service not made
/// yet: the target revision). Taking the pods of every other revision out of the Service is
/// then one write of the Service, not one of each pod. When no pod of that revision serves but
/// another does (a revision arriving mid-rollout, the target's only receivers gone, the Service
/// deleted mid-rollout), every revision: the pods' labels decide alone, as they do within the
/// revision selected.
pub fn selects(view: &View, receivers: &[&PodFacts]) -> Option<String> {
    if !receivers.is_empty() {
        return Some(view.target.to_owned());
    }
    let serves =
        |p: &PodFacts| p.running && p.ready && !p.terminating && !view.leaving.contains(&p.name);
    let service = view.service;
    let current = if service.exists {
        service.revision.clone()
    } else {
        Some(view.target.to_owned())
    };
    match current {
        Some(revision)
            if view
                .pods
                .iter()
                .any(|p| p.revision == revision && serves(p)) =>
        {
            Some(revision)
        }
        // Nothing serves: a change would route nowhere either.
        current if !view.pods.iter().any(serves) => current,
        _ => None,
    }
}

/// Whether a Service selecting `selected` (None: every revision) leaves `pod` out, whatever its
/// label.
fn left_out(selected: Option<&str>, pod: &PodFacts) -> bool {
    selected.is_some_and(|r| pod.revision != r)
}

/// While the first receivers of a rollout are on their way, a pod the operator stopped (it was
/// full) stays stopped as long as another serving pod accepts: the first receiver stops every
/// pod of the other revisions seconds later, so opening it now is a label change made only to
/// be undone. Past `rollout::START_GRACE` without a receiver (a revision whose pods do not
/// start), every pod that stays accepts again.
fn hold_stopped(view: &View, accepting: &mut BTreeMap<String, bool>) {
    let stopped = |p: &PodFacts| p.accepting == Some(false);
    let held: Vec<&String> = view
        .pods
        .iter()
        .filter(|p| stopped(p) && p.revision != view.target && accepting.contains_key(&p.name))
        .map(|p| &p.name)
        .collect();
    let another_serves = view.pods.iter().any(|p| {
        p.running && p.ready && !stopped(p) && accepting.get(&p.name).copied().unwrap_or(false)
    });
    if another_serves {
        for name in held {
            accepting.insert(name.clone(), false);
        }
    }
}

/// The receivers that take `incoming` sessions in even shares, none past `limit` sessions:
/// for each receiver in `by_room` (most room first), the receivers with at least its room take
/// them if enough of them are chosen. Without `keep`, the first choice that does: the fewest
/// receivers with the most room. With `keep`, the choice with the fewest label changes (then
/// the most room): those accepting now are kept, and the others with the most room added until
/// there are enough. None when no choice takes them.
fn receivers_for<'a>(
    view: &View,
    by_room: &[&'a PodFacts],
    incoming: i64,
    limit: f64,
    keep: bool,
) -> Option<Vec<&'a PodFacts>> {
    let top = limit.ceil() as i64;
    let accepts = |p: &PodFacts| p.accepting != Some(false);
    let accepting = by_room.iter().filter(|p| accepts(p)).count();
    let mut best: Option<(usize, Vec<&PodFacts>)> = None;
    for (last, pod) in by_room.iter().enumerate() {
        let least = top - view.sessions_of(&pod.name);
        if least <= 0 {
            break;
        }
        let need = usize::try_from((incoming + least - 1) / least).unwrap_or(usize::MAX);
        let eligible = &by_room[..=last];
        if need > eligible.len() {
            continue;
        }
        if !keep {
            return Some(eligible[..need].to_vec());
        }
        let (mut chosen, others): (Vec<&PodFacts>, Vec<&PodFacts>) =
            eligible.iter().partition(|p| accepts(p));
        let kept = chosen.len();
        chosen.extend(others.into_iter().take(need.saturating_sub(kept)));
        let changes = (accepting - kept) + (chosen.len() - kept);
        if best.as_ref().is_none_or(|(fewest, _)| changes < *fewest) {
            best = Some((changes, chosen));
        }
    }
    best.map(|(_, chosen)| chosen)
}

/// Whether `pod` carries the label `accepting`, the EndpointSlices agree, and [`SETTLE`] has
/// passed since the operator last changed it.
pub fn settled(pod: &PodFacts, accepting: bool, now: Timestamp) -> bool {
    let labelled = pod.accepting == Some(accepting);
    // A pod that is not Ready is in no endpoint whatever its label: nothing to wait for.
    let routed = pod.routable == accepting || !pod.ready || !pod.running;
    let quiet = pod
        .routing_changed_at
        .is_none_or(|at| now.duration_since(at) >= SETTLE);
    labelled && routed && quiet
}

/// Whether every pod `placement` covers has settled as it says, and the client Service (as
/// observed: `service`) selects the revision it says: the pods its selector leaves out are out
/// of the EndpointSlices and [`SETTLE`] has passed since the operator changed it.
pub fn all_settled(
    pods: &[PodFacts],
    service: &ServiceFacts,
    placement: &Placement,
    now: Timestamp,
) -> bool {
    let selector = service.revision == placement.selected
        && service
            .changed_at
            .is_none_or(|at| now.duration_since(at) >= SETTLE);
    selector
        && pods.iter().all(|pod| {
            if left_out(placement.selected.as_deref(), pod) {
                return !pod.routable || !pod.ready || !pod.running;
            }
            placement
                .accepting
                .get(&pod.name)
                .is_none_or(|&accepting| settled(pod, accepting, now))
        })
}

/// The label changes that bring the pods to `placement`: (pod, accepting), the pods that start
/// accepting first. Made in that order, the client Service never holds fewer receivers than
/// before or after the change: one receiver handing over to another would otherwise leave it
/// with none for a moment, and a client reconnecting then finds no endpoint.
pub fn changes(pods: &[PodFacts], placement: &Placement) -> Vec<(String, bool)> {
    let mut changes: Vec<(String, bool)> = pods
        .iter()
        .filter_map(|pod| {
            let want = *placement.accepting.get(&pod.name)?;
            (pod.accepting != Some(want)).then(|| (pod.name.clone(), want))
        })
        .collect();
    changes.sort_by_key(|(_, accepting)| !accepting);
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::constant(1_800_000_000, 0);

    fn pod(name: &str, revision: &str) -> PodFacts {
        PodFacts {
            name: name.to_owned(),
            revision: revision.to_owned(),
            running: true,
            ready: true,
            accepting: Some(true),
            routable: true,
            ..PodFacts::default()
        }
    }

    /// A Ready pod the operator took out of the client Service.
    fn stopped(name: &str, revision: &str) -> PodFacts {
        PodFacts {
            accepting: Some(false),
            ..pod(name, revision)
        }
    }

    static NONE: BTreeSet<String> = BTreeSet::new();
    /// A client Service that selects every revision: the pods' labels decide alone.
    static EVERY: ServiceFacts = ServiceFacts {
        exists: true,
        revision: None,
        changed_at: None,
    };

    /// A view with no pod leaving and none in excess.
    fn view<'a>(
        pods: &'a [PodFacts],
        target: &'a str,
        replicas: i32,
        sessions: &'a BTreeMap<String, i64>,
    ) -> View<'a> {
        View {
            pods,
            service: &EVERY,
            target,
            replicas,
            leaving: &NONE,
            excess: &NONE,
            sessions,
            rolling: false,
            receivers_coming: false,
            rebalancing: false,
        }
    }

    fn sessions(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(p, n)| ((*p).to_owned(), *n)).collect()
    }

    fn accepting(placement: &Placement) -> Vec<&str> {
        placement
            .accepting
            .iter()
            .filter(|(_, a)| **a)
            .map(|(p, _)| p.as_str())
            .collect()
    }

    #[test]
    fn old_pods_keep_accepting_until_the_new_revision_has_a_ready_pod() {
        let mut new = pod("n1", "new");
        new.ready = false;
        let pods = [pod("a", "old"), pod("b", "old"), new];
        let counts = sessions(&[("a", 100), ("b", 100)]);
        let view = view(&pods, "new", 2, &counts);
        let placement = place(&view, 0);
        // n1 keeps its template's label: it takes sessions once Ready.
        assert_eq!(accepting(&placement), ["a", "b", "n1"]);
        // Once another pod of the new revision is Ready, n1 still keeps it.
        let pods = [
            pod("a", "old"),
            pod("b", "old"),
            pods[2].clone(),
            pod("n2", "new"),
        ];
        let view = View {
            pods: &pods,
            ..view
        };
        assert_eq!(accepting(&place(&view, 0)), ["n1", "n2"]);
        assert_eq!(placement.receivers, 0);
    }

    #[test]
    fn a_full_old_pod_stays_stopped_while_the_first_receivers_are_on_their_way() {
        let pods = [pod("a", "old"), stopped("b", "old"), pod("c", "old")];
        let counts = sessions(&[("a", 90), ("b", 120), ("c", 90)]);
        let starting = View {
            rolling: true,
            receivers_coming: true,
            ..view(&pods, "new", 3, &counts)
        };
        // The new revision has no pod yet: b would be opened now and stopped again once the
        // first new pod is Ready.
        let placement = place(&starting, 0);
        assert_eq!(accepting(&placement), ["a", "c"]);
        assert!(changes(&pods, &placement).is_empty());
        // A terminating pod gets no label at all, stopped or not.
        let mut leaving = stopped("d", "old");
        leaving.terminating = true;
        let with_leaving = [pods[0].clone(), pods[1].clone(), pods[2].clone(), leaving];
        let view = View {
            pods: &with_leaving,
            ..starting
        };
        assert_eq!(place(&view, 0).accepting.get("d"), None);
        // Every old pod stopped: one has to take the new clients, so all open as before.
        let all_stopped = [stopped("a", "old"), stopped("b", "old")];
        let view = View {
            pods: &all_stopped,
            ..starting
        };
        assert_eq!(accepting(&place(&view, 0)), ["a", "b"]);
        // The new revision's pods do not start: every old pod accepts again.
        let stalled = View {
            receivers_coming: false,
            ..starting
        };
        assert_eq!(accepting(&place(&stalled, 0)), ["a", "b", "c"]);
    }

    #[test]
    fn once_the_new_revision_can_take_sessions_the_service_selects_it_alone() {
        let pods = [pod("a", "old"), pod("b", "old"), pod("n1", "new")];
        let counts = sessions(&[("a", 100), ("b", 100)]);
        let view = view(&pods, "new", 2, &counts);
        let placement = place(&view, 100);
        assert_eq!(placement.selected.as_deref(), Some("new"));
        // The old pods leave the Service by its selector, in one write: their labels stay.
        assert_eq!(placement.accepting.get("a"), None);
        assert_eq!(placement.accepting.get("b"), None);
        assert!(changes(&pods, &placement).is_empty());
        assert_eq!(accepting(&placement), ["n1"]);
        // 100 sessions per pod when done, 110 full: 100 fit n1.
        assert!(placement.fits);
    }

    #[test]
    fn the_service_keeps_the_revision_it_selects_while_a_pod_of_it_serves() {
        let mut new = pod("n1", "new");
        new.ready = false;
        let pods = [pod("a", "old"), stopped("b", "other"), new];
        let counts = sessions(&[("a", 100), ("b", 100)]);
        let old = ServiceFacts {
            revision: Some("old".to_owned()),
            ..EVERY.clone()
        };
        let view = View {
            service: &old,
            ..view(&pods, "new", 2, &counts)
        };
        // No receiver yet: the old revision stays selected, and only its pods get labels.
        let placement = place(&view, 0);
        assert_eq!(placement.selected.as_deref(), Some("old"));
        assert_eq!(accepting(&placement), ["a"]);
        assert_eq!(placement.accepting.get("b"), None);
        // Its last pod leaves: every revision, and the pods' labels decide (b opens again, n1
        // keeps its template's label until Ready).
        let leaving = BTreeSet::from(["a".to_owned()]);
        let gone = View {
            leaving: &leaving,
            ..view
        };
        let placement = place(&gone, 0);
        assert_eq!(placement.selected, None);
        assert_eq!(accepting(&placement), ["b", "n1"]);
        // Nothing serves anywhere: no change, it would route nowhere either.
        let nothing = [pods[2].clone()];
        let view = View {
            pods: &nothing,
            ..view
        };
        assert_eq!(place(&view, 0).selected.as_deref(), Some("old"));
        // A Service not made yet selects the target revision from the start; made again while
        // only old pods serve, every revision.
        let missing = ServiceFacts::default();
        let new_service = View {
            service: &missing,
            ..view
        };
        assert_eq!(place(&new_service, 0).selected.as_deref(), Some("new"));
        let remade = View {
            pods: &pods,
            ..new_service
        };
        assert_eq!(place(&remade, 0).selected, None);
    }

    #[test]
    fn incoming_sessions_go_to_the_fewest_receivers_that_take_them_in_even_shares() {
        let pods = [pod("n1", "new"), pod("n2", "new"), pod("n3", "new")];
        // 600 in all: 200 per pod when done, 220 full.
        let counts = sessions(&[("n1", 210), ("n2", 0), ("n3", 190), ("gone", 200)]);
        let view = view(&pods, "new", 3, &counts);
        // 200 on their way: n2 alone has room (220) for them.
        assert_eq!(accepting(&place(&view, 200)), ["n2"]);
        // 240: n2 (220) and n3 (30) cannot take 120 each below full, all three (10 each)
        // neither; below the limit (250), n2 alone takes them.
        let placement = place(&view, 240);
        assert_eq!(accepting(&placement), ["n2"]);
        assert!(placement.fits);
        // 300: n2 alone (250), n2 and n3 (60 each), all three (40 each) cannot: the most room
        // there is, and it does not fit.
        let placement = place(&view, 300);
        assert_eq!(accepting(&placement), ["n1", "n2", "n3"]);
        assert!(!placement.fits);
    }

    #[test]
    fn receivers_that_accept_keep_accepting_while_they_take_the_incoming_in_even_shares() {
        let pods = [pod("n1", "new"), stopped("n2", "new"), pod("n3", "new")];
        // 600 in all: 200 per pod when done, 220 full.
        let counts = sessions(&[("n1", 100), ("n2", 100), ("n3", 100), ("gone", 300)]);
        let view = View {
            rolling: true,
            ..view(&pods, "new", 3, &counts)
        };
        // n1 and n3 take 200 in shares of 100 (room 120 each): no label changes, although
        // n1 and n2 would take them as well.
        let placement = place(&view, 200);
        assert_eq!(accepting(&placement), ["n1", "n3"]);
        assert!(placement.fits);
        // 300 do not fit the two (150 each): all three take them.
        assert_eq!(accepting(&place(&view, 300)), ["n1", "n2", "n3"]);
    }

    #[test]
    fn when_they_do_not_fit_the_receivers_change_as_few_labels_as_take_them() {
        let pods = [
            pod("n1", "new"),
            pod("n2", "new"),
            stopped("n3", "new"),
            stopped("n4", "new"),
        ];
        // 400 in all: 100 per pod when done, 110 full.
        let counts = sessions(&[("n1", 100), ("n2", 60), ("n3", 0), ("n4", 0), ("gone", 240)]);
        let view = View {
            rolling: true,
            ..view(&pods, "new", 4, &counts)
        };
        // n1 and n2 cannot take 100 (room 10 and 50). n3 alone could (room 110) at three
        // changes; n2 kept and n3 added take 50 each at two.
        let placement = place(&view, 100);
        assert_eq!(accepting(&placement), ["n2", "n3"]);
        assert!(placement.fits);
        assert_eq!(changes(&pods, &placement).len(), 2);
        // Outside a rollout a receiver may be drained next: the emptiest takes them all, and
        // then holds the most.
        let scaling_down = View {
            rolling: false,
            ..view
        };
        assert_eq!(accepting(&place(&scaling_down, 100)), ["n3"]);
    }

    #[test]
    fn while_more_sessions_are_to_move_a_stopped_receiver_stays_stopped() {
        let pods = [pod("n1", "v"), stopped("n2", "v"), pod("n3", "v")];
        // 300 in all, 100 per pod, full at 110: n1 full, n2 below the mean, n3 below full.
        let counts = sessions(&[("n1", 115), ("n2", 80), ("n3", 100)]);
        let quiet = view(&pods, "v", 3, &counts);
        assert_eq!(accepting(&place(&quiet, 0)), ["n2", "n3"]);
        let rolling = View {
            rolling: true,
            ..quiet
        };
        assert_eq!(accepting(&place(&rolling, 0)), ["n3"]);
        // Once no receiver is open, the one with the most room is.
        let counts = sessions(&[("n1", 115), ("n2", 80), ("n3", 114)]);
        let full = View {
            sessions: &counts,
            ..rolling
        };
        assert_eq!(accepting(&place(&full, 0)), ["n2"]);
    }

    #[test]
    fn with_nothing_on_its_way_a_full_receiver_stops_until_back_at_the_mean() {
        let mut n1 = pod("n1", "v");
        let mut n2 = pod("n2", "v");
        n2.accepting = Some(false);
        let pods = [n1.clone(), n2.clone(), pod("n3", "v")];
        // 300 in all, 100 per pod, full at 110.
        let counts = sessions(&[("n1", 115), ("n2", 105), ("n3", 80)]);
        let view = view(&pods, "v", 3, &counts);
        // n1 is full; n2 is below full but not yet back at the mean.
        assert_eq!(accepting(&place(&view, 0)), ["n3"]);
        n1.accepting = Some(false);
        n2.accepting = Some(true);
        let pods = [n1, n2, pod("n3", "v")];
        let view = View {
            pods: &pods,
            ..view
        };
        assert_eq!(accepting(&place(&view, 0)), ["n2", "n3"]);
    }

    #[test]
    fn a_pod_of_the_target_revision_not_started_keeps_its_label() {
        let mut pending = pod("n2", "new");
        pending.running = false;
        pending.ready = false;
        let pods = [pod("n1", "new"), pending];
        let counts = sessions(&[("n1", 100)]);
        // Pending for long (counted as never started, so among the pods leaving): no change.
        let leaving = BTreeSet::from(["n2".to_owned()]);
        let view = View {
            leaving: &leaving,
            ..view(&pods, "new", 2, &counts)
        };
        let placement = place(&view, 0);
        assert_eq!(placement.accepting.get("n2"), None);
        assert!(changes(&pods, &placement).is_empty());
    }

    #[test]
    fn pods_leaving_or_about_to_be_drained_never_accept() {
        let pods = [pod("a", "v"), pod("b", "v"), pod("c", "v")];
        let counts = sessions(&[("a", 50), ("b", 50), ("c", 10)]);
        let leaving = BTreeSet::from(["a".to_owned()]);
        let excess = BTreeSet::from(["c".to_owned()]);
        let view = View {
            pods: &pods,
            service: &EVERY,
            target: "v",
            replicas: 1,
            leaving: &leaving,
            excess: &excess,
            sessions: &counts,
            rolling: true,
            receivers_coming: false,
            rebalancing: false,
        };
        assert_eq!(accepting(&place(&view, 60)), ["b"]);
    }

    #[test]
    fn a_round_of_rebalancing_fills_its_receivers_to_the_mean_before_full() {
        // a and b give 160 sessions; the mean is 160. c alone could take them below full (176),
        // but would then hold 170 moved sessions it keeps for ten minutes: c and d share them.
        let pods = [pod("a", "v"), pod("b", "v"), pod("c", "v"), pod("d", "v")];
        let counts = sessions(&[("a", 285), ("b", 285), ("c", 10), ("d", 60)]);
        let giving = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        let drain = View {
            leaving: &giving,
            ..view(&pods, "v", 4, &counts)
        };
        assert_eq!(accepting(&place(&drain, 160)), ["c"]);
        let round = View {
            rebalancing: true,
            ..drain
        };
        assert_eq!(accepting(&place(&round, 160)), ["c", "d"]);
        // Still the fewest receivers that can: c alone when it has room for them below the mean.
        assert_eq!(accepting(&place(&round, 150)), ["c"]);
    }

    #[test]
    fn routing_settles_when_label_endpoints_and_time_agree() {
        let mut p = pod("a", "v");
        p.accepting = Some(false);
        p.routing_changed_at = Some(NOW - SignedDuration::from_secs(1));
        // Still in the endpoints.
        assert!(!settled(&p, false, NOW));
        p.routable = false;
        // Out, but the proxies may not have followed yet.
        assert!(!settled(&p, false, NOW));
        assert!(settled(&p, false, NOW + SETTLE));
        // A pod never relabelled, out of the Service: settled.
        p.routing_changed_at = None;
        assert!(settled(&p, false, NOW));
        assert!(!settled(&p, true, NOW));
    }

    #[test]
    fn routing_settles_once_the_service_selects_the_revision_and_the_others_are_out() {
        let mut old = pod("a", "old");
        let pods = |old: &PodFacts| [old.clone(), pod("n1", "new")];
        let placement = Placement {
            selected: Some("new".to_owned()),
            accepting: BTreeMap::from([("n1".to_owned(), true)]),
            ..Placement::default()
        };
        let before = ServiceFacts {
            revision: Some("old".to_owned()),
            ..EVERY.clone()
        };
        // The Service still selects the old revision.
        assert!(!all_settled(&pods(&old), &before, &placement, NOW));
        let after = ServiceFacts {
            revision: Some("new".to_owned()),
            changed_at: Some(NOW - SignedDuration::from_secs(1)),
            ..EVERY.clone()
        };
        // It selects the new one, but the old pod is still in the EndpointSlices.
        assert!(!all_settled(&pods(&old), &after, &placement, NOW + SETTLE));
        old.routable = false;
        // Out, but the proxies may not have followed yet.
        assert!(!all_settled(&pods(&old), &after, &placement, NOW));
        assert!(all_settled(&pods(&old), &after, &placement, NOW + SETTLE));
    }

    #[test]
    fn changes_name_only_the_pods_whose_label_differs() {
        let mut old = pod("a", "old");
        old.accepting = None;
        let pods = [old, pod("n1", "new")];
        let placement = Placement {
            accepting: BTreeMap::from([("a".to_owned(), false), ("n1".to_owned(), true)]),
            ..Placement::default()
        };
        assert_eq!(changes(&pods, &placement), [("a".to_owned(), false)]);
    }

    #[test]
    fn a_receiver_handing_over_to_another_is_added_before_it_is_taken_out() {
        // The order of a scale-down's log: the only receiver, listed first, left the client
        // Service before the next one joined it, and reconnects found no endpoint meanwhile.
        let mut joining = pod("b", "old");
        joining.accepting = Some(false);
        let pods = [pod("a", "old"), joining];
        let placement = Placement {
            accepting: BTreeMap::from([("a".to_owned(), false), ("b".to_owned(), true)]),
            ..Placement::default()
        };
        assert_eq!(
            changes(&pods, &placement),
            [("b".to_owned(), true), ("a".to_owned(), false)]
        );
    }
}
