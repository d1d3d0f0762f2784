# shellcheck shell=bash
# Shared by the scripts that deploy deploy/swarm/stack.yaml (swarm-smoke.sh, drill-swarm.sh):
# the edge image, a swarm to deploy into, the stack's containers, waiting until every
# service is healthy, and removing the stack again. Source it after scripts/lib.sh, with
# STACK set to the stack's name.

readonly EDGE_IMAGE_TAG=bookstore/edge:latest

# The service images the stack runs (STORAGESVC_IMAGE, BOOKSVC_IMAGE, POSTGRES_IMAGE,
# REDIS_IMAGE as scripts/offline-images.sh exports them; by default the compose file's
# names), exported for the stack file; each must exist on this node.
export_stack_images() {
	export STORAGESVC_IMAGE=${STORAGESVC_IMAGE:-bookstore/storagesvc:latest}
	export BOOKSVC_IMAGE=${BOOKSVC_IMAGE:-bookstore/booksvc:latest}
	export POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:15}
	export REDIS_IMAGE=${REDIS_IMAGE:-redis:7}
	local image
	for image in "$STORAGESVC_IMAGE" "$BOOKSVC_IMAGE" "$POSTGRES_IMAGE" "$REDIS_IMAGE"; do
		image_exists "$image" || die "image $image is missing (scripts/offline-images.sh builds them)"
	done
}

# Builds the edge image from deploy/swarm/edge, on the runtime base image where there is
# one (scripts/offline-images.sh), else on Debian's slim image.
build_edge_image() {
	local base=debian:bookworm-slim
	image_exists bookstore/runtime:bookworm && base=bookstore/runtime:bookworm
	DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$base" -t "$EDGE_IMAGE_TAG" \
		"$ROOT_DIR/deploy/swarm/edge" >/dev/null || die "building the edge image failed"
}

# Joins this node to a swarm if it is in none (`docker swarm init`), and says so in
# MADE_SWARM, so that leave_swarm_if_made leaves it as found.
MADE_SWARM=false
enter_swarm() {
	local state
	state=$(docker info --format '{{.Swarm.LocalNodeState}}')
	case $state in
	active) log "this node is already in a swarm: deploying into it" ;;
	inactive)
		log "docker swarm init (left again at the end)"
		docker swarm init --advertise-addr 127.0.0.1 >/dev/null
		MADE_SWARM=true
		;;
	*) die "this node's swarm state is '$state'; expected active or inactive" ;;
	esac
}

leave_swarm_if_made() {
	if $MADE_SWARM; then
		docker swarm leave --force >/dev/null 2>&1 || log "could not leave the swarm this script made"
	fi
}

stack_containers() { docker ps -q --filter "label=com.docker.stack.namespace=$STACK"; }
service_container() { docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_$1"; }

# Removes the stack and waits (60 s at most) until its containers and networks are gone.
remove_stack() {
	docker stack rm "$STACK" >/dev/null 2>&1 || true
	local deadline=$((SECONDS + 60))
	while [[ -n $(stack_containers) || -n $(docker network ls -q --filter "label=com.docker.stack.namespace=$STACK") ]]; do
		((SECONDS < deadline)) || {
			log "the stack's containers or networks are still there after 60 s"
			break
		}
		sleep 1
	done
	docker volume rm "${STACK}_books-data" >/dev/null 2>&1 || true
}

# stack_healthy URL...: every service at its replica count, every task's container
# healthy, and each URL answering 200.
stack_healthy() {
	local replicas running ids url
	replicas=$(docker service ls --filter "label=com.docker.stack.namespace=$STACK" --format '{{.Replicas}}')
	[[ -n $replicas ]] || return 1
	while read -r running; do
		[[ $running =~ ^([0-9]+)/([0-9]+) ]] && [[ ${BASH_REMATCH[1]} == "${BASH_REMATCH[2]}" ]] || return 1
	done <<<"$replicas"
	ids=$(stack_containers)
	[[ -n $ids ]] || return 1
	# shellcheck disable=SC2086 # one id per word
	if docker inspect --format '{{.State.Health.Status}}' $ids | grep -qv '^healthy$'; then
		return 1
	fi
	for url in "$@"; do
		[[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url") == 200 ]] || return 1
	done
}

# wait_stack_healthy SECONDS URL...: stack_healthy within SECONDS, or die saying what is not.
wait_stack_healthy() {
	local within=$1 deadline=$((SECONDS + $1))
	shift
	until stack_healthy "$@"; do
		((SECONDS < deadline)) || die "not every service healthy within $within s: $(docker service ls --filter "label=com.docker.stack.namespace=$STACK" --format '{{.Name}} {{.Replicas}}' | paste -sd ' ')"
		sleep 1
	done
}

# end_stack RC: removes the stack and leaves a swarm the script made, unless KEEP is true
# (then it says how to do that by hand); exits with RC. For the script's EXIT trap.
end_stack() {
	local rc=$1
	if ${KEEP:-false}; then
		log "stack $STACK left deployed (--keep); remove it with docker stack rm $STACK$($MADE_SWARM && echo ', and docker swarm leave --force: this script made the swarm')"
	else
		remove_stack
		leave_swarm_if_made
	fi
	exit "$rc"
}
