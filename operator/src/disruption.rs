//! The availability arithmetic shared by the rollout and the status: how many pods the
//! disruption budget lets go, how many must stay Ready, and how Kubernetes scales a percentage.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::LongConnService;

/// Ready pods needed for Available: `replicas` less what the disruption budget lets go,
/// and at least one.
pub fn needed_ready(lcs: &LongConnService) -> i32 {
    let want = lcs.spec.replicas;
    (want - allowed_unavailable(lcs)).clamp(want.min(1), want)
}

/// Pods the disruption budget lets go at once (`maxUnavailable`, or `replicas - minAvailable`).
pub fn allowed_unavailable(lcs: &LongConnService) -> i32 {
    let want = lcs.spec.replicas;
    let d = &lcs.spec.disruption;
    match (&d.max_unavailable, &d.min_available) {
        (_, Some(min)) => want - scaled(min, want, true),
        (Some(max), None) => scaled(max, want, true),
        (None, None) => 1,
    }
}

/// An integer or a percentage of `total`, as Kubernetes scales it.
pub fn scaled(value: &IntOrString, total: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let product = percent * i64::from(total);
            let v = if round_up {
                (product + 99) / 100
            } else {
                product / 100
            };
            i32::try_from(v).unwrap_or(i32::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::LongConnService;

    #[test]
    fn available_needs_replicas_less_the_disruption_budget() {
        let mut lcs = LongConnService::test().replicas(3).build();
        assert_eq!(needed_ready(&lcs), 2, "maxUnavailable 1 of 3");
        lcs.spec.disruption.max_unavailable = None;
        lcs.spec.disruption.min_available = Some(IntOrString::String("50%".to_owned()));
        lcs.spec.replicas = 5;
        assert_eq!(needed_ready(&lcs), 3, "50% of 5 rounds up");
        lcs.spec.disruption.min_available = Some(IntOrString::Int(0));
        assert_eq!(needed_ready(&lcs), 1, "at least one pod while replicas > 0");
    }

    #[test]
    fn percentages_round_as_kubernetes_rounds_them() {
        let pct = IntOrString::String("25%".to_owned());
        assert_eq!(scaled(&pct, 5, true), 2);
        assert_eq!(scaled(&pct, 5, false), 1);
        assert_eq!(scaled(&IntOrString::Int(3), 5, true), 3);
    }
}
