//! The permissions the operator needs, kept next to the code that uses them.
//!
//! [`RULES`] is the single list the Helm chart's ClusterRole (or Role, in single-namespace mode)
//! is checked against; `longconn-operator rbac` prints it. A test below ties it to the code: every
//! kind the reconciler owns must be listed with exactly the verbs the reconciler and its watches
//! use. Server-side apply that creates an object is authorized as both `patch` and `create`.

use k8s_openapi::api::rbac::v1::PolicyRule;

/// Verbs on every kind the operator owns: list and get to observe, create and patch to apply,
/// delete for orphans, watch for the kinds the controller watches.
pub const OWNED_VERBS: [&str; 6] = ["create", "delete", "get", "list", "patch", "watch"];

/// One rule: API group, resources, verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// Everything the operator does against the API, as RBAC rules.
pub const RULES: &[Rule] = &[
    Rule {
        group: "longconn.dev",
        resources: &["longconnservices"],
        // patch: `kubectl longconn undo` asks the operator to write an earlier revision's pod
        // fields back into the spec.
        verbs: &["get", "list", "watch", "patch"],
    },
    Rule {
        group: "longconn.dev",
        resources: &["longconnservices/status"],
        verbs: &["get", "patch"],
    },
    // The session autoscaling sets `spec.replicas` the way `kubectl scale` does.
    Rule {
        group: "longconn.dev",
        resources: &["longconnservices/scale"],
        verbs: &["patch"],
    },
    Rule {
        group: "",
        resources: &["secrets", "services"],
        verbs: &OWNED_VERBS,
    },
    Rule {
        group: "apps",
        resources: &["deployments", "controllerrevisions"],
        verbs: &OWNED_VERBS,
    },
    Rule {
        group: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: &OWNED_VERBS,
    },
    Rule {
        group: "networking.k8s.io",
        resources: &["networkpolicies"],
        verbs: &OWNED_VERBS,
    },
    Rule {
        group: "autoscaling",
        resources: &["horizontalpodautoscalers"],
        verbs: &OWNED_VERBS,
    },
    Rule {
        group: "monitoring.coreos.com",
        resources: &["servicemonitors", "prometheusrules"],
        verbs: &OWNED_VERBS,
    },
    Rule {
        group: "cert-manager.io",
        resources: &["certificates"],
        verbs: &OWNED_VERBS,
    },
    Rule {
        group: "",
        resources: &["pods"],
        verbs: &["list", "patch", "watch"],
    },
    // Which pods a LongConnService's own ReplicaSets control (only they see its admin token).
    Rule {
        group: "apps",
        resources: &["replicasets"],
        verbs: &["list", "watch"],
    },
    // Which pods the client Service routes to: a drain starts once its pod has left them.
    Rule {
        group: "discovery.k8s.io",
        resources: &["endpointslices"],
        verbs: &["list", "watch"],
    },
    // The pods' CPU, while an autoscaling weighs it beside sessions.
    Rule {
        group: "metrics.k8s.io",
        resources: &["pods"],
        verbs: &["list"],
    },
    Rule {
        group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
];

/// The leader-election Lease, in the operator's own namespace only (a Role, not a ClusterRole).
pub const LEASE_RULE: Rule = Rule {
    group: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &["create", "delete", "get", "patch"],
};

/// The rules as Kubernetes PolicyRules.
pub fn policy_rules(rules: &[Rule]) -> Vec<PolicyRule> {
    rules
        .iter()
        .map(|r| PolicyRule {
            api_groups: Some(vec![r.group.to_owned()]),
            resources: Some(r.resources.iter().map(|s| (*s).to_owned()).collect()),
            verbs: r.verbs.iter().map(|s| (*s).to_owned()).collect(),
            ..PolicyRule::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::Kind;

    fn verbs_for(group: &str, resource: &str) -> Vec<&'static str> {
        RULES
            .iter()
            .filter(|r| r.group == group && r.resources.contains(&resource))
            .flat_map(|r| r.verbs.iter().copied())
            .collect()
    }

    #[test]
    fn every_owned_kind_has_exactly_the_verbs_the_reconciler_uses() {
        for kind in Kind::ALL {
            let resource = kind.api_resource();
            let mut verbs = verbs_for(&resource.group, &resource.plural);
            verbs.sort_unstable();
            assert_eq!(verbs, OWNED_VERBS, "{kind:?}");
        }
    }

    #[test]
    fn pods_are_listed_watched_and_patched_only() {
        // list and watch: the gateways to read and pods that start terminating; patch: the
        // deletion cost of drained pods and the label that routes new sessions.
        assert_eq!(verbs_for("", "pods"), ["list", "patch", "watch"]);
    }

    #[test]
    fn the_service_itself_is_only_read_patched_for_undo_and_scaled() {
        assert_eq!(
            verbs_for("longconn.dev", "longconnservices"),
            ["get", "list", "watch", "patch"]
        );
        assert_eq!(
            verbs_for("longconn.dev", "longconnservices/scale"),
            ["patch"]
        );
    }

    #[test]
    fn no_rule_grants_more_than_it_names() {
        for rule in RULES.iter().chain([&LEASE_RULE]) {
            assert!(!rule.group.contains('*') && !rule.verbs.contains(&"*"));
            assert!(rule.resources.iter().all(|r| !r.contains('*')));
        }
    }
}
