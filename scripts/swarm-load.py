#!/usr/bin/env python3
"""Open-loop load for scripts/swarm-smoke.sh: reads at a fixed rate, optionally writes
with idempotency keys, every answer classified, figures printed as one JSON object.

Each read is sent when it is due (i / rate seconds after the start), whether or not the
earlier ones were answered, and its latency counts from when it was due, so a stall shows
as latency rather than as fewer requests. An answer is fresh (2xx from storagesvc), stale
(2xx with a Cache-Status that has `hit`: from booksvc's store) or an error (any other
status, a timeout, a refused or reset connection).

Writes (`--writes N`: N a second) create books titled `<label>-<n>`, each with its own
Idempotency-Key. A write that fails is sent again with the same key and body, as a
client of such a service would, up to `--write-attempts` times; the figures say which
keys never got a 2xx (lost, as far as the caller knows). Whether each key made exactly
one book is for the caller to check afterwards (`--list-label`).

Standard library only: it runs wherever Python 3.9+ does.
"""

import argparse
import concurrent.futures
import http.client
import json
import sys
import threading
import time
import urllib.parse


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="booksvc's base URL, e.g. http://127.0.0.1:8081")
    parser.add_argument("--path", default="/books?limit=5", help="what the reads ask")
    parser.add_argument("--rate", type=float, default=200.0, help="reads a second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--timeout", type=float, default=5.0, help="a request's time bound")
    parser.add_argument("--writes", type=float, default=0.0, help="writes a second (0: none)")
    parser.add_argument("--writer-token", default="", help="booksvc's writer credential")
    parser.add_argument("--label", default="swarm-smoke", help="the titles' prefix")
    parser.add_argument("--write-attempts", type=int, default=10)
    parser.add_argument(
        "--write-then-read",
        type=int,
        metavar="N",
        help="instead of load: N times, rename one book and read it back at once",
    )
    parser.add_argument(
        "--list-label",
        metavar="LABEL",
        help="instead of load: count the books whose title starts with LABEL-, per title",
    )
    return parser.parse_args()


class Target:
    """One HTTP connection per thread to the same host, reopened after any failure."""

    def __init__(self, url, timeout):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise SystemExit(f"swarm-load: --url must be http://host:port, not {url!r}")
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.timeout = timeout
        self.local = threading.local()

    def request(self, method, path, body=None, headers=None):
        """(status, headers as a dict with lowercase names, body bytes); raises on a failure."""
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.local.connection = connection
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        except Exception:
            connection.close()
            self.local.connection = None
            raise


def percentile(sorted_values, share):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(len(sorted_values) * share))
    return sorted_values[index]


def read_once(target, path, due):
    try:
        status, headers, _ = target.request("GET", path)
        cache_status = headers.get("cache-status", "")
        if 200 <= status < 300:
            kind = "stale" if "; hit" in cache_status else "fresh"
        else:
            kind = "error"
        error = None if kind != "error" else f"status {status}"
    except Exception as exc:  # noqa: BLE001 - every failure is a figure here
        kind, error = "error", type(exc).__name__
    return due, time.monotonic() - due, kind, error


def write_once(target, args, n, deadline):
    """Creates book n, retrying with the same key until a 2xx, the attempts or the deadline."""
    title = f"{args.label}-{n}"
    body = json.dumps({"title": title, "author": "swarm-smoke"}).encode()
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {args.writer_token}",
        "idempotency-key": title,
    }
    last = None
    for attempt in range(1, args.write_attempts + 1):
        try:
            status, response_headers, _ = target.request("POST", "/books", body=body, headers=headers)
            if 200 <= status < 300:
                replayed = response_headers.get("idempotent-replayed") == "true"
                return {"title": title, "ok": True, "attempts": attempt, "replayed": replayed}
            last = f"status {status}"
        except Exception as exc:  # noqa: BLE001
            last = type(exc).__name__
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return {"title": title, "ok": False, "attempts": attempt, "last": last}


def run_load(args):
    target = Target(args.url, args.timeout)
    start = time.monotonic() + 0.1
    reads = int(args.rate * args.duration)
    writes = int(args.writes * args.duration)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=256)
    read_futures, write_futures = [], []
    schedule = [(start + i / args.rate, "read", i) for i in range(reads)]
    if writes:
        schedule += [(start + i / args.writes, "write", i) for i in range(writes)]
    schedule.sort()
    for due, kind, n in schedule:
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if kind == "read":
            read_futures.append(pool.submit(read_once, target, args.path, due))
        else:
            deadline = start + args.duration + 30
            write_futures.append(pool.submit(write_once, target, args, n, deadline))
    results = [f.result() for f in read_futures]
    written = [f.result() for f in write_futures]
    pool.shutdown()

    latencies = sorted(latency for _, latency, _, _ in results)
    per_second = {}
    errors = {}
    for due, _, kind, error in results:
        second = int(due - start)
        counts = per_second.setdefault(second, {"sent": 0, "errors": 0})
        counts["sent"] += 1
        if kind == "error":
            counts["errors"] += 1
            errors[error] = errors.get(error, 0) + 1
    summary = {
        "reads": {
            "sent": len(results),
            "ok": sum(1 for r in results if r[2] != "error"),
            "fresh": sum(1 for r in results if r[2] == "fresh"),
            "stale": sum(1 for r in results if r[2] == "stale"),
            "errors": sum(1 for r in results if r[2] == "error"),
            "error_kinds": errors,
            "p50_ms": round(1000 * percentile(latencies, 0.5), 2) if latencies else None,
            "p99_ms": round(1000 * percentile(latencies, 0.99), 2) if latencies else None,
            "max_ms": round(1000 * latencies[-1], 2) if latencies else None,
            "worst_second": max(
                ({"second": s, **c} for s, c in per_second.items()),
                key=lambda c: (c["errors"], -c["second"]),
                default=None,
            ),
            "seconds_with_errors": sorted(s for s, c in per_second.items() if c["errors"]),
        },
        "writes": {
            "sent": len(written),
            "ok": sum(1 for w in written if w["ok"]),
            "lost": [w["title"] for w in written if not w["ok"]],
            "retried": sum(1 for w in written if w["attempts"] > 1),
            "replayed": sum(1 for w in written if w.get("replayed")),
        },
    }
    json.dump(summary, sys.stdout)
    print()


def list_label(args):
    """{title: count} of the books whose title starts with LABEL-, read page by page."""
    target = Target(args.url, args.timeout)
    counts, offset = {}, 0
    while True:
        status, headers, body = target.request("GET", f"/books?limit=1000&offset={offset}")
        if status != 200:
            raise SystemExit(f"swarm-load: listing the books answered {status}")
        if "; hit" in headers.get("cache-status", ""):
            raise SystemExit("swarm-load: the listing came from booksvc's store, not storagesvc")
        page = json.loads(body)
        for book in page:
            if str(book.get("title", "")).startswith(f"{args.list_label}-"):
                counts[book["title"]] = counts.get(book["title"], 0) + 1
        if len(page) < 1000:
            break
        offset += 1000
    json.dump(counts, sys.stdout)
    print()


def write_then_read(args):
    """Creates a book, then N times renames it and reads it back at once: with several
    booksvc replicas behind the edge, the read often lands on a replica other than the
    write's. Every read must show the new title; the figures say how many did not."""
    target = Target(args.url, args.timeout)
    auth = {"authorization": f"Bearer {args.writer_token}", "content-type": "application/json"}
    body = json.dumps({"title": f"{args.label}-rw-0", "author": "swarm-smoke"}).encode()
    status, headers, created = target.request("POST", "/books", body=body, headers=auth)
    if status != 201:
        raise SystemExit(f"swarm-load: creating the book answered {status}: {created!r}")
    book = json.loads(created)["id"]
    # Read once, so that every replica may hold a copy of the old book.
    for _ in range(4):
        target.request("GET", f"/books/{book}")
    wrong, stale, ids = [], 0, []
    for n in range(1, args.write_then_read + 1):
        title = f"{args.label}-rw-{n}"
        body = json.dumps({"title": title, "author": "swarm-smoke"}).encode()
        # Request ids the replicas log, so that the caller can tell which served which.
        put_id, get_id = f"{args.label}-put-{n}", f"{args.label}-get-{n}"
        ids.append([put_id, get_id])
        headers = {**auth, "x-request-id": put_id}
        status, _, answer = target.request("PUT", f"/books/{book}", body=body, headers=headers)
        if status != 200:
            raise SystemExit(f"swarm-load: renaming the book answered {status}: {answer!r}")
        status, headers, answer = target.request("GET", f"/books/{book}", headers={"x-request-id": get_id})
        seen = json.loads(answer).get("title") if status == 200 else f"status {status}"
        if "; hit" in headers.get("cache-status", ""):
            stale += 1
        if seen != title:
            wrong.append({"wrote": title, "read": seen, "cache_status": headers.get("cache-status")})
    json.dump({"rounds": args.write_then_read, "wrong": wrong, "stale": stale, "ids": ids}, sys.stdout)
    print()


def main():
    args = parse_args()
    if args.write_then_read:
        write_then_read(args)
    elif args.list_label:
        list_label(args)
    else:
        run_load(args)


if __name__ == "__main__":
    main()
