#!/usr/bin/env bash
# Regenerates docs/resilience-report.md and its charts: starts the stack with the drill's
# additions (bench/docker-compose.drill.yaml: the nginx peer, published ports), runs the
# failure drill on every scenario with the closed-loop throughput comparison first, and
# removes the stack again, on failure too.
#
# Images: with STORAGESVC_IMAGE and BOOKSVC_IMAGE set (scripts/offline-images.sh prints
# them) the stack starts from those with `up --no-build`; otherwise compose builds the
# Dockerfiles, which needs a registry for the base images. The nginx peer's image is
# built by bench/nginx/build-image.sh either way.
#
# Runs under its own compose project name, bookstore-drill, so it never touches a stack
# you started yourself. Uses host ports 18080 to 18082, 19081 and 19082 on 127.0.0.1. Takes about
# 20 minutes for every scenario. `--scenarios "a b"` (or DRILL_SCENARIOS) runs only those,
# with the same phases, no throughput comparison, and the report written to
# target/drill/report.md (or --report FILE), so the committed report stays as it is.
# Arguments after `--` replace the drill's entirely (for example
# `-- --baseline 5s --fault 10s --recovery 8s storagesvc-partition`; the drill writes
# no report then unless they include --report).

set -Eeuo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
ROOT_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
readonly ROOT_DIR
LOG_PREFIX=drill-report
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"

readonly PROJECT=bookstore-drill
readonly REPORT=docs/resilience-report.md
readonly SUBSET_REPORT=target/drill/report.md

usage() {
	sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	cat <<EOF
Usage: ${0##*/} [--scenarios "NAME..."] [--report FILE] [--keep] [--help] [-- DRILL_ARGUMENTS...]

  --scenarios "NAME..."
              run only these scenarios (default: \$DRILL_SCENARIOS, else all of them):
              database-stop database-pause storagesvc-stop redis-stop
              database-and-redis-stop storagesvc-partition storagesvc-slow
              storagesvc-flaky overload
  --report FILE
              where the report goes (default: $REPORT for all scenarios,
              $SUBSET_REPORT for a subset)
  --keep      leave the stack running at the end; remove it later with
              docker compose -p $PROJECT -f docker-compose.yaml -f bench/docker-compose.drill.yaml down -v
EOF
}

KEEP=false
DRILL_ARGS=()
SCENARIOS=${DRILL_SCENARIOS:-}
REPORT_TO=
while (($#)); do
	case $1 in
	--keep) KEEP=true ;;
	--scenarios)
		(($# >= 2)) || die "--scenarios needs a list of scenarios"
		SCENARIOS=$2
		shift
		;;
	--report)
		(($# >= 2)) || die "--report needs a file"
		REPORT_TO=$2
		shift
		;;
	-h | --help) usage && exit 0 ;;
	--)
		shift
		DRILL_ARGS=("$@")
		break
		;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
	shift
done
if ((${#DRILL_ARGS[@]})) && [[ -n $SCENARIOS || -n $REPORT_TO ]]; then
	die "--scenarios and --report do not go with drill arguments after --"
fi
# Each scenario runs twice (booksvc, then nginx): the 30 s fault of the drill's defaults,
# with shorter baseline and recovery phases, keep each scenario near 2 minutes.
PHASES=(--baseline 10s --fault 30s --recovery 12s)
if ((${#DRILL_ARGS[@]} == 0)); then
	if [[ -n $SCENARIOS ]]; then
		read -ra NAMES <<<"$SCENARIOS"
		((${#NAMES[@]})) || die "--scenarios names no scenario"
		DRILL_ARGS=("${PHASES[@]}" "${NAMES[@]}" --report "${REPORT_TO:-$SUBSET_REPORT}")
	else
		DRILL_ARGS=(--throughput --warmup 3s "${PHASES[@]}" all --report "${REPORT_TO:-$REPORT}")
	fi
fi

cd "$ROOT_DIR"
detect_compose
compose() {
	"${COMPOSE[@]}" --project-name "$PROJECT" --project-directory "$ROOT_DIR" \
		-f docker-compose.yaml -f bench/docker-compose.drill.yaml "$@"
}

started=$SECONDS
step() { log "[$(printf '%4d' $((SECONDS - started)))s] $*"; }

teardown() {
	local rc=$?
	if ((rc != 0)); then
		log "failed; the last lines of each service's log:"
		compose logs --no-color --tail=20 >&2 || true
	fi
	if $KEEP; then
		log "stack left running (--keep)"
	else
		compose down -v --remove-orphans >/dev/null 2>&1 || true
	fi
	exit "$rc"
}

step "wrk, for the throughput comparison"
ensure_wrk

step "the nginx peer's image: bench/nginx/build-image.sh"
eval "$(bench/nginx/build-image.sh)"

step "the drill: cargo build --release -p drill"
cargo build --release --locked -p drill
DRILL=${CARGO_TARGET_DIR:-target}/release/drill

if [[ -n ${STORAGESVC_IMAGE:-} && -n ${BOOKSVC_IMAGE:-} ]]; then
	UP=(up -d --no-build)
else
	UP=(up -d --build)
fi
step "the stack: compose -p $PROJECT ${UP[*]}"
# A stack left by an earlier run that was interrupted would hold the ports.
compose down -v --remove-orphans >/dev/null 2>&1 || true
trap teardown EXIT
export BOOKSVC_PORT=18081
compose "${UP[@]}"

step "the drill: drill ${DRILL_ARGS[*]}"
"$DRILL" "${DRILL_ARGS[@]}"

step "done"
