#!/usr/bin/env bash
# Validates the committed OpenAPI documents, docs/openapi/storagesvc.json and
# docs/openapi/booksvc.json, as OpenAPI 3.1 with openapi-spec-validator (from PyPI),
# and checks that every `pattern` in them compiles as a Python regular expression (what
# a Python fuzzer generates data from). The validator is installed once into a virtual
# environment under target/ (OPENAPI_VENV to put it elsewhere); later runs reuse it.
#
# That the files are the documents the code generates is checked by the drift tests:
#   cargo test -p storagesvc --test openapi && cargo test -p booksvc --test openapi
# (UPDATE_OPENAPI=1 in front of either rewrites its file).

set -Eeuo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
ROOT_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd)
readonly ROOT_DIR
LOG_PREFIX=check-openapi
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"

readonly VALIDATOR=openapi-spec-validator
readonly VALIDATOR_VERSION=0.9.0
readonly VENV=${OPENAPI_VENV:-$ROOT_DIR/target/venv-openapi}
readonly DOCUMENTS=(docs/openapi/storagesvc.json docs/openapi/booksvc.json)

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

cd "$ROOT_DIR"
command -v python3 >/dev/null || die "python3 is not installed"

if [[ ! -x $VENV/bin/python ]]; then
	log "creating a virtual environment in $VENV"
	python3 -m venv "$VENV" >&2 ||
		die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi

installed=$("$VENV/bin/python" -c \
	"import importlib.metadata as m; print(m.version('$VALIDATOR'))" 2>/dev/null || true)
if [[ $installed == "$VALIDATOR_VERSION" ]]; then
	log "$VALIDATOR $VALIDATOR_VERSION is already installed in $VENV"
else
	log "installing $VALIDATOR==$VALIDATOR_VERSION into $VENV"
	"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
		"$VALIDATOR==$VALIDATOR_VERSION" >&2 || die "could not install $VALIDATOR from PyPI"
fi

for document in "${DOCUMENTS[@]}"; do
	[[ -f $document ]] ||
		die "$document is missing; write it with: UPDATE_OPENAPI=1 cargo test -p $(basename "$document" .json) --test openapi"
	log "validating $document as OpenAPI 3.1"
	"$VENV/bin/openapi-spec-validator" --schema 3.1.0 "$document" >&2 ||
		die "$document is not a valid OpenAPI 3.1 document"
	"$VENV/bin/python" - "$document" <<'PYTHON' >&2 || die "$document has a pattern Python cannot compile"
import json
import re
import sys

path = sys.argv[1]
with open(path, encoding="utf-8") as file:
    document = json.load(file)
if document.get("openapi") != "3.1.0":
    sys.exit(f"{path}: openapi is {document.get('openapi')!r}, not '3.1.0'")


def patterns(value, where):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "pattern" and isinstance(item, str):
                yield where, item
            else:
                yield from patterns(item, f"{where}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from patterns(item, f"{where}/{index}")


count = 0
for where, pattern in patterns(document, ""):
    try:
        re.compile(pattern)
    except re.error as error:
        sys.exit(f"{path}: the pattern at {where} does not compile: {error}")
    count += 1
print(f"{path}: openapi 3.1.0, {count} patterns compile")
PYTHON
done
log "both documents are valid OpenAPI 3.1"
