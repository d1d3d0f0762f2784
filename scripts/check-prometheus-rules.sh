#!/usr/bin/env bash
# Checks Prometheus's configuration and rules for the compose file's `observability`
# profile (deploy/prometheus) with promtool: `promtool check config` (the scrape
# configuration and the rule files it names), `promtool check rules`, and the unit tests
# in deploy/prometheus/tests (`promtool test rules`), in which every alert is shown firing
# under its condition and silent where it should be; the script fails if an alert lacks
# either kind of case. First it checks itself: a copy of the rules whose breaker alert
# fires at once must fail the tests.
#
# promtool comes with Debian's `prometheus` package, installed here if it is missing
# (needs root or sudo). Installing the package may start a Prometheus server as a
# service; where it did, this script stops and disables it again: only promtool is
# wanted.

set -Eeuo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
ROOT_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
readonly ROOT_DIR
LOG_PREFIX=check-prometheus-rules
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"

readonly PROMETHEUS_DIR=deploy/prometheus

usage() {
	sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	echo "Usage: ${0##*/} [--help]"
}

while (($#)); do
	case $1 in
	-h | --help) usage && exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done

started=$SECONDS
step() { log "[$(printf '%3d' $((SECONDS - started)))s] $*"; }

# The package starts its server where the init system lets it (not inside a container
# whose policy-rc.d forbids it). Called only right after this script installed the
# package, so a server running now is the one the installation started.
stop_packaged_server() {
	if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
		if systemctl is-active --quiet prometheus.service ||
			systemctl is-enabled --quiet prometheus.service 2>/dev/null; then
			log "the package enabled a Prometheus server (systemd): stopping and disabling it"
			as_root systemctl disable --now --quiet prometheus.service
		fi
	elif [[ -x /etc/init.d/prometheus ]] && /etc/init.d/prometheus status >/dev/null 2>&1; then
		log "the package started a Prometheus server (init script): stopping it, and not at boot"
		as_root /etc/init.d/prometheus stop >&2
		as_root update-rc.d prometheus disable >/dev/null 2>&1 ||
			log "warning: update-rc.d could not disable prometheus at boot; it is stopped now"
	fi
	if [[ -x /etc/init.d/prometheus ]] && /etc/init.d/prometheus status >/dev/null 2>&1; then
		die "a Prometheus server is still running after stopping it"
	fi
	log "no Prometheus server left running by the installation"
}

ensure_promtool() {
	command -v promtool >/dev/null && return 0
	command -v apt-get >/dev/null ||
		die "promtool is not installed, and there is no apt-get to install Debian's prometheus package with"
	step "installing Debian's prometheus package (for promtool)"
	as_root apt-get update -q </dev/null >&2 || die "apt-get update failed"
	as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends prometheus </dev/null >&2 ||
		die "could not install prometheus"
	command -v promtool >/dev/null || die "promtool is still missing after installing prometheus"
	stop_packaged_server
}

# Alert names of the rule files, one a line.
alert_names() {
	sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\).*/\1/p' "$@" | sort -u
}

# For each alert of the rules, whether the tests have a case where it fires (a non-empty
# exp_alerts) and one where it stays silent (exp_alerts: []); prints what is missing.
missing_cases() {
	local rules=$1
	shift
	awk -v names="$rules" '
		BEGIN { n = split(names, list, "\n") }
		/^ *alertname:/ { name = $2; next }
		/^ *exp_alerts:/ && name != "" {
			if ($2 == "[]") silent[name] = 1; else fires[name] = 1
			name = ""
		}
		END {
			for (i = 1; i <= n; i++) {
				if (list[i] == "") continue
				if (!(list[i] in fires)) print list[i] ": no case where it fires"
				if (!(list[i] in silent)) print list[i] ": no case where it stays silent"
			}
		}' "$@"
}

cd "$ROOT_DIR"
ensure_promtool
step "promtool: $(promtool --version 2>&1 | head -1)"

rules=("$PROMETHEUS_DIR"/rules/*.yaml)
tests=("$PROMETHEUS_DIR"/tests/*.yaml)
[[ -f ${rules[0]} ]] || die "no rule files in $PROMETHEUS_DIR/rules"
[[ -f ${tests[0]} ]] || die "no tests in $PROMETHEUS_DIR/tests"

step "promtool check config $PROMETHEUS_DIR/prometheus.yml (the scrapes, and the rule files it names)"
promtool check config "$PROMETHEUS_DIR/prometheus.yml" >&2

step "promtool check rules ${rules[*]}"
promtool check rules "${rules[@]}" >&2

step "every alert has a test where it fires and one where it stays silent"
names=$(alert_names "${rules[@]}")
gaps=$(missing_cases "$names" "${tests[@]}")
[[ -z $gaps ]] || die "alerts without both kinds of test case: ${gaps//$'\n'/; }"
log "    ${names//$'\n'/, }"

step "self-check: the tests must fail when the breaker alert fires at once (for: 0s)"
scratch=$(mktemp -d)
trap 'rm -rf -- "$scratch"' EXIT
cp -r "$PROMETHEUS_DIR/rules" "$PROMETHEUS_DIR/tests" "$scratch/"
awk '/- alert: BooksvcBreakerOpen/ { hit = 1 } hit && /for: 1m/ { sub(/for: 1m/, "for: 0s"); hit = 0 } { print }' \
	"$PROMETHEUS_DIR/rules/booksvc.yaml" >"$scratch/rules/booksvc.yaml"
! cmp -s "$PROMETHEUS_DIR/rules/booksvc.yaml" "$scratch/rules/booksvc.yaml" ||
	die "self-check: found no 'for: 1m' in BooksvcBreakerOpen to change"
if promtool test rules "$scratch/tests/booksvc_test.yaml" >/dev/null 2>&1; then
	die "self-check: the tests passed rules whose breaker alert fires at once"
fi

step "promtool test rules ${tests[*]}"
promtool test rules "${tests[@]}" >&2

step "done: configuration, ${#rules[@]} rule files and ${#tests[@]} test files pass"
