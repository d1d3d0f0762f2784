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
passed through; BIND_ADDR, ADMIN_BIND_ADDR, DATABASE_URL, AUTH_TOKENS,
LOG_FORMAT and RUST_LOG are set by the script.
EOF
}

LOG_PREFIX=bench
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"
# shellcheck source=scripts/bench-lib.sh
source "$SCRIPT_DIR/bench-lib.sh"

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

validate_settings() {
	validate_common_settings
	if [[ -n $SERVICE_PORT ]]; then
		if ! [[ $SERVICE_PORT =~ ^[1-9][0-9]*$ ]] || ((SERVICE_PORT > 65535)); then
			die "SERVICE_PORT='$SERVICE_PORT' is not a port number"
		fi
	fi
}

check_tools() {
	if [[ -z $SERVICE_PORT || $PG_NETWORK == host ]]; then
		# storagesvc binds port 0 and ss tells which port it got: no window
		# in which another program could take a port picked in advance.
		# (With PG_NETWORK=host, ss also finds a free port for PostgreSQL.)
		command -v ss >/dev/null || die "ss (iproute2) is needed to find free ports; install it (or set SERVICE_PORT and leave PG_NETWORK alone)"
	fi
	check_common_tools
}

# --- clean-up -----------------------------------------------------------------

PG_NAME=""
SVC_PID=""

stop_service() {
	local pid=$SVC_PID
	SVC_PID=""
	stop_process "$pid"
}

# Called by cleanup on exit.
stop_started() {
	local rc=$1
	stop_service
	if [[ -n $PG_NAME ]] && ((rc != 0)); then
		log "last PostgreSQL log lines:"
		docker logs --tail 20 "$PG_NAME" 2>&1 | sed 's/^/    /' >&2
	fi
	remove_container "$PG_NAME"
}

# --- PostgreSQL ---------------------------------------------------------------

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
	# The admin listener gets a port of its own, known in advance, so that the
	# public port can be told from it below.
	local admin_port="" admin_bind=127.0.0.1:0
	if [[ -z $SERVICE_PORT ]]; then
		admin_port=$(pick_free_port)
		admin_bind=127.0.0.1:$admin_port
	fi
	log "starting storagesvc (RUST_LOG=$level), logs in $logfile"
	# A plain `cmd &` execs storagesvc in the forked child, so $! is the
	# service itself, whose /proc entry gives its memory and CPU figures.
	BIND_ADDR=$bind \
		ADMIN_BIND_ADDR=$admin_bind \
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
			awk -v pid="pid=$SVC_PID," -v admin="$admin_port" \
				'index($0, pid) { n = split($4, a, ":"); if (a[n] != admin) { print a[n]; exit } }')
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

# measure LABEL RUST_LOG LOGFILE: starts a fresh storagesvc (a fresh process,
# so VmHWM covers this run only), warms up, measures, prints a summary block.
measure() {
	local label=$1 level=$2 logfile=$3
	local tag=$level
	start_service "$level" "$logfile"
	check_books
	local url="http://127.0.0.1:$SVC_PORT/books" auth="Authorization: Bearer $TOKEN"

	local rss_idle_kib
	rss_idle_kib=$(proc_status_kib "$SVC_PID" VmRSS)

	warn_if_busy
	log "warming up for ${WARMUP_S}s ($CONNECTIONS connections, $THREADS threads)"
	local log_offset
	log_offset=$(stat -c %s "$logfile")
	run_wrk "$WARMUP_S" "$LOG_DIR/wrk-$tag-warmup.txt" "$url" "$auth"
	parse_wrk "$LOG_DIR/wrk-$tag-warmup.txt"
	check_wrk_errors "warm-up ($level)" "$LOG_DIR/wrk-$tag-warmup.txt" storagesvc "$logfile" "$log_offset"

	log "measuring for ${DURATION_S}s"
	# CPU use of each part during the measured run, to show where the two
	# cores go: storagesvc, PostgreSQL, wrk, docker-proxy, and the rest
	# (kernel network work not charged to a process, anything else running).
	local cpu0 cpu1 pg0 pg1 px0="" px1="" sessions0 sessions1
	log_offset=$(stat -c %s "$logfile")
	sessions0=$(pg_sessions)
	cpu0=$(proc_cpu_ticks "$SVC_PID")
	pg0=$(container_cpu_ns "$PG_PID")
	[[ -z $PROXY_PID ]] || px0=$(proc_cpu_ticks "$PROXY_PID")
	timed_wrk "$DURATION_S" "$LOG_DIR/wrk-$tag.txt" "$url" "$auth"
	pg1=$(container_cpu_ns "$PG_PID")
	[[ -z $PROXY_PID ]] || px1=$(proc_cpu_ticks "$PROXY_PID")
	svc_alive || svc_fail "$logfile" "storagesvc died during the run"
	cpu1=$(proc_cpu_ticks "$SVC_PID")
	sessions1=$(pg_sessions)
	local hwm_kib rss_after_kib
	hwm_kib=$(proc_status_kib "$SVC_PID" VmHWM)
	rss_after_kib=$(proc_status_kib "$SVC_PID" VmRSS)
	stop_service

	parse_wrk "$LOG_DIR/wrk-$tag.txt"
	local errors_before=${#RUN_ERRORS[@]}
	check_wrk_errors "measured run ($level)" "$LOG_DIR/wrk-$tag.txt" storagesvc "$logfile" "$log_offset"
	local valid_note="none non-2xx/3xx; no socket errors or timeouts"
	if ((${#RUN_ERRORS[@]} > errors_before)); then
		valid_note="INVALID RUN: $W_NON2XX non-2xx/3xx, socket errors: $W_SOCKET"
	fi

	local hz cpu_line rps_int peak_mib idle_mib after_mib
	hz=$(getconf CLK_TCK)
	cpu_line=$(awk -v hz="$hz" -v secs="$M_SECS" \
		-v svc=$((cpu1 - cpu0)) -v wrk="$M_WRK_TICKS" -v pg0="$pg0" -v pg1="$pg1" \
		-v px0="$px0" -v px1="$px1" -v busy="$M_BUSY_TICKS" -v total="$M_TOTAL_TICKS" -v ncpu="$(nproc)" 'BEGIN {
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
	{
		echo "machine: $(machine_line)"
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

	begin_run bench-storagesvc
	SUMMARY=$LOG_DIR/summary.txt
	: >"$SUMMARY"
	MISSED_ANY=()

	build_service
	start_postgres
	# A fresh random credential per run: the service only ever listens on
	# loopback, but no fixed token should be needed to reach it.
	TOKEN=bench-$(random_hex)

	measure "RUST_LOG=info (default logging, the reference figures)" info "$LOG_DIR/storagesvc.log"
	if [[ $WARN_RUN == true ]]; then
		measure "RUST_LOG=warn (no per-request log line; comparison only)" warn "$LOG_DIR/storagesvc-warn.log"
	fi

	local all_met=true
	((${#MISSED_ANY[@]} == 0)) || all_met=false
	{
		echo
		print_machine
		echo "books:   GET /books returns $BOOKS_COUNT books, $BOOKS_BYTES bytes"
		cat "$SUMMARY"
		echo
		print_result "$all_met"
	} | tee "$SUMMARY.tmp"
	mv -f "$SUMMARY.tmp" "$SUMMARY"
	end_run
}

main "$@"
