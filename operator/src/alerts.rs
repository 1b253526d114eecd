//! The alerts on a LongConnService's gateways: the rules of the PrometheusRule made beside its
//! ServiceMonitor.
//!
//! [`rules`] is pure. Every expression selects this service's gateways by the labels Prometheus
//! gives the ServiceMonitor's targets: `namespace` (the service's) and `job` (the metrics
//! Service's name, `<name>-metrics`, since the ServiceMonitor sets no `jobLabel`). What the
//! operator knows and the gateway does not export is written into the expressions as numbers:
//! `gateway.maxConnections`, and when a certificate should have been renewed. Each alert carries
//! a `severity` label and `summary` and `description` annotations; the description says what to
//! look at first. The rollout's own alerts (DropBudgetExceeded, ProgressDeadlineExceeded) are on
//! the operator's metrics, in the chart's PrometheusRule.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::crd::{LongConnService, TlsMode};
use crate::labels::names;

/// Name of the one rule group.
pub const GROUP: &str = "longconn-gateways";

/// The label every alert carries with the LongConnService's name.
pub const SERVICE_LABEL: &str = "longconn_service";

/// How far ahead of its notAfter a certificate is alerted on, at most.
const CERT_WARNING_SECONDS: u64 = 7 * 24 * 3600;

/// One alerting rule, as Prometheus reads it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rule {
    pub alert: &'static str,
    pub expr: String,
    /// How long the expression must hold before the alert fires; None: at once.
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<&'static str>,
    pub labels: BTreeMap<&'static str, String>,
    pub annotations: BTreeMap<&'static str, String>,
}

/// The alerting rules of `lcs`'s gateways.
pub fn rules(lcs: &LongConnService) -> Vec<Rule> {
    let name = lcs.metadata.name.as_deref().unwrap_or_default();
    let namespace = lcs.metadata.namespace.as_deref().unwrap_or_default();
    let service = format!("{namespace}/{name}");
    let job = format!(
        r#"namespace="{namespace}", job="{}""#,
        names::metrics_service(name)
    );
    let rule =
        |alert, expr: String, for_, severity: &str, summary: String, description: &str| Rule {
            alert,
            expr,
            for_,
            labels: BTreeMap::from([
                ("severity", severity.to_owned()),
                (SERVICE_LABEL, name.to_owned()),
            ]),
            annotations: BTreeMap::from([
                ("summary", summary),
                ("description", description.to_owned()),
            ]),
        };
    let spec = &lcs.spec;
    let mut rules = vec![
        rule(
            "LongConnSessionsDropped",
            format!(
                "sum by (namespace, job) (increase(longconn_gateway_sessions_closed_total\
                 {{{job}, reason=\"upstream_error\"}}[10m])) > 0"
            ),
            None,
            "warning",
            format!(
                "{{{{ $value | humanize }}}} sessions of {service} dropped in the last 10 minutes: \
                 the app failed under them"
            ),
            "A session ended without a completed close handshake because the upstream app \
             failed, closed its connection or ended without one (reason upstream_error of \
             longconn_gateway_sessions_closed_total): the client lost it. Look at the app \
             container's logs and restarts in the pods named by the series. Sessions \
             force-closed at a drain's deadline are dropped too: LongConnDrainDeadlineReached \
             reports those.",
        ),
        rule(
            "LongConnDrainDeadlineReached",
            format!(
                "sum by (namespace, job, pod) (increase(longconn_gateway_sessions_closed_total\
                 {{{job}, reason=\"drain_deadline\"}}[10m])) > 0"
            ),
            None,
            "warning",
            format!(
                "a drain of {service} pod {{{{ $labels.pod }}}} reached its deadline and \
                 force-closed {{{{ $value | humanize }}}} sessions"
            ),
            "The pod's drain deadline (spec.drain.timeout) passed with sessions still open; \
             they were force-closed and count as dropped. Clients that ignore the close frame \
             (code spec.drain.closeCode) or do not reconnect keep their sessions to the end: \
             check the client library's reconnect handling, and raise spec.drain.timeout or \
             spread if clients need longer. `kubectl get lcs -o yaml` shows each drain in \
             status.rollout.",
        ),
        rule(
            "LongConnHandshakeRejections",
            format!(
                "sum by (namespace, job, reason) (rate(longconn_gateway_handshake_rejections_total\
                 {{{job}, reason!=\"draining\"}}[5m]))\n\
                 / on (namespace, job) group_left ()\n\
                 (sum by (namespace, job) (rate(longconn_gateway_handshake_rejections_total{{{job}}}[5m]))\n\
                 + sum by (namespace, job) (rate(longconn_gateway_sessions_opened_total{{{job}}}[5m]))\n\
                 + sum by (namespace, job) (rate(longconn_gateway_http_requests_total{{{job}}}[5m])))\n\
                 > 0.05"
            ),
            Some("10m"),
            "warning",
            format!(
                "{{{{ $value | humanizePercentage }}}} of the connections to {service} are \
                 refused with reason {{{{ $labels.reason }}}}"
            ),
            "More than 5% of the connection attempts are refused before a session starts, for \
             10 minutes (longconn_gateway_handshake_rejections_total; refusals of draining pods \
             left out). By reason: max_connections, pods at spec.gateway.maxConnections (scale \
             out); rate_limited, clients over spec.gateway.rateLimit (a reconnect storm or one \
             abusive address); origin_forbidden, an Origin not in \
             spec.gateway.allowedOrigins; bad_request, handshake_timeout and tls_error, broken \
             clients, scanners or a certificate clients do not trust; upstream_unavailable and \
             upstream_refused, the app does not accept connections on \
             spec.gateway.upstreamPort.",
        ),
        rule(
            "LongConnSessionsRateLimited",
            format!(
                "sum by (namespace, job) (rate(longconn_gateway_sessions_rate_limited_total\
                 {{{job}, action=\"close\"}}[5m])) > 0"
            ),
            Some("10m"),
            "warning",
            format!(
                "{{{{ $value | humanize }}}} sessions a second of {service} are closed by their \
                 per-session message limits"
            ),
            "WebSocket sessions keep being closed with 1008 because their clients send faster \
             than spec.gateway.sessionLimits allows, for 10 minutes \
             (longconn_gateway_sessions_rate_limited_total{action=\"close\"}: closed at once \
             with action Close, or held back longer than spec.gateway.heartbeat.timeout with \
             Backpressure). A few abusive clients are what the limits are for; many, or \
             clients you know, mean the limits are below the app's traffic: compare \
             longconn_gateway_frames_delayed_total and the sessions held back \
             (action=\"backpressure\"), find the clients in the gateway's access log \
             (session ended lines with reason rate_limited), and raise messagesPerSecond, bytesPerSecond or their bursts.",
        ),
        rule(
            "LongConnGatewayNearMaxConnections",
            format!(
                "max by (namespace, job, pod) (longconn_gateway_connections_active{{{job}}}) \
                 > {}",
                i64::from(spec.gateway.max_connections) * 9 / 10
            ),
            Some("10m"),
            "warning",
            format!(
                "{service} pod {{{{ $labels.pod }}}} holds {{{{ $value }}}} connections, over \
                 90% of its maxConnections ({})",
                spec.gateway.max_connections
            ),
            "The pod is close to spec.gateway.maxConnections; above it new connections are \
             refused with 503 (reason max_connections). Add replicas, let autoscaling do it \
             (spec.autoscaling.targetSessionsPerPod), or raise maxConnections if the pod's \
             memory and open-file limit allow it.",
        ),
        rule(
            "LongConnGatewayRestarted",
            format!("changes(process_start_time_seconds{{{job}}}[15m]) > 0"),
            None,
            "warning",
            format!("the gateway of {service} pod {{{{ $labels.pod }}}} restarted"),
            "The gateway process started again within the last 15 minutes without its pod \
             being replaced: the sessions it held were lost (the operator counts them as \
             dropped, Warning Event GatewayRestarted). Look at the \
             longconn-gateway container's last state (`kubectl describe pod`): OOMKilled means \
             its memory limit is too low for its sessions; otherwise its previous logs \
             (`kubectl logs --previous -c longconn-gateway`).",
        ),
        rule(
            "LongConnGatewayFileDescriptorsNearLimit",
            format!(
                "max by (namespace, job, pod) (process_open_fds{{{job}}} / \
                 process_max_fds{{{job}}}) > 0.8"
            ),
            Some("10m"),
            "warning",
            format!(
                "the gateway of {service} pod {{{{ $labels.pod }}}} uses \
                 {{{{ $value | humanizePercentage }}}} of its open-file limit"
            ),
            "Every relayed connection takes two descriptors; at the limit the gateway can \
             accept no connection. The gateway checks at start that the limit holds \
             spec.gateway.maxConnections, so descriptors are leaking or held by something \
             else: compare process_open_fds with longconn_gateway_connections_active, and \
             raise the node's nofile limit or lower maxConnections.",
        ),
    ];
    if let Some(seconds) = certificate_warning_seconds(lcs) {
        rules.push(rule(
            "LongConnCertificateExpiringSoon",
            format!(
                "(min by (namespace, job) (longconn_gateway_certificate_expiry_timestamp_seconds\
                 {{{job}}} > 0) - time()) < {seconds}"
            ),
            Some("15m"),
            "warning",
            format!(
                "a serving certificate of {service} expires in \
                 {{{{ $value | humanizeDuration }}}}"
            ),
            "A gateway still serves a certificate that expires soon: once it has, clients \
             refuse to connect. Mode SelfSigned and CertManager renew at 2/3 of \
             spec.tls.validity, so this one was not renewed or not reloaded: see the \
             LongConnService's CertificateReady condition and Events (and the cert-manager \
             Certificate's), and the gateway's longconn_gateway_tls_reloads_total{result=\"error\"}. \
             Mode Secret: renew the Secret named in spec.tls.secretName.",
        ));
    }
    rules
}

/// How close to its notAfter a served certificate is alerted on: a week, or half the renewal
/// window (a sixth of `tls.validity`) when that is shorter, so a certificate renewed on time
/// never fires. None without TLS.
fn certificate_warning_seconds(lcs: &LongConnService) -> Option<u64> {
    let tls = &lcs.spec.tls;
    match tls.mode {
        TlsMode::Disabled => None,
        TlsMode::Secret => Some(CERT_WARNING_SECONDS),
        TlsMode::SelfSigned | TlsMode::CertManager => {
            let validity = tls.validity.to_std().map_or(u64::MAX, |v| v.as_secs());
            Some(CERT_WARNING_SECONDS.min(validity / 6))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::Duration;

    fn lcs() -> LongConnService {
        LongConnService::test().build()
    }

    fn expr<'a>(rules: &'a [Rule], alert: &str) -> &'a str {
        &rules
            .iter()
            .find(|r| r.alert == alert)
            .unwrap_or_else(|| panic!("no {alert}"))
            .expr
    }

    #[test]
    fn every_expression_selects_this_services_gateways_by_namespace_and_job() {
        let rules = rules(&lcs());
        assert_eq!(rules.len(), 8);
        for rule in &rules {
            let selectors = rule.expr.matches('{').count();
            let scoped = rule
                .expr
                .matches(r#"{namespace="default", job="chat-metrics""#)
                .count();
            assert!(selectors > 0 && scoped == selectors, "{}", rule.expr);
            assert_eq!(rule.labels[SERVICE_LABEL], "chat");
            assert!(rule.annotations["summary"].contains("default/chat"));
        }
    }

    #[test]
    fn sessions_closed_by_their_limits_fire_only_while_closures_keep_coming() {
        let rules = rules(&lcs());
        let rule = rules
            .iter()
            .find(|r| r.alert == "LongConnSessionsRateLimited")
            .expect("the rule");
        assert!(
            rule.expr.contains(r#"action="close"}[5m])) > 0"#),
            "{}",
            rule.expr
        );
        // The bound: one closure keeps the 5-minute rate above zero for 5 minutes, less than the
        // 10 the rule waits, so a single abusive client closed once never fires it; closures at
        // least every 5 minutes for 10 minutes do.
        assert_eq!(rule.for_, Some("10m"));
        assert_eq!(rule.labels["severity"], "warning");
    }

    #[test]
    fn connections_are_alerted_on_above_nine_tenths_of_max_connections() {
        let mut lcs = lcs();
        lcs.spec.gateway.max_connections = 5000;
        assert!(expr(&rules(&lcs), "LongConnGatewayNearMaxConnections").ends_with(" > 4500"));
    }

    #[test]
    fn a_certificate_is_alerted_on_a_week_ahead_or_half_its_renewal_window_ahead() {
        let cert = |mode, validity| {
            let mut lcs = lcs();
            lcs.spec.tls.mode = mode;
            lcs.spec.tls.validity = Duration::from_static(validity);
            rules(&lcs)
                .iter()
                .find(|r| r.alert == "LongConnCertificateExpiringSoon")
                .map(|r| r.expr.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        assert_eq!(
            cert(TlsMode::SelfSigned, "2160h").as_deref(),
            Some("604800")
        );
        // Renewed with 8h left: alerted on once 4h are left.
        assert_eq!(cert(TlsMode::CertManager, "24h").as_deref(), Some("14400"));
        assert_eq!(cert(TlsMode::Secret, "1h").as_deref(), Some("604800"));
        assert_eq!(cert(TlsMode::Disabled, "2160h"), None);
    }
}
