#!/usr/bin/env bash
# The dependency policy of deny.toml, checked with cargo-deny: licences (an allow-list),
# bans (duplicate versions reported, wildcard requirements refused) and sources
# (crates.io only), against Cargo.lock as committed. Then the security advisories, but
# only where the advisory database is already on this machine: it is never fetched here
# (the machines this runs on reach crates.io and no other host), and where it is absent
# the script says the advisories were not checked, rather than pretending they passed.
#
# Installs cargo-deny $CARGO_DENY_VERSION with `cargo install --locked` when `cargo deny`
# is missing or another version (a few minutes of compiling, once per machine).
#
# Environment: CARGO_HOME (where cargo-deny keeps the advisory database, in
# advisory-dbs/; default ~/.cargo).

set -Eeuo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
ROOT_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
readonly ROOT_DIR
LOG_PREFIX=deny
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"

readonly CARGO_DENY_VERSION=0.20.2
readonly ADVISORY_DBS="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"

case ${1:-} in
-h | --help)
	sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	exit 0
	;;
"") ;;
*) die "unknown argument '$1' (see --help)" ;;
esac

cd "$ROOT_DIR"

# `cargo deny --version` prints `cargo-deny 0.20.2`.
installed_version() { cargo deny --version 2>/dev/null | awk '{ print $2 }' || true; }

current=$(installed_version)
if [[ $current == "$CARGO_DENY_VERSION" ]]; then
	log "cargo-deny $CARGO_DENY_VERSION is installed"
else
	log "installing cargo-deny $CARGO_DENY_VERSION (found: ${current:-none}); this compiles it"
	install_started=$SECONDS
	cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION" >&2
	log "installed cargo-deny $CARGO_DENY_VERSION in $((SECONDS - install_started)) s"
	current=$(installed_version)
	[[ $current == "$CARGO_DENY_VERSION" ]] ||
		die "cargo deny --version says '${current:-nothing}' after installing $CARGO_DENY_VERSION (is \$CARGO_HOME/bin first on PATH?)"
fi

log "licences, bans, sources: cargo deny --locked check licenses bans sources"
cargo deny --locked check licenses bans sources

# A database cargo-deny fetched earlier is a git checkout under advisory-dbs/, one
# folder per database URL.
advisory_db=""
for candidate in "$ADVISORY_DBS"/*/; do
	if [[ -d ${candidate}crates ]]; then
		advisory_db=${candidate%/}
		break
	fi
done
if [[ -z $advisory_db ]]; then
	log "advisories: not checked: the advisory database is not on this machine (nothing in $ADVISORY_DBS), and it cannot be fetched from here; 'cargo deny fetch' on a machine that reaches GitHub puts it there"
	exit 0
fi
# --offline: the database as it is, never fetched (cargo-deny 0.20 has no per-check
# switch for that); cargo-deny itself refuses one older than its staleness limit.
log "advisories: cargo deny --locked --offline check advisories (database: $advisory_db, as fetched earlier; not updated here)"
cargo deny --locked --offline check advisories
