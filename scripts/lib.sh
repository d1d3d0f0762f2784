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

trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR
