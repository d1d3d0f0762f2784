#!/usr/bin/env bash
# Checks the Kubernetes manifests without a cluster: renders every overlay in
# deploy/k8s/overlays with `kubectl kustomize`, validates each object against the
# Kubernetes schemas offline and strictly (kubernetes-validate from PyPI: unknown fields
# are errors), and checks the deployment's own policy (deploy/k8s/policy.py: locked-down
# containers, resources, probes, credentials from Secrets, disruption budgets, a headless
# storagesvc, deny-by-default network policies). First it checks itself: an unknown field
# must fail the schema check, and a writable root filesystem must fail the policy.
#
# kubernetes-validate is installed into target/venv-k8s once. The rendered manifests go to
# target/k8s/. KUBERNETES_VERSION chooses the schemas (default: the validator's newest).

set -Eeuo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
ROOT_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
readonly ROOT_DIR
LOG_PREFIX=k8s-check
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"

readonly VALIDATE_VERSION=1.37.0
readonly VENV=$ROOT_DIR/target/venv-k8s
readonly OUT=$ROOT_DIR/target/k8s

case ${1:-} in
-h | --help)
	sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	exit 0
	;;
"") ;;
*) die "unknown argument '$1' (see --help)" ;;
esac

command -v kubectl >/dev/null || die "kubectl is not installed (it renders the kustomizations)"

if [[ $("$VENV/bin/kubernetes-validate" --version 2>/dev/null) != *"$VALIDATE_VERSION"* ]]; then
	log "installing kubernetes-validate $VALIDATE_VERSION into ${VENV#"$ROOT_DIR"/}"
	python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
	"$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$VALIDATE_VERSION"
fi
validate=("$VENV/bin/kubernetes-validate" --strict --quiet)
[[ -n ${KUBERNETES_VERSION:-} ]] && validate+=(-k "$KUBERNETES_VERSION")
policy=("$VENV/bin/python" "$ROOT_DIR/deploy/k8s/policy.py")

mkdir -p "$OUT"
overlays=("$ROOT_DIR"/deploy/k8s/overlays/*/)
((${#overlays[@]})) || die "no overlay in deploy/k8s/overlays"

first=
for overlay in "${overlays[@]}"; do
	name=$(basename "$overlay")
	rendered=$OUT/$name.yaml
	kubectl kustomize "$overlay" >"$rendered"
	log "$name: $(grep -c '^kind:' "$rendered") objects rendered to ${rendered#"$ROOT_DIR"/}"
	[[ -n $first ]] || first=$rendered
done

log "self-check: an unknown field must fail the schema check, a writable root filesystem the policy"
broken=$OUT/self-check.yaml
"$VENV/bin/python" - "$first" "$broken" <<'EOF'
import sys, yaml
objects = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o]
for o in objects:
    if o["kind"] == "Deployment" and o["metadata"]["name"] == "storagesvc":
        container = o["spec"]["template"]["spec"]["containers"][0]
        container["securityContext"]["readOnlyRootFilesystem"] = False
        container["livenesProbe"] = container["livenessProbe"]
yaml.safe_dump_all(objects, open(sys.argv[2], "w"))
EOF
if "${validate[@]}" "$broken" >/dev/null 2>&1; then
	die "the schema check passed a manifest with an unknown field (livenesProbe)"
fi
if "${policy[@]}" "$broken" >/dev/null; then
	die "the policy passed a container with a writable root filesystem"
fi
rm -f "$broken"

for overlay in "${overlays[@]}"; do
	name=$(basename "$overlay")
	rendered=$OUT/$name.yaml
	"${validate[@]}" "$rendered" || die "$name: objects that are not valid Kubernetes (above)"
	log "$name: every object valid against the Kubernetes schemas (strict)"
	"${policy[@]}" "$rendered" >&2 || die "$name: the deployment's policy is not met (above)"
done
log "the manifests render, validate and meet the policy"
