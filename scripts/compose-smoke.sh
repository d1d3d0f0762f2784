#!/usr/bin/env bash
# The user's story, automated and timed: bring the stack up with Docker Compose,
# check that it is hardened (read-only, no capabilities, no new privileges,
# limits, booksvc cut off from PostgreSQL, Redis behind a password, writes
# behind a credential, marked `fwd=method`), read books through booksvc, stop
# the database and watch the stale answers, booksvc's readiness (still up, and
# nothing but {"status":"up"}) and its breaker opening in the log, start it and
# watch fresh ones return as the log shows the breaker close, and check that
# data survives `down` but not `down -v`. Any deviation fails the script; everything
# it started is removed at the end, on failure too.
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
readonly BREAKER_OPEN_WITHIN=10
readonly LOG_WITHIN=5

readonly FRESH='booksvc; fwd=miss; stored'
readonly FORWARDED_WRITE='booksvc; fwd=method'
# A stale answer says why: upstream-unavailable, upstream-late, breaker-open or shed.
readonly STALE_PREFIX='booksvc; hit; detail='

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

# request METHOD PATH [DATA] [TOKEN]: one request, with the JSON body DATA and
# `Authorization: Bearer TOKEN` when given; sets STATUS, BODY, CACHE_STATUS, AGE,
# LOCATION and TOOK (seconds, 3 decimals).
request() {
	local method=$1 path=$2 data=${3:-} token=${4:-} headers
	headers=$(mktemp)
	local args=(-sS -o "$headers.body" -D "$headers" -w '%{http_code} %{time_total}' -X "$method" --max-time 10)
	[[ -n $data ]] && args+=(-H 'content-type: application/json' -H "idempotency-key: smoke-$RANDOM$RANDOM" --data "$data")
	[[ -n $token ]] && args+=(-H "authorization: Bearer $token")
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

# The value of variable $2 in the environment of service $1's container.
env_of() {
	docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$(container_of "$1")" |
		sed -n "s/^$2=//p"
}

# can_connect SERVICE HOST PORT: whether a TCP connection to HOST:PORT opens from
# inside SERVICE's network namespace (its networks, its DNS), tried by bash's
# /dev/tcp in a throw-away container of the same image (Debian-based: bash and
# coreutils are there, the service binary is not needed).
can_connect() {
	local container
	container=$(container_of "$1")
	docker run --rm --network "container:$container" --entrypoint bash \
		"$(docker inspect -f '{{.Image}}' "$container")" \
		-c "timeout 3 bash -c 'exec 3<>/dev/tcp/$2/$3'" >/dev/null 2>&1
}

# Lists, one a line, what `compose config` shows missing from each service's
# hardening: read_only, cap_drop ALL, no-new-privileges and the three limits.
# Reads both docker-compose v1's and the compose plugin's output.
unhardened_services() {
	awk '
		function report() {
			if (service == "") return
			if (!read_only) print service ": read_only is not true"
			if (!drop_all) print service ": cap_drop is not [ALL]"
			if (!nnp) print service ": no no-new-privileges:true in security_opt"
			if (!mem) print service ": no mem_limit"
			if (!cpus) print service ": no cpus"
			if (!pids) print service ": no pids_limit"
		}
		/^[^ ]/ { report(); service = ""; in_services = ($0 ~ /^services:/); next }
		!in_services { next }
		/^  [^ -][^:]*:/ {
			report()
			service = $1; sub(":", "", service)
			read_only = drop_all = nnp = mem = cpus = pids = 0
			next
		}
		/^    [^ -][^:]*:/ {
			key = $1; sub(":", "", key)
			value = $0; sub(/^[^:]*: */, "", value); gsub(/["\047]/, "", value)
			if (key == "read_only" && value == "true") read_only = 1
			if (key == "mem_limit" && value != "" && value != "0") mem = 1
			if (key == "cpus" && value != "" && value != "0") cpus = 1
			if (key == "pids_limit" && value != "" && value != "0") pids = 1
			if (key == "cap_drop" && value ~ /^\[ *ALL *\]$/) drop_all = 1
			next
		}
		/^ +- / {
			item = $0; sub(/^ +- */, "", item); gsub(/["\047]/, "", item)
			if (key == "cap_drop" && item == "ALL") drop_all = 1
			if (key == "security_opt" && item == "no-new-privileges:true") nnp = 1
		}
		END { report() }
	'
}

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

is_stale() { [[ $1 == "$STALE_PREFIX"* ]]; }

# booksvc_log_has TEXT...: whether one line of booksvc's log holds every TEXT.
booksvc_log_has() {
	local lines text
	lines=$(compose logs --no-color booksvc 2>/dev/null) || return 1
	for text in "$@"; do
		lines=$(grep -F -- "$text" <<<"$lines") || return 1
	done
}

# wait_for_log SECONDS TEXT...: waits until a line of booksvc's log holds every TEXT.
wait_for_log() {
	local limit=$1 t0=$SECONDS
	shift
	until booksvc_log_has "$@"; do
		((SECONDS - t0 < limit)) || die "no line of booksvc's log holds $* within $limit s"
		sleep 0.2
	done
	log "    booksvc logged: $*"
}

# With the database gone, the next read is the stored body, marked stale, fast.
assert_stale() {
	local expected_body=$1
	request GET /
	expect "a stale 200 after the database went away" test "$STATUS" = 200
	expect "Cache-Status says hit, and why ($CACHE_STATUS)" is_stale "$CACHE_STATUS"
	expect "an Age header" test -n "$AGE"
	expect "the same body as the fresh answer" test "$BODY" = "$expected_body"
	expect "the stale answer within $STALE_WITHIN s" within "$TOOK" "$STALE_WITHIN"
	log "    stale answer in ${TOOK}s, age ${AGE}s"
}

# --- the story -----------------------------------------------------------------

step "compose: ${COMPOSE[*]}; images: ${POSTGRES_IMAGE:-postgres:15}, ${REDIS_IMAGE:-redis:7}, bookstore/storagesvc, bookstore/booksvc (${UP[*]})"
compose down -v --remove-orphans >/dev/null 2>&1 || true

step "no published port but booksvc's (compose config)"
config=$(compose config)
# Services of a profile (Prometheus, `observability`: on 127.0.0.1 only) are not started
# here; docker-compose v1 lists them in its config all the same, v2 leaves them out.
published=$(awk '
	/^services:/ { in_services = 1; next }
	/^[^ ]/ { in_services = 0 }
	in_services && /^  [a-z]/ { service = $1; sub(":", "", service) }
	in_services && /^    ports:/ { ports[service] = 1 }
	in_services && /^    profiles:/ { profiled[service] = 1 }
	END { for (service in ports) if (!(service in profiled)) print service }
' <<<"$config")
[[ $published == booksvc ]] || die "services publishing ports: '${published//$'\n'/ }' (expected only booksvc)"

step "every service hardened (compose config): read_only, cap_drop ALL, no-new-privileges, memory/CPU/pids limits"
unhardened=$(unhardened_services <<<"$config")
[[ -z $unhardened ]] || die "not hardened: ${unhardened//$'\n'/; }"

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

step "the engine applied the hardening: read-only root, capabilities, no-new-privileges, limits"
for service in database redis storagesvc booksvc; do
	read -r read_only cap_drop security_opt memory cpus pids < <(docker inspect -f \
		'{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}' \
		"$(container_of "$service")")
	[[ $read_only == true && $cap_drop == '["ALL"]' && $security_opt == *'"no-new-privileges:true"'* ]] ||
		die "$service: read-only $read_only, cap_drop '$cap_drop', security_opt '$security_opt'"
	((memory > 0 && cpus > 0 && pids > 0)) || die "$service: memory $memory, nano CPUs $cpus, pids $pids"
	log "    $service: read-only, cap_drop ALL, no-new-privileges, $((memory / 1024 / 1024)) MiB, $((cpus / 10000000))% CPU, $pids pids"
done
# The database's entrypoint drops to postgres; the server keeps no capability.
database_caps=$(docker exec "$(container_of database)" sh -c 'grep CapEff /proc/1/status')
[[ $database_caps == *0000000000000000 ]] || die "PostgreSQL runs with capabilities: $database_caps"

step "networks: booksvc reaches storagesvc and Redis, never PostgreSQL"
can_connect booksvc storagesvc 8082 || die "booksvc cannot reach storagesvc:8082"
can_connect booksvc redis 6379 || die "booksvc cannot reach redis:6379"
can_connect storagesvc database 5432 || die "storagesvc cannot reach database:5432"
! can_connect booksvc database 5432 || die "booksvc can open a connection to database:5432"
# Not by name, and not by address either: the data network is not booksvc's.
database_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(container_of database)")
! can_connect booksvc "$database_ip" 5432 || die "booksvc can open a connection to $database_ip:5432"
log "    booksvc: storagesvc:8082 and redis:6379 open; database:5432 and $database_ip:5432 do not"

step "Redis wants its password"
redis_container=$(container_of redis)
answer=$(docker exec "$redis_container" env -u REDISCLI_AUTH redis-cli ping 2>&1) || true
[[ $answer == *NOAUTH* ]] || die "Redis answered '$answer' to a client without the password"
answer=$(docker exec "$redis_container" redis-cli ping 2>&1) || true
[[ $answer == PONG ]] || die "Redis answered '$answer' to a client with the password"
policy=$(docker exec "$redis_container" redis-cli config get maxmemory-policy | tail -1)
[[ $policy == allkeys-lru ]] || die "Redis's maxmemory-policy is '$policy'"

step "writes need booksvc's writer credential; reads need none"
WRITER_TOKEN=$(env_of booksvc AUTH_TOKENS | cut -d, -f1)
[[ -n $WRITER_TOKEN ]] || die "booksvc has no AUTH_TOKENS"
readonly WRITER_TOKEN
request POST /books '{"title":"Anonymous","author":"Compose Smoke"}'
expect "an anonymous POST answers 401" test "$STATUS" = 401
request DELETE /books/1
expect "an anonymous DELETE answers 401" test "$STATUS" = 401
request DELETE /books/1 "" "not-the-writer-token"
expect "a DELETE with a wrong token answers 401" test "$STATUS" = 401
request GET /books/1
expect "book 1 is still there" test "$STATUS" = 200
request POST /books '{"title":"Written with the token","author":"Compose Smoke"}' "$WRITER_TOKEN"
expect "a POST with the writer token answers 201" test "$STATUS" = 201
expect "the write is marked forwarded by method" test "$CACHE_STATUS" = "$FORWARDED_WRITE"
request DELETE "$LOCATION" "" "$WRITER_TOKEN"
expect "a DELETE with the writer token answers 204" test "$STATUS" = 204
expect "the DELETE is marked forwarded by method" test "$CACHE_STATUS" = "$FORWARDED_WRITE"

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

step "booksvc stays ready, and its public readiness says only that"
request GET /.well-known/health
expect "booksvc's readiness answers 200 while the database is down" test "$STATUS" = 200
expect 'the public readiness body is {"status":"up"} and nothing else' test "$BODY" = '{"status":"up"}'

step "booksvc's breaker opens (its log says so), then reads are answered breaker-open"
t0=$SECONDS
until booksvc_log_has 'circuit breaker for storagesvc opened' '"from":"closed"' '"to":"open"'; do
	((SECONDS - t0 < BREAKER_OPEN_WITHIN)) || die "booksvc's log shows no breaker opening within $BREAKER_OPEN_WITHIN s of reads"
	assert_stale "$fresh_body"
	sleep 0.2
done
log "    opened after $((SECONDS - t0)) s of reads"
# The first open delay is at least half a second; the read that comes after it is the
# half-open probe, answered upstream-unavailable, so a few tries are allowed.
for _ in 1 2 3 4 5; do
	assert_stale "$fresh_body"
	[[ $CACHE_STATUS == "${STALE_PREFIX}breaker-open" ]] && break
	sleep 0.1
done
expect "a read while the breaker is open says breaker-open" test "$CACHE_STATUS" = "${STALE_PREFIX}breaker-open"
wait_for_log "$LOG_WITHIN" 'answering from the last-good store' '"reason":"breaker-open"'

step "compose start database: fresh answers within $FRESH_WITHIN s, the breaker closed again"
quietly compose start database
wait_fresh / "$FRESH_WITHIN"
wait_for_log "$LOG_WITHIN" 'circuit breaker for storagesvc changed state' '"from":"open"' '"to":"half_open"'
wait_for_log "$LOG_WITHIN" 'circuit breaker for storagesvc changed state' '"from":"half_open"' '"to":"closed"'

database_container=$(docker inspect -f '{{.Name}}' "$(container_of database)")
database_container=${database_container#/}
step "docker stop $database_container: the same as compose stop"
docker stop "$database_container" >/dev/null
assert_stale "$fresh_body"
docker start "$database_container" >/dev/null
wait_fresh / "$FRESH_WITHIN"

step "a book created through booksvc survives down and up"
request POST /books '{"title":"Survives a restart","author":"Compose Smoke"}' "$WRITER_TOKEN"
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
