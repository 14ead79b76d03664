#!/usr/bin/env python3
"""TLS resumption client for tests/tls/resumption.rs: N distinct clients each make a full
handshake (echo one line, keep the session), then, after an optional pause (a line on
stdin: the test upgrades or swaps the server meanwhile), each reconnects with its own
session. Prints one JSON line: {"first": {...}, "second": {...}} with per-phase counts of
resumed, full and failed connections.

usage: resumption_client.py HOST:PORT CA_PEM {1.2|1.3} CLIENTS [--no-tickets] [--pause]
       [--second HOST:PORT]
"""
import json
import socket
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor

TIMEOUT = 20


def context(ca, version, tickets):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    ctx.minimum_version = v
    ctx.maximum_version = v
    if not tickets:
        # No session tickets: TLS 1.2 resumes by session ID, from the server's cache.
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def connect(ctx, addr, session):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"ping\n")
            got = b""
            while len(got) < 5:
                chunk = s.recv(5 - len(got))
                if not chunk:
                    raise ConnectionError("closed before the echo")
                got += chunk
            if got != b"ping\n":
                raise ConnectionError(f"bad echo {got!r}")
            # TLS 1.3 tickets come after the handshake: read above, so they are in.
            return s.session_reused, s.session


def phase(ctx, addr, sessions):
    counts = {"resumed": 0, "full": 0, "failed": 0, "errors": []}

    def one(session):
        try:
            return connect(ctx, addr, session)
        except Exception as e:  # noqa: BLE001 - counted and reported
            return e

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, sessions))
    new_sessions = []
    for r in results:
        if isinstance(r, Exception):
            counts["failed"] += 1
            if len(counts["errors"]) < 5:
                counts["errors"].append(repr(r))
            new_sessions.append(None)
        else:
            reused, session = r
            counts["resumed" if reused else "full"] += 1
            new_sessions.append(session)
    return counts, new_sessions


def main():
    args = sys.argv[1:]
    addr, ca, version, clients = args[0], args[1], args[2], int(args[3])
    tickets = "--no-tickets" not in args
    pause = "--pause" in args
    second_addr = args[args.index("--second") + 1] if "--second" in args else addr
    ctx = context(ca, version, tickets)
    first, sessions = phase(ctx, addr, [None] * clients)
    if pause:
        print("paused", flush=True)
        sys.stdin.readline()
    second, _ = phase(ctx, second_addr, sessions)
    print(json.dumps({"first": first, "second": second}), flush=True)


if __name__ == "__main__":
    main()
