#!/usr/bin/env bash
# Fuzzes both services against their published contracts (docs/openapi/*.json) with
# schemathesis: the compose stack on real PostgreSQL and Redis, every check schemathesis
# has (no 5xx, documented status codes, content types, headers and response schemas,
# invalid input refused, valid input accepted, authentication enforced), positive and
# negative data, and the stateful phase (POST /books, then GET, PUT and DELETE of what
# it created, through the links in the contract). Bounded in time; the seed is printed,
# and a failure is replayed with CONTRACT_SEED=<seed>.
#
# Before fuzzing, a self-check: the same run against a copy of storagesvc's contract in
# which one field has another type must fail, or a passing run would prove nothing.
#
# Images: with STORAGESVC_IMAGE and BOOKSVC_IMAGE set (scripts/offline-images.sh prints
# them) the stack starts from those with `up --no-build`; otherwise compose builds them.
# Runs under its own compose project name (bookstore-contract) and removes it at the end,
# on failure too. schemathesis is installed from PyPI into target/venv-contract.
#
# Environment: CONTRACT_SEED (default: fixed in CI, random otherwise), CONTRACT_EXAMPLES
# (test cases per operation and phase, default 40), CONTRACT_MAX_TIME (seconds per
# service, default 90), CONTRACT_PORT (booksvc's host port, default 18181).

set -Eeuo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
ROOT_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
readonly ROOT_DIR
LOG_PREFIX=contract-fuzz
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"

readonly PROJECT=bookstore-contract
readonly SCHEMATHESIS_VERSION=4.32.5
readonly VENV=$ROOT_DIR/target/venv-contract
readonly REPORTS=$ROOT_DIR/target/contract
readonly EXAMPLES=${CONTRACT_EXAMPLES:-40}
readonly MAX_TIME=${CONTRACT_MAX_TIME:-90}
readonly PORT=${CONTRACT_PORT:-18181}
# The compose file's defaults: a local try-out's credentials, never a deployment's.
readonly STORAGESVC_TOKEN=${STORAGESVC_TOKEN:-bookstore-dev-token}
readonly WRITER_TOKEN=${BOOKSVC_WRITER_TOKEN:-bookstore-dev-writer-token}

if [[ -n ${CONTRACT_SEED:-} ]]; then
	SEED=$CONTRACT_SEED
elif [[ ${CI:-} == true ]]; then
	SEED=20261203
else
	SEED=$((RANDOM * 32768 + RANDOM))
fi
readonly SEED

case ${1:-} in
-h | --help)
	sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	exit 0
	;;
"") ;;
*) die "unknown argument '$1' (see --help)" ;;
esac

started=$SECONDS
step() { log "[$(printf '%3d' $((SECONDS - started)))s] $*"; }

check_docker
detect_compose
compose() { "${COMPOSE[@]}" --project-name "$PROJECT" --project-directory "$ROOT_DIR" -f "$ROOT_DIR/docker-compose.yaml" "$@"; }

for service in storagesvc booksvc; do
	[[ -f $ROOT_DIR/docs/openapi/$service.json ]] || die "docs/openapi/$service.json is missing"
done

step "schemathesis $SCHEMATHESIS_VERSION (into ${VENV#"$ROOT_DIR"/})"
if [[ $("$VENV/bin/st" --version 2>/dev/null) != *"$SCHEMATHESIS_VERSION"* ]]; then
	python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
	"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$VENV/bin/st" --version >&2

export BOOKSVC_PORT=$PORT
if [[ -n ${STORAGESVC_IMAGE:-} && -n ${BOOKSVC_IMAGE:-} ]]; then
	UP=(up -d --no-build)
else
	UP=(up -d --build)
fi

teardown() {
	local rc=$?
	if ((rc != 0)); then
		log "failed; the last lines of each service's log:"
		compose logs --no-color --tail=20 >&2 || true
	fi
	compose down -v --remove-orphans >/dev/null 2>&1 || true
	exit "$rc"
}
trap teardown EXIT

step "starting the stack (${COMPOSE[*]} -p $PROJECT ${UP[*]})"
compose "${UP[@]}" >/dev/null 2>&1 || compose "${UP[@]}"

health_of() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$(compose ps -q "$1")"; }
deadline=$((SECONDS + 90))
for service in database redis storagesvc booksvc; do
	until [[ $(health_of "$service") == healthy ]]; do
		((SECONDS < deadline)) || die "$service is not healthy within 90 s"
		sleep 1
	done
done
step "stack healthy"

# storagesvc is published nowhere: the host reaches it on its address in the backend
# network, as booksvc does.
storagesvc_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$(compose ps -q storagesvc)" | awk '{print $1}')
[[ -n $storagesvc_ip ]] || die "storagesvc has no address"
readonly STORAGESVC_URL="http://$storagesvc_ip:8082"
readonly BOOKSVC_URL="http://127.0.0.1:$PORT"

mkdir -p "$REPORTS"

# fuzz NAME SCHEMA URL TOKEN [EXTRA...]: one schemathesis run; its summary goes to the
# log, its JUnit report to target/contract/NAME.xml.
fuzz() {
	local name=$1 schema=$2 url=$3 token=$4
	shift 4
	SCHEMATHESIS_HOOKS=tests.contract.hooks PYTHONPATH=$ROOT_DIR "$VENV/bin/st" --no-color \
		--config-file "$ROOT_DIR/tests/contract/schemathesis.toml" run "$schema" \
		--url "$url" \
		--checks all \
		--mode all \
		--phases examples,coverage,fuzzing,stateful \
		--seed "$SEED" \
		--max-examples "$EXAMPLES" \
		--max-time "$MAX_TIME" \
		--workers 1 \
		--request-timeout 10 \
		--header "Authorization: Bearer $token" \
		--report junit --report-junit-path "$REPORTS/$name.xml" \
		"$@"
}

step "self-check: a contract with one field's type changed must fail"
broken=$REPORTS/storagesvc-broken.json
python3 - "$ROOT_DIR/docs/openapi/storagesvc.json" "$broken" <<'EOF'
import json, sys
spec = json.load(open(sys.argv[1]))
book = spec["components"]["schemas"]["Book"]
# The book's title becomes a number: every book storagesvc returns now breaks the contract.
book["properties"]["title"] = {"type": "integer"}
json.dump(spec, open(sys.argv[2], "w"), indent=2)
EOF
if fuzz storagesvc-broken "$broken" "$STORAGESVC_URL" "$STORAGESVC_TOKEN" \
	--phases examples,fuzzing --max-examples 5 --max-failures 1 --include-method GET \
	--include-path /books --checks response_schema_conformance >"$REPORTS/storagesvc-broken.log" 2>&1; then
	cat "$REPORTS/storagesvc-broken.log" >&2
	die "schemathesis passed against a contract that storagesvc's answers break"
fi
grep -q "Response violates schema" "$REPORTS/storagesvc-broken.log" ||
	die "the broken contract failed, but not for the response schema: $(tail -20 "$REPORTS/storagesvc-broken.log")"
step "self-check passed: the changed field was caught"

failed=()
for target in "storagesvc $STORAGESVC_URL $STORAGESVC_TOKEN" "booksvc $BOOKSVC_URL $WRITER_TOKEN"; do
	read -r name url token <<<"$target"
	step "fuzzing $name at $url (seed $SEED, $EXAMPLES cases per operation and phase, at most ${MAX_TIME}s)"
	if fuzz "$name" "$ROOT_DIR/docs/openapi/$name.json" "$url" "$token" 2>&1 | tee "$REPORTS/$name.log" >&2; then
		step "$name: no failure"
	else
		failed+=("$name")
	fi
	# The figures: operations tested, cases generated, the stateful phase's links.
	step "$name: $(grep -E '^ +(Tested:|API Links:)|^ +[0-9]+ generated' "$REPORTS/$name.log" | sed 's/^ *//' | paste -sd';' -)"
done

((${#failed[@]} == 0)) || die "schemathesis found failures in: ${failed[*]} (replay: CONTRACT_SEED=$SEED $0; reports in ${REPORTS#"$ROOT_DIR"/})"
step "both contracts hold (seed $SEED)"
