#!/usr/bin/env bash
# The stack on Docker Swarm (deploy/swarm/stack.yaml), deployed, loaded and faulted, every
# promise checked with figures printed:
#
#   1. deploy: every service healthy within 120 s of `docker stack deploy`;
#   2. one storagesvc replica of three paused (`docker pause`), 200 reads/s for 30 s:
#      100% 2xx, at least 99% fresh, p99 <= 100 ms, and the paused replica asked no more
#      than a few health probes a second (booksvc logs each one);
#   3. rolling updates of storagesvc, then of booksvc (start-first, one task at a time),
#      under 200 reads/s and 5 writes/s with idempotency keys: no failed read, no write
#      lost, none applied twice;
#   4. one booksvc replica killed (`docker kill`) under 200 reads/s: at most 0.5% of that
#      second's requests fail, none after, and swarm replaces it;
#   5. a write through the edge is never followed by a read showing the old book, though
#      the read often lands on the other booksvc replica.
#
# The swarm: if this node is in none, one is made (`docker swarm init`) and left again at
# the end; a node already in one is left in it. Everything the script deployed is removed
# at the end, on failure too (unless --keep).
#
# Images: STORAGESVC_IMAGE, BOOKSVC_IMAGE, POSTGRES_IMAGE and REDIS_IMAGE as
# scripts/offline-images.sh exports them (default: the compose file's names, which must
# exist locally: a single-node swarm runs local images); the edge image is built here,
# from deploy/swarm/edge on bookstore/runtime:bookworm when that exists.
# The edge publishes SWARM_PORT (default 28081) on every address of this host.

set -Eeuo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
ROOT_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
readonly ROOT_DIR
LOG_PREFIX=swarm-smoke
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"
# shellcheck source=scripts/swarm-lib.sh
source "$SCRIPT_DIR/swarm-lib.sh"

readonly STACK=${SWARM_STACK:-bookstore-swarm}
readonly PORT=${SWARM_PORT:-28081}
readonly BASE="http://127.0.0.1:$PORT"
readonly WRITER_TOKEN=bookstore-dev-writer-token
readonly LOAD=(python3 "$SCRIPT_DIR/swarm-load.py" --url "$BASE")
# The promises, as figures.
readonly HEALTHY_WITHIN=120
readonly RATE=200
readonly WRITE_RATE=5

usage() {
	sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	cat <<EOF
Usage: ${0##*/} [--keep] [--help]

  --keep      leave the stack deployed at the end; remove it later with
              docker stack rm $STACK (and docker swarm leave --force, if the script made
              the swarm: it says so)
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

started=$SECONDS
step() { log "[$(printf '%4d' $((SECONDS - started)))s] $*"; }

check_docker
command -v python3 >/dev/null || die "python3 is needed for the load (scripts/swarm-load.py)"
export_stack_images
export EDGE_IMAGE=$EDGE_IMAGE_TAG EDGE_PORT=$PORT DEPLOYMENT_REVISION=1

step "the edge image: $EDGE_IMAGE_TAG from deploy/swarm/edge"
build_edge_image

step "a swarm to deploy into"
enter_swarm

teardown() {
	local rc=$?
	trap - ERR
	if ((rc != 0)); then
		log "failed; the services' last log lines (access lines left out):"
		for service in storagesvc booksvc edge; do
			timeout 20 docker service logs --tail 300 "${STACK}_$service" 2>&1 |
				grep -v 'finished processing request' | tail -n 15 >&2 || true
		done
		docker service ls --filter "label=com.docker.stack.namespace=$STACK" >&2 || true
	fi
	end_stack "$rc"
}
trap teardown EXIT

step "docker stack deploy $STACK (edge on port $PORT)"
deploy_started=$SECONDS
docker stack deploy --resolve-image never -c "$ROOT_DIR/deploy/swarm/stack.yaml" "$STACK" >/dev/null

# Every service at its replica count, every task's container healthy, the edge answering.
wait_healthy() { wait_stack_healthy "$1" "$BASE/books?limit=5"; }
wait_healthy "$HEALTHY_WITHIN"
took=$((SECONDS - deploy_started))
step "deployed: every service healthy after $took s (promise: <= $HEALTHY_WITHIN s)"

# Reads a JSON figure: figure FILE EXPRESSION (Python, on `d`).
figure() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }
runs=$(mktemp -d)

# --- 2. one storagesvc replica of three paused -------------------------------------------
# A healthy baseline first, which also gives each booksvc replica the history its adaptive
# attempt timeout needs (256 answers; until then an attempt may take ATTEMPT_TIMEOUT, and a
# paused replica would stall every read waiting on it that long).
step "healthy baseline: $RATE reads/s for 10 s"
"${LOAD[@]}" --rate "$RATE" --duration 10 >"$runs/baseline.json"
step "healthy: $(figure "$runs/baseline.json" 'd["reads"]["sent"]') reads, $(figure "$runs/baseline.json" 'd["reads"]["errors"]') failed, $(figure "$runs/baseline.json" 'd["reads"]["stale"]') stale, p99 $(figure "$runs/baseline.json" 'd["reads"]["p99_ms"]') ms"
(($(figure "$runs/baseline.json" 'd["reads"]["errors"]') == 0)) || die "reads failed on the healthy stack"
mapfile -t replicas < <(service_container storagesvc)
((${#replicas[@]} == 3)) || die "expected 3 storagesvc containers, found ${#replicas[@]}"
paused=${replicas[0]}
step "paused: storagesvc container ${paused:0:12}; $RATE reads/s for 30 s"
since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
docker pause "$paused" >/dev/null
pause_started=$SECONDS
"${LOAD[@]}" --rate "$RATE" --duration 30 >"$runs/paused.json"
paused_for=$((SECONDS - pause_started))
docker unpause "$paused" >/dev/null
# Each booksvc replica logs every probe it sends to an ejected address. (Per container:
# `docker service logs` can hang on a paused task.)
probes=0
for booksvc in $(service_container booksvc); do
	count=$(timeout 20 docker logs --since "$since" "$booksvc" 2>&1 | grep -c 'failed its health probe' || true)
	probes=$((probes + count))
done
sent=$(figure "$runs/paused.json" 'd["reads"]["sent"]')
ok=$(figure "$runs/paused.json" 'd["reads"]["ok"]')
fresh=$(figure "$runs/paused.json" 'd["reads"]["fresh"]')
p99=$(figure "$runs/paused.json" 'd["reads"]["p99_ms"]')
probe_rate=$(python3 -c "print(round($probes / max($paused_for, 1) / 2, 2))")
step "paused replica: $sent reads, $ok 2xx, $fresh fresh, p99 $p99 ms; $probes failed health probes of it by 2 booksvc replicas in $paused_for s ($probe_rate a second each)"
((ok == sent)) || die "not every read answered 2xx while a replica was paused: $(cat "$runs/paused.json")"
((fresh * 100 >= sent * 99)) || die "fewer than 99% fresh while a replica was paused ($fresh of $sent)"
python3 -c "import sys; sys.exit(0 if $p99 <= 100 else 1)" || die "p99 $p99 ms > 100 ms while a replica was paused"
python3 -c "import sys; sys.exit(0 if $probe_rate <= 3 else 1)" || die "the paused replica was probed $probe_rate times a second by each booksvc replica"
wait_healthy 60

# --- 3. rolling updates under reads and keyed writes -----------------------------------
label="roll-$(date +%s)"
step "rolling updates of storagesvc then booksvc under $RATE reads/s and $WRITE_RATE keyed writes/s"
"${LOAD[@]}" --rate "$RATE" --duration 60 --writes "$WRITE_RATE" --writer-token "$WRITER_TOKEN" \
	--label "$label" >"$runs/rolling.json" &
load_pid=$!
sleep 3
roll_started=$SECONDS
for service in storagesvc booksvc; do
	docker service update --quiet --detach --env-add DEPLOYMENT_REVISION=2 "${STACK}_$service" >/dev/null
	deadline=$((SECONDS + 90))
	while :; do
		state=$(docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "${STACK}_$service")
		case $state in
		completed) break ;;
		updating | "") ;;
		*) die "the rolling update of $service ended '$state': $(docker service inspect --format '{{.UpdateStatus.Message}}' "${STACK}_$service")" ;;
		esac
		((SECONDS < deadline)) || die "the rolling update of $service was still '$state' after 90 s"
		sleep 1
	done
	step "  $service updated ($((SECONDS - roll_started)) s since the first update began)"
done
((SECONDS - roll_started < 55)) || die "the rolling updates outlasted the load"
wait "$load_pid"
sent=$(figure "$runs/rolling.json" 'd["reads"]["sent"]')
errors=$(figure "$runs/rolling.json" 'd["reads"]["errors"]')
writes=$(figure "$runs/rolling.json" 'd["writes"]["sent"]')
written=$(figure "$runs/rolling.json" 'd["writes"]["ok"]')
retried=$(figure "$runs/rolling.json" 'd["writes"]["retried"]')
"${LOAD[@]}" --list-label "$label" >"$runs/books.json"
distinct=$(figure "$runs/books.json" 'len(d)')
twice=$(figure "$runs/books.json" 'sum(1 for c in d.values() if c > 1)')
step "rolling updates: $sent reads, $errors failed (p99 $(figure "$runs/rolling.json" 'd["reads"]["p99_ms"]') ms); $writes writes, $written acknowledged ($retried resent with their key), $distinct books made, $twice made twice"
((errors == 0)) || die "reads failed during the rolling updates: $(figure "$runs/rolling.json" 'd["reads"]["error_kinds"]')"
((written == writes)) || die "writes lost during the rolling updates: $(figure "$runs/rolling.json" 'd["writes"]["lost"]')"
((distinct == writes && twice == 0)) || die "the writes made $distinct distinct books ($twice twice) for $writes keys"
wait_healthy 60

# --- 4. one booksvc replica killed --------------------------------------------------------
mapfile -t booksvcs < <(service_container booksvc)
((${#booksvcs[@]} == 2)) || die "expected 2 booksvc containers, found ${#booksvcs[@]}"
step "docker kill booksvc container ${booksvcs[0]:0:12} under $RATE reads/s"
"${LOAD[@]}" --rate "$RATE" --duration 20 >"$runs/kill.json" &
load_pid=$!
sleep 5
docker kill "${booksvcs[0]}" >/dev/null
killed_at=$SECONDS
wait "$load_pid"
worst=$(figure "$runs/kill.json" 'd["reads"]["worst_second"]')
seconds=$(figure "$runs/kill.json" 'd["reads"]["seconds_with_errors"]')
errors=$(figure "$runs/kill.json" 'd["reads"]["errors"]')
step "booksvc replica killed: $errors failed reads of $(figure "$runs/kill.json" 'd["reads"]["sent"]'); worst second $worst; seconds with failures: $seconds"
python3 - "$runs/kill.json" <<'EOF' || die "more than 0.5% of a second's reads failed, or failures went on after that second"
import json, sys
reads = json.load(open(sys.argv[1]))["reads"]
worst, seconds = reads["worst_second"], reads["seconds_with_errors"]
sys.exit(0 if worst["errors"] * 200 <= worst["sent"] and len(seconds) <= 1 else 1)
EOF
deadline=$((killed_at + 60))
until [[ $(docker service ls --filter "name=${STACK}_booksvc" --format '{{.Replicas}}') == 2/2* ]] &&
	(($(service_container booksvc | wc -l) == 2)); do
	((SECONDS < deadline)) || die "swarm did not replace the killed booksvc replica within 60 s"
	sleep 1
done
step "swarm replaced the killed replica within $((SECONDS - killed_at)) s"
wait_healthy 60

# --- 5. a write, then a read through the other replica ------------------------------------
step "40 renames of one book, each read back at once through the edge"
since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
"${LOAD[@]}" --write-then-read 40 --writer-token "$WRITER_TOKEN" --label "rw-$(date +%s)" >"$runs/rw.json"
wrong=$(figure "$runs/rw.json" 'len(d["wrong"])')
# Which replica served each request: each logs the request ids it was sent.
for booksvc in $(service_container booksvc); do
	timeout 20 docker logs --since "$since" "$booksvc" 2>&1 |
		grep -oE '"request_id":"rw-[0-9]+-(put|get)-[0-9]+"' | sed "s/^/$booksvc /" || true
done >"$runs/served-by.txt"
crossed=$(python3 - "$runs/rw.json" "$runs/served-by.txt" <<'EOF'
import json, re, sys
rounds = json.load(open(sys.argv[1]))["ids"]
served = {}
for line in open(sys.argv[2]):
    container, field = line.split(" ", 1)
    served[re.search(r'"request_id":"([^"]+)"', field).group(1)] = container
print(sum(1 for put, get in rounds if put in served and get in served and served[put] != served[get]))
EOF
)
step "write then read: $(figure "$runs/rw.json" 'd["rounds"]') rounds, $crossed read through the other booksvc replica than the write's; $wrong showed another title, $(figure "$runs/rw.json" 'd["stale"]') stale"
((wrong == 0)) || die "a read after a write showed the old book: $(figure "$runs/rw.json" 'd["wrong"]')"
((crossed >= 5)) || die "only $crossed of the reads went through the other replica: the check proves too little"

rm -rf "$runs"
step "all promises held"
