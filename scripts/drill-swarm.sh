#!/usr/bin/env bash
# The failure drill on the swarm stack: deploys deploy/swarm/stack.yaml with the drill's
# additions (bench/swarm-drill.yaml: the nginx peer in front of the same three storagesvc
# replicas), runs the drill's storagesvc-replica-pause scenario (one storagesvc replica of
# three paused, 200 reads/s), booksvc (x2, through the edge) and nginx one after the other,
# writes docs/resilience-report-swarm.md, and removes the stack again, on failure too.
#
# The swarm: if this node is in none, one is made (`docker swarm init`) and left again at
# the end; a node already in one is left in it.
#
# Images: STORAGESVC_IMAGE, BOOKSVC_IMAGE, POSTGRES_IMAGE and REDIS_IMAGE as
# scripts/offline-images.sh exports them (default: the compose file's names, which must
# exist locally); the edge and the nginx peer's images are built here. Uses host ports
# 28181 (the edge) and 28180 (nginx). Takes about 4 minutes.

set -Eeuo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
ROOT_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
readonly ROOT_DIR
LOG_PREFIX=drill-swarm
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"
# shellcheck source=scripts/swarm-lib.sh
source "$SCRIPT_DIR/swarm-lib.sh"

readonly STACK=bookstore-drill-swarm
readonly EDGE_PORT=28181 NGINX_PORT=28180
readonly REPORT=docs/resilience-report-swarm.md

usage() {
	sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	cat <<EOF
Usage: ${0##*/} [--report FILE] [--keep] [--help]

  --report FILE  where the report goes (default: $REPORT)
  --keep         leave the stack deployed at the end; remove it later with
                 docker stack rm $STACK
EOF
}

KEEP=false
REPORT_TO=$REPORT
while (($#)); do
	case $1 in
	--keep) KEEP=true ;;
	--report)
		(($# >= 2)) || die "--report needs a file"
		REPORT_TO=$2
		shift
		;;
	-h | --help) usage && exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
	shift
done

started=$SECONDS
step() { log "[$(printf '%4d' $((SECONDS - started)))s] $*"; }

cd "$ROOT_DIR"
check_docker
export_stack_images

step "the edge image: $EDGE_IMAGE_TAG from deploy/swarm/edge"
build_edge_image
step "the nginx peer's image: bench/nginx/build-image.sh"
eval "$(bench/nginx/build-image.sh)"
export EDGE_IMAGE=$EDGE_IMAGE_TAG EDGE_PORT NGINX_PORT DEPLOYMENT_REVISION=1

step "the drill: cargo build --release -p drill"
cargo build --release --locked -p drill
DRILL=${CARGO_TARGET_DIR:-target}/release/drill

step "a swarm to deploy into"
enter_swarm

teardown() {
	local rc=$?
	trap - ERR
	if ((rc != 0)); then
		docker service ls --filter "label=com.docker.stack.namespace=$STACK" >&2 || true
	fi
	end_stack "$rc"
}
trap teardown EXIT

step "docker stack deploy $STACK (the edge on port $EDGE_PORT, nginx on $NGINX_PORT)"
docker stack deploy --resolve-image never -c deploy/swarm/stack.yaml \
	-c bench/swarm-drill.yaml "$STACK" >/dev/null
readonly BOOKS="http://127.0.0.1:$EDGE_PORT/books" NGINX_BOOKS="http://127.0.0.1:$NGINX_PORT/books"
wait_stack_healthy 180 "$BOOKS" "$NGINX_BOOKS"
step "every service healthy"

# The baseline phase (20 s at 200 reads/s) also gives each booksvc replica the latency
# history its adaptive attempt timeout needs before the fault.
step "the drill: storagesvc-replica-pause, report in $REPORT_TO"
"$DRILL" --swarm "$STACK" --booksvc-url "$BOOKS" --nginx-url "$NGINX_BOOKS" \
	--baseline 20s --fault 30s --recovery 20s storagesvc-replica-pause --report "$REPORT_TO"
step "done"
