"""schemathesis hooks for the contract fuzzing (scripts/contract-fuzz.sh).

An Idempotency-Key names one intended write: the same key with another body is a 422, and
with the same body the first answer again (a book deleted since is then not found). That
is the contract, but a generator reuses keys by accident: it draws them from a small space
("0", "a", ...), and its stateful phase sends values it has seen before. It then reports the
server's correct answer as a failure (a replayed 201 for a book deleted since is "created
resource not found"). So every well-formed key is made unique just before each request is
sent, in every phase; malformed ones (empty, too long) are left as they are, so that their
rejection is still tested. Replays are the system tests' job, where the intent is known.
"""

import uuid

import schemathesis

HEADER = "Idempotency-Key"


def well_formed(value):
    """What storagesvc accepts: a header value of visible ASCII, spaces and tabs (what
    HTTP allows), 1 to 255 characters once the spaces and tabs around it are trimmed."""
    if not isinstance(value, str) or not all(c == "\t" or " " <= c <= "~" for c in value):
        return False
    return 1 <= len(value.strip(" \t")) <= 255


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers
    if not headers:
        return
    for name in list(headers):
        if name.lower() == HEADER.lower() and well_formed(headers[name]):
            headers[name] = f"contract-{uuid.uuid4()}"
