#!/usr/bin/env bash
# The nginx peer's entrypoint: renders the configuration from the environment and runs
# nginx in the foreground, as PID 1, so that the container's stop signal reaches it.
#
#   nginx-peer              render, then run nginx, with a watcher that re-renders the
#                           configuration and reloads nginx whenever storagesvc's
#                           addresses change (see the upstream block of the template)
#   nginx-peer check        render and test the configuration (nginx -t)
#   nginx-peer healthcheck  exit 0 when nginx answers its liveness route
#
# Environment:
#   STORAGESVC_TOKEN  required: the bearer token storagesvc accepts (one of its
#                     AUTH_TOKENS); sent by nginx, never stored in the image
#   STORAGESVC_ADDR   host:port of storagesvc (default storagesvc:8082); a name with
#                     several addresses (swarm's tasks.storagesvc) is a server for each
#   STORAGESVC_NEXT_UPSTREAM
#                     when a failed attempt moves to the next server (nginx's
#                     proxy_next_upstream: off, the default, or conditions such as
#                     "error timeout")
#   STORAGESVC_SERVER_PARAMS
#                     parameters of every server line (such as "max_fails=1
#                     fail_timeout=10s", nginx's passive outlier ejection); default none

set -Eeuo pipefail

readonly TEMPLATE=/etc/nginx/nginx-peer.conf.template
readonly RUN_DIR=/run/nginx-peer
readonly CONFIG=$RUN_DIR/nginx.conf
readonly PID_FILE=$RUN_DIR/nginx.pid
readonly LISTEN_PORT=8080
# How often the watcher resolves storagesvc's name, in seconds.
readonly WATCH_INTERVAL=1

log() { printf 'nginx-peer: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

check_environment() {
	[[ -n ${STORAGESVC_TOKEN:-} ]] || die "STORAGESVC_TOKEN is not set"
	# RFC 6750's token syntax; anything else could also end the quoted string the token
	# is written into.
	[[ $STORAGESVC_TOKEN =~ ^[A-Za-z0-9._~+/-]+=*$ ]] ||
		die "STORAGESVC_TOKEN is not a bearer token (letters, digits, -._~+/, then = padding)"
	STORAGESVC_ADDR=${STORAGESVC_ADDR:-storagesvc:8082}
	[[ $STORAGESVC_ADDR =~ ^([A-Za-z0-9._-]+):([0-9]+)$ ]] ||
		die "STORAGESVC_ADDR='$STORAGESVC_ADDR' is not host:port"
	STORAGESVC_HOST=${BASH_REMATCH[1]}
	STORAGESVC_PORT=${BASH_REMATCH[2]}
	# Words only: each value is written into the configuration as it is.
	STORAGESVC_NEXT_UPSTREAM=${STORAGESVC_NEXT_UPSTREAM:-off}
	[[ $STORAGESVC_NEXT_UPSTREAM =~ ^[a-z_0-9]+( [a-z_0-9]+)*$ ]] ||
		die "STORAGESVC_NEXT_UPSTREAM='$STORAGESVC_NEXT_UPSTREAM' is not a list of proxy_next_upstream conditions"
	STORAGESVC_SERVER_PARAMS=${STORAGESVC_SERVER_PARAMS:-}
	[[ $STORAGESVC_SERVER_PARAMS =~ ^([a-z_]+=[a-z0-9]+( [a-z_]+=[a-z0-9]+)*)?$ ]] ||
		die "STORAGESVC_SERVER_PARAMS='$STORAGESVC_SERVER_PARAMS' is not a list of name=value server parameters"
}

# The IPv4 addresses of storagesvc's host, sorted, one line; empty when the name does not
# resolve (a stopped container has no DNS entry). Bounded, so that a slow DNS server
# cannot hold the watcher up.
resolve() {
	timeout 2 getent ahostsv4 "$STORAGESVC_HOST" 2>/dev/null |
		awk '{ print $1 }' | sort -u | paste -sd ' ' - || true
}

# render ADDRESSES: writes the configuration with these storagesvc addresses.
render() {
	local addresses=$1 address servers=""
	for address in $addresses; do
		servers+="        server $address:$STORAGESVC_PORT${STORAGESVC_SERVER_PARAMS:+ $STORAGESVC_SERVER_PARAMS};"$'\n'
	done
	if [[ -z $servers ]]; then
		# An upstream block needs a server; this one is never tried, so requests fail at
		# once ("no live upstreams") and get the fallback.
		servers="        server 127.0.0.1:$STORAGESVC_PORT down;"$'\n'
	fi
	export STORAGESVC_SERVERS=${servers%$'\n'} STORAGESVC_TOKEN STORAGESVC_NEXT_UPSTREAM
	# The rendered file holds the token: readable by nginx's user only.
	umask 077
	# Only these: nginx's own $variables must stay as they are.
	# shellcheck disable=SC2016
	envsubst '${STORAGESVC_SERVERS} ${STORAGESVC_TOKEN} ${STORAGESVC_NEXT_UPSTREAM}' <"$TEMPLATE" >"$CONFIG.new" &&
		mv -f "$CONFIG.new" "$CONFIG"
}

describe() { printf '%s' "${1:-nothing (requests get the fallback at once)}"; }

# Runs in the background for the container's life: nginx (PID 1 once exec'd) reloads
# with the new addresses. A reload keeps the cache and lets requests in flight finish.
watch_addresses() {
	local current=$1 next
	while sleep "$WATCH_INTERVAL"; do
		next=$(resolve)
		[[ $next != "$current" ]] || continue
		if render "$next" && nginx -q -e stderr -c "$CONFIG" -t &&
			kill -HUP "$(cat "$PID_FILE")"; then
			log "$STORAGESVC_HOST now resolves to $(describe "$next"); nginx reloaded"
			current=$next
		else
			log "could not reload nginx for $STORAGESVC_HOST at $(describe "$next"); trying again"
		fi
	done
}

healthcheck() {
	local status
	exec 3<>"/dev/tcp/127.0.0.1/$LISTEN_PORT"
	printf 'GET /.well-known/alive HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
	IFS= read -r status <&3
	[[ $status == "HTTP/1."[01]" 200 "* ]]
}

case ${1:-run} in
run)
	check_environment
	addresses=$(resolve)
	render "$addresses"
	log "proxying to $STORAGESVC_ADDR at $(describe "$addresses"), listening on $LISTEN_PORT"
	# A socket left by a killed predecessor (a container's files survive a restart)
	# would make the bind fail.
	rm -f "$RUN_DIR/nothing-stored.sock"
	watch_addresses "$addresses" &
	exec nginx -e stderr -c "$CONFIG" -g 'daemon off;'
	;;
check)
	check_environment
	render "$(resolve)"
	exec nginx -e stderr -c "$CONFIG" -t
	;;
healthcheck) healthcheck ;;
*) die "unknown command '$1' (run, check or healthcheck)" ;;
esac
