"""The deployment's own policy, checked on rendered manifests (scripts/k8s-check.sh).

Schema validation says the objects are well-formed; this says they are the deployment we
mean: every container locked down (non-root, read-only root filesystem, no privilege
escalation, every capability dropped, the runtime's seccomp profile), bounded (requests
and limits), probed (the services' liveness on /.well-known/alive, which never depends on
a dependency, and readiness on /.well-known/health), credentials only from Secrets, a
disruption budget for every replicated workload, storagesvc behind a headless Service,
and traffic denied unless a policy allows it.

Usage: python3 policy.py RENDERED.yaml   (exit 1 and one line per violation if any)
"""

import re
import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
# Our services: their probes must be the ones their health endpoints are for.
SERVICES = {"booksvc", "storagesvc"}
LIVENESS_PATH = "/.well-known/alive"
READINESS_PATH = "/.well-known/health"
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|SIGNING_KEY|API_KEY")


def pod_spec(obj):
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {})


def pod_labels(obj):
    return obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})


def selects(selector, labels):
    wanted = selector.get("matchLabels", {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def check_container(where, container, pod_security, name):
    problems = []
    security = container.get("securityContext", {})

    def setting(key):
        return security.get(key, pod_security.get(key))

    if setting("runAsNonRoot") is not True:
        problems.append(f"{where}: runAsNonRoot is not true")
    if (setting("runAsUser") or 0) == 0:
        problems.append(f"{where}: runAsUser is not a non-zero user id")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation is not false")
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: readOnlyRootFilesystem is not true")
    if security.get("privileged"):
        problems.append(f"{where}: privileged")
    capabilities = security.get("capabilities", {})
    if "ALL" not in capabilities.get("drop", []):
        problems.append(f"{where}: capabilities.drop does not include ALL")
    if capabilities.get("add"):
        problems.append(f"{where}: adds capabilities {capabilities['add']}")
    seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
    if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append(f"{where}: no RuntimeDefault seccomp profile")

    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(kind, {}):
                problems.append(f"{where}: no {kind}.{resource}")

    image = container.get("image", "")
    if ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
        problems.append(f"{where}: image {image!r} has no tag")

    for probe in ("livenessProbe", "readinessProbe"):
        if probe not in container:
            problems.append(f"{where}: no {probe}")
    if name in SERVICES:
        liveness = container.get("livenessProbe", {}).get("httpGet", {}).get("path")
        readiness = container.get("readinessProbe", {}).get("httpGet", {}).get("path")
        if liveness != LIVENESS_PATH:
            problems.append(f"{where}: liveness is {liveness!r}, not {LIVENESS_PATH}")
        if readiness != READINESS_PATH:
            problems.append(f"{where}: readiness is {readiness!r}, not {READINESS_PATH}")

    for env in container.get("env", []):
        if SECRET_NAME.search(env["name"]) and "value" in env:
            problems.append(f"{where}: {env['name']} is a literal, not from a Secret")
    return problems


def check(objects):
    problems = []
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for obj in objects:
        if obj["kind"] not in WORKLOADS:
            continue
        name = obj["metadata"]["name"]
        spec = pod_spec(obj)
        where = f"{obj['kind']}/{name}"
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{where}: {flag}")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: the service account token is mounted")
        for volume in spec.get("volumes", []):
            if "hostPath" in volume:
                problems.append(f"{where}: hostPath volume {volume['name']}")
        pod_security = spec.get("securityContext", {})
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            problems += check_container(
                f"{where} container {container['name']}", container, pod_security, name
            )
        labels = pod_labels(obj)
        if (obj.get("spec", {}).get("replicas") or 1) > 1 and not any(
            selects(b["spec"].get("selector", {}), labels) for b in budgets
        ):
            problems.append(f"{where}: {obj['spec']['replicas']} replicas and no PodDisruptionBudget")
        if not any(selects(p["spec"].get("podSelector", {}), labels) for p in policies):
            problems.append(f"{where}: no NetworkPolicy of its own")

    denies = [
        p
        for p in policies
        if p["spec"].get("podSelector") == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not denies:
        problems.append("no NetworkPolicy denies all ingress and egress by default")

    for obj in objects:
        if obj["kind"] == "Service" and obj["metadata"]["name"] == "storagesvc":
            if obj["spec"].get("clusterIP") != "None":
                problems.append("Service/storagesvc is not headless (clusterIP: None)")
    return problems


def main(path):
    with open(path) as rendered:
        objects = [o for o in yaml.safe_load_all(rendered) if o]
    problems = check(objects)
    workloads = sum(o["kind"] in WORKLOADS for o in objects)
    for problem in problems:
        print(f"policy: {problem}")
    print(f"policy: {len(objects)} objects, {workloads} workloads, {len(problems)} violations")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
