#!/usr/bin/env bash
# Measures booksvc's `GET /books` in one run, on one machine:
#
#   1. happy path: booksvc, and storagesvc directly, under the same load;
#      booksvc's throughput as a share of the direct one      target >= 70%
#   2. the database container stopped and booksvc's circuit breaker open
#      (last good answers in memory and Redis): p50/p99        target p99 <= 5 ms
#      and every answer must be a 200
#
# plus each service's peak memory. Default load: 64 connections, 30 s per run
# after a warm-up; `--quick` makes it a 5 s smoke check.
#
# `--traces` measures something else: the cost of exporting traces. booksvc's
# happy path, once with no OTLP endpoint (no trace layer installed), once with
# both services exporting a share of the traces (OTEL_TRACES_SAMPLER=
# parentbased_traceidratio, `--sample-ratio`, default 0.1) and once exporting
# every span, to a local OTLP receiver (a few lines of Python that accept and
# drop what they are sent, on the same cores); targets: with sampled traces, throughput at
# least 90% of without, and the CPU time booksvc and storagesvc spend per
# answer at most 110% of without (the steadier figure on a shared machine).
# The every-span run is printed beside it.
#
# `--callgrind` counts the instructions booksvc executes per proxied read:
# booksvc alone under valgrind's callgrind, 4 connections over 900 distinct
# URLs (every answer proxied), counters zeroed after a warm-up; prints the
# instructions per answer and the functions that cost the most, inclusive.
# Instruction counts are the same from run to run whatever else the machine
# does, unlike CPU times; they leave out the time spent in the kernel.
#
# `--hop` measures the cost of the hop itself: the same load, spread over
# distinct keys, on storagesvc directly, on booksvc and on the nginx peer
# (bench/nginx) in front of the same storagesvc, and prints the CPU time each
# process spent per answer (booksvc, nginx, storagesvc, PostgreSQL, Redis,
# wrk), and how many answers were proxied (storagesvc's own count) rather than
# stale or coalesced; targets: booksvc <= 100 us per answer, storagesvc <= 120
# us, booksvc below nginx, booksvc's throughput >= 75% of the direct one,
# every answer fresh.
#
# booksvc lets concurrent identical reads share one upstream call, so with
# every client asking for the same list it forwards only a small share of the
# requests and can beat storagesvc's own throughput. `--distinct-keys N`
# spreads the requests over N different URLs (`/books?limit=...`, all
# answering the whole list), which measures the cost of the read path itself.
#
# This is a measurement, not a test: a missed target is printed as MISSED and
# the script still exits 0. It exits non-zero only when the measurement itself
# cannot be trusted: a container or a service does not start, the breaker does
# not open, a response is not 2xx/3xx, wrk reports socket errors or timeouts,
# wrk is missing and cannot be installed.
#
# Everything runs on this machine and every connection goes to 127.0.0.1: wrk,
# booksvc, storagesvc, PostgreSQL and Redis share the same CPU cores (nothing
# is pinned), so the figures are those of the whole stack on this machine; the
# summary shows how the CPU time was shared out.
#
# Progress goes to stderr; the summary (meant to be pasted into a report) goes
# to stdout.

set -Eeuo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
ROOT_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
readonly ROOT_DIR

# The project's targets. Fixed here rather than taken from the environment so
# that a printed "met" always means the same thing.
readonly TARGET_SHARE_PCT=70
readonly TARGET_STALE_P99_MS=5
# --traces: booksvc's throughput with traces exported, as a share of without.
readonly TARGET_TRACED_SHARE_PCT=90
# --traces: the hop's CPU time per answer with traces, as a share of without.
readonly TARGET_TRACED_CPU_PCT=110

# --hop: CPU per answer (microseconds) and throughput against the direct one.
readonly TARGET_HOP_BOOKSVC_US=100
readonly TARGET_HOP_STORAGESVC_US=120
readonly TARGET_HOP_SHARE_PCT=75

# Knobs (see --help). The defaults are the conditions the targets are set for.
DURATION=${DURATION:-}
WARMUP=${WARMUP:-}
CONNECTIONS=${CONNECTIONS:-}
THREADS=${THREADS:-2}
WRK_TIMEOUT=${WRK_TIMEOUT:-2s}
READY_TIMEOUT=${READY_TIMEOUT:-90}
PG_NETWORK=${PG_NETWORK:-published}
LOG_LEVEL=${LOG_LEVEL:-info}
DISTINCT_KEYS=${DISTINCT_KEYS:-}
LOG_DIR=${LOG_DIR:-}
NGINX_PEER_IMAGE=${NGINX_PEER_IMAGE:-bookstore/nginx-peer:latest}
# Every container this script starts is named with this prefix.
CONTAINER_PREFIX=${CONTAINER_PREFIX:-bench-booksvc}

# Above this share of CPU in use before the load starts, the machine is not
# idle (a build, tests) and the figures say more about that than about the
# services; they are still printed, with a warning.
readonly BUSY_WARN_PCT=15

readonly DB_NAME=books
readonly DB_USER=bench

usage() {
	cat <<EOF
Usage: ${0##*/} [--quick] [--no-build] [--traces | --hop | --callgrind] [--duration D] [--warmup D]
                        [--connections N] [--threads N] [--distinct-keys N]

Benchmarks booksvc's GET /books with wrk, in one run:
  1. happy path: storagesvc directly (with its bearer token), then booksvc in
     front of it, under the same load; booksvc's throughput as a share of the
     direct one (target >= $TARGET_SHARE_PCT%)
  2. the PostgreSQL container stopped and booksvc's breaker open, with the
     last good answer stored: booksvc's p50/p99 (target p99 <= $TARGET_STALE_P99_MS ms), and
     every answer must be a 200
and prints req/s, p50/p99 and each service's peak RSS. A missed target is
reported as MISSED, not as a failure; the exit status is non-zero only when
the measurement could not be made or saw errors (something not starting, the
breaker not opening, non-2xx responses, socket errors, wrk unavailable).

Steps: build storagesvc and booksvc (release), build or reuse the local
PostgreSQL and Redis images (scripts/offline-images.sh), start both on random
127.0.0.1 ports, start storagesvc and booksvc on 127.0.0.1 (RUST_LOG=$LOG_LEVEL,
JSON logs written to files), wait until healthy, warm up and measure each
run. Everything started is stopped on exit, also on failure or Ctrl-C.

Needs: cargo, docker (engine running), curl, ss, and wrk (installed with
apt-get if missing, which needs root or sudo).

Options:
  --quick            smoke check: 5s runs after 2s warm-ups (unless
                     --duration/--warmup say otherwise)
  --no-build         use the existing release binaries instead of cargo build
  --traces           instead of the two phases: booksvc's happy path without
                     traces, then with both services exporting a share of
                     the traces (--sample-ratio) to a local OTLP receiver
                     (target: at least $TARGET_TRACED_SHARE_PCT% of the throughput without),
                     then every span; with --distinct-keys, each answer is
                     one traced call through storagesvc
  --sample-ratio R   --traces: the share of traces the sampled run records
                     (OTEL_TRACES_SAMPLER_ARG; default 0.1)
  --hop              instead of the two phases: the cost of one hop. The same
                     load, over distinct keys (900 unless --distinct-keys
                     says otherwise), on storagesvc directly, on booksvc, and
                     on the nginx peer (NGINX_PEER_IMAGE) in front of the
                     same storagesvc; prints each process's CPU time per
                     answer and how many answers storagesvc served (a stale
                     or coalesced answer is not a proxied one). Targets:
                     booksvc <= $TARGET_HOP_BOOKSVC_US us per answer, storagesvc <= $TARGET_HOP_STORAGESVC_US us,
                     booksvc below nginx, booksvc's throughput >= $TARGET_HOP_SHARE_PCT% of the
                     direct one, every answer fresh. Defaults: 32
                     connections, 20s runs
  --callgrind        instead of the two phases: booksvc under valgrind's
                     callgrind, 4 connections over distinct keys (900
                     unless --distinct-keys says otherwise), 20s measured
                     after a 10s warm-up; prints booksvc's instructions per
                     proxied answer and the costliest functions (needs
                     valgrind, installed with apt-get if missing)
  --duration D       each measured run (default 30s; wrk syntax: 30s, 2m, ...)
  --warmup D         load before each measured run, not counted (default 5s)
  --connections N    concurrent connections (default 64)
  --threads N        wrk threads (default 2)
  --distinct-keys N  spread the requests over N different URLs (1 to 900),
                     /books?limit=1000, 999, ..., each answering the whole
                     list, so that booksvc cannot share one upstream call
                     between concurrent requests (default 0: all requests
                     are GET /books)
  -h, --help         show this help

Environment:
  DURATION, WARMUP, CONNECTIONS, THREADS, DISTINCT_KEYS   as the options above
  WRK_TIMEOUT    wrk's per-request timeout (default 2s); a timeout is an error
  READY_TIMEOUT  seconds to wait for each container and service (default 90)
  PG_NETWORK     how the services reach PostgreSQL and Redis:
                   published  (default) ports published on 127.0.0.1, so
                              through Docker's userland proxy (docker-proxy),
                              which then competes for the same CPUs
                   host       the containers share the host's network and
                              listen on 127.0.0.1 only: no proxy, closer to a
                              deployment where all sit on one network
  LOG_LEVEL      RUST_LOG of both services (default info: one line per request;
                 ACCESS_LOG=errors or off, passed on, leaves it out)
  LOG_DIR        where logs and raw wrk output go (default: a new directory
                 under \${TMPDIR:-/tmp}); kept after the run
  NGINX_PEER_IMAGE  the nginx peer of --hop (default
                 bookstore/nginx-peer:latest, made by bench/nginx/build-image.sh);
                 run on the host network, listening on a free 127.0.0.1 port
  CONTAINER_PREFIX  prefix of the containers' names (default bench-booksvc)
  POSTGRES_IMAGE, REDIS_IMAGE  images to use (default: built by
                 scripts/offline-images.sh)
  CARGO_TARGET_DIR  honoured when locating the binaries
Other settings of the services in the environment (DB_MAX_CONNECTIONS,
REQUEST_DEADLINE, ...) are passed through; BIND_ADDR, ADMIN_BIND_ADDR,
DATABASE_URL, AUTH_TOKENS, STORAGESVC_URL, STORAGESVC_BEARER_TOKEN, REDIS_URL, LOG_FORMAT and
RUST_LOG are set by the script.
EOF
}

LOG_PREFIX=bench-booksvc
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"
# shellcheck source=scripts/bench-lib.sh
source "$SCRIPT_DIR/bench-lib.sh"

BUILD=true
QUICK=false
TRACES=false
HOP=false
CALLGRIND=false
SAMPLE_RATIO=0.1
parse_args() {
	while [[ $# -gt 0 ]]; do
		case $1 in
		-h | --help)
			usage
			exit 0
			;;
		--quick) QUICK=true ;;
		--no-build) BUILD=false ;;
		--traces) TRACES=true ;;
		--hop) HOP=true ;;
		--callgrind) CALLGRIND=true ;;
		--duration | --warmup | --connections | --threads | --distinct-keys | --sample-ratio)
			[[ $# -ge 2 ]] || die "$1 needs a value"
			case $1 in
			--duration) DURATION=$2 ;;
			--warmup) WARMUP=$2 ;;
			--connections) CONNECTIONS=$2 ;;
			--threads) THREADS=$2 ;;
			--distinct-keys) DISTINCT_KEYS=$2 ;;
			--sample-ratio) SAMPLE_RATIO=$2 ;;
			esac
			shift
			;;
		*)
			usage >&2
			die "unknown argument: $1"
			;;
		esac
		shift
	done
	local modes=0
	for mode in "$TRACES" "$HOP" "$CALLGRIND"; do
		[[ $mode == false ]] || modes=$((modes + 1))
	done
	((modes <= 1)) || die "--traces, --hop and --callgrind are separate runs; give one"
	if [[ $QUICK == true ]]; then
		DURATION=${DURATION:-5s}
		WARMUP=${WARMUP:-2s}
	fi
	if [[ $HOP == true ]]; then
		# The conditions of the issue's measurement: 32 connections, 20 s,
		# every request a different page.
		CONNECTIONS=${CONNECTIONS:-32}
		DURATION=${DURATION:-20s}
		DISTINCT_KEYS=${DISTINCT_KEYS:-900}
	fi
	if [[ $CALLGRIND == true ]]; then
		# Few connections: under callgrind booksvc runs one thread at a
		# time, some fifty times slower, and a deep queue would only add
		# waiting, and timeouts.
		CONNECTIONS=${CONNECTIONS:-4}
		DURATION=${DURATION:-20s}
		WARMUP=${WARMUP:-10s}
		DISTINCT_KEYS=${DISTINCT_KEYS:-900}
		WRK_TIMEOUT=${WRK_TIMEOUT:-10s}
	fi
	CONNECTIONS=${CONNECTIONS:-64}
	DISTINCT_KEYS=${DISTINCT_KEYS:-0}
	DURATION=${DURATION:-30s}
	WARMUP=${WARMUP:-5s}
}

validate_settings() {
	validate_common_settings
	# limit=1000 down to limit=101: every page holds the whole list as long
	# as there are at most 100 books (checked once they are known).
	if ! [[ $DISTINCT_KEYS =~ ^[0-9]+$ ]] || ((10#$DISTINCT_KEYS > 900)); then
		die "DISTINCT_KEYS='$DISTINCT_KEYS' is not a number from 0 to 900"
	fi
	DISTINCT_KEYS=$((10#$DISTINCT_KEYS))
	[[ $SAMPLE_RATIO =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ ]] ||
		die "--sample-ratio '$SAMPLE_RATIO' is not a ratio from 0 to 1"
	if [[ $HOP == true || $CALLGRIND == true ]] && ((DISTINCT_KEYS == 0)); then
		die "--hop and --callgrind measure proxied answers: they need distinct keys (--distinct-keys 1 to 900)"
	fi
	[[ $CONTAINER_PREFIX =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ ]] ||
		die "CONTAINER_PREFIX='$CONTAINER_PREFIX' is not a container name prefix"
}

check_tools() {
	# ss finds the ports the services bound (they bind port 0, so no other
	# program can take a port picked in advance) and free ports for the
	# containers on the host network.
	require_tools ss cmp
	check_common_tools
	if [[ $CALLGRIND == true ]]; then
		ensure_package callgrind_control valgrind
	fi
}

# --- clean-up -----------------------------------------------------------------

PG_NAME=""
REDIS_NAME=""
SVC_PID=""
BOOK_PID=""
SINK_PID=""
NGINX_NAME=""

# Called by cleanup on exit.
stop_started() {
	local rc=$1
	# booksvc first: it is the client of the others.
	stop_process "$BOOK_PID"
	stop_process "$SVC_PID"
	BOOK_PID=""
	SVC_PID=""
	if ((rc != 0)) && [[ -n $PG_NAME ]]; then
		log "last PostgreSQL log lines:"
		docker logs --tail 10 "$PG_NAME" 2>&1 | sed 's/^/    /' >&2
	fi
	remove_container "$NGINX_NAME"
	remove_container "$PG_NAME"
	remove_container "$REDIS_NAME"
	stop_process "$SINK_PID"
	SINK_PID=""
}

# --- containers ---------------------------------------------------------------

ensure_images() {
	if [[ -z ${POSTGRES_IMAGE:-} || -z ${REDIS_IMAGE:-} ]]; then
		log "building or reusing the local PostgreSQL and Redis images"
		local exports
		exports=$("$SCRIPT_DIR/offline-images.sh") || die "scripts/offline-images.sh failed"
		# Images given in the environment win over the local ones.
		local pg=${POSTGRES_IMAGE:-} redis=${REDIS_IMAGE:-}
		eval "$exports"
		POSTGRES_IMAGE=${pg:-$POSTGRES_IMAGE}
		REDIS_IMAGE=${redis:-$REDIS_IMAGE}
	fi
	[[ -n ${POSTGRES_IMAGE:-} && -n ${REDIS_IMAGE:-} ]] || die "no POSTGRES_IMAGE or REDIS_IMAGE"
}

# run_container NAME SERVER_PORT IMAGE LISTEN_ARGS [DOCKER_RUN_OPTIONS...]:
# starts a container on the network PG_NETWORK asks for, and sets PORT (where
# it answers on 127.0.0.1) and INNER_PORT (where it listens inside the
# container). On the host network, the server's address and port options are
# the output of the function LISTEN_ARGS, called with the port picked.
run_container() {
	local name=$1 default_port=$2 image=$3 listen_args=$4
	shift 4
	local -a net_opts server_args=()
	case $PG_NETWORK in
	published)
		# 127.0.0.1::PORT lets Docker choose a free host port, on loopback
		# only.
		INNER_PORT=$default_port
		net_opts=(-p "127.0.0.1::$default_port")
		;;
	host)
		# The host's network namespace, but listening on loopback only;
		# connections arrive without docker-proxy in between.
		PORT=$(pick_free_port)
		INNER_PORT=$PORT
		net_opts=(--network host)
		read -r -a server_args <<<"$("$listen_args" "$PORT")"
		;;
	esac
	# No --rm: when a server fails to start, its logs must still be there to
	# show; the EXIT trap removes the container in every case.
	docker run -d --name "$name" \
		--label org.bookstore.purpose=bench-booksvc \
		"$@" "${net_opts[@]}" "$image" "${server_args[@]}" >/dev/null ||
		die "docker run of $image failed"
	if [[ $PG_NETWORK == published ]]; then
		local mapping
		mapping=$(docker port "$name" "$default_port/tcp" | head -n 1)
		PORT=${mapping##*:}
		[[ $PORT =~ ^[0-9]+$ ]] || die "cannot tell the host port of $name (docker port said '$mapping')"
	fi
}

pg_listen_args() { printf '%s\n' "-c listen_addresses=127.0.0.1 -c port=$1"; }
redis_listen_args() { printf '%s\n' "--bind 127.0.0.1 --port $1"; }

# Docker's userland proxy relays every byte to a published port; its CPU use
# is reported separately. Looked up for reading /proc only.
proxy_pid() {
	[[ $PG_NETWORK == published ]] || return 0
	pgrep -f -- "docker-proxy .*-host-port $1( |$)" | head -n 1 || true
}

# wait_container NAME WHAT CHECK...: polls CHECK until it succeeds.
wait_container() {
	local name=$1 what=$2 deadline=$((SECONDS + READY_TIMEOUT))
	shift 2
	until "$@" >/dev/null 2>&1; do
		if [[ $(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null) != true ]]; then
			docker logs --tail 10 "$name" 2>&1 | sed 's/^/    /' >&2
			die "the $what container stopped during start-up"
		fi
		((SECONDS < deadline)) || die "$what not ready after ${READY_TIMEOUT}s"
		sleep 0.5
	done
}

PG_PORT=""
PG_INNER_PORT=""
PG_PID=""
PG_PROXY_PID=""
start_postgres() {
	PG_NAME="$CONTAINER_PREFIX-pg-$$-$RANDOM"
	DB_PASSWORD=$(random_hex)
	log "starting PostgreSQL ($POSTGRES_IMAGE, network: $PG_NETWORK) as container $PG_NAME"
	run_container "$PG_NAME" 5432 "$POSTGRES_IMAGE" pg_listen_args \
		-e POSTGRES_USER="$DB_USER" \
		-e POSTGRES_PASSWORD="$DB_PASSWORD" \
		-e POSTGRES_DB="$DB_NAME"
	PG_PORT=$PORT
	PG_INNER_PORT=$INNER_PORT
	PG_PID=$(docker inspect -f '{{.State.Pid}}' "$PG_NAME")
	PG_PROXY_PID=$(proxy_pid "$PG_PORT")
	# Over TCP on purpose: during initialisation the image runs a temporary
	# server on the Unix socket only, which pg_isready would report as
	# ready before the real server is up.
	wait_container "$PG_NAME" PostgreSQL \
		docker exec "$PG_NAME" pg_isready -q -h 127.0.0.1 -p "$PG_INNER_PORT" -U "$DB_USER" -d "$DB_NAME"
	log "PostgreSQL ready on 127.0.0.1:$PG_PORT"
}

REDIS_PORT=""
REDIS_INNER_PORT=""
REDIS_PID=""
REDIS_PROXY_PID=""
start_redis() {
	REDIS_NAME="$CONTAINER_PREFIX-redis-$$-$RANDOM"
	log "starting Redis ($REDIS_IMAGE, network: $PG_NETWORK) as container $REDIS_NAME"
	run_container "$REDIS_NAME" 6379 "$REDIS_IMAGE" redis_listen_args
	REDIS_PORT=$PORT
	REDIS_INNER_PORT=$INNER_PORT
	REDIS_PID=$(docker inspect -f '{{.State.Pid}}' "$REDIS_NAME")
	REDIS_PROXY_PID=$(proxy_pid "$REDIS_PORT")
	wait_container "$REDIS_NAME" Redis redis_ping
	log "Redis ready on 127.0.0.1:$REDIS_PORT"
}

# start_nginx: the nginx peer (NGINX_PEER_IMAGE) in front of storagesvc, with
# the image's own configuration except where it listens: on the host network,
# as the services here, on a free 127.0.0.1 port, so that it reaches
# storagesvc on loopback with no docker-proxy in between. Its cache on a tmpfs,
# as in the drill's compose file. Sets NGINX_PORT and NGINX_PID (the
# container's main process, whose cgroup gives the CPU time of all of nginx's
# processes).
NGINX_PORT=""
NGINX_PID=""
start_nginx() {
	docker image inspect "$NGINX_PEER_IMAGE" >/dev/null 2>&1 ||
		die "no image $NGINX_PEER_IMAGE: build it with bench/nginx/build-image.sh (or set NGINX_PEER_IMAGE)"
	local template=$LOG_DIR/nginx-peer.conf.template
	docker run --rm --name "$CONTAINER_PREFIX-nginx-template-$$" --entrypoint cat \
		"$NGINX_PEER_IMAGE" /etc/nginx/nginx-peer.conf.template >"$template" ||
		die "cannot read the configuration template of $NGINX_PEER_IMAGE"
	NGINX_PORT=$(pick_free_port)
	sed -i "s/^\([[:space:]]*\)listen 8080;/\1listen 127.0.0.1:$NGINX_PORT;/" "$template"
	grep -q "listen 127.0.0.1:$NGINX_PORT;" "$template" ||
		die "the configuration of $NGINX_PEER_IMAGE has no 'listen 8080;' to move to a free port"
	# Read by nginx's user inside the container.
	chmod 0644 "$template"
	NGINX_NAME="$CONTAINER_PREFIX-nginx-$$-$RANDOM"
	log "starting the nginx peer ($NGINX_PEER_IMAGE) as container $NGINX_NAME"
	docker run -d --name "$NGINX_NAME" \
		--label org.bookstore.purpose=bench-booksvc \
		--network host --no-healthcheck \
		--tmpfs /var/cache/nginx-peer:size=64m,uid=33,gid=33,mode=0700 \
		-v "$template:/etc/nginx/nginx-peer.conf.template:ro" \
		-e STORAGESVC_ADDR="127.0.0.1:$SVC_PORT" \
		-e STORAGESVC_TOKEN="$TOKEN" \
		"$NGINX_PEER_IMAGE" >/dev/null || die "docker run of $NGINX_PEER_IMAGE failed"
	NGINX_PID=$(docker inspect -f '{{.State.Pid}}' "$NGINX_NAME")
	wait_container "$NGINX_NAME" nginx \
		curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$NGINX_PORT/.well-known/alive"
	log "nginx peer ready on 127.0.0.1:$NGINX_PORT"
}

redis_cli() { docker exec "$REDIS_NAME" redis-cli -p "$REDIS_INNER_PORT" "$@"; }
redis_ping() { [[ $(redis_cli ping) == PONG ]]; }

# --- the services -------------------------------------------------------------

SVC_BIN=""
BOOK_BIN=""
build_services() {
	local dir="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/release"
	SVC_BIN=$dir/storagesvc
	BOOK_BIN=$dir/booksvc
	if [[ $BUILD == true ]]; then
		command -v cargo >/dev/null || die "cargo is not installed (or use --no-build with existing binaries)"
		log "building storagesvc and booksvc (release)"
		(cd "$ROOT_DIR" && cargo build --release -p storagesvc -p booksvc >&2) || die "cargo build failed"
	fi
	[[ -x $SVC_BIN ]] || die "no binary at $SVC_BIN (build it, or drop --no-build)"
	[[ -x $BOOK_BIN ]] || die "no binary at $BOOK_BIN (build it, or drop --no-build)"
}

service_fail() {
	log "last $1 log lines ($2):"
	tail -n 20 "$2" 2>/dev/null | sed 's/^/    /' >&2
	die "$3"
}

# wait_service NAME PID LOGFILE ADMIN_PORT: waits until the process listens on
# its public port (the one that is not ADMIN_PORT) and its readiness answers
# 200; prints the public port.
wait_service() {
	local name=$1 pid=$2 logfile=$3 admin_port=$4 port="" code=""
	local deadline=$((SECONDS + READY_TIMEOUT))
	while [[ -z $port ]]; do
		pid_alive "$pid" || service_fail "$name" "$logfile" "$name exited during start-up"
		port=$(ss -Hltnp 2>/dev/null |
			awk -v pid="pid=$pid," -v admin="$admin_port" \
				'index($0, pid) { n = split($4, a, ":"); if (a[n] != admin) { print a[n]; exit } }')
		[[ -n $port ]] && break
		((SECONDS < deadline)) || service_fail "$name" "$logfile" "$name not listening after ${READY_TIMEOUT}s"
		sleep 0.1
	done
	until code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
		"http://127.0.0.1:$port/.well-known/health") && [[ $code == 200 ]]; do
		pid_alive "$pid" || service_fail "$name" "$logfile" "$name exited during start-up"
		((SECONDS < deadline)) || service_fail "$name" "$logfile" "$name not healthy after ${READY_TIMEOUT}s (last status: ${code:-none})"
		sleep 0.25
	done
	printf '%s\n' "$port"
}

# A plain `cmd &` execs the service in the forked child (env execs too), so $!
# is the service itself, whose /proc entry gives its memory and CPU figures.
SVC_PORT=""
SVC_ADMIN_PORT=""
start_storagesvc() {
	local logfile=$LOG_DIR/storagesvc.log
	log "starting storagesvc (RUST_LOG=$LOG_LEVEL), logs in $logfile"
	SVC_ADMIN_PORT=$(pick_free_port)
	BIND_ADDR=127.0.0.1:0 \
		ADMIN_BIND_ADDR=127.0.0.1:$SVC_ADMIN_PORT \
		DATABASE_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME" \
		AUTH_TOKENS="$TOKEN" \
		LOG_FORMAT=json \
		RUST_LOG="$LOG_LEVEL" \
		env "${OTEL_UNSET[@]}" "${OTEL_SET[@]}" "$SVC_BIN" >>"$logfile" 2>&1 </dev/null &
	SVC_PID=$!
	# Healthy means the database answers and migrations (with the seed books)
	# have run.
	SVC_PORT=$(wait_service storagesvc "$SVC_PID" "$logfile" "$SVC_ADMIN_PORT")
	log "storagesvc healthy on 127.0.0.1:$SVC_PORT (pid $SVC_PID)"
}

BOOK_PORT=""
# What booksvc runs under (--callgrind: valgrind, which keeps booksvc's pid).
BOOK_WRAPPER=()
# booksvc's admin listener: /metrics and the detailed readiness (breaker state).
BOOK_ADMIN_PORT=""
start_booksvc() {
	local logfile=$LOG_DIR/booksvc.log
	log "starting booksvc (RUST_LOG=$LOG_LEVEL), logs in $logfile"
	BOOK_ADMIN_PORT=$(pick_free_port)
	# Only the bearer token authenticates to storagesvc: other STORAGESVC_*
	# credentials from the environment would compete with it.
	env -u STORAGESVC_API_KEY -u STORAGESVC_BASIC_USER -u STORAGESVC_BASIC_PASSWORD \
		-u STORAGESVC_OAUTH_TOKEN_URL -u STORAGESVC_OAUTH_CLIENT_ID -u STORAGESVC_OAUTH_CLIENT_SECRET \
		"${OTEL_UNSET[@]}" \
		BIND_ADDR=127.0.0.1:0 \
		ADMIN_BIND_ADDR=127.0.0.1:$BOOK_ADMIN_PORT \
		STORAGESVC_URL="http://127.0.0.1:$SVC_PORT" \
		STORAGESVC_BEARER_TOKEN="$TOKEN" \
		REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
		CACHE_SIGNING_KEY="$SIGNING_KEY" \
		LOG_FORMAT=json \
		RUST_LOG="$LOG_LEVEL" \
		"${OTEL_SET[@]}" \
		"${BOOK_WRAPPER[@]}" "$BOOK_BIN" >>"$logfile" 2>&1 </dev/null &
	BOOK_PID=$!
	BOOK_PORT=$(wait_service booksvc "$BOOK_PID" "$logfile" "$BOOK_ADMIN_PORT")
	log "booksvc healthy on 127.0.0.1:$BOOK_PORT (pid $BOOK_PID)"
}

# The OTLP variables of both services: none (no traces), or the local
# receiver's endpoint once start_sink has run. The caller's OTEL_* are
# dropped, so that "without traces" means without.
OTEL_UNSET=(-u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
	-u OTEL_TRACES_SAMPLER -u OTEL_TRACES_SAMPLER_ARG)
OTEL_SET=()

# start_sink TAG: an OTLP/HTTP receiver on 127.0.0.1 that answers every export
# with an empty success and counts what it was sent (in $LOG_DIR/otlp-sink-TAG.log).
SINK_PORT=""
start_sink() {
	require_tools python3
	stop_process "$SINK_PID"
	SINK_PORT=$(pick_free_port)
	python3 - "$SINK_PORT" "$LOG_DIR/otlp-sink-$1.log" >&2 <<'PY' &
import http.server, sys
port, log = int(sys.argv[1]), sys.argv[2]
exports = received = 0
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global exports, received
        size = int(self.headers.get("content-length", 0))
        self.rfile.read(size)
        exports += 1
        received += size
        with open(log, "w") as out:
            out.write(f"{exports} {received}\n")
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
PY
	SINK_PID=$!
	local deadline=$((SECONDS + 10))
	until [[ -n $(ss -Hltn "sport = :$SINK_PORT") ]]; do
		pid_alive "$SINK_PID" || die "the OTLP receiver did not start"
		((SECONDS < deadline)) || die "the OTLP receiver is not listening after 10s"
		sleep 0.1
	done
	log "OTLP receiver on 127.0.0.1:$SINK_PORT (pid $SINK_PID)"
}

# get URL OUTFILE [curl options...]: the status code of one GET; the body goes
# to OUTFILE, the headers to OUTFILE.headers.
get() {
	local url=$1 out=$2
	shift 2
	curl -s -o "$out" -D "$out.headers" -w '%{http_code}' --max-time 5 "$@" "$url" ||
		die "GET $url failed (curl exit $?)"
}

# header FILE NAME: the value of a response header (empty when absent).
header() {
	awk -v name="$2" 'BEGIN { name = tolower(name) }
		{ sub(/\r$/, "") }
		tolower(substr($0, 1, length(name) + 1)) == name ":" { sub(/^[^:]*: */, ""); print; exit }' "$1"
}

# One request to each before the load, so that a wrong token, an empty table
# or an unexpected answer shows up as a clear message instead of as a run full
# of errors. The direct body is kept to compare booksvc's answers with.
check_books() {
	local direct=$LOG_DIR/books-direct.json via=$LOG_DIR/books-booksvc.json code status
	code=$(get "http://127.0.0.1:$SVC_PORT/books" "$direct" -H "Authorization: Bearer $TOKEN")
	[[ $code == 200 ]] || die "storagesvc: GET /books answered $code: $(head -c 300 "$direct")"
	[[ $(head -c 1 "$direct") == '[' ]] || die "storagesvc: GET /books did not return a JSON list: $(head -c 300 "$direct")"
	BOOKS_COUNT=$(grep -o '"id":' "$direct" | wc -l)
	BOOKS_BYTES=$(wc -c <"$direct")
	((BOOKS_COUNT > 0)) || die "GET /books returned an empty list; the seed books are missing"
	if ((DISTINCT_KEYS > 0 && BOOKS_COUNT > 100)); then
		die "--distinct-keys needs at most 100 books (there are $BOOKS_COUNT), so that every page is the whole list"
	fi

	code=$(get "http://127.0.0.1:$BOOK_PORT/books" "$via")
	[[ $code == 200 ]] || die "booksvc: GET /books answered $code: $(head -c 300 "$via")"
	status=$(header "$via.headers" cache-status)
	[[ $status == *fwd=miss* ]] || die "booksvc: GET /books was not a fresh answer (Cache-Status: '${status:-absent}')"
	cmp -s "$direct" "$via" || die "booksvc's GET /books body differs from storagesvc's ($direct, $via)"
}

# --- measurements -------------------------------------------------------------

# metrics_snapshot: from one read of booksvc's /metrics (admin port), the counters that
# explain a run, as "attempts attempt_us fallbacks from_memory probes answers
# over_4ms over_8ms": attempts sent to storagesvc and their total time in
# microseconds; answers from the last-good store (all, and those from
# memory); moves of the breaker to half-open (probes); GET /books answers and
# how many of them took booksvc more than 4 and 8 ms (bucket bounds of its
# latency histogram, around the 5 ms target), by its own clock.
metrics_snapshot() {
	local text
	text=$(curl -s --max-time 5 "http://127.0.0.1:$BOOK_ADMIN_PORT/metrics") ||
		die "cannot read booksvc's /metrics"
	awk '
		function is(name) {
			return index($1, name) == 1 &&
				(length($1) == length(name) || substr($1, length(name) + 1, 1) == "{")
		}
		function has(label) { return index($1, label) > 0 }
		/^#/ { next }
		is("upstream_attempts_total") { attempts += $NF }
		is("upstream_attempt_duration_seconds_sum") { attempt_us += $NF * 1e6 }
		is("fallback_answers_total") { fallbacks += $NF; if (has("source=\"memory\"")) memory += $NF }
		is("breaker_transitions_total") && has("to=\"half_open\"") { probes += $NF }
		is("http_server_request_duration_seconds_count") && has("route=\"/books\"") { answers += $NF }
		is("http_server_request_duration_seconds_bucket") && has("route=\"/books\"") {
			if (match($1, /le="[0-9.e+-]+"/)) {
				le = substr($1, RSTART + 4, RLENGTH - 5) + 0
				if (le > 0.0039 && le < 0.0041) within4 += $NF
				if (le > 0.0079 && le < 0.0081) within8 += $NF
			}
		}
		END {
			printf "%d %d %d %d %d %d %d %d\n", attempts, attempt_us, fallbacks, memory, probes,
				answers, answers - within4, answers - within8
		}' <<<"$text"
}

# breaker_state: closed, open or half_open, from booksvc's detailed readiness
# body (admin port).
breaker_state() {
	{ curl -s --max-time 5 "http://127.0.0.1:$BOOK_ADMIN_PORT/.well-known/health" || true; } |
		awk 'match($0, /"breaker":"[a-z_]+"/) { s = substr($0, RSTART, RLENGTH); sub(/.*:"/, "", s); sub(/"$/, "", s); print s }'
}

# write_wrk_script: with --distinct-keys, a wrk script that sends each request
# to the next of DISTINCT_KEYS URLs; each wrk thread cycles through a share of
# its own, so that no two threads ask for the same URL at the same moment.
WRK_SCRIPT=""
write_wrk_script() {
	((DISTINCT_KEYS > 0)) || return 0
	WRK_SCRIPT=$LOG_DIR/distinct-keys.lua
	cat >"$WRK_SCRIPT" <<EOF
-- Written by bench-booksvc.sh: GET /books?limit=L over $DISTINCT_KEYS values of L
-- from 1000 down. Each wrk thread walks its own share of them, so two
-- requests in flight ask for the same URL only when a thread has fewer URLs
-- than connections (booksvc answers concurrent reads of one URL from one
-- upstream call, which is not the read path this measures). Threads that walked
-- the same list from different places met now and then.
local keys = $DISTINCT_KEYS
local threads = 0

function setup(thread)
	local from = math.floor(threads * keys / $THREADS)
	local to = math.floor((threads + 1) * keys / $THREADS)
	if to <= from then
		-- More threads than URLs: this one walks them all.
		from, to = 0, keys
	end
	thread:set("first", from)
	thread:set("count", to - from)
	threads = threads + 1
end

function init(args)
	i = 0
end

function request()
	local n = first + i
	i = (i + 1) % count
	return wrk.format(nil, "/books?limit=" .. (1000 - n))
end
EOF
}

# cores_from_ticks SECONDS BEFORE AFTER: average cores used, from process
# clock ticks (cores_from_ns: from nanoseconds); "-" when either reading is
# missing.
cores_from_ticks() {
	awk -v s="$1" -v a="$2" -v b="$3" -v hz="$CLK_TCK" 'BEGIN {
		if (a == "" || b == "") { print "-"; exit }
		printf "%.2f\n", (b - a) / hz / s }'
}
cores_from_ns() {
	awk -v s="$1" -v a="$2" -v b="$3" 'BEGIN {
		if (a == "" || b == "") { print "-"; exit }
		printf "%.2f\n", (b - a) / 1e9 / s }'
}

# Results of each run, by tag; R_COUNTERS holds booksvc's counters over the
# measured run (see metrics_snapshot), R_SERVED the GET /books storagesvc
# answered during it, R_US the CPU time of each process over it, in
# microseconds, as "booksvc storagesvc PostgreSQL Redis nginx wrk docker-proxy"
# ("-" where there is no such process).
declare -A R_RPS R_P50 R_P99 R_MAX R_REQ R_NON2XX R_SOCKET R_CPU R_IDLE R_COUNTERS R_SERVED R_US

# storagesvc_served: GET /books (any status) storagesvc has answered since it
# started, from its /metrics (admin port).
storagesvc_served() {
	curl -s --max-time 5 "http://127.0.0.1:$SVC_ADMIN_PORT/metrics" |
		awk '$1 ~ /^http_server_requests_total\{/ && index($1, "method=\"GET\"") &&
			index($1, "route=\"/books\"") { n += $NF } END { printf "%d\n", n }' ||
		die "cannot read storagesvc's /metrics"
}

# us_from_ticks BEFORE AFTER, us_from_ns BEFORE AFTER: CPU time in
# microseconds; "-" when either reading is missing.
us_from_ticks() {
	awk -v a="$1" -v b="$2" -v hz="$CLK_TCK" 'BEGIN {
		if (a == "" || b == "") { print "-"; exit }
		printf "%.0f\n", (b - a) * 1e6 / hz }'
}
us_from_ns() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		if (a == "" || b == "") { print "-"; exit }
		printf "%.0f\n", (b - a) / 1e3 }'
}

# proxy_ticks: CPU ticks of the docker-proxy processes (none with the host
# network).
proxy_ticks() {
	[[ -n $PG_PROXY_PID$REDIS_PROXY_PID ]] || return 0
	local pid sum=0 t
	for pid in $PG_PROXY_PID $REDIS_PROXY_PID; do
		t=$(proc_cpu_ticks "$pid")
		sum=$((sum + ${t:-0}))
	done
	printf '%d\n' "$sum"
}

# counters_delta BEFORE AFTER: two metrics_snapshot readings, field by field,
# AFTER minus BEFORE.
counters_delta() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		n = split(a, x, " "); split(b, y, " ")
		for (i = 1; i <= n; i++) printf "%s%d", (i > 1 ? " " : ""), y[i] - x[i]
		print "" }'
}

# measure TAG LABEL URL [HEADER]: warms up, then measures one wrk run and
# records its figures and how the CPUs were shared during it.
measure() {
	local tag=$1 label=$2 url=$3 hdr=${4:-}
	warn_if_busy
	R_IDLE[$tag]=$IDLE_BUSY_PCT
	log "$label: warming up for ${WARMUP_S}s ($CONNECTIONS connections, $THREADS threads)"
	run_wrk "$WARMUP_S" "$LOG_DIR/wrk-$tag-warmup.txt" "$url" "$hdr"
	parse_wrk "$LOG_DIR/wrk-$tag-warmup.txt"
	check_wrk_errors "$label, warm-up" "$LOG_DIR/wrk-$tag-warmup.txt"

	log "$label: measuring for ${DURATION_S}s"
	local svc0 svc1 book0 book1 pg0 pg1 rd0 rd1 px0 px1 c0 c1 ng0 ng1 s0 s1
	c0=$(metrics_snapshot)
	s0=$(storagesvc_served)
	ng0=$(container_cpu_ns "$NGINX_PID")
	svc0=$(proc_cpu_ticks "$SVC_PID")
	book0=$(proc_cpu_ticks "$BOOK_PID")
	pg0=$(container_cpu_ns "$PG_PID")
	rd0=$(container_cpu_ns "$REDIS_PID")
	px0=$(proxy_ticks)
	timed_wrk "$DURATION_S" "$LOG_DIR/wrk-$tag.txt" "$url" "$hdr"
	px1=$(proxy_ticks)
	rd1=$(container_cpu_ns "$REDIS_PID")
	pg1=$(container_cpu_ns "$PG_PID")
	book1=$(proc_cpu_ticks "$BOOK_PID")
	svc1=$(proc_cpu_ticks "$SVC_PID")
	ng1=$(container_cpu_ns "$NGINX_PID")
	s1=$(storagesvc_served)
	c1=$(metrics_snapshot)
	R_SERVED[$tag]=$((s1 - s0))
	R_US[$tag]="$(us_from_ticks "$book0" "$book1") $(us_from_ticks "$svc0" "$svc1") $(us_from_ns "$pg0" "$pg1") $(us_from_ns "$rd0" "$rd1") $(us_from_ns "$ng0" "$ng1") $(us_from_ticks 0 "$M_WRK_TICKS") $(
		[[ -n $PG_PROXY_PID$REDIS_PROXY_PID ]] && us_from_ticks "$px0" "$px1" || echo -)"
	R_COUNTERS[$tag]=$(counters_delta "$c0" "$c1")
	pid_alive "$SVC_PID" || service_fail storagesvc "$LOG_DIR/storagesvc.log" "storagesvc died during the run"
	pid_alive "$BOOK_PID" || service_fail booksvc "$LOG_DIR/booksvc.log" "booksvc died during the run"

	parse_wrk "$LOG_DIR/wrk-$tag.txt"
	check_wrk_errors "$label" "$LOG_DIR/wrk-$tag.txt"
	R_NON2XX[$tag]=$W_NON2XX
	R_SOCKET[$tag]=$W_SOCKET_TOTAL
	R_RPS[$tag]=$(awk -v r="$W_RPS" 'BEGIN { printf "%d", r + 0.5 }')
	R_P50[$tag]=$W_P50_MS
	R_P99[$tag]=$W_P99_MS
	R_MAX[$tag]=$W_MAX_MS
	R_REQ[$tag]=$W_REQUESTS

	local secs=$M_SECS proxy_part=""
	if [[ -n $PG_PROXY_PID$REDIS_PROXY_PID ]]; then
		proxy_part=", docker-proxy $(cores_from_ticks "$secs" "$px0" "$px1")"
	fi
	R_CPU[$tag]=$(printf 'booksvc %s, storagesvc %s, wrk %s, PostgreSQL %s, Redis %s%s; busy %s of %d CPUs' \
		"$(cores_from_ticks "$secs" "$book0" "$book1")" \
		"$(cores_from_ticks "$secs" "$svc0" "$svc1")" \
		"$(cores_from_ticks "$secs" 0 "$M_WRK_TICKS")" \
		"$(cores_from_ns "$secs" "$pg0" "$pg1")" \
		"$(cores_from_ns "$secs" "$rd0" "$rd1")" \
		"$proxy_part" \
		"$(awk -v b="$M_BUSY_TICKS" -v t="$M_TOTAL_TICKS" -v n="$(nproc)" 'BEGIN { printf "%.2f", (t > 0 ? n * b / t : 0) }')" \
		"$(nproc)")
	log "$label: ${R_RPS[$tag]} req/s, p50 ${R_P50[$tag]} ms, p99 ${R_P99[$tag]} ms"
}

# --- the two phases -----------------------------------------------------------

# Phase 1: the same load on storagesvc directly and on booksvc in front of it.
# booksvc coalesces identical concurrent reads, so it forwards fewer requests
# than it answers; how many it forwarded is reported.
measure_happy_path() {
	measure direct "storagesvc directly" "http://127.0.0.1:$SVC_PORT/books" "Authorization: Bearer $TOKEN"
	measure booksvc "booksvc, happy path" "http://127.0.0.1:$BOOK_PORT/books"
	BOOK_HWM_HAPPY_KIB=$(proc_status_kib "$BOOK_PID" VmHWM)
	SVC_HWM_HAPPY_KIB=$(proc_status_kib "$SVC_PID" VmHWM)
}

# Stops PostgreSQL, then asks booksvc until its breaker is open, and checks
# that the answer it gives then is the stored one, marked stale.
open_breaker() {
	local keys
	keys=$(redis_cli --scan --pattern 'booksvc:v2:GET *' | awk 'END { print NR }')
	((keys > 0)) || die "booksvc stored nothing in Redis during the happy path"
	log "last good answers stored in Redis: $keys key(s)"

	log "stopping the PostgreSQL container"
	docker stop "$PG_NAME" >/dev/null || die "docker stop $PG_NAME failed"
	PG_PID=""
	PG_PROXY_PID=""

	local started=$EPOCHREALTIME deadline=$((SECONDS + READY_TIMEOUT)) requests=0 state=""
	local answer=$LOG_DIR/books-stale.json code
	until [[ $state == open ]]; do
		((SECONDS < deadline)) || die "booksvc's breaker not open ${READY_TIMEOUT}s after the database stopped (state: ${state:-unknown})"
		code=$(get "http://127.0.0.1:$BOOK_PORT/books" "$answer")
		requests=$((requests + 1))
		[[ $code == 200 ]] || die "booksvc answered $code with the database stopped: $(head -c 300 "$answer")"
		state=$(breaker_state)
	done
	log "breaker open after $requests request(s), $(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s"

	code=$(get "http://127.0.0.1:$BOOK_PORT/books" "$answer")
	[[ $code == 200 ]] || die "booksvc answered $code with the breaker open: $(head -c 300 "$answer")"
	local status age
	status=$(header "$answer.headers" cache-status)
	age=$(header "$answer.headers" age)
	[[ $status == *hit* ]] || die "booksvc's answer with the breaker open is not from its store (Cache-Status: '${status:-absent}')"
	[[ -n $age ]] || die "booksvc's stale answer has no Age header"
	cmp -s "$LOG_DIR/books-direct.json" "$answer" || die "booksvc's stale body differs from the one storagesvc gave ($answer)"
	STALE_CHECK="Cache-Status: $status; Age: $age; body identical to storagesvc's"
	log "stale answer: $STALE_CHECK"
}

# Phase 2: the same load on booksvc with the database stopped.
measure_breaker_open() {
	open_breaker
	measure stale "booksvc, database stopped" "http://127.0.0.1:$BOOK_PORT/books"
	STALE_STATE_AFTER=$(breaker_state)
}

# --hop: the same load over distinct keys on storagesvc directly, on booksvc
# and on the nginx peer, one after the other.
measure_hop() {
	local code answer=$LOG_DIR/books-nginx.json status
	code=$(get "http://127.0.0.1:$NGINX_PORT/books" "$answer")
	[[ $code == 200 ]] || die "nginx: GET /books answered $code: $(head -c 300 "$answer")"
	status=$(header "$answer.headers" cache-status)
	[[ $status == *fwd=bypass* ]] || die "nginx: GET /books was not a fresh answer (Cache-Status: '${status:-absent}')"
	cmp -s "$LOG_DIR/books-direct.json" "$answer" || die "nginx's GET /books body differs from storagesvc's ($answer)"
	measure direct "storagesvc directly" "http://127.0.0.1:$SVC_PORT/books" "Authorization: Bearer $TOKEN"
	measure booksvc "through booksvc" "http://127.0.0.1:$BOOK_PORT/books"
	measure nginx "through the nginx peer" "http://127.0.0.1:$NGINX_PORT/books"
}

# per_answer MICROSECONDS ANSWERS: microseconds per answer, or "-".
per_answer() {
	awk -v us="$1" -v n="$2" 'BEGIN { if (us == "-" || n + 0 == 0) print "-"; else printf "%.0f\n", us / n }'
}

# hop_row TAG LABEL PROXY_FIELD: one line of the CPU table; PROXY_FIELD is the
# field of R_US that holds the proxy's CPU time (0: none).
hop_row() {
	local tag=$1 label=$2 field=$3 book svc pg redis nginx wrk px proxy
	read -r book svc pg redis nginx wrk px <<<"${R_US[$tag]}"
	case $field in
	1) proxy=$book ;;
	5) proxy=$nginx ;;
	*) proxy=- ;;
	esac
	printf '%-24s %7s %11s %11s %7s %7s %13s\n' "$label" \
		"$(per_answer "$proxy" "${R_REQ[$tag]}")" "$(per_answer "$svc" "${R_REQ[$tag]}")" \
		"$(per_answer "$pg" "${R_REQ[$tag]}")" "$(per_answer "$redis" "${R_REQ[$tag]}")" \
		"$(per_answer "$wrk" "${R_REQ[$tag]}")" "$(per_answer "$px" "${R_REQ[$tag]}")"
}

# not_proxied TAG: answers of the run that storagesvc did not serve (stale or
# coalesced ones). storagesvc also counts the requests in flight when wrk
# stops, which wrk does not: more served than answered is normal.
not_proxied() {
	awk -v a="${R_REQ[$1]}" -v s="${R_SERVED[$1]}" 'BEGIN { d = a - s; print (d > 0 ? d : 0) }'
}

print_hop_summary() {
	local book_us nginx_us svc_us share
	local attempts attempt_us fallbacks memory probes answers over4 over8
	read -r attempts attempt_us fallbacks memory probes answers over4 over8 <<<"${R_COUNTERS[booksvc]}"
	book_us=$(per_answer "$(awk '{ print $1 }' <<<"${R_US[booksvc]}")" "${R_REQ[booksvc]}")
	nginx_us=$(per_answer "$(awk '{ print $5 }' <<<"${R_US[nginx]}")" "${R_REQ[nginx]}")
	svc_us=$(per_answer "$(awk '{ print $2 }' <<<"${R_US[booksvc]}")" "${R_REQ[booksvc]}")
	share=$(awk -v b="${R_RPS[booksvc]}" -v d="${R_RPS[direct]}" 'BEGIN { printf "%.1f", (d > 0 ? 100 * b / d : 0) }')
	local np_book np_nginx fresh=yes v_book v_book80 v_svc v_share v_below v_fresh
	np_book=$(not_proxied booksvc)
	np_nginx=$(not_proxied nginx)
	((np_book == 0 && np_nginx == 0 && fallbacks == 0)) || fresh=NO
	# With answers that were not proxied (stale or coalesced, cheaper than a proxied
	# one), CPU per answer flatters booksvc; CPU per request storagesvc served is then
	# an upper bound of its cost per proxied request, and the targets are judged on it.
	local book_us_proxied judged
	book_us_proxied=$(per_answer "$(awk '{ print $1 }' <<<"${R_US[booksvc]}")" "${R_SERVED[booksvc]}")
	judged=$book_us
	[[ $fresh == yes ]] || judged=$book_us_proxied
	v_book=$(verdict "<=" "$judged" "$TARGET_HOP_BOOKSVC_US")
	v_book80=$(verdict "<=" "$judged" 80)
	v_svc=$(verdict "<=" "$svc_us" "$TARGET_HOP_STORAGESVC_US")
	v_share=$(verdict ">=" "$share" "$TARGET_HOP_SHARE_PCT")
	v_below=$(awk -v b="$judged" -v n="$nginx_us" 'BEGIN { print (b + 0 < n + 0 ? "met" : "MISSED") }')
	v_fresh=$([[ $fresh == yes ]] && echo met || echo MISSED)
	local network
	if [[ $PG_NETWORK == host ]]; then
		network="PG_NETWORK=host: PostgreSQL and Redis on the host network (no docker-proxy)"
	else
		network="PG_NETWORK=published: PostgreSQL and Redis through ports published on 127.0.0.1 (docker-proxy)"
	fi

	echo
	echo "booksvc benchmark, the hop: $CONNECTIONS connections, ${DURATION_S}s per run after ${WARMUP_S}s warm-up, $THREADS wrk threads"
	echo "machine:  $(machine_line)"
	echo "          load average at the start: $LOAD_BEFORE"
	echo "          wrk, the proxies, storagesvc, PostgreSQL and Redis share these CPUs; nothing is pinned"
	echo "network:  $network; nginx on the host network"
	echo "logging:  RUST_LOG=$LOG_LEVEL, ACCESS_LOG=${ACCESS_LOG:-all}, LOG_FORMAT=json, to files"
	echo "books:    GET /books returns $BOOKS_COUNT books, $BOOKS_BYTES bytes; storagesvc's DB_MAX_CONNECTIONS=$DB_MAX_CONNECTIONS"
	echo "requests: spread over $DISTINCT_KEYS URLs, /books?limit=1000 down to /books?limit=$((1001 - DISTINCT_KEYS)), the same for each target"
	echo
	printf '%-27s %7s %8s %8s %8s %9s %8s %7s\n' run "req/s" "p50 ms" "p99 ms" "max ms" requests "non-2xx" "socket"
	row direct "storagesvc directly"
	row booksvc "through booksvc"
	row nginx "through the nginx peer"
	echo
	echo "CPU per answer, microseconds (process CPU time over the run / answers):"
	printf '%-24s %7s %11s %11s %7s %7s %13s\n' run proxy storagesvc PostgreSQL Redis wrk docker-proxy
	hop_row direct "storagesvc directly" 0
	hop_row booksvc "through booksvc" 1
	hop_row nginx "through the nginx peer" 5
	echo
	echo "answers proxied (storagesvc's own count of GET /books during each run):"
	printf '  %-24s %9s answers, storagesvc served %9s; not proxied (stale or coalesced): %s\n' \
		"storagesvc directly" "${R_REQ[direct]}" "${R_SERVED[direct]}" "$(not_proxied direct)" \
		"through booksvc" "${R_REQ[booksvc]}" "${R_SERVED[booksvc]}" "$np_book" \
		"through the nginx peer" "${R_REQ[nginx]}" "${R_SERVED[nginx]}" "$np_nginx"
	echo "  booksvc's own count: $answers answers, $attempts attempts to storagesvc, $fallbacks from the last-good store"
	echo
	printf '%-44s %-10s %s\n' \
		"booksvc CPU per answer" "$book_us us" "" \
		"booksvc CPU per request storagesvc served" "$book_us_proxied us" "(an upper bound per proxied request)" \
		"booksvc, judged on $([[ $fresh == yes ]] && echo "CPU per answer" || echo "the upper bound")" "$judged us" "(target <= $TARGET_HOP_BOOKSVC_US us: $v_book; <= 80 us: $v_book80)" \
		"storagesvc CPU per answer, through booksvc" "$svc_us us" "(target <= $TARGET_HOP_STORAGESVC_US us: $v_svc)" \
		"booksvc throughput / direct" "$share%" "(target >= $TARGET_HOP_SHARE_PCT%: $v_share)" \
		"booksvc CPU (judged) / nginx's per answer" "$judged / $nginx_us" "(target: below: $v_below)" \
		"every answer fresh" "$fresh" "(target: yes: $v_fresh)"
	echo
	echo "CPU, cores used on average during each measured run (machine busy in the second before it):"
	printf '  %-26s %s (%s%% before)\n' \
		"storagesvc directly" "${R_CPU[direct]}" "${R_IDLE[direct]}" \
		"through booksvc" "${R_CPU[booksvc]}" "${R_IDLE[booksvc]}" \
		"through the nginx peer" "${R_CPU[nginx]}" "${R_IDLE[nginx]}"
	echo
	local all_met=true
	for v in "$v_book" "$v_svc" "$v_share" "$v_below" "$v_fresh"; do
		[[ $v == met ]] || all_met=false
	done
	print_result "$all_met"
}

CALLGRIND_FILE=""
# --callgrind: booksvc's instructions per proxied answer, counted from a
# warm booksvc (its counters zeroed after the warm-up) over one measured run.
measure_callgrind() {
	local url="http://127.0.0.1:$BOOK_PORT/books" s0 s1 c0 c1
	log "callgrind: warming up for ${WARMUP_S}s ($CONNECTIONS connections, $THREADS threads)"
	run_wrk "$WARMUP_S" "$LOG_DIR/wrk-callgrind-warmup.txt" "$url"
	parse_wrk "$LOG_DIR/wrk-callgrind-warmup.txt"
	check_wrk_errors "callgrind, warm-up" "$LOG_DIR/wrk-callgrind-warmup.txt"
	s0=$(storagesvc_served)
	c0=$(metrics_snapshot)
	callgrind_control --zero "$BOOK_PID" >/dev/null || die "callgrind_control could not zero booksvc's counters"
	log "callgrind: measuring for ${DURATION_S}s"
	run_wrk "$DURATION_S" "$LOG_DIR/wrk-callgrind.txt" "$url"
	callgrind_control --dump "$BOOK_PID" >/dev/null || die "callgrind_control could not dump booksvc's counters"
	c1=$(metrics_snapshot)
	s1=$(storagesvc_served)
	pid_alive "$BOOK_PID" || service_fail booksvc "$LOG_DIR/booksvc.log" "booksvc died during the run"
	parse_wrk "$LOG_DIR/wrk-callgrind.txt"
	check_wrk_errors callgrind "$LOG_DIR/wrk-callgrind.txt"
	R_REQ[callgrind]=$W_REQUESTS
	R_RPS[callgrind]=$(awk -v r="$W_RPS" 'BEGIN { printf "%d", r + 0.5 }')
	R_SERVED[callgrind]=$((s1 - s0))
	R_COUNTERS[callgrind]=$(counters_delta "$c0" "$c1")
	# The dump asked for is the file with the highest number.
	local name
	name=$(find "$LOG_DIR" -maxdepth 1 -name "callgrind.out.$BOOK_PID.*" -printf '%f\n' | sort -t. -k4 -n | tail -n 1)
	CALLGRIND_FILE=$LOG_DIR/$name
	[[ -n $name && -s $CALLGRIND_FILE ]] || die "no callgrind dump of booksvc in $LOG_DIR"
}

print_callgrind_summary() {
	local total per fallbacks _
	total=$(awk '$1 == "summary:" { print $2; exit }' "$CALLGRIND_FILE")
	[[ $total =~ ^[0-9]+$ ]] || die "no instruction count in $CALLGRIND_FILE"
	per=$(per_answer "$total" "${R_REQ[callgrind]}")
	read -r _ _ fallbacks _ <<<"${R_COUNTERS[callgrind]}"
	echo
	echo "booksvc under callgrind: $CONNECTIONS connections, ${DURATION_S}s measured after ${WARMUP_S}s warm-up"
	echo "machine:  $(machine_line)"
	echo "logging:  RUST_LOG=$LOG_LEVEL, ACCESS_LOG=${ACCESS_LOG:-all}, LOG_FORMAT=json, to a file"
	echo "requests: spread over $DISTINCT_KEYS URLs, /books?limit=1000 down to /books?limit=$((1001 - DISTINCT_KEYS))"
	echo
	echo "answers                        ${R_REQ[callgrind]} (${R_RPS[callgrind]}/s under callgrind)"
	echo "requests storagesvc served     ${R_SERVED[callgrind]}"
	echo "answers from the last-good store  $fallbacks"
	echo "instructions, booksvc, user space  $total"
	echo "instructions per answer        $per"
	echo
	# The functions on every thread's stack when the counters were zeroed
	# (thread start, the runtime's loop) are listed with the whole count as
	# their own; a function's own share is never near that. awk reads to the
	# end (no head): a reader that stops early would break the pipe.
	echo "costliest functions by their own instructions (callees not included):"
	callgrind_annotate --inclusive=no --threshold=100 "$CALLGRIND_FILE" 2>/dev/null |
		awk '/^ *[0-9,]+ +\( *[0-9.]+%\) +[^ ]/ && !/PROGRAM TOTALS/ {
			share = $0; sub(/^[^(]*\( */, "", share); sub(/%.*/, "", share)
			if (share + 0 < 50 && shown++ < 25) print }' |
		sed -e 's/ \[[^]]*\]$//' -e 's/???://' | cut -c1-150 | sed 's/^/  /'
	echo
	echo "raw callgrind output: $CALLGRIND_FILE (callgrind_annotate reads it)"
}

# restart_plain: both services restarted, exporting nothing, so that every
# --traces run starts from services just started, with Redis as the last left it.
restart_plain() {
	log "restarting both services without traces"
	stop_process "$BOOK_PID"
	stop_process "$SVC_PID"
	OTEL_SET=()
	start_storagesvc
	start_booksvc
}

# restart_traced TAG VARIABLES...: both services restarted, exporting to a new
# receiver with the OTEL_* variables given.
restart_traced() {
	local tag=$1
	shift
	log "restarting both services with traces exported: $*"
	stop_process "$BOOK_PID"
	stop_process "$SVC_PID"
	start_sink "$tag"
	OTEL_SET=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" "$@")
	start_storagesvc
	start_booksvc
}

# --traces: the happy path without traces, with a share of them exported, then
# with every span exported.
measure_traces() {
	restart_plain
	measure booksvc "booksvc, no traces" "http://127.0.0.1:$BOOK_PORT/books"
	restart_traced sampled OTEL_TRACES_SAMPLER=parentbased_traceidratio "OTEL_TRACES_SAMPLER_ARG=$SAMPLE_RATIO"
	measure sampled "booksvc, $SAMPLE_RATIO of traces" "http://127.0.0.1:$BOOK_PORT/books"
	restart_traced traced OTEL_TRACES_SAMPLER=parentbased_always_on
	measure traced "booksvc, every span" "http://127.0.0.1:$BOOK_PORT/books"
}

# sink_counts TAG: "EXPORTS BYTES" the receiver of that run got.
sink_counts() {
	local exports=0 bytes=0
	[[ -s $LOG_DIR/otlp-sink-$1.log ]] && read -r exports bytes <"$LOG_DIR/otlp-sink-$1.log"
	echo "$exports $bytes"
}

# hop_cpu TAG: booksvc's and storagesvc's CPU time per answer in that run, in
# microseconds: "BOOKSVC STORAGESVC SUM".
hop_cpu() {
	local book svc _
	read -r book svc _ <<<"${R_US[$1]}"
	book=$(per_answer "$book" "${R_REQ[$1]}")
	svc=$(per_answer "$svc" "${R_REQ[$1]}")
	echo "$book $svc $(awk -v a="$book" -v b="$svc" 'BEGIN { print (a == "-" || b == "-") ? "-" : a + b }')"
}

print_traces_summary() {
	local share share_all v_share cpu_share cpu_share_all v_cpu book svc sum base
	share=$(awk -v t="${R_RPS[sampled]}" -v b="${R_RPS[booksvc]}" 'BEGIN { printf "%.1f", (b > 0 ? 100 * t / b : 0) }')
	share_all=$(awk -v t="${R_RPS[traced]}" -v b="${R_RPS[booksvc]}" 'BEGIN { printf "%.1f", (b > 0 ? 100 * t / b : 0) }')
	v_share=$(verdict ">=" "$share" "$TARGET_TRACED_SHARE_PCT")
	read -r _ _ base <<<"$(hop_cpu booksvc)"
	read -r _ _ sum <<<"$(hop_cpu sampled)"
	cpu_share=$(awk -v t="$sum" -v b="$base" 'BEGIN { printf "%.1f", (b > 0 ? 100 * t / b : 0) }')
	read -r _ _ sum <<<"$(hop_cpu traced)"
	cpu_share_all=$(awk -v t="$sum" -v b="$base" 'BEGIN { printf "%.1f", (b > 0 ? 100 * t / b : 0) }')
	v_cpu=$(verdict "<=" "$cpu_share" "$TARGET_TRACED_CPU_PCT")
	echo
	echo "booksvc benchmark, traces: GET /books, $CONNECTIONS connections, ${DURATION_S}s per run after ${WARMUP_S}s warm-up, $THREADS wrk threads"
	echo "machine:  $(machine_line)"
	echo "          load average at the start: $LOAD_BEFORE"
	echo "logging:  RUST_LOG=$LOG_LEVEL, LOG_FORMAT=json, to files; storagesvc's DB_MAX_CONNECTIONS=$DB_MAX_CONNECTIONS"
	if ((DISTINCT_KEYS > 0)); then
		echo "requests: spread over $DISTINCT_KEYS URLs (--distinct-keys); concurrent reads of one URL share a call to storagesvc"
	else
		echo "requests: all GET /books (booksvc shares one upstream call between concurrent ones)"
	fi
	echo
	printf '%-27s %7s %8s %8s %8s %9s %8s %7s\n' run "req/s" "p50 ms" "p99 ms" "max ms" requests "non-2xx" "socket"
	row booksvc "booksvc, no traces"
	row sampled "booksvc, $SAMPLE_RATIO of traces"
	row traced "booksvc, every span"
	echo
	printf '%-42s %-8s %s\n' "throughput, $SAMPLE_RATIO of traces / no traces" "$share%" "(target >= $TARGET_TRACED_SHARE_PCT%: $v_share)"
	printf '%-42s %-8s %s\n' "throughput, every span / no traces" "$share_all%" "(for comparison; the receiver shares the cores)"
	echo
	echo "CPU per answer, microseconds (process CPU time over the run / answers):"
	printf '  %-26s %9s %11s %6s\n' run booksvc storagesvc both
	for tag in booksvc sampled traced; do
		read -r book svc sum <<<"$(hop_cpu "$tag")"
		case $tag in
		booksvc) label="booksvc, no traces" ;;
		sampled) label="booksvc, $SAMPLE_RATIO of traces" ;;
		traced) label="booksvc, every span" ;;
		esac
		printf '  %-26s %9s %11s %6s\n' "$label" "$book" "$svc" "$sum"
	done
	printf '%-42s %-8s %s\n' "CPU per answer, $SAMPLE_RATIO of traces / no traces" "$cpu_share%" "(target <= $TARGET_TRACED_CPU_PCT%: $v_cpu)"
	printf '%-42s %-8s %s\n' "CPU per answer, every span / no traces" "$cpu_share_all%" "(for comparison)"
	echo
	echo "OTLP receiver, $SAMPLE_RATIO of traces: $(sink_counts sampled | awk '{ print $1 " exports, " $2 " bytes of protobuf" }')"
	echo "OTLP receiver, every span: $(sink_counts traced | awk '{ print $1 " exports, " $2 " bytes of protobuf" }')"
	echo
	echo "CPU, cores used on average during each measured run (machine busy in the second before it):"
	printf '  %-26s %s (%s%% before)\n' \
		"booksvc, no traces" "${R_CPU[booksvc]}" "${R_IDLE[booksvc]}" \
		"booksvc, $SAMPLE_RATIO of traces" "${R_CPU[sampled]}" "${R_IDLE[sampled]}" \
		"booksvc, every span" "${R_CPU[traced]}" "${R_IDLE[traced]}"
	echo
	print_result "$([[ $v_share == met && $v_cpu == met ]] && echo true || echo false)"
}

# --- summary ------------------------------------------------------------------

# over ANSWERS OVER_4MS OVER_8MS: how many answers booksvc itself timed as slow.
over() {
	awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN {
		f = (n > 0) ? 100 / n : 0
		printf "timed by booksvc: %d answers (%.2f%%) over 4 ms, %d (%.2f%%) over 8 ms", a, a * f, b, b * f }'
}

# row TAG LABEL: one line of the results table.
row() {
	printf '%-27s %7s %8s %8s %8s %9s %8s %7s\n' "$2" "${R_RPS[$1]}" "${R_P50[$1]}" "${R_P99[$1]}" \
		"${R_MAX[$1]}" "${R_REQ[$1]}" "${R_NON2XX[$1]}" "${R_SOCKET[$1]}"
}

print_summary() {
	local share v_share v_p99 svc_hwm book_hwm
	share=$(awk -v b="${R_RPS[booksvc]}" -v d="${R_RPS[direct]}" 'BEGIN { printf "%.1f", (d > 0 ? 100 * b / d : 0) }')
	v_share=$(verdict ">=" "$share" "$TARGET_SHARE_PCT")
	v_p99=$(verdict "<=" "${R_P99[stale]}" "$TARGET_STALE_P99_MS")
	svc_hwm=$(kib_to_mib "$(proc_status_kib "$SVC_PID" VmHWM)")
	book_hwm=$(kib_to_mib "$(proc_status_kib "$BOOK_PID" VmHWM)")
	local network
	if [[ $PG_NETWORK == host ]]; then
		network="PG_NETWORK=host: PostgreSQL and Redis on the host network, listening on 127.0.0.1 (no docker-proxy)"
	else
		network="PG_NETWORK=published: PostgreSQL and Redis reached through ports published on 127.0.0.1 (docker-proxy)"
	fi

	echo
	echo "booksvc benchmark: GET /books, $CONNECTIONS connections, ${DURATION_S}s per run after ${WARMUP_S}s warm-up, $THREADS wrk threads"
	echo "machine:  $(machine_line)"
	echo "          load average at the start: $LOAD_BEFORE"
	echo "          wrk, booksvc, storagesvc, PostgreSQL and Redis share these CPUs; nothing is pinned"
	echo "network:  $network"
	echo "logging:  RUST_LOG=$LOG_LEVEL, LOG_FORMAT=json, to files"
	echo "books:    GET /books returns $BOOKS_COUNT books, $BOOKS_BYTES bytes"
	if ((DISTINCT_KEYS > 0)); then
		echo "requests: spread over $DISTINCT_KEYS URLs, /books?limit=1000 down to /books?limit=$((1001 - DISTINCT_KEYS)) (--distinct-keys)"
	else
		echo "requests: all GET /books (the same URL: booksvc shares one upstream call between concurrent ones)"
	fi
	echo
	printf '%-27s %7s %8s %8s %8s %9s %8s %7s\n' run "req/s" "p50 ms" "p99 ms" "max ms" requests "non-2xx" "socket"
	row direct "storagesvc directly"
	row booksvc "booksvc, happy path"
	row stale "booksvc, database stopped"
	echo
	printf '%-31s %-10s %s\n' \
		"booksvc throughput / direct" "$share%" "(target >= $TARGET_SHARE_PCT%: $v_share)" \
		"booksvc p99, database stopped" "${R_P99[stale]} ms" "(target <= $TARGET_STALE_P99_MS ms: $v_p99)" \
		"peak RSS (VmHWM), storagesvc" "$svc_hwm MiB" "(after the happy path: $(kib_to_mib "$SVC_HWM_HAPPY_KIB") MiB)" \
		"peak RSS (VmHWM), booksvc" "$book_hwm MiB" "(after the happy path: $(kib_to_mib "$BOOK_HWM_HAPPY_KIB") MiB)"
	echo
	local attempts attempt_us fallbacks memory probes answers over4 over8
	read -r attempts attempt_us fallbacks memory probes answers over4 over8 <<<"${R_COUNTERS[booksvc]}"
	echo "happy path:       booksvc sent $attempts attempts to storagesvc for its $answers answers"
	echo "                  (identical concurrent reads share one call); $(over "$answers" "$over4" "$over8")"
	read -r attempts attempt_us fallbacks memory probes answers over4 over8 <<<"${R_COUNTERS[stale]}"
	echo "database stopped: every answer 200: $([[ ${R_NON2XX[stale]} == 0 && ${R_SOCKET[stale]} == 0 ]] && echo yes || echo NO);" \
		"$fallbacks of $answers from the last-good store ($memory from memory)"
	echo "                  breaker $STALE_STATE_AFTER at the end; $probes half-open probe(s), $attempts attempt(s) reached storagesvc$(
		awk -v n="$attempts" -v us="$attempt_us" 'BEGIN { if (n > 0) printf ", %.0f ms each on average", us / n / 1000 }')"
	echo "                  $(over "$answers" "$over4" "$over8")"
	echo "                  (a half-open probe waits for storagesvc, and concurrent reads of the same key wait with it)"
	echo "                  checked before the load: $STALE_CHECK"
	echo "note: latencies are wrk's, which corrects for coordinated omission: a slow answer also"
	echo "      counts the answers its connection missed meanwhile, so a few long stalls weigh"
	echo "      more than their number. The 'over 4/8 ms' counts are booksvc's own timing"
	echo "      (its latency histogram), without the client's side and the queues before it."
	echo
	echo "CPU, cores used on average during each measured run (machine busy in the second before it):"
	printf '  %-26s %s (%s%% before)\n' \
		"storagesvc directly" "${R_CPU[direct]}" "${R_IDLE[direct]}" \
		"booksvc, happy path" "${R_CPU[booksvc]}" "${R_IDLE[booksvc]}" \
		"booksvc, database stopped" "${R_CPU[stale]}" "${R_IDLE[stale]}"
	echo
	local all_met=true
	[[ $v_share == met && $v_p99 == met ]] || all_met=false
	print_result "$all_met"
}

main() {
	parse_args "$@"
	validate_settings
	check_tools

	begin_run bench-booksvc
	CLK_TCK=$(getconf CLK_TCK)
	LOAD_BEFORE=$(awk '{ print $1, $2, $3 }' /proc/loadavg)

	log "load average: $LOAD_BEFORE; PostgreSQL and Redis networking: PG_NETWORK=$PG_NETWORK"
	build_services
	ensure_images
	start_postgres
	start_redis
	# A fresh random credential per run: the services only ever listen on
	# loopback, but no fixed token should be needed to reach them.
	TOKEN=bench-$(random_hex)
	# One signing key for every booksvc this run starts, as a deployment sets
	# one: a restarted booksvc can read what the one before stored in Redis.
	SIGNING_KEY=$(random_hex)
	if [[ $HOP == true || $TRACES == true ]]; then
		# storagesvc refuses a request beyond DB_MAX_CONNECTIONS in progress
		# (503 at once); these runs measure answers, not refusals (nor booksvc's
		# breaker opening on them, with cold keys and nothing stored).
		export DB_MAX_CONNECTIONS=${DB_MAX_CONNECTIONS:-$CONNECTIONS}
	fi
	start_storagesvc
	if [[ $CALLGRIND == true ]]; then
		BOOK_WRAPPER=(valgrind --tool=callgrind --dump-instr=no
			"--callgrind-out-file=$LOG_DIR/callgrind.out.%p")
	fi
	start_booksvc
	check_books
	write_wrk_script

	if [[ $CALLGRIND == true ]]; then
		measure_callgrind
		print_callgrind_summary | tee "$LOG_DIR/summary.txt"
		end_run
		return
	fi

	if [[ $HOP == true ]]; then
		start_nginx
		log "the hop: storagesvc directly, booksvc, the nginx peer"
		measure_hop
		print_hop_summary | tee "$LOG_DIR/summary.txt"
		end_run
		return
	fi
	if [[ $TRACES == true ]]; then
		log "traces: happy path without, then with traces exported"
		measure_traces
		print_traces_summary | tee "$LOG_DIR/summary.txt"
		end_run
		return
	fi
	log "phase 1: happy path"
	measure_happy_path
	log "phase 2: database stopped, breaker open"
	measure_breaker_open

	print_summary | tee "$LOG_DIR/summary.txt"
	end_run
}

main "$@"
