#!/usr/bin/env bash
# Entrypoint of the locally built PostgreSQL image (see ../offline-images.sh).
#
# It reproduces the parts of the official `postgres` image's entrypoint that
# the project relies on, so compose files and tests behave the same with
# either image:
#   - POSTGRES_USER (default "postgres"), POSTGRES_PASSWORD, POSTGRES_DB
#     (default: the user name), their *_FILE variants, POSTGRES_INITDB_ARGS,
#     POSTGRES_HOST_AUTH_METHOD (default scram-sha-256);
#   - the cluster is created in $PGDATA on first start only, so a stopped and
#     restarted container (or a reused volume) keeps its data;
#   - scripts in /docker-entrypoint-initdb.d run once after initialisation;
#   - the server finally replaces this script (exec) and runs in the
#     foreground as the `postgres` user, logging to stderr, so `docker stop`
#     reaches it directly and `docker logs` shows
#     "database system is ready to accept connections".
# Like the official image, the temporary server used during initialisation
# logs to stdout and the real server to stderr: log watchers should look for
# the ready line on stderr.
set -Eeuo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
readonly SOCKET_DIR=/var/run/postgresql
readonly INITDB_DIR=/docker-entrypoint-initdb.d

log() { printf '%s\n' "entrypoint: $*" >&2; }
die() { log "error: $*"; exit 1; }

# file_env VAR [DEFAULT]: take VAR from the environment or from the file named
# by VAR_FILE (Docker secrets), falling back to DEFAULT.
file_env() {
	local var=$1 default=${2:-}
	local file_var="${var}_FILE"
	if [[ -n ${!var:-} && -n ${!file_var:-} ]]; then
		die "both $var and $file_var are set (but are exclusive)"
	fi
	local value=$default
	if [[ -n ${!var:-} ]]; then
		value=${!var}
	elif [[ -n ${!file_var:-} ]]; then
		value=$(<"${!file_var}")
	fi
	export "$var=$value"
	unset "$file_var"
}

# Runs as root: prepare directories the server must own, then re-run this
# script as `postgres`. setpriv (util-linux) stands in for gosu, which Debian
# does not package.
drop_privileges() {
	mkdir -p "$PGDATA" "$SOCKET_DIR"
	# A freshly mounted volume is usually owned by root.
	find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
	chmod 0700 "$PGDATA"
	chown postgres:postgres "$SOCKET_DIR"
	chmod 3777 "$SOCKET_DIR"
	export HOME=/var/lib/postgresql USER=postgres LOGNAME=postgres
	exec setpriv --reuid=postgres --regid=postgres --init-groups -- "${BASH_SOURCE[0]}" "$@"
}

run_initdb() {
	local -a args=(
		--username="$POSTGRES_USER"
		--auth-local=trust
		--auth-host="$POSTGRES_HOST_AUTH_METHOD"
		--encoding=UTF8
		# The image carries no generated locales; C.UTF-8 is built into glibc.
		--locale=C.UTF-8
	)
	local -a extra=()
	read -r -a extra <<<"${POSTGRES_INITDB_ARGS:-}"
	if [[ -n $POSTGRES_PASSWORD ]]; then
		initdb "${args[@]}" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") "${extra[@]}"
	else
		initdb "${args[@]}" "${extra[@]}"
	fi

	# initdb only allows host connections from loopback; containers are
	# reached over the Docker network.
	printf '\n%s\n' "host all all all $POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
	cat >>"$PGDATA/postgresql.conf" <<-'EOF'

		# Settings of the container image.
		listen_addresses = '*'
		# The LLVM JIT provider is left out of the image to keep it small.
		jit = off
	EOF
}

# Creates POSTGRES_DB and runs the init scripts against a temporary server
# that only listens on the Unix socket, so nothing can connect over TCP
# before initialisation is complete.
setup_database() {
	# No -l: the temporary server logs to stdout, like the official image.
	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start

	local -a psql=(psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --username "$POSTGRES_USER")
	if [[ $POSTGRES_DB != postgres ]]; then
		"${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<-'EOSQL'
			SELECT format('CREATE DATABASE %I', :'db')
			WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
		EOSQL
	fi

	local f
	for f in "$INITDB_DIR"/*; do
		[[ -e $f ]] || continue
		case $f in
		*.sh)
			if [[ -x $f ]]; then
				log "running $f"
				"$f"
			else
				log "sourcing $f"
				# shellcheck disable=SC1090
				. "$f"
			fi
			;;
		*.sql) log "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
		*.sql.gz) log "running $f"; gzip -dc "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
		*) log "ignoring $f" ;;
		esac
	done

	pg_ctl -D "$PGDATA" -m fast -w stop
}

main() {
	# `docker run IMAGE -c some=setting` means `postgres -c some=setting`.
	if [[ $# -eq 0 || ${1:0:1} == - ]]; then
		set -- postgres "$@"
	fi
	# Anything else (bash, psql, ...) runs as given.
	if [[ $1 != postgres ]]; then
		exec "$@"
	fi

	if [[ $(id -u) == 0 ]]; then
		drop_privileges "$@"
	fi

	if [[ ! -s $PGDATA/PG_VERSION ]]; then
		file_env POSTGRES_PASSWORD
		file_env POSTGRES_USER postgres
		file_env POSTGRES_DB "$POSTGRES_USER"
		file_env POSTGRES_INITDB_ARGS
		: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
		if [[ -z $POSTGRES_PASSWORD && $POSTGRES_HOST_AUTH_METHOD != trust ]]; then
			die "the database is uninitialized and POSTGRES_PASSWORD is not set;" \
				"set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust to allow" \
				"all connections without a password)"
		fi
		log "initialising $PGDATA"
		run_initdb
		setup_database
		log "PostgreSQL init process complete; ready for start up."
	else
		log "$PGDATA already holds a database; skipping initialisation"
	fi

	exec "$@"
}

main "$@"
