#!/bin/sh
# Entrypoint of the locally built Redis image (see ../offline-images.sh).
# Like the official `redis` image, `docker run IMAGE --some-option x` means
# `redis-server --some-option x`; here it also keeps the image's default
# configuration (listen on all interfaces, no persistence, log to stdout).
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
	set -- redis-server /etc/redis/container.conf "$@"
fi

exec "$@"
