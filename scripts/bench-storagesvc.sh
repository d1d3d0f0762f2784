#!/usr/bin/env bash
# Measures storagesvc's `GET /books` under load: throughput, p50/p99 latency and
# the service's peak memory, against a throwaway PostgreSQL container.
#
#   targets: >= 5000 req/s, p99 <= 20 ms, peak RSS <= 50 MiB
#            (64 concurrent connections, 30 s)
#
# This is a measurement, not a test: a missed target is printed as MISSED and
# the script still exits 0. It exits non-zero only when the measurement itself
# is not trustworthy: the database or the service does not start, a response is
# not 2xx/3xx, wrk reports socket errors or timeouts, wrk is missing and cannot
# be installed.
#
# Everything runs on this machine and every connection goes to 127.0.0.1. wrk,
# storagesvc and PostgreSQL share the same CPU cores (nothing is pinned), so the
# figures are those of the whole stack on this machine, not of storagesvc alone;
# the summary shows how the CPU time was shared out.
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
readonly TARGET_RPS=5000
readonly TARGET_P99_MS=20
readonly TARGET_RSS_MIB=50

# Knobs (see --help). The defaults are the conditions the targets are set for.
DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-5s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WRK_TIMEOUT=${WRK_TIMEOUT:-2s}
READY_TIMEOUT=${READY_TIMEOUT:-90}
SERVICE_PORT=${SERVICE_PORT:-}
PG_NETWORK=${PG_NETWORK:-published}
LOG_DIR=${LOG_DIR:-}

# Above this share of CPU in use before the load starts, the machine is not
# idle (a build, tests) and the figures say more about that than about
# storagesvc; they are still printed, with a warning.
readonly BUSY_WARN_PCT=15

readonly DB_NAME=books
readonly DB_USER=bench

usage() {
	cat <<EOF
Usage: ${0##*/} [--no-build] [--warn-run] [--help]

Benchmarks storagesvc's GET /books with wrk against a throwaway PostgreSQL
container, then prints throughput, p50/p99 latency and storagesvc's peak RSS,
each against its target (>= $TARGET_RPS req/s, p99 <= $TARGET_P99_MS ms, RSS <= $TARGET_RSS_MIB MiB).
A missed target is reported as MISSED, not as a failure; the exit status is
non-zero only when the measurement could not be made or saw errors (service
not starting, non-2xx responses, socket errors, wrk unavailable).

Steps: build storagesvc (release), build or reuse the local PostgreSQL image
(scripts/offline-images.sh), start PostgreSQL on a random 127.0.0.1 port,
start storagesvc on 127.0.0.1 with RUST_LOG=info and JSON logs written to a
file, wait for /.well-known/health, warm up, measure. Everything started is
stopped on exit, also on failure or Ctrl-C.

Needs: cargo, docker (engine running), curl, ss, and wrk (installed with
apt-get if missing, which needs root or sudo).

Options:
  --no-build   use the existing release binary instead of running cargo build
  --warn-run   afterwards, also measure a fresh storagesvc with RUST_LOG=warn
               (no per-request log line), printed separately for comparison
  -h, --help   show this help

Environment:
  DURATION       measured run (default 30s; wrk syntax: 30s, 2m, ...)
  WARMUP         load before the measured run, not counted (default 5s)
  CONNECTIONS    concurrent connections (default 64)
  THREADS        wrk threads (default 2)
  WRK_TIMEOUT    wrk's per-request timeout (default 2s); a timeout is an error
  READY_TIMEOUT  seconds to wait for PostgreSQL and for storagesvc (default 90)
  SERVICE_PORT   port for storagesvc (default: any free port)
  PG_NETWORK     how storagesvc reaches PostgreSQL:
                   published  (default) a port published on 127.0.0.1, so
                              through Docker's userland proxy (docker-proxy),
                              which then competes for the same CPUs
                   host       the container shares the host's network and
                              listens on 127.0.0.1 only: no proxy, closer
                              to a deployment where both sit on one network
  LOG_DIR        where logs and raw wrk output go (default: a new directory
                 under \${TMPDIR:-/tmp}); kept after the run
  POSTGRES_IMAGE PostgreSQL image to use (default: built by offline-images.sh)
  CARGO_TARGET_DIR  honoured when locating the binary
Other storagesvc settings in the environment (DB_MAX_CONNECTIONS, ...) are
passed through; BIND_ADDR, DATABASE_URL, AUTH_TOKENS, LOG_FORMAT and RUST_LOG
are set by the script.
EOF
}

LOG_PREFIX=bench
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"

BUILD=true
WARN_RUN=false
parse_args() {
	while [[ $# -gt 0 ]]; do
		case $1 in
		-h | --help)
			usage
			exit 0
			;;
		--no-build) BUILD=false ;;
		--warn-run) WARN_RUN=true ;;
		*)
			usage >&2
			die "unknown argument: $1"
			;;
		esac
		shift
	done
}

# to_seconds 30s|2m|1h|45 -> whole seconds. wrk takes the same syntax; the
# value in seconds bounds the wait for wrk and computes CPU shares.
to_seconds() {
	local v=$1
	[[ $v =~ ^([0-9]+)([smh]?)$ ]] || return 1
	local n=$((10#${BASH_REMATCH[1]}))
	case ${BASH_REMATCH[2]} in
	m) n=$((n * 60)) ;;
	h) n=$((n * 3600)) ;;
	esac
	((n > 0)) || return 1
	printf '%d\n' "$n"
}

validate_settings() {
	DURATION_S=$(to_seconds "$DURATION") || die "DURATION='$DURATION' is not a duration such as 30s or 2m"
	WARMUP_S=$(to_seconds "$WARMUP") || die "WARMUP='$WARMUP' is not a duration such as 5s"
	to_seconds "$WRK_TIMEOUT" >/dev/null || die "WRK_TIMEOUT='$WRK_TIMEOUT' is not a duration such as 2s"
	[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS='$CONNECTIONS' is not a positive integer"
	[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS='$THREADS' is not a positive integer"
	((THREADS <= CONNECTIONS)) || die "THREADS ($THREADS) must not exceed CONNECTIONS ($CONNECTIONS): wrk gives each thread at least one connection"
	[[ $PG_NETWORK == published || $PG_NETWORK == host ]] || die "PG_NETWORK='$PG_NETWORK': expected 'published' or 'host'"
	[[ $READY_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "READY_TIMEOUT='$READY_TIMEOUT' is not a number of seconds"
	if [[ -n $SERVICE_PORT ]]; then
		if ! [[ $SERVICE_PORT =~ ^[1-9][0-9]*$ ]] || ((SERVICE_PORT > 65535)); then
			die "SERVICE_PORT='$SERVICE_PORT' is not a port number"
		fi
	fi
}

# Runs a command as root, through sudo when needed (for apt-get only).
as_root() {
	if [[ $EUID -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo -n "$@"
	else
		die "need root to run: $*"
	fi
}

# Installs wrk from the Debian archive if it is missing. apt-get update only
# runs when the first install attempt fails, since it is slow and usually
# unnecessary.
ensure_wrk() {
	command -v wrk >/dev/null && return 0
	command -v apt-get >/dev/null || die "wrk is not installed and there is no apt-get to install it with"
	log "installing wrk"
	if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk </dev/null >&2; then
		log "install failed; refreshing the package lists and retrying"
		as_root apt-get update -q </dev/null >&2 || die "apt-get update failed"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk </dev/null >&2 ||
			die "could not install wrk"
	fi
	command -v wrk >/dev/null || die "wrk is still missing after installing it"
}

check_tools() {
	local tool
	for tool in docker curl awk; do
		command -v "$tool" >/dev/null || die "$tool is not installed"
	done
	if [[ -z $SERVICE_PORT || $PG_NETWORK == host ]]; then
		# storagesvc binds port 0 and ss tells which port it got: no window
		# in which another program could take a port picked in advance.
		# (With PG_NETWORK=host, ss also finds a free port for PostgreSQL.)
		command -v ss >/dev/null || die "ss (iproute2) is needed to find free ports; install it (or set SERVICE_PORT and leave PG_NETWORK alone)"
	fi
	docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine (is it running, may this user use it?)"
	ensure_wrk
}

# --- clean-up -----------------------------------------------------------------

PG_NAME=""
SVC_PID=""
WRK_PID=""

stop_service() {
	[[ -n $SVC_PID ]] || return 0
	local pid=$SVC_PID deadline=$((SECONDS + 15))
	SVC_PID=""
	kill -TERM "$pid" 2>/dev/null || return 0
	# SIGTERM lets it drain (SHUTDOWN_GRACE, 10 s by default); SIGKILL
	# after that so a hung service cannot hold the script.
	while pid_alive "$pid" && ((SECONDS < deadline)); do
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	set +e
	trap - ERR
	if [[ -n $WRK_PID ]]; then
		kill -TERM "$WRK_PID" 2>/dev/null
		wait "$WRK_PID" 2>/dev/null
	fi
	stop_service
	if [[ -n $PG_NAME ]]; then
		if ((rc != 0)); then
			log "last PostgreSQL log lines:"
			docker logs --tail 20 "$PG_NAME" 2>&1 | sed 's/^/    /' >&2
		fi
		# Forced removal: the data is throwaway, and it returns only once
		# the container is gone.
		docker rm -f -v "$PG_NAME" >/dev/null 2>&1 || log "could not remove container $PG_NAME"
	fi
	if [[ -n $LOG_DIR && -d $LOG_DIR ]]; then
		log "logs and raw wrk output kept in $LOG_DIR"
	fi
	exit "$rc"
}

# --- PostgreSQL ---------------------------------------------------------------

# pick_free_port: a TCP port nothing listens on right now. There is a small
# window before PostgreSQL binds it; if another program takes it meanwhile,
# PostgreSQL exits and the start-up check below reports it.
pick_free_port() {
	local port i
	for ((i = 0; i < 100; i++)); do
		port=$((20000 + RANDOM % 40000))
		if [[ -z $(ss -Hltn "sport = :$port") ]]; then
			printf '%d\n' "$port"
			return 0
		fi
	done
	die "found no free port for PostgreSQL"
}

PG_PORT=""
PG_PID=""
PG_INNER_PORT=5432
PROXY_PID=""
start_postgres() {
	if [[ -z ${POSTGRES_IMAGE:-} ]]; then
		log "building or reusing the local PostgreSQL image"
		local exports
		exports=$("$SCRIPT_DIR/offline-images.sh") || die "scripts/offline-images.sh failed"
		eval "$exports"
	fi
	[[ -n ${POSTGRES_IMAGE:-} ]] || die "no POSTGRES_IMAGE"

	PG_NAME="bench-storagesvc-pg-$$-$RANDOM"
	DB_PASSWORD=$(random_hex)
	local -a net_opts pg_args=()
	PG_INNER_PORT=5432
	case $PG_NETWORK in
	published)
		# 127.0.0.1::5432 lets Docker choose a free host port, on
		# loopback only.
		net_opts=(-p 127.0.0.1::5432)
		;;
	host)
		# The host's network namespace, but listening on loopback only;
		# connections reach PostgreSQL without docker-proxy in between.
		PG_PORT=$(pick_free_port)
		PG_INNER_PORT=$PG_PORT
		net_opts=(--network host)
		pg_args=(-c listen_addresses=127.0.0.1 -c port="$PG_PORT")
		;;
	*) die "PG_NETWORK='$PG_NETWORK': expected 'published' or 'host'" ;;
	esac
	log "starting PostgreSQL ($POSTGRES_IMAGE, network: $PG_NETWORK) as container $PG_NAME"
	# No --rm: when PostgreSQL fails to start, its logs must still be there
	# to show; the EXIT trap removes the container in every case.
	docker run -d --name "$PG_NAME" \
		--label org.bookstore.purpose=bench-storagesvc \
		-e POSTGRES_USER="$DB_USER" \
		-e POSTGRES_PASSWORD="$DB_PASSWORD" \
		-e POSTGRES_DB="$DB_NAME" \
		"${net_opts[@]}" \
		"$POSTGRES_IMAGE" "${pg_args[@]}" >/dev/null ||
		die "docker run failed"
	PG_PID=$(docker inspect -f '{{.State.Pid}}' "$PG_NAME")

	if [[ $PG_NETWORK == published ]]; then
		local mapping
		mapping=$(docker port "$PG_NAME" 5432/tcp | head -n 1)
		PG_PORT=${mapping##*:}
		[[ $PG_PORT =~ ^[0-9]+$ ]] || die "cannot tell PostgreSQL's host port (docker port said '$mapping')"
		# Docker's userland proxy relays every byte between storagesvc and
		# PostgreSQL; its CPU use is reported separately. Looked up for
		# reading /proc only.
		PROXY_PID=$(pgrep -f -- "docker-proxy .*-host-port $PG_PORT( |$)" | head -n 1 || true)
	fi

	# Over TCP on purpose: during initialisation the image runs a temporary
	# server on the Unix socket only, which pg_isready would report as
	# ready before the real server is up.
	local deadline=$((SECONDS + READY_TIMEOUT))
	until docker exec "$PG_NAME" pg_isready -q -h 127.0.0.1 -p "$PG_INNER_PORT" -U "$DB_USER" -d "$DB_NAME" 2>/dev/null; do
		if [[ $(docker inspect -f '{{.State.Running}}' "$PG_NAME" 2>/dev/null) != true ]]; then
			die "the PostgreSQL container stopped during start-up"
		fi
		((SECONDS < deadline)) || die "PostgreSQL not ready after ${READY_TIMEOUT}s"
		sleep 0.5
	done
	log "PostgreSQL ready on 127.0.0.1:$PG_PORT"
}

random_hex() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# --- storagesvc ---------------------------------------------------------------

SVC_BIN=""
build_service() {
	SVC_BIN="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/release/storagesvc"
	if [[ $BUILD == true ]]; then
		command -v cargo >/dev/null || die "cargo is not installed (or use --no-build with an existing binary)"
		log "building storagesvc (release)"
		(cd "$ROOT_DIR" && cargo build --release -p storagesvc >&2) || die "cargo build failed"
	fi
	[[ -x $SVC_BIN ]] || die "no binary at $SVC_BIN (build it, or drop --no-build)"
}

# A process that has exited but not yet been reaped still answers kill -0;
# its state letter tells.
pid_alive() {
	kill -0 "$1" 2>/dev/null &&
		[[ $(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) != Z ]]
}
svc_alive() { [[ -n $SVC_PID ]] && pid_alive "$SVC_PID"; }

svc_fail() {
	log "last storagesvc log lines ($1):"
	tail -n 20 "$1" 2>/dev/null | sed 's/^/    /' >&2
	die "$2"
}

# start_service RUST_LOG LOGFILE: starts storagesvc in the background and waits
# until it reports healthy. Sets SVC_PID and SVC_PORT.
SVC_PORT=""
start_service() {
	local level=$1 logfile=$2
	local bind=127.0.0.1:${SERVICE_PORT:-0}
	log "starting storagesvc (RUST_LOG=$level), logs in $logfile"
	# A plain `cmd &` execs storagesvc in the forked child, so $! is the
	# service itself, whose /proc entry gives its memory and CPU figures.
	BIND_ADDR=$bind \
		DATABASE_URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PORT/$DB_NAME" \
		AUTH_TOKENS="$TOKEN" \
		LOG_FORMAT=json \
		RUST_LOG="$level" \
		"$SVC_BIN" >"$logfile" 2>&1 </dev/null &
	SVC_PID=$!

	local deadline=$((SECONDS + READY_TIMEOUT))
	SVC_PORT=$SERVICE_PORT
	while [[ -z $SVC_PORT ]]; do
		svc_alive || svc_fail "$logfile" "storagesvc exited during start-up"
		SVC_PORT=$(ss -Hltnp 2>/dev/null |
			awk -v pid="pid=$SVC_PID," 'index($0, pid) { n = split($4, a, ":"); print a[n]; exit }')
		[[ -n $SVC_PORT ]] && break
		((SECONDS < deadline)) || svc_fail "$logfile" "storagesvc not listening after ${READY_TIMEOUT}s"
		sleep 0.1
	done

	# Healthy means the database answers and migrations (with the seed
	# books) have run.
	local code
	until code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
		"http://127.0.0.1:$SVC_PORT/.well-known/health") && [[ $code == 200 ]]; do
		svc_alive || svc_fail "$logfile" "storagesvc exited during start-up"
		((SECONDS < deadline)) || svc_fail "$logfile" "storagesvc not healthy after ${READY_TIMEOUT}s (last status: ${code:-none})"
		sleep 0.25
	done
	log "storagesvc healthy on 127.0.0.1:$SVC_PORT (pid $SVC_PID)"
}

# One request by hand before the load, so that a wrong token or an empty table
# shows up as a clear message instead of as a run full of errors.
check_books() {
	local body=$LOG_DIR/books.json code
	code=$(curl -s -o "$body" -w '%{http_code}' --max-time 5 \
		-H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$SVC_PORT/books") ||
		die "GET /books failed (curl exit $?)"
	[[ $code == 200 ]] || die "GET /books answered $code: $(head -c 300 "$body")"
	[[ $(head -c 1 "$body") == '[' ]] || die "GET /books did not return a JSON list: $(head -c 300 "$body")"
	BOOKS_COUNT=$(grep -o '"id":' "$body" | wc -l)
	BOOKS_BYTES=$(wc -c <"$body")
	((BOOKS_COUNT > 0)) || die "GET /books returned an empty list; the seed books are missing"
}

# --- measurements -------------------------------------------------------------

# proc_status_kib PID FIELD: a /proc/PID/status memory field, in KiB.
proc_status_kib() {
	awk -v f="$2:" '$1 == f { print $2; found = 1 } END { exit !found }' "/proc/$1/status" ||
		die "cannot read $2 of pid $1"
}

kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# CPU time (user + system) of a process, in clock ticks.
proc_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# CPU time of the shell's waited-for children (fields cutime + cstime), in
# clock ticks: across one run_wrk, that is wrk's CPU time.
children_cpu_ticks() { awk '{ print $16 + $17 }' "/proc/$$/stat"; }

# CPU time of the PostgreSQL container (all its processes), in nanoseconds,
# from its cgroup: cgroup v2's cpu.stat or v1's cpuacct. Prints nothing when
# neither can be read; the figure is then left out.
pg_cpu_ns() {
	local cg=/proc/$PG_PID/cgroup path dir
	[[ -r $cg ]] || return 0
	path=$(awk -F: '$1 == "0" && $2 == "" { print $3 }' "$cg")
	if [[ -n $path && -r /sys/fs/cgroup$path/cpu.stat ]]; then
		awk '$1 == "usage_usec" { printf "%.0f\n", $2 * 1000 }' "/sys/fs/cgroup$path/cpu.stat"
		return 0
	fi
	path=$(awk -F: '$2 ~ /(^|,)cpuacct(,|$)/ { print $3 }' "$cg")
	[[ -n $path ]] || return 0
	for dir in /sys/fs/cgroup/cpuacct /sys/fs/cgroup/cpu,cpuacct /sys/fs/cgroup/cpuacct,cpu; do
		if [[ -r $dir$path/cpuacct.usage ]]; then
			cat "$dir$path/cpuacct.usage"
			return 0
		fi
	done
}

# Sessions PostgreSQL has accepted so far in the benchmark database
# (pg_stat_database.sessions, PostgreSQL 14 and later). Its growth during the
# run shows whether the pool kept its connections or kept opening new ones,
# which is expensive. Prints nothing when it cannot be read.
pg_sessions() {
	docker exec "$PG_NAME" psql -X -q -At -p "$PG_INNER_PORT" -U "$DB_USER" -d "$DB_NAME" \
		-c "SELECT sessions FROM pg_stat_database WHERE datname = current_database()" 2>/dev/null || true
}

# sessions_note BEFORE AFTER: the number of connections opened in between,
# not counting the one of the second query itself.
sessions_note() {
	if [[ $1 =~ ^[0-9]+$ && $2 =~ ^[0-9]+$ ]]; then
		printf 'connections opened during the run: %d' $(($2 - $1 - 1))
	else
		printf 'connections opened during the run: unknown'
	fi
}

# Busy and total ticks of the whole machine, from the aggregate cpu line.
machine_ticks() {
	awk '$1 == "cpu" {
		total = 0; for (i = 2; i <= NF; i++) total += $i
		print total - $5 - $6, total; exit }' /proc/stat
}

# run_wrk SECONDS OUTFILE: one bounded wrk run against GET /books. wrk runs in
# the background so that the EXIT trap can stop it on Ctrl-C, and under
# `timeout` so that a wedged wrk cannot hold the script past its duration.
run_wrk() {
	local secs=$1 out=$2 rc=0
	timeout --kill-after=5 "$((secs + 30))" \
		wrk --threads "$THREADS" --connections "$CONNECTIONS" --duration "${secs}s" \
		--timeout "$WRK_TIMEOUT" --latency \
		--header "Authorization: Bearer $TOKEN" \
		"http://127.0.0.1:$SVC_PORT/books" >"$out" 2>&1 </dev/null &
	WRK_PID=$!
	wait "$WRK_PID" || rc=$?
	WRK_PID=""
	if ((rc != 0)); then
		sed 's/^/    /' "$out" >&2
		die "wrk failed (exit $rc)"
	fi
}

# to_ms VALUE: wrk's latency with unit (812.00us, 3.10ms, 1.02s, 2.00m) in ms.
to_ms() {
	awk -v v="$1" 'BEGIN {
		if (match(v, /^[0-9.]+/) == 0) exit 1
		n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1)
		if (u == "us") f = 0.001; else if (u == "ms") f = 1; else if (u == "s") f = 1000
		else if (u == "m") f = 60000; else if (u == "h") f = 3600000; else exit 1
		printf "%.2f", n * f }'
}

# parse_wrk FILE: sets W_RPS, W_P50, W_P99, W_P50_MS, W_P99_MS, W_REQUESTS,
# W_NON2XX, W_SOCKET (socket error summary) and W_SOCKET_TOTAL. The
# "Socket errors" and "Non-2xx" lines only appear when there are some.
parse_wrk() {
	local f=$1
	W_RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$f")
	W_P50=$(awk '$1 == "50%" { print $2 }' "$f")
	W_P99=$(awk '$1 == "99%" { print $2 }' "$f")
	W_REQUESTS=$(awk '$2 == "requests" && $3 == "in" { print $1 }' "$f")
	W_NON2XX=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$f")
	W_SOCKET=$(awk '/Socket errors:/ { sub(/.*Socket errors: */, ""); print }' "$f")
	W_NON2XX=${W_NON2XX:-0}
	W_SOCKET=${W_SOCKET:-connect 0, read 0, write 0, timeout 0}
	W_SOCKET_TOTAL=$(awk -v s="$W_SOCKET" 'BEGIN { n = split(s, a, /[ ,]+/); t = 0
		for (i = 2; i <= n; i += 2) t += a[i]; print t }')
	if [[ -z $W_RPS || -z $W_P50 || -z $W_P99 || -z $W_REQUESTS ]]; then
		sed 's/^/    /' "$f" >&2
		die "cannot read the figures from wrk's output ($f)"
	fi
	W_P50_MS=$(to_ms "$W_P50") || die "unexpected latency '$W_P50' in $f"
	W_P99_MS=$(to_ms "$W_P99") || die "unexpected latency '$W_P99' in $f"
}

# A run with any failed request is not a valid measurement: errors are cheap
# to answer (skewing throughput up) and timeouts are left out of wrk's
# latency percentiles (skewing them down). Such a run is recorded in
# RUN_ERRORS, which makes the script exit non-zero, but its figures are still
# printed (marked INVALID) since they help to find out what went wrong. A run
# in which nothing succeeded stops the script at once.
RUN_ERRORS=()
check_wrk_errors() {
	local what=$1 f=$2 logfile=$3 log_offset=$4
	[[ $W_REQUESTS -gt 0 ]] 2>/dev/null || die "$what: wrk completed no request"
	if [[ $W_NON2XX == 0 && $W_SOCKET_TOTAL == 0 ]]; then
		return 0
	fi
	local msg="$what: $W_NON2XX of $W_REQUESTS responses not 2xx/3xx; socket errors: $W_SOCKET"
	log "error: $msg"
	sed 's/^/    /' "$f" >&2
	# The service log says why it refused requests; show each reason once,
	# from the part of the log written during this run only.
	log "errors in the storagesvc log ($logfile) during this run, by count:"
	tail -c "+$((log_offset + 1))" "$logfile" | grep -v '"level":"INFO"' |
		grep -o '"error":"[^"]*"' | sort | uniq -c | sort -rn | head -n 5 |
		sed 's/^/    /' >&2 || true
	if ((W_NON2XX >= W_REQUESTS)); then
		die "$what: no request succeeded"
	fi
	RUN_ERRORS+=("$msg")
}

# verdict OP VALUE TARGET: "met" or "MISSED".
verdict() {
	awk -v op="$1" -v v="$2" -v t="$3" 'BEGIN {
		ok = (op == ">=") ? (v + 0 >= t + 0) : (v + 0 <= t + 0)
		print ok ? "met" : "MISSED" }'
}

# Busy share of the machine's CPUs over the last second, to warn when
# something else (a build, tests) would compete with the benchmark.
warn_if_busy() {
	local b1 t1 b2 t2 busy
	read -r b1 t1 < <(machine_ticks)
	sleep 1
	read -r b2 t2 < <(machine_ticks)
	busy=$(awk -v b=$((b2 - b1)) -v t=$((t2 - t1)) 'BEGIN { printf "%d", (t > 0 ? 100 * b / t : 0) }')
	IDLE_BUSY_PCT=$busy
	if ((busy > BUSY_WARN_PCT)); then
		log "warning: the machine is already ${busy}% busy before the load starts; the figures will be lower than on an idle machine"
	fi
}

# measure LABEL RUST_LOG LOGFILE: starts a fresh storagesvc (a fresh process,
# so VmHWM covers this run only), warms up, measures, prints a summary block.
measure() {
	local label=$1 level=$2 logfile=$3
	local tag=$level
	start_service "$level" "$logfile"
	check_books

	local rss_idle_kib
	rss_idle_kib=$(proc_status_kib "$SVC_PID" VmRSS)

	warn_if_busy
	log "warming up for ${WARMUP_S}s ($CONNECTIONS connections, $THREADS threads)"
	local log_offset
	log_offset=$(stat -c %s "$logfile")
	run_wrk "$WARMUP_S" "$LOG_DIR/wrk-$tag-warmup.txt"
	parse_wrk "$LOG_DIR/wrk-$tag-warmup.txt"
	check_wrk_errors "warm-up ($level)" "$LOG_DIR/wrk-$tag-warmup.txt" "$logfile" "$log_offset"

	log "measuring for ${DURATION_S}s"
	# CPU use of each part during the measured run, to show where the two
	# cores go: storagesvc, PostgreSQL, wrk, docker-proxy, and the rest
	# (kernel network work not charged to a process, anything else running).
	local cpu0 cpu1 pg0 pg1 wrk0 wrk1 px0="" px1="" mb0 mt0 mb1 mt1 t0 t1 sessions0 sessions1
	log_offset=$(stat -c %s "$logfile")
	sessions0=$(pg_sessions)
	cpu0=$(proc_cpu_ticks "$SVC_PID")
	pg0=$(pg_cpu_ns)
	[[ -z $PROXY_PID ]] || px0=$(proc_cpu_ticks "$PROXY_PID" 2>/dev/null || true)
	wrk0=$(children_cpu_ticks)
	read -r mb0 mt0 < <(machine_ticks)
	t0=$EPOCHREALTIME
	run_wrk "$DURATION_S" "$LOG_DIR/wrk-$tag.txt"
	t1=$EPOCHREALTIME
	read -r mb1 mt1 < <(machine_ticks)
	wrk1=$(children_cpu_ticks)
	pg1=$(pg_cpu_ns)
	[[ -z $PROXY_PID ]] || px1=$(proc_cpu_ticks "$PROXY_PID" 2>/dev/null || true)
	svc_alive || svc_fail "$logfile" "storagesvc died during the run"
	cpu1=$(proc_cpu_ticks "$SVC_PID")
	sessions1=$(pg_sessions)
	local hwm_kib rss_after_kib
	hwm_kib=$(proc_status_kib "$SVC_PID" VmHWM)
	rss_after_kib=$(proc_status_kib "$SVC_PID" VmRSS)
	stop_service

	parse_wrk "$LOG_DIR/wrk-$tag.txt"
	local errors_before=${#RUN_ERRORS[@]}
	check_wrk_errors "measured run ($level)" "$LOG_DIR/wrk-$tag.txt" "$logfile" "$log_offset"
	local valid_note="none non-2xx/3xx; no socket errors or timeouts"
	if ((${#RUN_ERRORS[@]} > errors_before)); then
		valid_note="INVALID RUN: $W_NON2XX non-2xx/3xx, socket errors: $W_SOCKET"
	fi

	local hz cpu_line rps_int peak_mib idle_mib after_mib
	hz=$(getconf CLK_TCK)
	cpu_line=$(awk -v hz="$hz" -v secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
		-v svc=$((cpu1 - cpu0)) -v wrk=$((wrk1 - wrk0)) -v pg0="$pg0" -v pg1="$pg1" \
		-v px0="$px0" -v px1="$px1" -v busy=$((mb1 - mb0)) -v total=$((mt1 - mt0)) -v ncpu="$(nproc)" 'BEGIN {
			s = svc / hz / secs; w = wrk / hz / secs
			all = (total > 0) ? ncpu * busy / total : 0
			line = sprintf("storagesvc %.2f, wrk %.2f", s, w)
			rest = all - s - w
			if (pg0 != "" && pg1 != "") {
				p = (pg1 - pg0) / 1e9 / secs; rest -= p
				line = line sprintf(", PostgreSQL %.2f", p)
			}
			if (px0 != "" && px1 != "") {
				x = (px1 - px0) / hz / secs; rest -= x
				line = line sprintf(", docker-proxy %.2f", x)
			}
			if (rest < 0) rest = 0
			printf "%s, other %.2f; busy %.2f of %d CPUs (%d%%)", line, rest, all, ncpu, (total > 0) ? 100 * busy / total : 0
		}')
	rps_int=$(awk -v r="$W_RPS" 'BEGIN { printf "%d", r + 0.5 }')
	peak_mib=$(kib_to_mib "$hwm_kib")
	idle_mib=$(kib_to_mib "$rss_idle_kib")
	after_mib=$(kib_to_mib "$rss_after_kib")

	local busy_note=""
	((IDLE_BUSY_PCT <= BUSY_WARN_PCT)) || busy_note=": something else was running, figures too low"
	local v_rps v_p99 v_rss
	v_rps=$(verdict ">=" "$W_RPS" "$TARGET_RPS")
	v_p99=$(verdict "<=" "$W_P99_MS" "$TARGET_P99_MS")
	v_rss=$(verdict "<=" "$peak_mib" "$TARGET_RSS_MIB")
	[[ $v_rps == met && $v_p99 == met && $v_rss == met ]] || MISSED_ANY+=("$label")

	{
		echo
		echo "== $label"
		echo "storagesvc GET /books, $CONNECTIONS connections, ${DURATION_S}s, $THREADS wrk threads (after ${WARMUP_S}s warm-up)"
		printf '%-11s %-15s %s\n' throughput "$rps_int req/s" "(target >= $TARGET_RPS: $v_rps)"
		printf '%-11s %s\n' p50 "$W_P50_MS ms"
		printf '%-11s %-15s %s\n' \
			p99 "$W_P99_MS ms" "(target <= $TARGET_P99_MS ms: $v_p99)" \
			"peak RSS" "$peak_mib MiB" "(target <= $TARGET_RSS_MIB MiB: $v_rss; VmHWM, warm-up included)"
		printf '%-11s %s\n' \
			"RSS" "$idle_mib MiB before load, $after_mib MiB after" \
			"requests" "$W_REQUESTS, $valid_note (wrk timeout $WRK_TIMEOUT)" \
			"CPU" "cores used on average: $cpu_line" \
			"" "(machine ${IDLE_BUSY_PCT}% busy in the second before the load$busy_note)" \
			"logging" "RUST_LOG=$level, LOG_FORMAT=json, to $logfile" \
			"database" "PG_NETWORK=$PG_NETWORK, DB_MAX_CONNECTIONS=${DB_MAX_CONNECTIONS:-16 (default)}; $(sessions_note "$sessions0" "$sessions1")"
	} >>"$SUMMARY"
}

print_machine() {
	local model mem
	model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
	mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
	{
		echo "machine: $(nproc) CPUs${model:+ ($model)}, $mem RAM, $(uname -sr)"
		if [[ $PG_NETWORK == host ]]; then
			echo "         wrk, storagesvc and PostgreSQL (Docker, host network, on 127.0.0.1)"
		else
			echo "         wrk, storagesvc, PostgreSQL (Docker) and docker-proxy (its port on 127.0.0.1)"
		fi
		echo "         share these $(nproc) CPUs; nothing is pinned"
		echo "tools:   $( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $1, $2 }'), $("$SVC_BIN" --version), $(docker exec "$PG_NAME" postgres --version)"
	}
}

main() {
	parse_args "$@"
	validate_settings
	check_tools

	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	if [[ -z $LOG_DIR ]]; then
		LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/bench-storagesvc.XXXXXX")
	else
		mkdir -p -- "$LOG_DIR"
		LOG_DIR=$(cd -- "$LOG_DIR" && pwd)
	fi
	SUMMARY=$LOG_DIR/summary.txt
	: >"$SUMMARY"
	MISSED_ANY=()

	local started=$SECONDS
	build_service
	start_postgres
	# A fresh random credential per run: the service only ever listens on
	# loopback, but no fixed token should be needed to reach it.
	TOKEN=bench-$(random_hex)

	measure "RUST_LOG=info (default logging, the reference figures)" info "$LOG_DIR/storagesvc.log"
	if [[ $WARN_RUN == true ]]; then
		measure "RUST_LOG=warn (no per-request log line; comparison only)" warn "$LOG_DIR/storagesvc-warn.log"
	fi

	{
		echo
		print_machine
		echo "books:   GET /books returns $BOOKS_COUNT books, $BOOKS_BYTES bytes"
		cat "$SUMMARY"
		echo
		if ((${#RUN_ERRORS[@]} > 0)); then
			echo "result: ERROR, the figures are not valid:"
			printf '        %s\n' "${RUN_ERRORS[@]}"
		elif ((${#MISSED_ANY[@]} == 0)); then
			echo "result: all targets met"
		else
			echo "result: targets MISSED (see the lines marked MISSED above)"
		fi
		echo "raw wrk output and logs: $LOG_DIR"
	} | tee "$SUMMARY.tmp"
	mv -f "$SUMMARY.tmp" "$SUMMARY"
	log "done in $((SECONDS - started))s"
	if ((${#RUN_ERRORS[@]} > 0)); then
		die "requests failed during the load; see above"
	fi
}

main "$@"
