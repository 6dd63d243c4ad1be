"""The deployment policy, as functions from rendered manifests to a list of violations.

Kept apart from the tests so that the tests can also feed it manifests that break each rule
and see it object (test_policy.py): a policy that cannot fail proves nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

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
                if SENSITIVE_NAME.search(env["name"]):
                    problems.append(f"{at} holds a literal value; take it from a secretKeyRef")
                for userinfo in URL_USERINFO.findall(value):
                    _, _, password = userinfo.partition(":")
                    if password and not re.fullmatch(VAR_REF.pattern, password):
                        problems.append(f"{at} has a literal password in its URL")
    return problems


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

    workloads = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    for where, template in pod_templates(docs):
        pod = template["spec"]
        for c in pod.get("initContainers", []) + pod.get("containers", []):
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

    for d in docs:
        if d["kind"] != "IngressRoute":
            continue
        at = f"IngressRoute/{d['metadata']['name']}"
        for route in d["spec"]["routes"]:
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


def all_violations(docs: list[dict]) -> list[str]:
    return (container_violations(docs) + plaintext_secret_violations(docs)
            + reference_violations(docs) + scaling_violations(docs))
