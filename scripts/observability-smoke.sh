#!/usr/bin/env bash
# The compose file's `observability` profile, checked running: starts the stack with
# Prometheus under a compose project of its own, sends a few reads through booksvc, and
# asks Prometheus's HTTP API that
#   - both admin listeners are scraped (/api/v1/targets: booksvc and storagesvc up);
#   - every rule of deploy/prometheus/rules is loaded and evaluates without error
#     (/api/v1/rules: as many rules as the files hold, each with health ok);
# then stops the database and waits until Prometheus sees it (database_up 0, the breaker
# not closed, StoragesvcDatabaseDown and BooksvcBreakerOpen pending), and checks that
# every metric the rules and their descriptions name has a series and that the recorded
# ratios have values, the stale-answer ratio above 0: the rules' names and label
# matchers meet what the services export. Prometheus must run hardened like the rest,
# as a user other than root, published on 127.0.0.1 only. Everything it started is
# removed at the end (down -v), on failure too.
#
# Images as for scripts/compose-smoke.sh, plus PROMETHEUS_IMAGE (scripts/offline-images.sh
# prints it; without it, the official image). Host ports, on 127.0.0.1: booksvc
# OBS_BOOKSVC_PORT (default 18381), Prometheus OBS_PROMETHEUS_PORT (default 19090).

set -Eeuo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
ROOT_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
readonly ROOT_DIR
LOG_PREFIX=observability-smoke
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"

readonly PROJECT=${OBS_PROJECT:-bookstore-obs}
readonly BOOKSVC_HOST_PORT=${OBS_BOOKSVC_PORT:-18381}
readonly PROMETHEUS_HOST_PORT=${OBS_PROMETHEUS_PORT:-19090}
readonly BASE="http://127.0.0.1:$BOOKSVC_HOST_PORT"
readonly PROM="http://127.0.0.1:$PROMETHEUS_HOST_PORT"
readonly RULES_DIR=$ROOT_DIR/deploy/prometheus/rules
# The promises checked, in seconds. Prometheus scrapes every 5 s and evaluates its rules
# every 15 s (deploy/prometheus/prometheus.yml).
readonly HEALTHY_WITHIN=90
readonly SCRAPED_WITHIN=30
readonly EVALUATED_WITHIN=40
readonly STALE_WITHIN=10

usage() {
	sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	cat <<EOF
Usage: ${0##*/} [--keep] [--help]

  --keep      leave the stack running at the end (Prometheus on $PROM); remove it
              later with: docker compose -p $PROJECT --profile observability down -v
EOF
}

KEEP=false
while (($#)); do
	case $1 in
	--keep) KEEP=true ;;
	-h | --help) usage && exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
	shift
done

command -v python3 >/dev/null || die "python3 is needed to read Prometheus's JSON answers"
check_docker
detect_compose
compose() {
	"${COMPOSE[@]}" --profile observability --project-name "$PROJECT" \
		--project-directory "$ROOT_DIR" -f "$ROOT_DIR/docker-compose.yaml" "$@"
}

export BOOKSVC_PORT=127.0.0.1:$BOOKSVC_HOST_PORT
export PROMETHEUS_PORT=$PROMETHEUS_HOST_PORT
if [[ -n ${STORAGESVC_IMAGE:-} && -n ${BOOKSVC_IMAGE:-} ]]; then
	UP=(up -d --no-build)
else
	UP=(up -d --build)
fi

started=$SECONDS
step() { log "[$(printf '%3d' $((SECONDS - started)))s] $*"; }

COMPOSE_LOG=$(mktemp)
READER=""
teardown() {
	local rc=$?
	stop_reader
	if ((rc != 0)); then
		log "failed; the last lines of each service's log:"
		compose logs --no-color --tail=20 >&2 || true
	fi
	if $KEEP && ((rc == 0)); then
		log "stack left running (--keep): Prometheus on $PROM; ${COMPOSE[*]} -p $PROJECT --profile observability down -v"
	else
		compose down -v --remove-orphans >/dev/null 2>&1 || true
	fi
	rm -f "$COMPOSE_LOG"
	exit "$rc"
}
trap teardown EXIT

# --- helpers -------------------------------------------------------------------

quietly() {
	"$@" >"$COMPOSE_LOG" 2>&1 || {
		cat "$COMPOSE_LOG" >&2
		return 1
	}
}

container_of() { compose ps -q "$1"; }

health_of() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$(container_of "$1")"; }

wait_healthy() {
	local deadline=$((SECONDS + $1)) service pending
	while :; do
		pending=()
		for service in database redis storagesvc booksvc prometheus; do
			[[ $(health_of "$service" 2>/dev/null) == healthy ]] || pending+=("$service")
		done
		((${#pending[@]} == 0)) && return 0
		((SECONDS >= deadline)) && die "not healthy within $1 s: ${pending[*]}"
		sleep 1
	done
}

# A background loop of reads through booksvc, five a second, so that counters keep
# increasing between scrapes (a labelled counter is born at its first event, and a rate
# needs it to grow after that).
start_reader() {
	while :; do
		curl -s -o /dev/null --max-time 2 "$BASE/" || true
		sleep 0.2
	done &
	READER=$!
}

stop_reader() {
	if [[ -n $READER ]]; then
		kill "$READER" 2>/dev/null || true
		wait "$READER" 2>/dev/null || true
		READER=""
	fi
}

# read_cache_status PATH: booksvc's Cache-Status for a GET of PATH ("" if none).
read_cache_status() {
	curl -sS -o /dev/null -D - --max-time 5 "$BASE$1" |
		sed -n 's/^cache-status: *//Ip' | tr -d '\r' || true
}

# api PATH [curl arguments...]: a GET of Prometheus's API, the JSON answer on stdout.
api() {
	local path=$1
	shift
	curl -fsS --max-time 5 --get "$@" "$PROM$path"
}

# query EXPR: the number of series an instant query returns, then each as
# `name{labels} value`, one a line.
query() {
	api /api/v1/query --data-urlencode "query=$1" | python3 -c '
import json, sys
result = json.load(sys.stdin)["data"]["result"]
print(len(result))
for r in result:
    labels = dict(r["metric"])
    name = labels.pop("__name__", "")
    inner = ",".join(k + "=" + json.dumps(v) for k, v in sorted(labels.items()))
    print(name + "{" + inner + "} " + r["value"][1])
'
}

# until_within SECONDS WHAT COMMAND...: runs COMMAND every second until it succeeds;
# fails naming WHAT after SECONDS.
until_within() {
	local limit=$1 what=$2 t0=$SECONDS
	shift 2
	until "$@"; do
		((SECONDS - t0 < limit)) || die "$what: not within $limit s"
		sleep 1
	done
	log "    $what: after $((SECONDS - t0)) s"
}

# Both jobs have a target, and every target is up.
targets_up() {
	TARGETS=$(api /api/v1/targets --data-urlencode state=active | python3 -c '
import json, sys
for t in json.load(sys.stdin)["data"]["activeTargets"]:
    print(t["labels"]["job"], t["labels"]["instance"], t["health"], t.get("lastError") or "-")
') || return 1
	grep -q '^booksvc .* up ' <<<"$TARGETS" && grep -q '^storagesvc .* up ' <<<"$TARGETS" &&
		! grep -qv ' up ' <<<"$TARGETS"
}

# Every rule loaded has been evaluated without error; sets RULES to one line a rule:
# `type name health`. A rule in error fails at once.
rules_ok() {
	RULES=$(api /api/v1/rules | python3 -c '
import json, sys
for g in json.load(sys.stdin)["data"]["groups"]:
    for r in g["rules"]:
        print(r["type"], r["name"], r["health"], (r.get("lastError") or "-").replace("\n", " "))
') || return 1
	local failing
	failing=$(awk '$3 == "err"' <<<"$RULES")
	[[ -z $failing ]] || die "rules in error: ${failing//$'\n'/; }"
	[[ $(wc -l <<<"$RULES") -eq $expected_rules ]] || return 1
	awk '$3 != "ok" { exit 1 }' <<<"$RULES"
}

# alert_active NAME: the alert is pending or firing.
alert_active() {
	api /api/v1/alerts | python3 -c '
import json, sys
alerts = json.load(sys.stdin)["data"]["alerts"]
sys.exit(0 if any(a["labels"]["alertname"] == sys.argv[1] and a["state"] in ("pending", "firing") for a in alerts) else 1)
' "$1"
}

# has_series EXPR: an instant query of EXPR returns at least one series.
has_series() {
	local answer
	answer=$(query "$1") || return 1
	[[ ${answer%%$'\n'*} -gt 0 ]]
}

# --- the story -----------------------------------------------------------------

step "compose: ${COMPOSE[*]} --profile observability; Prometheus image ${PROMETHEUS_IMAGE:-prom/prometheus:v2.42.0} (${UP[*]})"
compose down -v --remove-orphans >/dev/null 2>&1 || true

step "Prometheus is in the observability profile only, published on 127.0.0.1 only (compose config)"
config=$(compose config)
prometheus_config=$(awk '/^[^ ]/ { in_prom = 0 } /^  [a-z]/ { in_prom = ($1 == "prometheus:") } in_prom' <<<"$config")
if ! grep -Eq '^    profiles:' <<<"$prometheus_config" || ! grep -Eq -- '- observability$' <<<"$prometheus_config"; then
	die "the prometheus service is not in the observability profile"
fi
# Both renderings: v1's "127.0.0.1:PORT:9090" and v2's long form (host_ip: 127.0.0.1).
grep -Eq "127\.0\.0\.1:$PROMETHEUS_HOST_PORT:9090|host_ip: 127\.0\.0\.1" <<<"$prometheus_config" ||
	die "Prometheus's port is not bound to 127.0.0.1: $(grep -A4 '^    ports:' <<<"$prometheus_config")"

step "up: ${COMPOSE[*]} --profile observability ${UP[*]}"
quietly compose "${UP[@]}"
up_at=$SECONDS
wait_healthy "$HEALTHY_WITHIN"
step "all five healthy $((SECONDS - up_at)) s after up"

step "Prometheus runs hardened, not as root, on 127.0.0.1:$PROMETHEUS_HOST_PORT only"
prometheus_container=$(container_of prometheus)
read -r read_only cap_drop security_opt memory cpus pids < <(docker inspect -f \
	'{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}' \
	"$prometheus_container")
[[ $read_only == true && $cap_drop == '["ALL"]' && $security_opt == *'"no-new-privileges:true"'* ]] ||
	die "prometheus: read-only $read_only, cap_drop '$cap_drop', security_opt '$security_opt'"
((memory > 0 && cpus > 0 && pids > 0)) || die "prometheus: memory $memory, nano CPUs $cpus, pids $pids"
root_processes=$(docker top "$prometheus_container" -o pid,uid,comm | awk 'NR > 1 && $2 == 0')
[[ -z $root_processes ]] || die "prometheus has processes running as root: $root_processes"
bindings=$(docker port "$prometheus_container")
if [[ -z $bindings ]] || grep -qv "127\.0\.0\.1:$PROMETHEUS_HOST_PORT\$" <<<"$bindings"; then
	die "Prometheus's published ports: '$bindings' (expected 127.0.0.1:$PROMETHEUS_HOST_PORT only)"
fi
log "    read-only, cap_drop ALL, no-new-privileges, $((memory / 1024 / 1024)) MiB; published: ${bindings//$'\n'/, }"

step "reads through booksvc, fresh: the labelled request and attempt counters appear"
for _ in 1 2 3; do
	status=$(read_cache_status /)
	[[ $status == 'booksvc; fwd=miss; stored' ]] || die "GET / answered Cache-Status '$status', not fresh"
done
status=$(read_cache_status /books/999999)
[[ $status == 'booksvc; fwd=miss' ]] || die "GET /books/999999 answered Cache-Status '$status'"

step "Prometheus scrapes both admin listeners (/api/v1/targets)"
until_within "$SCRAPED_WITHIN" "booksvc and storagesvc up" targets_up
while read -r job instance health _; do log "    $job $instance $health"; done <<<"$TARGETS"

step "every rule loaded and evaluated without error (/api/v1/rules)"
expected_rules=$(cat "$RULES_DIR"/*.yaml | grep -Ec '^ *- (alert|record):')
until_within "$EVALUATED_WITHIN" "$expected_rules rules, health ok" rules_ok
log "    alerts: $(awk '$1 == "alerting" { print $2 }' <<<"$RULES" | sort -u | paste -sd, - | sed 's/,/, /g')"
log "    recorded: $(awk '$1 == "recording" { n++ } END { print n }' <<<"$RULES") series"

step "compose stop database: stale answers, and Prometheus sees the outage"
quietly compose stop database
t0=$SECONDS
until [[ $(read_cache_status /) == 'booksvc; hit; detail='* ]]; do
	((SECONDS - t0 < STALE_WITHIN)) || die "no stale answer within $STALE_WITHIN s of stopping the database"
	sleep 0.2
done
# More reads open the breaker (5 failures in a row) and keep the stale answers coming.
start_reader
until_within "$EVALUATED_WITHIN" "database_up 0 on storagesvc" has_series 'database_up{job="storagesvc"} == 0'
until_within "$EVALUATED_WITHIN" "booksvc's breaker not closed" has_series 'breaker_state{job="booksvc"} > 0'
until_within "$EVALUATED_WITHIN" "StoragesvcDatabaseDown pending or firing" alert_active StoragesvcDatabaseDown
until_within "$EVALUATED_WITHIN" "BooksvcBreakerOpen pending or firing" alert_active BooksvcBreakerOpen
until_within "$EVALUATED_WITHIN" "stale-answer ratio above 0" has_series 'job:booksvc_stale_answers:ratio_rate5m > 0'
stop_reader

step "every metric the rules name has a series; the recorded ratios have values"
mapfile -t metrics < <(grep -hv '^ *#' "$RULES_DIR"/*.yaml |
	grep -oE '(^|[^":a-zA-Z0-9_.$-])[a-z][a-z0-9]*(_[a-z0-9]+)+' | sed -E 's/^[^a-z]//' | sort -u)
((${#metrics[@]} > 5)) || die "found only ${#metrics[@]} metric names in the rules: ${metrics[*]}"
missing=()
for metric in up "${metrics[@]}"; do
	# A histogram is there as NAME_count.
	count=$(query "count({__name__=~\"${metric}|${metric}_count\"})" | sed -n 2p | awk '{ print $2 }')
	if [[ -z $count ]]; then
		missing+=("$metric")
	else
		log "    $metric: $count series"
	fi
done
((${#missing[@]} == 0)) || die "metrics named in the rules that Prometheus has no series of: ${missing[*]}"
mapfile -t recorded < <(grep -hoE '^ *- record: *[^ ]+' "$RULES_DIR"/*.yaml | sed -E 's/.*record: *//')
for name in "${recorded[@]}"; do
	answer=$(query "$name")
	[[ $(head -1 <<<"$answer") -gt 0 ]] || die "the recording rule $name has no value"
	log "    $(sed -n 2p <<<"$answer")"
done

step "done: Prometheus scraped both services, evaluated $expected_rules rules and saw the outage"
