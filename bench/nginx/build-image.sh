#!/usr/bin/env bash
# Builds the failure drill's nginx peer, bookstore/nginx-peer:latest, from
# bench/nginx/Dockerfile, and checks that its configuration loads.
#
# The base image is, in this order: NGINX_PEER_BASE if set; bookstore/runtime:bookworm
# if it exists locally (the Debian bookworm that scripts/offline-images.sh makes on
# machines without an image registry); else debian:bookworm-slim from the registry.
# Either way nginx comes from Debian's archive, through apt inside the build.
#
# Every run builds, with Docker's build cache: when nothing changed that takes a
# second or two, and a changed configuration is always picked up.
#
# stdout carries nothing but an `export NGINX_PEER_IMAGE=...` line, meant for
#
#   eval "$(bench/nginx/build-image.sh)"
#
# and all progress goes to stderr.

set -Eeuo pipefail

# Keep stdout for the export line; docker's output goes to stderr.
exec 3>&1 1>&2

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
ROOT_DIR=$(cd -- "$SCRIPT_DIR/../.." && pwd)
readonly ROOT_DIR
LOG_PREFIX=nginx-peer-image
# shellcheck source=scripts/lib.sh
source "$ROOT_DIR/scripts/lib.sh"

readonly IMAGE=bookstore/nginx-peer:latest
readonly LOCAL_BASE=bookstore/runtime:bookworm
readonly REGISTRY_BASE=debian:bookworm-slim

usage() {
	sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
	cat >&2 <<EOF
Usage: ${0##*/} [--rebuild] [--help]

  --rebuild   build without Docker's build cache (fetches the packages again)
  -h, --help  show this help
EOF
}

REBUILD=false
while (($#)); do
	case $1 in
	--rebuild) REBUILD=true ;;
	-h | --help) usage && exit 0 ;;
	*)
		usage
		die "unknown argument '$1'"
		;;
	esac
	shift
done

check_docker

if [[ -n ${NGINX_PEER_BASE:-} ]]; then
	base=$NGINX_PEER_BASE
elif image_exists "$LOCAL_BASE"; then
	base=$LOCAL_BASE
else
	base=$REGISTRY_BASE
fi

no_cache=()
[[ $REBUILD == false ]] || no_cache=(--no-cache)
previous=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null) || previous=""

log "building $IMAGE on $base"
start=$SECONDS
# The classic builder: the Dockerfile needs nothing more, and it takes a local base
# image as it is, where BuildKit may ask a registry about it first.
DOCKER_BUILDKIT=0 docker build "${no_cache[@]}" \
	--build-arg BASE="$base" \
	--tag "$IMAGE" \
	"$SCRIPT_DIR" ||
	die "docker build of $IMAGE failed (without a registry, run scripts/offline-images.sh --base-only first for $LOCAL_BASE)"

# The configuration as the container renders it, loaded by nginx: a mistake shows
# here rather than when the drill starts the container. The token is a placeholder;
# the real one comes with the container's environment.
docker run --rm -e STORAGESVC_TOKEN=placeholder "$IMAGE" check ||
	die "nginx rejects the configuration of $IMAGE"
log "built $IMAGE in $((SECONDS - start)) s"

# A changed configuration leaves the previous image without a name.
drop_replaced_image "$IMAGE" "$previous"

printf 'export NGINX_PEER_IMAGE=%s\n' "$IMAGE" >&3
