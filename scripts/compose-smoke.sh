#!/usr/bin/env bash
# The user's story, automated and timed: bring the stack up with Docker Compose,
# read books through booksvc, stop the database and watch the stale answers,
# start it and watch fresh ones return, and check that data survives `down`
# but not `down -v`. Any deviation fails the script; everything it started is
# removed at the end, on failure too.
#
# Images: with STORAGESVC_IMAGE and BOOKSVC_IMAGE set (scripts/offline-images.sh
# prints them, together with POSTGRES_IMAGE and REDIS_IMAGE) the stack starts
# from those with `up --no-build`; otherwise compose builds the Dockerfiles
# (`up --build`), which needs a registry for the base images.
#
# Runs under its own compose project name, so it never touches a stack you
# started yourself; booksvc's host port must be free (SMOKE_PORT, default 8081).

set -Eeuo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
ROOT_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
readonly ROOT_DIR
LOG_PREFIX=compose-smoke
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"

readonly PROJECT=${SMOKE_PROJECT:-bookstore-smoke}
readonly PORT=${SMOKE_PORT:-8081}
readonly BASE="http://127.0.0.1:$PORT"
# The promises checked, in seconds.
readonly HEALTHY_WITHIN=90
readonly STALE_WITHIN=2
readonly FRESH_WITHIN=10

readonly FRESH='booksvc; fwd=miss; stored'
readonly STALE='booksvc; hit; detail=upstream-unavailable'

usage() {
	sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	cat <<EOF
Usage: ${0##*/} [--keep] [--help]

  --keep      leave the stack running at the end (for a look around); remove it
              later with: docker compose -p $PROJECT down -v
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

detect_compose
compose() { "${COMPOSE[@]}" --project-name "$PROJECT" --project-directory "$ROOT_DIR" -f "$ROOT_DIR/docker-compose.yaml" "$@"; }

export BOOKSVC_PORT=$PORT
if [[ -n ${STORAGESVC_IMAGE:-} && -n ${BOOKSVC_IMAGE:-} ]]; then
	UP=(up -d --no-build)
else
	UP=(up -d --build)
fi

started=$SECONDS
step() { log "[$(printf '%3d' $((SECONDS - started)))s] $*"; }

COMPOSE_LOG=$(mktemp)
teardown() {
	local rc=$?
	if ((rc != 0)); then
		log "failed; the last lines of each service's log:"
		compose logs --no-color --tail=20 >&2 || true
	fi
	if $KEEP && ((rc == 0)); then
		log "stack left running (--keep): ${COMPOSE[*]} -p $PROJECT down -v"
	else
		compose down -v --remove-orphans >/dev/null 2>&1 || true
	fi
	rm -f "$COMPOSE_LOG"
	exit "$rc"
}
trap teardown EXIT

# --- helpers -------------------------------------------------------------------

# One request; sets STATUS, BODY, CACHE_STATUS, AGE and TOOK (seconds, 3 decimals).
request() {
	local method=$1 path=$2 data=${3:-} headers
	headers=$(mktemp)
	local args=(-sS -o "$headers.body" -D "$headers" -w '%{http_code} %{time_total}' -X "$method" --max-time 10)
	[[ -n $data ]] && args+=(-H 'content-type: application/json' -H "idempotency-key: smoke-$RANDOM$RANDOM" --data "$data")
	local out
	out=$(curl "${args[@]}" "$BASE$path") || out="000 0"
	STATUS=${out%% *}
	TOOK=${out##* }
	BODY=$(cat "$headers.body" 2>/dev/null || true)
	CACHE_STATUS=$(header_value "$headers" cache-status)
	AGE=$(header_value "$headers" age)
	LOCATION=$(header_value "$headers" location)
	rm -f "$headers" "$headers.body"
}

header_value() {
	grep -i "^$2:" "$1" | head -1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//' || true
}

# Fails unless $1 (seconds, decimal) <= $2.
within() { awk -v t="$1" -v max="$2" 'BEGIN { exit !(t <= max) }'; }

expect() {
	local what=$1
	shift
	"$@" || die "$what (status $STATUS, cache-status '$CACHE_STATUS', age '$AGE', ${TOOK}s, body: ${BODY:0:200})"
}

# Runs a compose command with its progress lines kept out of the way; shown if it fails.
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
		for service in database redis storagesvc booksvc; do
			[[ $(health_of "$service" 2>/dev/null) == healthy ]] || pending+=("$service")
		done
		((${#pending[@]} == 0)) && return 0
		((SECONDS >= deadline)) && die "not healthy within $1 s: ${pending[*]}"
		sleep 1
	done
}

# Reads $1 until Cache-Status is fresh; fails after $2 seconds.
wait_fresh() {
	local path=$1 limit=$2 t0=$SECONDS
	while :; do
		request GET "$path"
		[[ $STATUS == 200 && $CACHE_STATUS == "$FRESH" ]] && break
		((SECONDS - t0 >= limit)) && die "no fresh answer to $path within $limit s (last: $STATUS '$CACHE_STATUS')"
		sleep 0.2
	done
	log "    fresh again after $((SECONDS - t0)) s"
}

# With the database gone, the next read is the stored body, marked stale, fast.
assert_stale() {
	local expected_body=$1
	request GET /
	expect "a stale 200 after the database went away" test "$STATUS" = 200
	expect "Cache-Status says hit because the upstream failed" test "$CACHE_STATUS" = "$STALE"
	expect "an Age header" test -n "$AGE"
	expect "the same body as the fresh answer" test "$BODY" = "$expected_body"
	expect "the stale answer within $STALE_WITHIN s" within "$TOOK" "$STALE_WITHIN"
	log "    stale answer in ${TOOK}s, age ${AGE}s"
}

# --- the story -----------------------------------------------------------------

step "compose: ${COMPOSE[*]}; images: ${POSTGRES_IMAGE:-postgres:17}, ${REDIS_IMAGE:-redis:7}, bookstore/storagesvc, bookstore/booksvc (${UP[*]})"
compose down -v --remove-orphans >/dev/null 2>&1 || true

step "no published port but booksvc's (compose config)"
config=$(compose config)
published=$(awk '
	/^services:/ { in_services = 1; next }
	/^[^ ]/ { in_services = 0 }
	in_services && /^  [a-z]/ { service = $1; sub(":", "", service) }
	in_services && /^    ports:/ { print service }
' <<<"$config")
[[ $published == booksvc ]] || die "services publishing ports: '${published//$'\n'/ }' (expected only booksvc)"

step "up: ${COMPOSE[*]} ${UP[*]}"
quietly compose "${UP[@]}"
up_at=$SECONDS
wait_healthy "$HEALTHY_WITHIN"
step "all four healthy $((SECONDS - up_at)) s after up"

step "no process runs as root; the service images say so themselves"
for service in storagesvc booksvc; do
	user=$(docker inspect -f '{{.Config.User}}' "$(container_of "$service")")
	[[ -n $user && $user != root && $user != 0 && $user != 0:* ]] || die "$service's image runs as '${user:-root}'"
	log "    $service's image runs as user $user"
done
for service in database redis storagesvc booksvc; do
	# The database image starts as root and drops to its own user, so look at the
	# processes, not only at the image's configuration.
	root_processes=$(docker top "$(container_of "$service")" -o pid,uid,comm | awk 'NR > 1 && $2 == 0')
	[[ -z $root_processes ]] || die "$service has processes running as root: $root_processes"
done
for service in database redis storagesvc; do
	ports=$(docker port "$(container_of "$service")")
	[[ -z $ports ]] || die "$service has published ports: $ports"
done

step "read: curl $BASE/ returns the seed books, forwarded and stored"
request GET /
expect "GET / answers 200" test "$STATUS" = 200
expect "the seed books are listed" grep -q '"title":"One book"' <<<"$BODY"
expect "Cache-Status says forwarded and stored" test "$CACHE_STATUS" = "$FRESH"
fresh_body=$BODY

step "compose stop database: the same body, stale"
quietly compose stop database
assert_stale "$fresh_body"
for _ in 1 2 3; do assert_stale "$fresh_body"; done

step "compose start database: fresh answers within $FRESH_WITHIN s"
quietly compose start database
wait_fresh / "$FRESH_WITHIN"

database_container=$(docker inspect -f '{{.Name}}' "$(container_of database)")
database_container=${database_container#/}
step "docker stop $database_container: the same as compose stop"
docker stop "$database_container" >/dev/null
assert_stale "$fresh_body"
docker start "$database_container" >/dev/null
wait_fresh / "$FRESH_WITHIN"

step "a book created through booksvc survives down and up"
request POST /books '{"title":"Survives a restart","author":"Compose Smoke"}'
expect "POST /books answers 201" test "$STATUS" = 201
book=$LOCATION
expect "a Location header" test -n "$book"
quietly compose down
quietly compose "${UP[@]}"
wait_healthy "$HEALTHY_WITHIN"
wait_fresh "$book" "$FRESH_WITHIN"
expect "the book is still there" grep -q 'Survives a restart' <<<"$BODY"

step "and is gone after down -v"
quietly compose down -v
quietly compose "${UP[@]}"
wait_healthy "$HEALTHY_WITHIN"
request GET "$book"
expect "the book is gone with the volume" test "$STATUS" = 404
request GET /
expect "the seed books are back" grep -q '"title":"One book"' <<<"$BODY"

step "passed in $((SECONDS - started)) s"
