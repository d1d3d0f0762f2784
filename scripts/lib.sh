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

trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR
