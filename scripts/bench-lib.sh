# shellcheck shell=bash
# Shared by the benchmark scripts (bench-storagesvc.sh, bench-booksvc.sh):
# checking the common settings and tools (wrk installed if missing), the
# run's log directory and clean-up on exit, stopping processes and removing
# containers, CPU time and memory from /proc and cgroups, running wrk and
# reading its figures, and the met/MISSED verdicts and closing result lines.
#
# Source it after lib.sh (log, die). The caller sets, before calling these:
#   DURATION, WARMUP, WRK_TIMEOUT   durations in wrk syntax (30s, 2m, ...)
#   CONNECTIONS, THREADS            wrk's load
#   READY_TIMEOUT                   seconds to wait for anything to start
#   PG_NETWORK                      published or host
#   LOG_DIR                         empty for a new directory under TMPDIR
#   BUSY_WARN_PCT                   busy share above which warn_if_busy warns
#   WRK_SCRIPT                      optional: a Lua script for every wrk run
# and defines stop_started RC, which cleanup calls on exit to stop what the
# script started (RC: the exit status).
#
# It sets DURATION_S and WARMUP_S (validate_common_settings), LOG_DIR
# (begin_run), WRK_PID (run_wrk), the M_* figures (timed_wrk), the W_*
# figures (parse_wrk), RUN_ERRORS (check_wrk_errors) and IDLE_BUSY_PCT
# (warn_if_busy). Sourcing it only
# defines functions and these globals.

# Checked on its own, shellcheck sees neither the callers' use of the figures
# set here (SC2034) nor their settings such as DURATION (SC2153).
# shellcheck disable=SC2034,SC2153

# --- settings and tools -------------------------------------------------------

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

# The settings both scripts take; each checks its own ones after this.
validate_common_settings() {
	DURATION_S=$(to_seconds "$DURATION") || die "DURATION='$DURATION' is not a duration such as 30s or 2m"
	WARMUP_S=$(to_seconds "$WARMUP") || die "WARMUP='$WARMUP' is not a duration such as 5s"
	to_seconds "$WRK_TIMEOUT" >/dev/null || die "WRK_TIMEOUT='$WRK_TIMEOUT' is not a duration such as 2s"
	[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS='$CONNECTIONS' is not a positive integer"
	[[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "THREADS='$THREADS' is not a positive integer"
	((THREADS <= CONNECTIONS)) || die "THREADS ($THREADS) must not exceed CONNECTIONS ($CONNECTIONS): wrk gives each thread at least one connection"
	[[ $PG_NETWORK == published || $PG_NETWORK == host ]] || die "PG_NETWORK='$PG_NETWORK': expected 'published' or 'host'"
	[[ $READY_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "READY_TIMEOUT='$READY_TIMEOUT' is not a number of seconds"
}

# require_tools TOOL...: dies at the first one not installed.
require_tools() {
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null || die "$tool is not installed"
	done
}

# check_common_tools: the tools every benchmark uses (timeout bounds each wrk
# run), a Docker engine this user may talk to, and wrk.
check_common_tools() {
	require_tools docker curl awk timeout
	docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine (is it running, may this user use it?)"
	ensure_wrk
}

# --- the run and its clean-up -------------------------------------------------

WRK_PID=""
RUN_STARTED=$SECONDS

# begin_run NAME: from here on every exit, also on failure or Ctrl-C, goes
# through cleanup. Creates LOG_DIR (a new NAME.XXXXXX under TMPDIR when it is
# not set).
begin_run() {
	RUN_STARTED=$SECONDS
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	if [[ -z $LOG_DIR ]]; then
		LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
	else
		mkdir -p -- "$LOG_DIR"
		LOG_DIR=$(cd -- "$LOG_DIR" && pwd)
	fi
}

# end_run: after the summary; the exit status says whether any run saw
# failed requests.
end_run() {
	log "done in $((SECONDS - RUN_STARTED))s"
	if ((${#RUN_ERRORS[@]} > 0)); then
		die "requests failed during the load; see above"
	fi
}

cleanup() {
	local rc=$?
	set +e
	trap - ERR
	if [[ -n $WRK_PID ]]; then
		kill -TERM "$WRK_PID" 2>/dev/null
		wait "$WRK_PID" 2>/dev/null
	fi
	stop_started "$rc"
	if [[ -n $LOG_DIR && -d $LOG_DIR ]]; then
		log "logs and raw wrk output kept in $LOG_DIR"
	fi
	exit "$rc"
}

# A process that has exited but not yet been reaped still answers kill -0;
# its state letter tells.
pid_alive() {
	kill -0 "$1" 2>/dev/null &&
		[[ $(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

# stop_process PID: SIGTERM lets a service drain (SHUTDOWN_GRACE, 10 s by
# default); SIGKILL after that so a hung one cannot hold the script.
stop_process() {
	local pid=$1 deadline=$((SECONDS + 15))
	[[ -n $pid ]] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	while pid_alive "$pid" && ((SECONDS < deadline)); do
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# remove_container NAME (nothing when empty).
remove_container() {
	[[ -n $1 ]] || return 0
	# Forced removal: the data is throwaway, and it returns only once the
	# container is gone.
	docker rm -f -v "$1" >/dev/null 2>&1 || log "could not remove container $1"
}

# pick_free_port: a TCP port nothing listens on right now. There is a small
# window before the container binds it; if another program takes it
# meanwhile, the container exits and the start-up check reports it.
pick_free_port() {
	local port i low=20000 high=60000 ephemeral_low
	# Below the ephemeral range where it leaves room: a port that a client
	# connection (wrk's, or a service's to another) holds as its own cannot be
	# bound, and such a port is in no listening socket's list.
	read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || ephemeral_low=0
	((ephemeral_low > low + 1000)) && high=$ephemeral_low
	for ((i = 0; i < 100; i++)); do
		port=$((low + RANDOM % (high - low)))
		if [[ -z $(ss -Htan "sport = :$port") ]]; then
			printf '%d\n' "$port"
			return 0
		fi
	done
	die "found no free port"
}

random_hex() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# --- readings -----------------------------------------------------------------

# proc_status_kib PID FIELD: a /proc/PID/status memory field, in KiB.
proc_status_kib() {
	awk -v f="$2:" '$1 == f { print $2; found = 1 } END { exit !found }' "/proc/$1/status" ||
		die "cannot read $2 of pid $1"
}

kib_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# CPU time (user + system) of a process, in clock ticks; empty when it is gone.
proc_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || true; }

# CPU time of the shell's waited-for children (fields cutime + cstime), in
# clock ticks: across one run_wrk, that is wrk's CPU time.
children_cpu_ticks() { awk '{ print $16 + $17 }' "/proc/$$/stat"; }

# container_cpu_ns PID: CPU time of the container whose main process is PID
# (all its processes), in nanoseconds, from its cgroup: cgroup v2's cpu.stat
# or v1's cpuacct. Prints nothing when neither can be read (or the container
# is stopped); the figure is then left out.
container_cpu_ns() {
	local cg=/proc/$1/cgroup path dir
	[[ -n $1 && -r $cg ]] || return 0
	path=$(awk -F: '$1 == "0" && $2 == "" { print $3 }' "$cg" 2>/dev/null || true)
	if [[ -n $path && -r /sys/fs/cgroup$path/cpu.stat ]]; then
		awk '$1 == "usage_usec" { printf "%.0f\n", $2 * 1000 }' "/sys/fs/cgroup$path/cpu.stat"
		return 0
	fi
	path=$(awk -F: '$2 ~ /(^|,)cpuacct(,|$)/ { print $3 }' "$cg" 2>/dev/null || true)
	[[ -n $path ]] || return 0
	for dir in /sys/fs/cgroup/cpuacct /sys/fs/cgroup/cpu,cpuacct /sys/fs/cgroup/cpuacct,cpu; do
		if [[ -r $dir$path/cpuacct.usage ]]; then
			cat "$dir$path/cpuacct.usage"
			return 0
		fi
	done
}

# Busy and total ticks of the whole machine, from the aggregate cpu line.
machine_ticks() {
	awk '$1 == "cpu" {
		total = 0; for (i = 2; i <= NF; i++) total += $i
		print total - $5 - $6, total; exit }' /proc/stat
}

# warn_if_busy: sets IDLE_BUSY_PCT, the busy share of the machine's CPUs over
# one second, and warns above BUSY_WARN_PCT: something else (a build, tests)
# would compete with the benchmark.
IDLE_BUSY_PCT=""
warn_if_busy() {
	local b1 t1 b2 t2
	read -r b1 t1 < <(machine_ticks)
	sleep 1
	read -r b2 t2 < <(machine_ticks)
	IDLE_BUSY_PCT=$(awk -v b=$((b2 - b1)) -v t=$((t2 - t1)) 'BEGIN { printf "%d", (t > 0 ? 100 * b / t : 0) }')
	if ((IDLE_BUSY_PCT > BUSY_WARN_PCT)); then
		log "warning: the machine is already ${IDLE_BUSY_PCT}% busy before the load starts; the figures will be lower than on an idle machine"
	fi
}

# machine_line: "N CPUs (model), M GiB RAM, kernel" for the summaries.
machine_line() {
	local model mem
	model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
	mem=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
	printf '%s\n' "$(nproc) CPUs${model:+ ($model)}, $mem RAM, $(uname -sr)"
}

# --- wrk ----------------------------------------------------------------------

# run_wrk SECONDS OUTFILE URL [HEADER]: one bounded wrk run, with WRK_SCRIPT
# when that is set. wrk runs in the background so that the EXIT trap can stop
# it on Ctrl-C, and under `timeout` so that a wedged wrk cannot hold the
# script past its duration.
run_wrk() {
	local secs=$1 out=$2 url=$3 rc=0
	local -a options=()
	[[ -z ${4:-} ]] || options=(--header "$4")
	[[ -z ${WRK_SCRIPT:-} ]] || options+=(--script "$WRK_SCRIPT")
	timeout --kill-after=5 "$((secs + 30))" \
		wrk --threads "$THREADS" --connections "$CONNECTIONS" --duration "${secs}s" \
		--timeout "$WRK_TIMEOUT" --latency "${options[@]}" \
		"$url" >"$out" 2>&1 </dev/null &
	WRK_PID=$!
	wait "$WRK_PID" || rc=$?
	WRK_PID=""
	if ((rc != 0)); then
		sed 's/^/    /' "$out" >&2
		die "wrk failed (exit $rc)"
	fi
}

# timed_wrk SECONDS OUTFILE URL [HEADER]: run_wrk, with what happened during
# it: sets M_SECS (wall-clock seconds), M_WRK_TICKS (wrk's CPU time) and
# M_BUSY_TICKS and M_TOTAL_TICKS (the whole machine's busy and total ticks).
timed_wrk() {
	local wrk0 wrk1 mb0 mt0 mb1 mt1 t0 t1
	wrk0=$(children_cpu_ticks)
	read -r mb0 mt0 < <(machine_ticks)
	t0=$EPOCHREALTIME
	run_wrk "$@"
	t1=$EPOCHREALTIME
	read -r mb1 mt1 < <(machine_ticks)
	wrk1=$(children_cpu_ticks)
	M_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
	M_WRK_TICKS=$((wrk1 - wrk0))
	M_BUSY_TICKS=$((mb1 - mb0))
	M_TOTAL_TICKS=$((mt1 - mt0))
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

# parse_wrk FILE: sets W_RPS, W_P50_MS, W_P99_MS, W_MAX_MS, W_REQUESTS,
# W_NON2XX, W_SOCKET (socket error summary) and W_SOCKET_TOTAL. The
# "Socket errors" and "Non-2xx" lines only appear when there are some.
parse_wrk() {
	local f=$1 p50 p99 max
	W_RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$f")
	p50=$(awk '$1 == "50%" { print $2 }' "$f")
	p99=$(awk '$1 == "99%" { print $2 }' "$f")
	max=$(awk '$1 == "Latency" && NF >= 5 { print $4; exit }' "$f")
	W_REQUESTS=$(awk '$2 == "requests" && $3 == "in" { print $1 }' "$f")
	W_NON2XX=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$f")
	W_SOCKET=$(awk '/Socket errors:/ { sub(/.*Socket errors: */, ""); print }' "$f")
	W_NON2XX=${W_NON2XX:-0}
	W_SOCKET=${W_SOCKET:-connect 0, read 0, write 0, timeout 0}
	W_SOCKET_TOTAL=$(awk -v s="$W_SOCKET" 'BEGIN { n = split(s, a, /[ ,]+/); t = 0
		for (i = 2; i <= n; i += 2) t += a[i]; print t }')
	if [[ -z $W_RPS || -z $p50 || -z $p99 || -z $max || -z $W_REQUESTS ]]; then
		sed 's/^/    /' "$f" >&2
		die "cannot read the figures from wrk's output ($f)"
	fi
	W_P50_MS=$(to_ms "$p50") || die "unexpected latency '$p50' in $f"
	W_P99_MS=$(to_ms "$p99") || die "unexpected latency '$p99' in $f"
	W_MAX_MS=$(to_ms "$max") || die "unexpected latency '$max' in $f"
}

# A run with any failed request is not a valid measurement: errors are cheap
# to answer (skewing throughput up) and timeouts are left out of wrk's
# latency percentiles (skewing them down). Such a run is recorded in
# RUN_ERRORS, which makes the script exit non-zero, but its figures are still
# printed (marked as not valid) since they help to find out what went wrong.
# A run in which nothing succeeded stops the script at once.
#
# check_wrk_errors WHAT WRK_OUTPUT [SERVICE LOGFILE LOG_OFFSET]: after
# parse_wrk. With SERVICE, the errors SERVICE logged to LOGFILE after byte
# LOG_OFFSET are shown too, each reason once.
RUN_ERRORS=()
check_wrk_errors() {
	local what=$1 f=$2 service=${3:-} logfile=${4:-} log_offset=${5:-0}
	[[ $W_REQUESTS -gt 0 ]] 2>/dev/null || die "$what: wrk completed no request"
	if [[ $W_NON2XX == 0 && $W_SOCKET_TOTAL == 0 ]]; then
		return 0
	fi
	local msg="$what: $W_NON2XX of $W_REQUESTS responses not 2xx/3xx; socket errors: $W_SOCKET"
	log "error: $msg"
	sed 's/^/    /' "$f" >&2
	if [[ -n $service ]]; then
		log "errors in the $service log ($logfile) during this run, by count:"
		tail -c "+$((log_offset + 1))" "$logfile" | grep -v '"level":"INFO"' |
			grep -o '"error":"[^"]*"' | sort | uniq -c | sort -rn | head -n 5 |
			sed 's/^/    /' >&2 || true
	fi
	if ((W_NON2XX >= W_REQUESTS)); then
		die "$what: no request succeeded"
	fi
	RUN_ERRORS+=("$msg")
}

# print_result ALL_MET: the closing lines of a summary; ALL_MET is true when
# every target was met.
print_result() {
	if ((${#RUN_ERRORS[@]} > 0)); then
		echo "result: ERROR, the figures are not valid:"
		printf '        %s\n' "${RUN_ERRORS[@]}"
	elif [[ $1 == true ]]; then
		echo "result: all targets met"
	else
		echo "result: targets MISSED (see the lines marked MISSED above)"
	fi
	echo "raw wrk output and logs: $LOG_DIR"
}

# verdict OP VALUE TARGET: "met" or "MISSED".
verdict() {
	awk -v op="$1" -v v="$2" -v t="$3" 'BEGIN {
		ok = (op == ">=") ? (v + 0 >= t + 0) : (v + 0 <= t + 0)
		print ok ? "met" : "MISSED" }'
}
