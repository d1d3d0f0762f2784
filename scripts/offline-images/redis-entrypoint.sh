#!/bin/sh
# Entrypoint of the locally built Redis image (see ../offline-images.sh).
# Like the official `redis` image, `docker run IMAGE --some-option x` means
# `redis-server --some-option x`; here it also keeps the image's default
# configuration (listen on all interfaces, no persistence, log to stdout,
# maxmemory with LRU eviction).
#
# REDIS_PASSWORD, when set, becomes `--requirepass`: clients must AUTH. An
# explicit `--requirepass` given as an argument comes later and wins.
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
	set -- redis-server /etc/redis/container.conf "$@"
fi

if [ "$1" = redis-server ] && [ -n "${REDIS_PASSWORD:-}" ]; then
	shift
	if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
		# The configuration file must stay the first argument.
		config=$1
		shift
		set -- redis-server "$config" --requirepass "$REDIS_PASSWORD" "$@"
	else
		set -- redis-server --requirepass "$REDIS_PASSWORD" "$@"
	fi
fi

exec "$@"
