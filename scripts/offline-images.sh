#!/usr/bin/env bash
# Builds the container images the bookstore needs from Debian packages.
#
# Some machines that build and test this project cannot reach any container
# image registry (`docker pull` fails and the engine starts empty), while the
# Debian package mirrors are reachable. This script therefore assembles
# equivalent images locally: mmdebstrap installs Debian packages into a root
# filesystem tarball and `docker import` turns that into an image.
#
#   RUNTIME_IMAGE   minimal Debian with CA certificates and an unprivileged
#                   user; base of the service images
#   POSTGRES_IMAGE  Debian's PostgreSQL with an entrypoint that behaves like
#                   the official `postgres` image (POSTGRES_USER/_PASSWORD/_DB)
#   REDIS_IMAGE     Debian's Redis, listening on all interfaces, no persistence,
#                   64 MB maxmemory with LRU eviction, a password from
#                   REDIS_PASSWORD when set
#   PROMETHEUS_IMAGE
#                   Debian's Prometheus, for the compose file's `observability`
#                   profile, laid out like the official `prom/prometheus` image
#                   (configuration in /etc/prometheus, data in /prometheus)
#   STORAGESVC_IMAGE, BOOKSVC_IMAGE
#                   the services, from release binaries built on the host, made
#                   by the repository's Dockerfile.storagesvc and Dockerfile.booksvc
#                   on RUNTIME_IMAGE (their final stage is the one users build)
#
# Base images that already exist are left alone. The service images are built
# on every run, since the binaries change with the code; cargo and Docker's
# build cache make that quick when nothing changed, so repeated runs take
# seconds.
# stdout carries nothing but `export NAME=value` lines, meant for
#
#   eval "$(scripts/offline-images.sh)"
#
# and all progress goes to stderr.

# The mmdebstrap hooks below are single-quoted on purpose: mmdebstrap runs them
# with sh, passing the root directory being built as $1.
# shellcheck disable=SC2016

set -Eeuo pipefail

# Keep stdout for the export lines only: everything else, including the
# output of apt, mmdebstrap and docker, goes to stderr.
exec 3>&1 1>&2

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly FILES_DIR="$SCRIPT_DIR/offline-images"

# The tags name the Debian release and the major versions it ships, so the
# suite is fixed rather than taken from the host.
readonly SUITE=bookworm
readonly PG_MAJOR=15
readonly RUNTIME_IMAGE="bookstore/runtime:$SUITE"
readonly POSTGRES_IMAGE="bookstore/postgres:$PG_MAJOR"
readonly REDIS_MAJOR=7
readonly REDIS_IMAGE="bookstore/redis:$REDIS_MAJOR"
readonly PROMETHEUS_MAJOR=2
readonly PROMETHEUS_IMAGE="bookstore/prometheus:$PROMETHEUS_MAJOR"
# The names docker-compose.yaml gives the service images.
readonly STORAGESVC_IMAGE=bookstore/storagesvc:latest
readonly BOOKSVC_IMAGE=bookstore/booksvc:latest

# Unprivileged account of the runtime image, for the service images to run as.
readonly APP_USER=bookstore
readonly APP_UID=10001

readonly DEFAULT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C.UTF-8

usage() {
	cat >&2 <<EOF
Usage: ${0##*/} [--base-only] [--rebuild] [--help]

Builds the bookstore's container images for machines without an image
registry. The base images come from Debian $SUITE packages, through
mmdebstrap and docker import:

$(printf '  %-28s %s\n' \
		"$RUNTIME_IMAGE" "base image of the service images" \
		"$POSTGRES_IMAGE" "PostgreSQL $PG_MAJOR, configured like the official image" \
		"$REDIS_IMAGE" "Redis $REDIS_MAJOR" \
		"$PROMETHEUS_IMAGE" "Prometheus $PROMETHEUS_MAJOR (compose profile observability)")

Existing base images are kept. mmdebstrap is installed with apt-get if
missing. Needs root (or sudo) for that, and access to the Docker engine.

Then the service images, from Dockerfile.storagesvc and Dockerfile.booksvc
on $RUNTIME_IMAGE, with the release binaries that
\`cargo build --release --locked -p storagesvc -p booksvc\` builds here:

$(printf '  %-28s %s\n' \
		"$STORAGESVC_IMAGE" "storagesvc" \
		"$BOOKSVC_IMAGE" "booksvc")

They are rebuilt on every run (quick when nothing changed), so they always
hold the current code. That needs BuildKit: a docker client with the buildx
plugin, or one older than Docker 23 (such as Debian $SUITE's docker.io).
The host's glibc must not be newer than Debian $SUITE's, which runs the
binaries.

stdout only carries shell export lines naming the images:

  eval "\$(${0##*/})"

Options:
  --base-only  build the base images only: no cargo build, no service images
  --rebuild    remove and rebuild the images even if they exist (the service
               images without Docker's build cache)
  -h, --help   show this help

Environment:
  DEBIAN_MIRROR           Debian archive to use (default: the host's, from
                          its apt sources, else http://deb.debian.org/debian)
  DEBIAN_SECURITY_MIRROR  security archive (default: likewise)
EOF
}

LOG_PREFIX=offline-images
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"

REBUILD=false
SERVICE_IMAGES=true
parse_args() {
	while [[ $# -gt 0 ]]; do
		case $1 in
		-h | --help)
			usage
			exit 0
			;;
		--rebuild) REBUILD=true ;;
		--base-only) SERVICE_IMAGES=false ;;
		*)
			usage
			die "unknown argument: $1"
			;;
		esac
		shift
	done
}

# apt-get update only runs when mmdebstrap actually has to be installed.
ensure_mmdebstrap() {
	if command -v mmdebstrap >/dev/null; then
		return
	fi
	log "installing mmdebstrap"
	as_root apt-get update -q ||
		die "apt-get update failed"
	as_root apt-get install -y -q mmdebstrap </dev/null ||
		die "could not install mmdebstrap"
	command -v mmdebstrap >/dev/null || die "mmdebstrap is still missing after installing it"
}

# Prints "URI SUITE" for each enabled binary source of the host that carries
# the main component, from one-line (*.list) and deb822 (*.sources) files.
host_apt_sources() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -r $f ]] || continue
		awk '
			{ sub(/#.*/, ""); gsub(/\[[^]]*\]/, " ") }
			$1 == "deb" && NF >= 4 {
				for (i = 4; i <= NF; i++) if ($i == "main") { print $2, $3; break }
			}' "$f"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -r $f ]] || continue
		awk '
			function flush(   n, u, s, i, j, t, c, hasdeb, hasmain) {
				if (tolower(f["enabled"]) != "no") {
					n = split(f["types"], t, " ")
					for (i = 1; i <= n; i++) if (t[i] == "deb") hasdeb = 1
					n = split(f["components"], c, " ")
					for (i = 1; i <= n; i++) if (c[i] == "main") hasmain = 1
					if (hasdeb && hasmain) {
						n = split(f["uris"], u, " ")
						for (i = 1; i <= n; i++) {
							m = split(f["suites"], s, " ")
							for (j = 1; j <= m; j++) print u[i], s[j]
						}
					}
				}
				split("", f); key = ""
			}
			/^[ \t]*#/ { next }
			/^[ \t]*$/ { flush(); next }
			/^[ \t]/ { if (key != "") f[key] = f[key] " " $0; next }
			{
				key = tolower($0); sub(/:.*/, "", key)
				val = $0; sub(/^[^:]*:[ \t]*/, "", val)
				f[key] = val
			}
			END { flush() }' "$f"
	done
}

# Picks the Debian archive and security archive the host uses (so builds go
# through the same, reachable, mirror), falling back to deb.debian.org.
MIRRORS=()
detect_mirrors() {
	local host_codename="" uri suite archive="" security=""
	if [[ -r /etc/os-release ]]; then
		# shellcheck disable=SC1091
		host_codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
	fi
	if [[ -n $host_codename && $host_codename != "$SUITE" ]]; then
		log "note: the host runs Debian '$host_codename'; the images use '$SUITE' from the host's mirrors"
	fi
	while read -r uri suite; do
		case $suite in
		"$host_codename" | "$SUITE")
			[[ -z $archive && $uri != *security* ]] && archive=$uri
			;;
		"$host_codename"-security | "$SUITE"-security | "$host_codename"/updates)
			[[ -z $security ]] && security=$uri
			;;
		esac
	done < <(host_apt_sources)

	archive=${DEBIAN_MIRROR:-${archive:-http://deb.debian.org/debian}}
	security=${DEBIAN_SECURITY_MIRROR:-${security:-http://deb.debian.org/debian-security}}
	archive=${archive%/}
	security=${security%/}
	log "Debian mirrors: $archive, $security (suite $SUITE)"
	MIRRORS=(
		"deb $archive $SUITE main"
		"deb $archive $SUITE-updates main"
		"deb $security $SUITE-security main"
	)
}

# mmdebstrap options shared by all images.
MMDEBSTRAP_COMMON=()
setup_mmdebstrap() {
	local cache_dir=$1
	MMDEBSTRAP_COMMON=(
		--variant=minbase
		--format=tar
		--aptopt='APT::Install-Recommends "false"'
		--aptopt='APT::Install-Suggests "false"'
		# Documentation and translations are dead weight in a container;
		# like Debian's own slim images, keep only the licences. These
		# settings stay in the image for packages installed later.
		--dpkgopt='path-exclude=/usr/share/doc/*'
		--dpkgopt='path-include=/usr/share/doc/*/copyright'
		--dpkgopt='path-exclude=/usr/share/man/*'
		--dpkgopt='path-exclude=/usr/share/info/*'
		--dpkgopt='path-exclude=/usr/share/groff/*'
		--dpkgopt='path-exclude=/usr/share/lintian/*'
		--dpkgopt='path-exclude=/usr/share/linda/*'
		--dpkgopt='path-exclude=/usr/share/locale/*'
		--dpkgopt='path-include=/usr/share/locale/locale.alias'
		# Share downloaded packages between the images of one run instead of
		# fetching the common base three times.
		--skip=essential/unlink
		--setup-hook='mkdir -p "$1/var/cache/apt/archives"'
		--setup-hook="sync-in $cache_dir /var/cache/apt/archives/"
		--customize-hook="sync-out /var/cache/apt/archives $cache_dir"
		# Leftovers of the installation. mmdebstrap itself empties /tmp
		# (which holds its apt configuration until the end) and removes the
		# apt lists and package cache afterwards.
		--customize-hook='rm -rf "$1"/var/log/*.log "$1"/var/log/apt/*.log "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/cache/ldconfig/aux-cache'
	)
	# Without this hook, bookworm's init-system-helpers pulls in usrmerge and
	# with it a full Perl; the hook sets up the merged /usr directly.
	local merged_usr=/usr/share/mmdebstrap/hooks/merged-usr
	if [[ -d $merged_usr ]]; then
		MMDEBSTRAP_COMMON+=(--hook-dir="$merged_usr")
	fi
	if [[ -z ${http_proxy:-} ]]; then
		# mmdebstrap runs apt with its own configuration, so pass on a proxy
		# the host's apt may be set up with.
		local proxy=""
		eval "$(apt-config shell proxy Acquire::http::Proxy 2>/dev/null || true)"
		if [[ -n $proxy && $proxy != DIRECT ]]; then
			export http_proxy=$proxy
		fi
	fi
}

# build_rootfs OUT.tar [mmdebstrap options...]
build_rootfs() {
	local out=$1
	shift
	mmdebstrap "${MMDEBSTRAP_COMMON[@]}" "$@" "$SUITE" "$out" "${MIRRORS[@]}" </dev/null ||
		die "mmdebstrap failed for $out"
}

# stage_file NAME: copies NAME from the files directory into the work
# directory and prints the copy's path. mmdebstrap's upload hook splits its
# arguments at spaces, so files are not uploaded straight from the checkout,
# whose path might contain some.
stage_file() {
	local src=$FILES_DIR/$1
	[[ -r $src ]] || die "missing $src"
	cp -- "$src" "$WORK_DIR/$1"
	printf '%s\n' "$WORK_DIR/$1"
}

# import_image TAR TAG [--change INSTRUCTION]...
# Dockerfile instructions that `docker import --change` does not accept (such
# as STOPSIGNAL) can be given in EXTRA_DOCKERFILE; they are added by a build
# without RUN steps, which needs no network.
EXTRA_DOCKERFILE=""
import_image() {
	local tar=$1 tag=$2
	shift 2
	if [[ -z $EXTRA_DOCKERFILE ]]; then
		docker import "$@" "$tar" "$tag" >/dev/null || die "docker import of $tag failed"
	else
		local id
		id=$(docker import "$@" "$tar") || die "docker import of $tag failed"
		# The classic builder resolves FROM against local images only;
		# BuildKit would try to contact a registry.
		printf 'FROM %s\n%s\n' "$id" "$EXTRA_DOCKERFILE" |
			DOCKER_BUILDKIT=0 docker build -q -t "$tag" - >/dev/null ||
			die "docker build of $tag failed"
	fi
	EXTRA_DOCKERFILE=""
}

build_runtime_image() {
	local tar=$WORK_DIR/runtime.tar
	build_rootfs "$tar" \
		--include=ca-certificates \
		--customize-hook="chroot \"\$1\" groupadd --gid $APP_UID $APP_USER" \
		--customize-hook="chroot \"\$1\" useradd --uid $APP_UID --gid $APP_UID --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin $APP_USER"
	import_image "$tar" "$RUNTIME_IMAGE" \
		--change "ENV PATH=$DEFAULT_PATH" \
		--change 'ENV LANG=C.UTF-8' \
		--change 'CMD ["bash"]'
	rm -f "$tar"
}

build_postgres_image() {
	local tar=$WORK_DIR/postgres.tar entrypoint
	entrypoint=$(stage_file postgres-entrypoint.sh)
	local -a opts=(
		--include="postgresql-$PG_MAJOR"
		# The entrypoint creates the only cluster, in PGDATA; keep the
		# package from creating its default one.
		--essential-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.d/container.conf"'
		# LLVM (for JIT compilation of queries) and its Z3 solver weigh
		# 130 MB; PostgreSQL simply runs without JIT when its provider is
		# absent.
		--dpkgopt='path-exclude=/usr/lib/*/libLLVM-*'
		--dpkgopt='path-exclude=/usr/lib/llvm-*'
		--dpkgopt='path-exclude=/usr/lib/*/libz3.so*'
		--dpkgopt='path-exclude=/usr/lib/postgresql/*/lib/bitcode/*'
		--dpkgopt='path-exclude=/usr/lib/postgresql/*/lib/llvmjit*'
		# PostgreSQL depends on the locales package, but only uses the
		# C.UTF-8 locale built into glibc, so the locale sources can go.
		--dpkgopt='path-exclude=/usr/share/i18n/charmaps/*'
		--dpkgopt='path-exclude=/usr/share/i18n/locales/*'
		# postgresql-common needs Perl to install, but the server does not
		# need it to run (the entrypoint calls the binaries directly, not
		# Debian's Perl wrappers). Dropping it saves about 50 MB; the image
		# is not meant to be extended with apt.
		--customize-hook='chroot "$1" dpkg --purge --force-depends perl perl-modules-5.36 libperl5.36 libjson-perl'
		--customize-hook="upload $entrypoint /usr/local/bin/docker-entrypoint.sh"
		--customize-hook='chmod 0755 "$1/usr/local/bin/docker-entrypoint.sh"'
		# /run is emptied by mmdebstrap; the entrypoint creates the socket
		# directory at start.
		--customize-hook='mkdir -p "$1/var/lib/postgresql/data" "$1/docker-entrypoint-initdb.d"'
		--customize-hook='chroot "$1" chown postgres:postgres /var/lib/postgresql /var/lib/postgresql/data'
		--customize-hook='chmod 0700 "$1/var/lib/postgresql/data"'
		# Should a default cluster have been created after all, drop it.
		--customize-hook='rm -rf "$1"/var/lib/postgresql/[0-9]* "$1"/etc/postgresql/[0-9]*'
	)
	build_rootfs "$tar" "${opts[@]}"
	# SIGINT is PostgreSQL's "fast" shutdown; the default SIGTERM waits for
	# all clients (e.g. connection pools) to disconnect.
	EXTRA_DOCKERFILE='STOPSIGNAL SIGINT'
	import_image "$tar" "$POSTGRES_IMAGE" \
		--change "ENV PATH=/usr/lib/postgresql/$PG_MAJOR/bin:$DEFAULT_PATH" \
		--change 'ENV LANG=C.UTF-8' \
		--change "ENV PG_MAJOR=$PG_MAJOR" \
		--change 'ENV PGDATA=/var/lib/postgresql/data' \
		--change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
		--change 'CMD ["postgres"]' \
		--change 'EXPOSE 5432'
	rm -f "$tar"
}

build_redis_image() {
	local tar=$WORK_DIR/redis.tar entrypoint config
	entrypoint=$(stage_file redis-entrypoint.sh)
	config=$(stage_file redis.conf)
	build_rootfs "$tar" \
		--include=redis-server \
		--customize-hook="upload $config /etc/redis/container.conf" \
		--customize-hook="upload $entrypoint /usr/local/bin/docker-entrypoint.sh" \
		--customize-hook='chmod 0644 "$1/etc/redis/container.conf" && chmod 0755 "$1/usr/local/bin/docker-entrypoint.sh"' \
		--customize-hook='mkdir -p "$1/data" && chroot "$1" chown redis:redis /data'
	import_image "$tar" "$REDIS_IMAGE" \
		--change "ENV PATH=$DEFAULT_PATH" \
		--change 'ENV LANG=C.UTF-8' \
		--change 'USER redis' \
		--change 'WORKDIR /data' \
		--change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
		--change 'CMD ["redis-server", "/etc/redis/container.conf"]' \
		--change 'EXPOSE 6379'
	rm -f "$tar"
}

# Like the official image: the server as its own unprivileged user, the
# configuration in /etc/prometheus (compose mounts deploy/prometheus there), the
# database in /prometheus, which a new named volume takes over with its owner.
# The package's attempt to start its service during the installation is refused
# by mmdebstrap's policy-rc.d; nothing runs until a container starts.
build_prometheus_image() {
	local tar=$WORK_DIR/prometheus.tar
	local -a opts=(
		--include=prometheus
		# The web UI loads moment-timezone's bundled file; the raw time zone
		# data beside it weighs 210 MB.
		--dpkgopt='path-exclude=/usr/share/javascript/moment-timezone/data/*'
		--customize-hook='mkdir -p "$1/prometheus" && chroot "$1" chown prometheus:prometheus /prometheus'
	)
	build_rootfs "$tar" "${opts[@]}"
	import_image "$tar" "$PROMETHEUS_IMAGE" \
		--change "ENV PATH=$DEFAULT_PATH" \
		--change 'ENV LANG=C.UTF-8' \
		--change 'USER prometheus' \
		--change 'WORKDIR /prometheus' \
		--change 'ENTRYPOINT ["/usr/bin/prometheus"]' \
		--change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]' \
		--change 'EXPOSE 9090'
	rm -f "$tar"
}

# BuildKit builds only the stages the requested one needs, which is what lets
# the service images come from the same Dockerfiles as with a registry: with
# the build arguments below, their Rust and Debian stages, whose base images no
# registry could provide here, are never resolved. The engine has BuildKit
# built in, but docker clients since 23.0 use it only through the buildx
# plugin (and without it fall back to the classic builder, which builds every
# stage); older clients use it by themselves. Picks the first `docker` on PATH
# that can: Debian's docker.io client, say, behind a newer one without buildx.
BUILDKIT_DOCKER=""
find_buildkit_docker() {
	local client version
	while read -r client; do
		if "$client" buildx version >/dev/null 2>&1; then
			BUILDKIT_DOCKER=$client
			break
		fi
		version=$("$client" --version 2>/dev/null) || continue
		if [[ $version =~ ^Docker\ version\ ([0-9]+)\. ]] && ((BASH_REMATCH[1] < 23)); then
			BUILDKIT_DOCKER=$client
			break
		fi
	done < <(type -ap docker)
	[[ -n $BUILDKIT_DOCKER ]] ||
		die "building the service images needs BuildKit: install Docker's buildx plugin (or use --base-only)"
	log "building with BuildKit through $BUILDKIT_DOCKER ($("$BUILDKIT_DOCKER" --version))"
}

# Builds the release binaries on the host, then the service images from the
# repository's Dockerfiles.
build_service_images() {
	local repo_dir start
	repo_dir=$(cd -- "$SCRIPT_DIR/.." && pwd)
	command -v cargo >/dev/null ||
		die "cargo is needed to build the service binaries (or use --base-only)"
	find_buildkit_docker

	log "building the release binaries"
	start=$SECONDS
	# The images are made from target/release/, so build there whatever the
	# caller's own cargo settings say.
	CARGO_TARGET_DIR="$repo_dir/target" \
		cargo build --release --locked -p storagesvc -p booksvc \
		--manifest-path "$repo_dir/Cargo.toml" ||
		die "cargo build of the services failed"
	log "release binaries ready in $((SECONDS - start)) s"

	CONTEXT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/bookstore-services.XXXXXX")
	build_service_image "$repo_dir" storagesvc "$STORAGESVC_IMAGE"
	build_service_image "$repo_dir" booksvc "$BOOKSVC_IMAGE"
}

# build_service_image REPO_DIR SERVICE TAG
# Builds the final stage of Dockerfile.SERVICE on $RUNTIME_IMAGE, with the
# binary from its `prebuilt` stage, which copies target/release/SERVICE from
# the build context. That context is a directory holding just the binary, not
# the checkout: its .dockerignore keeps build output out of the builds that
# compile their own.
build_service_image() {
	local repo_dir=$1 service=$2 tag=$3 start=$SECONDS
	local context=$CONTEXT_DIR/$service
	mkdir -p "$context/target/release"
	cp -- "$repo_dir/target/release/$service" "$context/target/release/"

	local -a no_cache=()
	[[ $REBUILD == false ]] || no_cache=(--no-cache)
	local previous=""
	previous=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null) || true
	log "building $tag"
	DOCKER_BUILDKIT=1 "$BUILDKIT_DOCKER" build "${no_cache[@]}" \
		--file "$repo_dir/Dockerfile.$service" \
		--build-arg RUNTIME_BASE="$RUNTIME_IMAGE" \
		--build-arg BINARY_STAGE=prebuilt \
		--tag "$tag" \
		"$context" ||
		die "docker build of $tag failed"

	# The Dockerfile names the user by number; it must be this runtime's.
	local user
	user=$(docker image inspect -f '{{.Config.User}}' "$tag")
	[[ $user == "$APP_UID:$APP_UID" ]] ||
		die "$tag runs as '$user', not as $APP_USER ($APP_UID:$APP_UID) of $RUNTIME_IMAGE"
	# The binary was linked on the host: make sure it runs on the image's
	# glibc now, rather than when a container starts.
	docker run --rm "$tag" --help >/dev/null ||
		die "$service does not run in $tag; is the host's glibc newer than Debian $SUITE's?"
	log "built $tag in $((SECONDS - start)) s"

	# A changed binary leaves the previous image without a name.
	drop_replaced_image "$tag" "$previous"
}

# ensure_image TAG BUILD_FUNCTION
ensure_image() {
	local tag=$1 build=$2
	if [[ $REBUILD == true ]] && image_exists "$tag"; then
		log "removing $tag for rebuild"
		docker image rm "$tag" >/dev/null
	fi
	if image_exists "$tag"; then
		log "$tag exists, skipping"
		return
	fi
	prepare_build
	log "building $tag"
	local start=$SECONDS
	"$build"
	image_exists "$tag" || die "$tag was not created"
	log "built $tag in $((SECONDS - start)) s"
}

# One-time preparation, done only when some image has to be built.
WORK_DIR=""
prepare_build() {
	[[ -z $WORK_DIR ]] || return 0
	ensure_mmdebstrap
	detect_mirrors
	WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/bookstore-images.XXXXXX")
	if [[ $WORK_DIR == *[[:space:]]* ]]; then
		die "the temporary directory '$WORK_DIR' contains spaces, which mmdebstrap hooks cannot handle; set TMPDIR to another directory"
	fi
	mkdir -p "$WORK_DIR/apt-cache"
	setup_mmdebstrap "$WORK_DIR/apt-cache"
}

CONTEXT_DIR=""
cleanup() {
	local dir
	for dir in "$WORK_DIR" "$CONTEXT_DIR"; do
		if [[ -n $dir && -d $dir ]]; then
			rm -rf -- "$dir"
		fi
	done
}

main() {
	parse_args "$@"
	check_docker
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	# Concurrent runs (say, parallel CI jobs on one engine) wait for each
	# other rather than building the same images twice.
	if command -v flock >/dev/null; then
		exec 9>"${TMPDIR:-/tmp}/bookstore-offline-images.lock"
		if ! flock -n 9; then
			log "waiting for another run to finish"
			flock 9
		fi
	fi

	ensure_image "$RUNTIME_IMAGE" build_runtime_image
	ensure_image "$POSTGRES_IMAGE" build_postgres_image
	ensure_image "$REDIS_IMAGE" build_redis_image
	ensure_image "$PROMETHEUS_IMAGE" build_prometheus_image
	if [[ $SERVICE_IMAGES == true ]]; then
		build_service_images
	fi

	printf 'export %s=%s\n' \
		RUNTIME_IMAGE "$RUNTIME_IMAGE" \
		POSTGRES_IMAGE "$POSTGRES_IMAGE" \
		REDIS_IMAGE "$REDIS_IMAGE" \
		PROMETHEUS_IMAGE "$PROMETHEUS_IMAGE" >&3
	if [[ $SERVICE_IMAGES == true ]]; then
		printf 'export %s=%s\n' \
			STORAGESVC_IMAGE "$STORAGESVC_IMAGE" \
			BOOKSVC_IMAGE "$BOOKSVC_IMAGE" >&3
	fi
}

main "$@"
