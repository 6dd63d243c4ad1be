"""The deployment policy, as functions from rendered manifests to a list of violations.

Kept apart from the tests so that the tests can also feed it manifests that break each rule
and see it object (test_policy.py): a policy that cannot fail proves nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import traefik_rules

# Kinds whose pods we define ourselves. The operators' pods (RabbitMQ, PostgreSQL) are theirs.
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

# An env var whose name says it holds a credential must come from a Secret.
SENSITIVE_NAME = re.compile(r"PASS|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY|HEADERS", re.IGNORECASE)
# scheme://user:password@host: the password part must be a $(VAR) reference, never a literal.
URL_USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://([^/@\s]*)@", re.IGNORECASE)
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# name:tag or name@sha256:digest, the tag not `latest`.
PINNED_IMAGE = re.compile(r"^[^@\s]+(@sha256:[0-9a-f]{64}|:(?!latest$)[\w][\w.-]{0,127})$")

# The Secrets the operators generate, and the keys each carries.
OPERATOR_SECRETS = {
    "RabbitmqCluster": ("{name}-default-user", {"username", "password", "host", "port"}),
    "Cluster": (
        "{name}-app",
        {"username", "password", "host", "port", "dbname", "uri", "jdbc-uri", "pgpass", "fqdn-uri"},
    ),
}


# Secrets no operator generates: a person creates them with kubectl, as deploy/README.md says
# (never committed). The keys each must carry.
OUT_OF_BAND_SECRETS = {"marketplace-admin-token": {"token"}}

# What the ingress may serve (backend/src/api/mod.rs, Swagger UI, the dashboard of
# backend/src/api/dashboard.rs), as requests to try...
PUBLIC_REQUESTS = [
    ("POST", "/api/purchase"), ("POST", "/api/purchase/"), ("GET", "/api/orders"),
    ("GET", "/api/orders/0193c5e8-7f3a-7cc4-b5a4-3f2d9c1e0a11"), ("GET", "/api/all-transaction"),
    ("GET", "/api/users/alice"), ("GET", "/api/inventory"), ("GET", "/api/analytics/sales"),
    ("GET", "/docs"), ("GET", "/docs/"), ("GET", "/docs/index.html"), ("GET", "/docs/swagger-ui.css"),
    ("GET", "/docs/swagger-initializer.js"), ("GET", "/api-docs/openapi.json"),
    ("GET", "/"), ("GET", "/dashboard/app.js"), ("GET", "/dashboard/app.css"), ("GET", "/dashboard/config.json"),
    # What the dashboard reads besides: the order stream and the analytics it charts.
    ("GET", "/api/orders/stream"), ("GET", "/api/analytics/summary"), ("GET", "/api/analytics/stream"),
]
# ...and what it must not: the operator endpoints (backend's /api/audit and restock,
# dead-letter's /api/dead-letters…), every pod's health and metrics, and attempts to reach them
# through a public route (extra segments, dot segments, encoded slashes).
OPERATOR_REQUESTS = [
    ("GET", "/api/audit"), ("GET", "/api/audit/"), ("GET", "/api/dead-letters"), ("GET", "/api/dead-letters/"),
    ("GET", "/api/dead-letters/0193c5e8-7f3a-7cc4-b5a4-3f2d9c1e0a11"),
    ("POST", "/api/dead-letters/0193c5e8-7f3a-7cc4-b5a4-3f2d9c1e0a11/replay"),
    ("DELETE", "/api/dead-letters/0193c5e8-7f3a-7cc4-b5a4-3f2d9c1e0a11"),
    ("POST", "/api/inventory/late_token/restock"), ("POST", "/api/inventory/late_token/restock/"),
    ("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/readyz"),
    ("GET", "/api/orders/../audit"), ("GET", "/api/orders/x/../../audit"), ("GET", "/api/users/a/../../audit"),
    ("GET", "/api/analytics/../audit"), ("GET", "/api/analytics/../dead-letters"),
    ("GET", "/docs/../api/audit"), ("GET", "/docs/../metrics"), ("GET", "/api-docs/../api/audit"),
    ("GET", "/api/purchase/../audit"), ("GET", "//api/audit"), ("GET", "/api/orders/%2F..%2Faudit/x"),
    ("POST", "/api/inventory/../inventory/late_token/restock"),
    ("GET", "/dashboard/../api/audit"), ("GET", "/dashboard/../metrics"), ("GET", "/dashboard/../healthz"),
    ("GET", "/dashboard/x/../../api/dead-letters"), ("GET", "/dashboard/%2F..%2Fmetrics/x"), ("GET", "//metrics"),
]
# Not operator endpoints, but not public API either: the ingress serves none of them.
UNLISTED_REQUESTS = [("GET", "/api"), ("GET", "/api/"), ("GET", "/api/unknown"),
                     ("GET", "/api-docs/other.json"), ("GET", "/docs/a/b"),
                     ("GET", "//"), ("GET", "/index.html"), ("GET", "/dashboard"), ("GET", "/dashboard/"),
                     ("GET", "/dashboard/a/b"), ("GET", "/dashboards/app.js")]

# Where the ingress controller and the metrics scraper run (deploy/README.md installs Traefik's
# Helm release in `traefik`; SigNoz's collector lives where OTEL_EXPORTER_OTLP_ENDPOINT points).
TRAEFIK_NAMESPACE = "traefik"
OTLP_PORTS = {4317, 4318}
DNS = {"namespace": "kube-system", "pods": {"k8s-app": "kube-dns"}}
NAMESPACE_NAME = "kubernetes.io/metadata.name"


def pod_templates(docs: list[dict]) -> Iterator[tuple[str, dict]]:
    for d in docs:
        if d.get("kind") in WORKLOAD_KINDS:
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]


def image_is_pinned(image: str) -> bool:
    return bool(PINNED_IMAGE.match(image))


def container_violations(docs: list[dict]) -> list[str]:
    """Non-root, locked down, limited, probed and pinned: every container we define."""
    problems = []
    for where, template in pod_templates(docs):
        pod = template["spec"]
        psc = pod.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(flag):
                problems.append(f"{where}: {flag} is on")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: the service account token is mounted (the services never call the API)")
        containers = pod.get("initContainers", []) + pod.get("containers", [])
        if not containers:
            problems.append(f"{where}: no containers")
        for c in containers:
            at = f"{where}/{c['name']}"
            sc = c.get("securityContext", {})
            non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            uid = sc.get("runAsUser", psc.get("runAsUser"))
            if non_root is not True:
                problems.append(f"{at}: runAsNonRoot is not true")
            if uid == 0:
                problems.append(f"{at}: runs as uid 0")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: root filesystem is writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{at}: privileged")
            caps = sc.get("capabilities", {})
            if "ALL" not in caps.get("drop", []):
                problems.append(f"{at}: capabilities are not all dropped")
            if caps.get("add"):
                problems.append(f"{at}: adds capabilities {caps['add']}")
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{at}: no seccomp profile")
            resources = c.get("resources", {})
            for section in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in resources.get(section, {}):
                        problems.append(f"{at}: no {res} {section[:-1]}")
            if not image_is_pinned(c.get("image", "")):
                problems.append(f"{at}: image {c.get('image')!r} is not pinned to a tag or digest")
            if c in pod.get("containers", []):
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    got = c.get(probe, {}).get("httpGet", {}).get("path")
                    if got != path:
                        problems.append(f"{at}: {probe} is not an HTTP GET of {path} (got {got!r})")
    return problems


def plaintext_secret_violations(docs: list[dict]) -> list[str]:
    """No credential written into a manifest: not in env values, not as a Secret object."""
    problems = []
    for d in docs:
        if d.get("kind") == "Secret":
            problems.append(
                f"Secret/{d['metadata']['name']}: credentials are committed; "
                "use the operators' generated Secrets or create it out of band"
            )
    for where, template in pod_templates(docs):
        pod = template["spec"]
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            for env in c.get("env", []):
                at = f"{where}/{c['name']}: env {env['name']}"
                if "value" not in env:
                    continue
                value = str(env["value"])
                if SENSITIVE_NAME.search(env["name"]) and env["name"].endswith("_FILE"):
                    # A path, not a credential: the file must be one a mounted Secret holds.
                    if not secret_file(pod, c, value):
                        problems.append(f"{at} names {value}, which no mounted Secret volume holds")
                elif SENSITIVE_NAME.search(env["name"]):
                    problems.append(f"{at} holds a literal value; take it from a secretKeyRef")
                for userinfo in URL_USERINFO.findall(value):
                    _, _, password = userinfo.partition(":")
                    if password and not re.fullmatch(VAR_REF.pattern, password):
                        problems.append(f"{at} has a literal password in its URL")
    return problems


def secret_file(pod: dict, container: dict, path: str) -> tuple[str, str] | None:
    """(Secret name, key) of the file `path` in `container`, if a Secret volume mounted there
    holds it; else None."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")
        root = mount["mountPath"].rstrip("/") + "/"
        if secret is None or not path.startswith(root) or mount.get("subPath"):
            continue
        relative = path[len(root):]
        items = secret.get("items")
        if items is None:
            if "/" not in relative:
                return secret["secretName"], relative
        else:
            for item in items:
                if item["path"] == relative:
                    return secret["secretName"], item["key"]
    return None


def reference_violations(docs: list[dict]) -> list[str]:
    """Every name one manifest uses exists in the others (or in an operator's output)."""
    problems = []
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    generated: dict[str, set[str]] = {}
    for d in docs:
        if d["kind"] in OPERATOR_SECRETS:
            pattern, keys = OPERATOR_SECRETS[d["kind"]]
            generated[pattern.format(name=d["metadata"]["name"])] = keys
    generated |= OUT_OF_BAND_SECRETS

    workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    for where, template in pod_templates(docs):
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for name, volume in volumes.items():
            secret = volume.get("secret")
            if secret is None or secret.get("optional"):
                continue
            keys = generated.get(secret["secretName"])
            if keys is None:
                problems.append(f"{where}: volume {name} mounts Secret {secret['secretName']}, which nothing creates")
                continue
            for item in secret.get("items", []):
                if item["key"] not in keys:
                    problems.append(
                        f"{where}: volume {name} reads key {item['key']} absent from {secret['secretName']}")
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{where}/{c['name']}: mounts volume {mount['name']}, which the pod lacks")
            defined: set[str] = set()
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    name = source["configMapRef"]["name"]
                    if name not in configmaps:
                        problems.append(f"{where}: envFrom ConfigMap {name} does not exist")
                    else:
                        defined |= set(configmaps[name].get("data", {}))
                if "secretRef" in source and not source["secretRef"].get("optional"):
                    if source["secretRef"]["name"] not in generated:
                        problems.append(f"{where}: envFrom Secret {source['secretRef']['name']} is nowhere made")
            for env in c.get("env", []):
                for ref in VAR_REF.findall(str(env.get("value", ""))):
                    if ref not in defined:
                        problems.append(f"{where}: {env['name']} uses $({ref}) before it is defined")
                secret = env.get("valueFrom", {}).get("secretKeyRef")
                if secret and not secret.get("optional"):
                    keys = generated.get(secret["name"])
                    if keys is None:
                        problems.append(
                            f"{where}: {env['name']} reads Secret {secret['name']}, which nothing creates")
                    elif secret["key"] not in keys:
                        problems.append(
                            f"{where}: {env['name']} reads key {secret['key']} absent from {secret['name']}")
                cm = env.get("valueFrom", {}).get("configMapKeyRef")
                if cm and cm["name"] not in configmaps:
                    problems.append(f"{where}: {env['name']} reads ConfigMap {cm['name']}, which does not exist")
                defined.add(env["name"])

    def pods_matching(selector: dict) -> list[dict]:
        return [
            w for w in workloads
            if selector and all(w["spec"]["template"]["metadata"].get("labels", {}).get(k) == v
                                for k, v in selector.items())
        ]

    for name, svc in services.items():
        matched = pods_matching(svc["spec"].get("selector", {}))
        if len(matched) != 1:
            problems.append(f"Service/{name}: selects {len(matched)} workloads, not 1")
            continue
        port_names = {p.get("name") for c in matched[0]["spec"]["template"]["spec"]["containers"]
                      for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str) and target not in port_names:
                problems.append(f"Service/{name}: targetPort {target} is no container port")

    middlewares = {d["metadata"]["name"] for d in docs if d["kind"] == "Middleware"}
    for d in docs:
        if d["kind"] != "IngressRoute":
            continue
        at = f"IngressRoute/{d['metadata']['name']}"
        for route in d["spec"]["routes"]:
            for middleware in route.get("middlewares", []):
                if middleware["name"] not in middlewares:
                    problems.append(f"{at}: Middleware {middleware['name']} does not exist")
            for backend in route.get("services", []):
                if backend.get("kind", "Service") != "Service":
                    continue
                svc = services.get(backend["name"])
                if svc is None:
                    problems.append(f"{at}: Service {backend['name']} does not exist")
                    continue
                ports = {p.get("name") for p in svc["spec"]["ports"]} | {p["port"] for p in svc["spec"]["ports"]}
                if backend["port"] not in ports:
                    problems.append(f"{at}: Service {backend['name']} has no port {backend['port']}")

    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for d in docs:
        if d["kind"] == "HorizontalPodAutoscaler":
            target = d["spec"]["scaleTargetRef"]
            dep = deployments.get(target["name"]) if target["kind"] == "Deployment" else None
            if dep is None:
                problems.append(
                    f"HorizontalPodAutoscaler/{d['metadata']['name']}: no {target['kind']} {target['name']}")
            elif "replicas" in dep["spec"]:
                problems.append(
                    f"Deployment/{target['name']}: sets replicas although an HPA owns the count "
                    "(every apply would reset it)"
                )
        if d["kind"] == "PodDisruptionBudget":
            selector = d["spec"]["selector"]["matchLabels"]
            operator_pods = {f"{c['metadata']['name']}" for c in docs if c["kind"] == "RabbitmqCluster"}
            if not pods_matching(selector) and selector.get("app.kubernetes.io/name") not in operator_pods:
                problems.append(f"PodDisruptionBudget/{d['metadata']['name']}: selects no pods")
    return problems


def scaling_violations(docs: list[dict]) -> list[str]:
    """A workload that may run more than one pod keeps its state in PostgreSQL, never SQLite."""
    problems = []
    autoscaled = {d["spec"]["scaleTargetRef"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        name = d["metadata"]["name"]
        # Even replicas: 1 runs two pods during a rolling update.
        for c in d["spec"]["template"]["spec"]["containers"]:
            db = next((e for e in c.get("env", []) if e["name"] == "DATABASE_URL"), None)
            if db is None or "secretKeyRef" not in db.get("valueFrom", {}):
                replicas = "autoscaled" if name in autoscaled else d["spec"].get("replicas", 1)
                problems.append(f"Deployment/{name} ({replicas} replicas): DATABASE_URL does not come "
                                "from the PostgreSQL Secret, so it would fall back to a per-pod SQLite file")
    return problems


def operator_guard(route: dict, middlewares: dict[str, dict]) -> str | None:
    """Why `route` does not keep operator endpoints from the public; None when it does.

    Only a source-address allow-list qualifies. The application itself wants
    `Authorization: Bearer <ADMIN_TOKEN>` on those endpoints, which basic auth would take over;
    and an allow-list that admits every address guards nothing.
    """
    reasons = []
    for ref in route.get("middlewares", []):
        middleware = middlewares.get(ref["name"])
        if middleware is None:
            reasons.append(f"Middleware {ref['name']} does not exist")
            continue
        spec = middleware.get("spec", {})
        allow = spec.get("ipAllowList")
        if allow is None:
            reasons.append(f"Middleware {ref['name']} is no ipAllowList"
                           + (" (basic auth takes the Authorization header the token needs)"
                              if "basicAuth" in spec else ""))
            continue
        ranges = allow.get("sourceRange", [])
        if not ranges:
            reasons.append(f"Middleware {ref['name']} allows no source range")
            continue
        try:
            networks = [ipaddress.ip_network(r, strict=False) for r in ranges]
        except ValueError as e:
            reasons.append(f"Middleware {ref['name']}: {e}")
            continue
        if any(n.prefixlen == 0 for n in networks):
            reasons.append(f"Middleware {ref['name']} allows every address")
            continue
        return None
    return "; ".join(reasons) or "it has no middleware"


def ingress_violations(docs: list[dict]) -> list[str]:
    """The ingress serves no operator endpoint, health or metrics path to the public.

    Every route's rule is evaluated (traefik_rules.py) against OPERATOR_REQUESTS on every host
    it names and on a host it does not: one that matches must sit behind operator_guard.
    """
    problems = []
    middlewares = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Middleware"}
    for d in docs:
        if d["kind"] != "IngressRoute":
            continue
        for i, route in enumerate(d["spec"]["routes"]):
            at = f"IngressRoute/{d['metadata']['name']} route {i}"
            try:
                hosts = traefik_rules.hosts(route["match"]) | {"unlisted.example"}
                reached = sorted({f"{method} {path}" for host in hosts for method, path in OPERATOR_REQUESTS
                                  if traefik_rules.matches(route["match"], traefik_rules.Request(host, path, method))})
            except traefik_rules.RuleError as e:
                problems.append(f"{at}: cannot evaluate its rule: {e}")
                continue
            if reached:
                why = operator_guard(route, middlewares)
                if why:
                    problems.append(f"{at}: serves operator paths {reached} to anyone: {why}")
    return problems


def _selects(selector: dict, labels: dict) -> bool:
    if selector.get("matchExpressions"):
        raise ValueError("matchExpressions are not evaluated here; use matchLabels")
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _policy_types(policy: dict) -> set[str]:
    spec = policy["spec"]
    return set(spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else [])))


def _ports(rule: dict) -> set[tuple[str, int | str]]:
    return {(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports", [])}


def _peer_namespace(peer: dict) -> str | None:
    """The one other namespace a peer names by kubernetes.io/metadata.name; None for this one."""
    if "namespaceSelector" not in peer:
        return None
    return peer["namespaceSelector"].get("matchLabels", {}).get(NAMESPACE_NAME, "*")


def network_violations(docs: list[dict]) -> list[str]:
    """Every pod we define is isolated both ways; ingress comes only from Traefik (to what the
    IngressRoute routes to) and from the metrics scraper; egress goes only to RabbitMQ,
    PostgreSQL, the OTLP collector and DNS, and to each of them."""
    problems = []
    pods = {where: t["metadata"].get("labels", {}) for where, t in pod_templates(docs)}
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    rabbit = {d["metadata"]["name"] for d in docs if d["kind"] == "RabbitmqCluster"}
    postgres = {d["metadata"]["name"] for d in docs if d["kind"] == "Cluster"}
    endpoint = next((cm["data"].get("OTEL_EXPORTER_OTLP_ENDPOINT") for cm in docs
                     if cm["kind"] == "ConfigMap" and "OTEL_EXPORTER_OTLP_ENDPOINT" in cm.get("data", {})), None)
    collector = urlsplit(endpoint) if endpoint else None
    collector_ns = collector.hostname.split(".")[1] if collector and collector.hostname.count(".") >= 2 else None

    # The pods the IngressRoutes send traffic to, and on which container ports.
    routed: dict[str, set] = {}
    for d in docs:
        if d["kind"] != "IngressRoute":
            continue
        for route in d["spec"]["routes"]:
            for backend in route.get("services", []):
                svc = services.get(backend["name"])
                if svc is None:
                    continue
                for port in svc["spec"]["ports"]:
                    if backend["port"] in (port.get("name"), port["port"]):
                        for where, labels in pods.items():
                            if _selects({"matchLabels": svc["spec"]["selector"]}, labels):
                                routed.setdefault(where, set()).add(port.get("targetPort", port["port"]))

    selected: dict[str, list[dict]] = {where: [] for where in pods}
    for policy in policies:
        at = f"NetworkPolicy/{policy['metadata']['name']}"
        try:
            matched = [w for w, labels in pods.items() if _selects(policy["spec"]["podSelector"], labels)]
        except ValueError as e:
            problems.append(f"{at}: {e}")
            continue
        if not matched:
            problems.append(f"{at}: selects none of our pods")
        if not policy["spec"]["podSelector"].get("matchLabels"):
            problems.append(f"{at}: selects every pod of the namespace, the operators' RabbitMQ and PostgreSQL too")
        for where in matched:
            selected[where].append(policy)

        for rule in policy["spec"].get("ingress", []):
            if not rule.get("from"):
                problems.append(f"{at}: an ingress rule admits every source")
                continue
            if not rule.get("ports"):
                problems.append(f"{at}: an ingress rule admits every port")
            for peer in rule["from"]:
                namespace = _peer_namespace(peer)
                if "ipBlock" in peer:
                    problems.append(f"{at}: admits the addresses {peer['ipBlock']}")
                elif namespace is None:
                    problems.append(f"{at}: admits pods of its own namespace (one service could call another)")
                elif namespace == TRAEFIK_NAMESPACE:
                    for where in matched:
                        ports = {p for _, p in _ports(rule)}
                        if where not in routed:
                            problems.append(f"{at}: lets Traefik reach {where}, which no IngressRoute routes to")
                        elif not ports <= routed[where]:
                            problems.append(f"{at}: lets Traefik reach {where} on {ports - routed[where]}, "
                                            "which no IngressRoute routes to")
                elif namespace != collector_ns:
                    problems.append(f"{at}: admits the namespace {namespace}, neither Traefik's nor the scraper's")

        for rule in policy["spec"].get("egress", []):
            if not rule.get("to"):
                problems.append(f"{at}: an egress rule allows every destination")
                continue
            if not rule.get("ports"):
                problems.append(f"{at}: an egress rule allows every port")
            ports = _ports(rule)
            for peer in rule["to"]:
                namespace = _peer_namespace(peer)
                pod_labels = peer.get("podSelector", {}).get("matchLabels", {})
                if "ipBlock" in peer:
                    allowed, what = set(), f"the addresses {peer['ipBlock']}"
                elif namespace is None and pod_labels.get("app.kubernetes.io/name") in rabbit and len(pod_labels) == 1:
                    allowed, what = {("TCP", 5672)}, "RabbitMQ"
                elif namespace is None and pod_labels.get("cnpg.io/cluster") in postgres and len(pod_labels) == 1:
                    allowed, what = {("TCP", 5432)}, "PostgreSQL"
                elif namespace == collector_ns and namespace is not None and not pod_labels:
                    allowed, what = {("TCP", p) for p in OTLP_PORTS}, "the OTLP collector"
                elif namespace == DNS["namespace"] and pod_labels == DNS["pods"]:
                    allowed, what = {("UDP", 53), ("TCP", 53)}, "DNS"
                else:
                    allowed, what = set(), f"{peer}"
                if not allowed:
                    problems.append(f"{at}: allows egress to {what}, which is not RabbitMQ, PostgreSQL, "
                                    "the OTLP collector or DNS")
                elif not ports <= allowed:
                    problems.append(f"{at}: allows {what} on {sorted(ports - allowed, key=str)} too")

    # Isolated both ways, and what each pod needs is allowed.
    needs = {"RabbitMQ": ("TCP", 5672), "PostgreSQL": ("TCP", 5432), "DNS": ("UDP", 53)}
    if collector is not None and collector_ns:
        needs["the OTLP collector"] = ("TCP", collector.port)
    for where, mine in selected.items():
        types = set().union(*(_policy_types(p) for p in mine)) if mine else set()
        for kind in ("Ingress", "Egress"):
            if kind not in types:
                problems.append(f"{where}: no NetworkPolicy restricts its {kind.lower()}")
        if "Egress" in types:
            reachable = set()
            for policy in mine:
                for rule in policy["spec"].get("egress", []):
                    for peer in rule.get("to", []):
                        namespace = _peer_namespace(peer)
                        labels = peer.get("podSelector", {}).get("matchLabels", {})
                        for port in _ports(rule):
                            if namespace is None and labels.get("app.kubernetes.io/name") in rabbit:
                                reachable.add(("RabbitMQ", port))
                            if namespace is None and labels.get("cnpg.io/cluster") in postgres:
                                reachable.add(("PostgreSQL", port))
                            if namespace == collector_ns:
                                reachable.add(("the OTLP collector", port))
                            if namespace == DNS["namespace"] and labels == DNS["pods"]:
                                reachable.add(("DNS", port))
            for what, port in needs.items():
                if (what, port) not in reachable:
                    problems.append(f"{where}: cannot reach {what} on {port[1]}/{port[0]}")
        if where in routed and "Ingress" in types:
            from_traefik = set()
            for policy in mine:
                for rule in policy["spec"].get("ingress", []):
                    if any(_peer_namespace(p) == TRAEFIK_NAMESPACE for p in rule.get("from", [])):
                        from_traefik |= {p for _, p in _ports(rule)}
            if not routed[where] <= from_traefik:
                problems.append(f"{where}: Traefik routes to it on {routed[where]} but may not connect")
    return problems


def all_violations(docs: list[dict]) -> list[str]:
    return (container_violations(docs) + plaintext_secret_violations(docs)
            + reference_violations(docs) + scaling_violations(docs)
            + ingress_violations(docs) + network_violations(docs))
