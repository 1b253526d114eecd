#!/usr/bin/env python3
"""Assertions on the rendered longconn-operator chart, its dashboard and the images' Dockerfiles.

Called by charts/test.sh, one check per invocation: `chart_checks.py CHECK ARGS...`. Each check
prints what it found wrong and exits 1, or exits 0 silently.
"""

import json
import re
import sys
import tomllib

import yaml


def fail(msg):
    print(f"  {msg}", file=sys.stderr)
    sys.exit(1)


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(objs, kind, name=None, namespace=None):
    return [
        o
        for o in objs
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]


def one(objs, kind, name=None, namespace=None):
    found = find(objs, kind, name, namespace)
    if len(found) != 1:
        fail(f"expected one {kind} {namespace or ''}/{name or '*'}, found {len(found)}")
    return found[0]


def check_version(chart_yaml, cargo_toml):
    with open(cargo_toml, "rb") as f:
        crate = tomllib.load(f)["workspace"]["package"]["version"]
    chart = docs(chart_yaml)[0]
    for key in ("version", "appVersion"):
        if str(chart[key]) != crate:
            fail(f"Chart.yaml {key} is {chart[key]!r}, the crate version is {crate!r}")


def normalize(rules):
    return [
        {k: r[k] for k in sorted(r) if r[k]} for r in rules
    ]


def check_rbac(rendered, rbac_output, mode, release_ns, watch_ns=""):
    """The rendered RBAC rules equal `longconn-operator rbac`; mode is cluster or namespace."""
    objs = docs(rendered)
    want = yaml.safe_load(open(rbac_output))
    cluster_rules = normalize(want["clusterRules"])
    lease_rules = normalize(want["leaseRules"])
    roles = find(objs, "Role")
    if mode == "cluster":
        if find(objs, "RoleBinding", namespace=watch_ns or None) and watch_ns:
            fail("a RoleBinding in the watched namespace in cluster mode")
        role = one(objs, "ClusterRole")
        if normalize(role["rules"]) != cluster_rules:
            fail(f"ClusterRole rules differ from `longconn-operator rbac`:\n{yaml.safe_dump(role['rules'])}")
        binding = one(objs, "ClusterRoleBinding")
        if binding["roleRef"]["name"] != role["metadata"]["name"]:
            fail("ClusterRoleBinding does not bind the ClusterRole")
        if len(roles) != 1:
            fail(f"expected only the leader-election Role, found {len(roles)} Roles")
    else:
        if find(objs, "ClusterRole") or find(objs, "ClusterRoleBinding"):
            fail("single-namespace mode still renders a ClusterRole or ClusterRoleBinding")
        watched = [r for r in roles if r["metadata"]["namespace"] == watch_ns]
        if len(watched) != 1:
            fail(f"expected one Role in {watch_ns}, found {len(watched)}")
        if normalize(watched[0]["rules"]) != cluster_rules:
            fail(f"Role rules in {watch_ns} differ from `longconn-operator rbac` clusterRules")
        binding = one(objs, "RoleBinding", namespace=watch_ns)
        if binding["roleRef"] != {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": watched[0]["metadata"]["name"]}:
            fail(f"RoleBinding in {watch_ns} does not bind the Role: {binding['roleRef']}")
    lease = [r for r in roles if r["metadata"]["namespace"] == release_ns]
    if len(lease) != 1 or normalize(lease[0]["rules"]) != lease_rules:
        fail(f"the leader-election Role in {release_ns} does not hold exactly the leaseRules")
    sa = one(objs, "ServiceAccount")
    for b in find(objs, "RoleBinding") + find(objs, "ClusterRoleBinding"):
        if b["subjects"] != [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                              "namespace": release_ns}]:
            fail(f"{b['kind']} {b['metadata']['name']} binds {b['subjects']}, not the ServiceAccount")


def check_deployment(rendered, release_ns, operator_image, gateway_image, replicas, *flags):
    """The operator Deployment: HA, restricted Pod Security, probes, flags and env."""
    objs = docs(rendered)
    dep = one(objs, "Deployment")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    if spec["replicas"] != int(replicas):
        fail(f"replicas {spec['replicas']}, want {replicas}")
    (c,) = pod["containers"]
    if c["image"] != operator_image:
        fail(f"operator image {c['image']}, want {operator_image}")
    args = c["args"]
    # Flags given as NAME=VALUE replace the default of NAME (e.g. --log-format=text).
    want = {"run": "run"}
    for flag in (f"--gateway-image={gateway_image}", f"--operator-namespace={release_ns}",
                 "--metrics-listen=0.0.0.0:8080", "--leader-elect=true", "--log-format=json",
                 *flags):
        want[flag.split("=")[0]] = flag
    for flag in want.values():
        if flag not in args:
            fail(f"operator args lack {flag}: {args}")
    labels = spec["selector"]["matchLabels"]
    pod_labels_flag = "--operator-pod-labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    if pod_labels_flag not in args:
        fail(f"operator args lack {pod_labels_flag}: {args}")
    for k, v in labels.items():
        if spec["template"]["metadata"]["labels"].get(k) != v:
            fail(f"pod label {k} does not match the selector")
    env = {e["name"]: e for e in c["env"]}
    if env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        fail("POD_NAME is not the pod name from the downward API")
    if env.get("LONGCONN_OPERATOR_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.namespace":
        fail("LONGCONN_OPERATOR_NAMESPACE is not the pod namespace from the downward API")
    sc = c["securityContext"]
    expected = {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for k, v in expected.items():
        if sc.get(k) != v:
            fail(f"container securityContext.{k} is {sc.get(k)!r}, want {v!r}")
    if pod["securityContext"].get("seccompProfile") != {"type": "RuntimeDefault"} or not pod["securityContext"].get("runAsNonRoot"):
        fail("pod securityContext is not restricted")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports != {"metrics": 8080}:
        fail(f"ports {ports}, want metrics: 8080")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        got = c.get(probe, {}).get("httpGet", {})
        if got != {"path": path, "port": "metrics"}:
            fail(f"{probe} is {got}, want GET {path} on port metrics")
    res = c.get("resources", {})
    if not res.get("requests", {}).get("cpu") or not res.get("limits", {}).get("memory"):
        fail(f"resources lack a cpu request or a memory limit: {res}")
    anti = pod.get("affinity", {}).get("podAntiAffinity")
    spread = pod.get("topologySpreadConstraints")
    if not anti or not spread:
        fail("no podAntiAffinity or topologySpreadConstraints across nodes")
    svc = one(objs, "Service")
    if svc["spec"]["selector"] != labels or svc["spec"]["ports"][0]["targetPort"] != "metrics":
        fail("the metrics Service does not select the operator pods' metrics port")


def check_absent(rendered, kind):
    if find(docs(rendered), kind):
        fail(f"a {kind} was rendered")


def check_present(rendered, kind, namespace=None):
    one(docs(rendered), kind, namespace=namespace)


def check_pdb(rendered):
    objs = docs(rendered)
    pdb = one(objs, "PodDisruptionBudget")
    dep = one(objs, "Deployment")
    if pdb["spec"]["minAvailable"] != 1:
        fail(f"PodDisruptionBudget minAvailable {pdb['spec']['minAvailable']}, want 1")
    if pdb["spec"]["selector"]["matchLabels"] != dep["spec"]["selector"]["matchLabels"]:
        fail("the PodDisruptionBudget does not select the operator pods")


def check_kinds(kinds_rs, *rendered):
    """The rendered files hold every kind of Kind::ALL in operator/src/kinds.rs."""
    src = open(kinds_rs).read()
    all_block = src[src.index("pub const ALL"):]
    all_block = all_block[:all_block.index("];")]
    want = set(re.findall(r"Kind::(\w+)", all_block))
    if not want:
        fail(f"no Kind::ALL in {kinds_rs}")
    have = {o["kind"] for path in rendered for o in docs(path)}
    if want - have:
        fail(f"kinds the operator creates that no sample renders: {sorted(want - have)}")


def check_network_policy(rendered, metrics_namespace=""):
    """The NetworkPolicy isolates the operator pods for ingress and admits their metrics port
    only: from metrics_namespace when given, from anywhere otherwise."""
    objs = docs(rendered)
    policy = one(objs, "NetworkPolicy")
    dep = one(objs, "Deployment")
    spec = policy["spec"]
    if spec["podSelector"]["matchLabels"] != dep["spec"]["selector"]["matchLabels"]:
        fail("the NetworkPolicy does not select the operator pods")
    if spec.get("policyTypes") != ["Ingress"]:
        fail(f"policyTypes {spec.get('policyTypes')}, want [Ingress]")
    want = {"ports": [{"port": "metrics", "protocol": "TCP"}]}
    if metrics_namespace:
        want["from"] = [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": metrics_namespace}}}]
    if spec.get("ingress") != [want]:
        fail(f"ingress {spec.get('ingress')}, want [{want}]")


def metric_names_in_source(operator_src, gateway_src, *named_srcs):
    """The metric names the operator and the gateway register (with the registry's prefix), and
    those the gateway's other sources name in full: the process figures its collector encodes,
    the per-session limits' series."""
    names = set()
    for name in re.findall(r'(?:register|encode_descriptor)\(\s*"([a-z_]+)"', open(operator_src).read()):
        names.add("longconn_operator_" + name)
    for name in re.findall(r'format!\("\{g\}_([a-z_]+)"\)', open(gateway_src).read()):
        names.add("longconn_gateway_" + name)
    for src in named_srcs:
        names |= set(re.findall(r'"((?:process|longconn_gateway)_[a-z_]+)"', open(src).read()))
    return names


def unknown_metrics(expr, known):
    """The metric names expr uses that are not in known (a counter's _total and a histogram's
    series named by their base)."""
    used = set(re.findall(r"\b(?:longconn|process)_[a-z_]+", expr))
    return sorted(n for n in used if re.sub(r"_(total|bucket|sum|count)$", "", n) not in known)


# The rollout metrics the drain-orchestrated rollouts add to the operator; the dashboard uses them
# ahead of time and must say so in its description.
FUTURE_METRICS = {
    "longconn_operator_drains_started_total",
    "longconn_operator_sessions_migrated_total",
    "longconn_operator_sessions_dropped_total",
    "longconn_operator_rollout_phase",
}


def check_dashboard(rendered, operator_src, gateway_src, *named_srcs):
    objs = docs(rendered)
    cm = [o for o in find(objs, "ConfigMap") if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    if len(cm) != 1:
        fail(f"expected one ConfigMap labelled grafana_dashboard: \"1\", found {len(cm)}")
    (json_text,) = cm[0]["data"].values()
    dash = json.loads(json_text)
    known = metric_names_in_source(operator_src, gateway_src, *named_srcs)
    if len(known) < 10:
        fail(f"found only {sorted(known)} in the metrics sources; has the registration code changed?")
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\b(?:longconn|process)_[a-z_]+", target["expr"]))
    for name in sorted(used):
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        if name in FUTURE_METRICS:
            if name not in dash["description"]:
                fail(f"{name} is used ahead of the operator but the description does not say so")
        elif base not in known:
            fail(f"the dashboard uses {name}, which neither the operator nor the gateway exports")
    titles = {p["title"] for p in dash["panels"]}
    for title in ("Sessions", "Drains", "Migrated vs dropped", "Rollout phase",
                  "Reconcile errors", "Reconcile duration",
                  # One panel per alert of the chart's and the operator's PrometheusRules.
                  "Rollouts halted", "Dropped sessions by reason", "Handshake rejections by reason",
                  "Connections per pod", "Certificate expires in", "Gateway restarts",
                  "Open files of the limit", "Sessions over their limits",
                  # The per-session limits' other series.
                  "Frames delayed by session limits"):
        if title not in titles:
            fail(f"the dashboard has no panel {title!r}")
    for name in ("longconn_gateway_sessions_active", "longconn_operator_reconcile_errors_total",
                 "longconn_operator_reconcile_duration_seconds_bucket",
                 "longconn_gateway_sessions_rate_limited_total",
                 "longconn_gateway_frames_delayed_total", *FUTURE_METRICS):
        if name not in used:
            fail(f"the dashboard does not show {name}")


def check_prometheus_rule(rendered, release_ns, operator_src, *alerts):
    """One PrometheusRule in the release namespace whose alerts are exactly the given ones, each
    with a severity, a summary and a description, each expression on the operator's metrics
    Service's series and naming only metrics the operator exports."""
    rule = one(docs(rendered), "PrometheusRule", namespace=release_ns)
    known = metric_names_in_source(operator_src, operator_src)
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    if sorted(r["alert"] for r in rules) != sorted(alerts):
        fail(f"alerts {[r['alert'] for r in rules]}, want {list(alerts)}")
    for r in rules:
        if r["labels"].get("severity") not in ("warning", "critical"):
            fail(f"{r['alert']}: severity {r['labels'].get('severity')!r}")
        if not r["annotations"].get("summary") or not r["annotations"].get("description"):
            fail(f"{r['alert']}: no summary or description")
        unknown = unknown_metrics(r["expr"], known)
        if unknown:
            fail(f"{r['alert']} uses {unknown}, which the operator does not export")
        selectors = re.findall(r"\{([^}]*)\}", r["expr"])
        want = f'namespace="{release_ns}", job="'
        if not selectors or not all(sel.startswith(want) and '-metrics"' in sel for sel in selectors):
            fail(f"{r['alert']}: not every series is the operator's metrics Service's: {r['expr']}")


def check_dockerfile(path, package, binary):
    """An image that only packs a binary compiled before it: FROM scratch (nothing to pull), the
    COPY of the binary, a numeric non-root USER and the ENTRYPOINT, nothing else. The header gives
    the commands that build it with docker; the .dockerignore beside it lets only the binary into
    the context. package is the cargo package of the binary, or pause for Kubernetes' pause.c."""
    if package == "pause":
        dest, user, image = "/pause", "65535:65535", "localhost/longconn/pause:"
        compile_cmd = "gcc -Os -Wall -Werror -static -s"
        context = "/tmp/pause"
    else:
        dest, user, image = f"/usr/local/bin/{binary}", "65532:65532", f"ghcr.io/longconn/{binary}:"
        compile_cmd = ("cargo build --locked --profile dist --target x86_64-unknown-linux-musl "
                       f"-p {package} --bin {binary}")
        context = "target/x86_64-unknown-linux-musl/dist"
    text = open(path).read()
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if re.match(r"#\s*syntax\s*=", lines[0]):
        fail(f"{path}: a syntax directive makes docker pull a frontend image: {lines[0]}")
    comments = [l for l in lines if l.startswith("#")]
    instructions = [l for l in lines if not l.startswith("#")]
    if any(l.upper().startswith("RUN ") for l in instructions):
        fail(f"{path}: the image runs commands at build time")
    want = [
        "FROM scratch",
        f"COPY {binary} {dest}",
        f"USER {user}",
        f'ENTRYPOINT ["{dest}"]',
    ]
    if instructions != want:
        fail(f"{path}: the instructions are {instructions}, want {want}")
    header = " ".join(comments)
    for command in (compile_cmd, f"docker build -f {path} -t {image}"):
        if command not in header:
            fail(f"{path}: the header does not give the command {command!r}")
    build = [l for l in comments if "docker build " in l]
    if len(build) != 1 or not build[0].endswith(f" {context}"):
        fail(f"{path}: the header's docker build does not use the context {context}: {build}")
    ignore = [l.strip() for l in open(f"{path}.dockerignore") if l.strip() and not l.startswith("#")]
    if ignore != ["*", f"!{binary}"]:
        fail(f"{path}.dockerignore is {ignore}, want only the binary in the context: * and !{binary}")


def check_images_documented(readme, values):
    text = open(readme).read()
    vals = docs(values)[0]
    for image in ("ghcr.io/longconn/longconn-operator", "ghcr.io/longconn/longconn-gateway",
                  "ghcr.io/longconn/longconn-echo"):
        if image not in text:
            fail(f"{readme} does not name {image}")
    def keys(prefix, v):
        if isinstance(v, dict) and v:
            for k, sub in v.items():
                yield from keys(f"{prefix}.{k}" if prefix else k, sub)
        else:
            yield prefix
    for key in keys("", vals):
        # A free-form map (resources) may be documented as a whole.
        parts = key.split(".")
        if not any(f"`{'.'.join(parts[:i])}`" in text for i in range(1, len(parts) + 1)):
            fail(f"{readme} does not document the value `{key}`")


if __name__ == "__main__":
    globals()["check_" + sys.argv[1].replace("-", "_")](*sys.argv[2:])
