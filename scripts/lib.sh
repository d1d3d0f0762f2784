# shellcheck shell=bash
# Shared by the scripts in this folder: progress and errors on stderr (stdout stays for
# what a script is asked to print), and an ERR trap that says which command failed where.
# Source it after setting LOG_PREFIX.

log() { printf '%s\n' "${LOG_PREFIX:-script}: $*" >&2; }

die() {
	log "error: $*"
	exit 1
}

on_error() {
	local rc=$? line=$1 cmd=$2
	log "error: '$cmd' failed (exit $rc) at line $line"
	exit "$rc"
}

# Runs a command as root: directly when we are root, else through sudo (without asking
# for a password, so a script never hangs on a prompt).
as_root() {
	if [[ $EUID -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo -n "$@"
	else
		die "need root to run: $*"
	fi
}

# Sets COMPOSE to `docker compose` (the plugin users have) or the older `docker-compose`.
# shellcheck disable=SC2034 # for the script that sources this file
detect_compose() {
	if docker compose version >/dev/null 2>&1; then
		COMPOSE=(docker compose)
	elif command -v docker-compose >/dev/null; then
		COMPOSE=(docker-compose)
	else
		die "neither 'docker compose' nor 'docker-compose' is installed"
	fi
}

# ensure_package COMMAND PACKAGE: installs PACKAGE from the Debian archive if
# COMMAND is missing. apt-get update only runs when the first install attempt
# fails, since it is slow and usually unnecessary.
ensure_package() {
	local command=$1 package=$2
	command -v "$command" >/dev/null && return 0
	command -v apt-get >/dev/null || die "$command is not installed and there is no apt-get to install $package with"
	log "installing $package"
	if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" </dev/null >&2; then
		log "install failed; refreshing the package lists and retrying"
		as_root apt-get update -q </dev/null >&2 || die "apt-get update failed"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" </dev/null >&2 ||
			die "could not install $package"
	fi
	command -v "$command" >/dev/null || die "$command is still missing after installing $package"
}

ensure_wrk() { ensure_package wrk wrk; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

check_docker() {
	command -v docker >/dev/null || die "docker is not installed"
	docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine (is it running, may this user use it?)"
}

# drop_replaced_image TAG PREVIOUS_ID: after a rebuild of TAG, removes the image TAG named
# before (PREVIOUS_ID, empty if none) when the rebuild left it without a name, unless a
# container still uses it.
drop_replaced_image() {
	local tag=$1 previous=$2
	if [[ -n $previous ]] &&
		[[ $(docker image inspect -f '{{len .RepoTags}}' "$previous" 2>/dev/null) == 0 ]]; then
		docker image rm "$previous" >/dev/null 2>&1 ||
			log "keeping the previous image of $tag ($previous): a container still uses it"
	fi
}

trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR
