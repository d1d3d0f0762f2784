"""schemathesis hooks for the contract fuzzing (scripts/contract-fuzz.sh).

An Idempotency-Key names one intended write: the same key with another body is a 422, and
with the same body the first answer again (a book deleted since is then not found). That
is the contract, but a generator that draws keys from a small space ("0", "a", ...) reuses
them by accident and then reports the server's correct answer as a failure. So every
well-formed key the generator makes is made unique; malformed ones (empty, too long) are
left as they are, so that their rejection is still tested.
"""

import uuid

import schemathesis

HEADER = "Idempotency-Key"


def well_formed(value):
    """What storagesvc accepts: visible ASCII (spaces inside), 1 to 255 once trimmed."""
    if not isinstance(value, str) or not all(" " <= c <= "~" for c in value):
        return False
    return 1 <= len(value.strip(" ")) <= 255


@schemathesis.hook
def map_headers(context, headers):
    if headers is None:
        return headers
    for name in list(headers):
        if name.lower() == HEADER.lower():
            value = headers[name]
            if well_formed(value):
                headers[name] = f"contract-{uuid.uuid4()}"
    return headers
