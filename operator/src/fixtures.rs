//! One way to build a LongConnService in tests: `LongConnService::test().replicas(3).build()`.
//!
//! Unit tests, the rollout model, the request-pinning tests and the snapshot tests all start
//! from the same object: `default/chat`, generation 1, an empty pod template, every other
//! field at its default. Each method changes one thing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{
    AutoscalingBehavior, AutoscalingSpec, DropBudgetAction, LongConnService, LongConnServiceSpec,
    LongConnServiceStatus, RebalanceSpec, RolloutStep,
};

/// Builds a LongConnService for a test.
#[derive(Clone, Debug)]
pub struct TestService(LongConnService);

impl LongConnService {
    /// `default/chat`, uid `chat-uid`, generation 1, an empty template, defaults elsewhere.
    pub fn test() -> TestService {
        let spec: LongConnServiceSpec =
            serde_json::from_value(serde_json::json!({"replicas": 1, "template": {}}))
                .unwrap_or_else(|e| unreachable!("the minimal spec parses: {e}"));
        let mut lcs = LongConnService::new("chat", spec);
        lcs.metadata = ObjectMeta {
            name: Some("chat".to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some("chat-uid".to_owned()),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        TestService(lcs)
    }
}

impl TestService {
    /// One container, `app`, running `image`.
    pub fn image(mut self, image: &str) -> Self {
        self.0.spec.template = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "app", "image": image}]}
        }))
        .unwrap_or_else(|e| unreachable!("the template parses: {e}"));
        self
    }

    pub fn replicas(mut self, n: i32) -> Self {
        self.0.spec.replicas = n;
        self
    }

    pub fn max_surge(mut self, surge: IntOrString) -> Self {
        self.0.spec.rollout.max_surge = surge;
        self
    }

    pub fn max_concurrent_drains(mut self, n: i32) -> Self {
        self.0.spec.rollout.max_concurrent_drains = Some(n);
        self
    }

    pub fn max_dropped_sessions(mut self, n: i64) -> Self {
        self.0.spec.rollout.max_dropped_sessions = n;
        self
    }

    pub fn on_drop_budget_exceeded(mut self, action: DropBudgetAction) -> Self {
        self.0.spec.rollout.on_drop_budget_exceeded = action;
        self
    }

    /// `spec.rollout.steps`, from their YAML (`[{replicas: 1}, {pause: {}}]`).
    pub fn steps(mut self, yaml: &str) -> Self {
        self.0.spec.rollout.steps = serde_yaml::from_str::<Vec<RolloutStep>>(yaml)
            .unwrap_or_else(|e| panic!("rollout steps {yaml}: {e}"));
        self
    }

    /// Session autoscaling from `min` to `max` pods at `target` sessions per pod, with the
    /// default behaviour and rebalancing.
    pub fn autoscaling(mut self, min: i32, max: i32, target: i64) -> Self {
        self.0.spec.autoscaling = Some(AutoscalingSpec {
            min_replicas: min,
            max_replicas: max,
            target_sessions_per_pod: Some(target),
            target_cpu_utilization: None,
            behavior: AutoscalingBehavior::default(),
            rebalance: RebalanceSpec::default(),
        });
        self
    }

    pub fn generation(mut self, generation: i64) -> Self {
        self.0.metadata.generation = Some(generation);
        self
    }

    pub fn status(mut self, status: LongConnServiceStatus) -> Self {
        self.0.status = Some(status);
        self
    }

    pub fn build(self) -> LongConnService {
        self.0
    }
}
