#!/usr/bin/env python3
"""Client side of benches/soak.sh: light, steady, rate-limited load for a soak run.

    python3 benches/soak_client.py load --plain ADDR --tls ADDR --ca CA.pem \
        --secs 1800 --status FILE [--churn-rate 100] [--tls-rate 5] \
        [--idle-plain 150] [--idle-tls 50] [--idle-timeout 30]
    python3 benches/soak_client.py summary SOAK.csv [--warmup 120]

`load` runs, until --secs have passed:
  - churn: --churn-rate times a second, connect to --plain, echo 64 random bytes, check
    them, close;
  - TLS: --tls-rate times a second, connect to --tls, full handshake (no resumption,
    server name "localhost", trusting --ca), echo 64 bytes, check, close; remembers the
    SHA-256 of the certificate the server presented last (to confirm a reload);
  - idle: --idle-plain and --idle-tls connections, each confirmed by one echo and then held
    without sending anything; when the server closes one (its idle timeout, or the drain
    of an upgrade) it is replaced at once. One that stays open for longer than
    --idle-timeout + 15 s counts as overdue.
Every second it rewrites --status (atomically) with one line of key=value counters. Every
failed operation is logged to stderr with the time and the reason (the first 300).

`summary` reads the CSV that soak.sh writes and prints the start, middle and end samples,
whether RSS and descriptors stayed flat, and the failures.
"""

import argparse
import asyncio
import hashlib
import os
import ssl
import sys
import time

MAX_IN_FLIGHT = 200  # per kind; beyond it an operation is skipped (and counted)
OP_TIMEOUT = 10.0


class Stats:
    def __init__(self):
        self.c = {
            "churn_ok": 0, "churn_failed": 0, "churn_skipped": 0,
            "tls_ok": 0, "tls_failed": 0, "tls_skipped": 0,
            "idle_open": 0, "idle_replaced": 0, "idle_failed": 0, "idle_overdue": 0,
        }
        self.cert = "none"
        self.logged = 0
        self.start = time.monotonic()

    def fail(self, kind, reason):
        self.c[kind + "_failed"] += 1
        if self.logged < 300:
            self.logged += 1
            t = time.monotonic() - self.start
            print(f"{time.strftime('%H:%M:%S')} t={t:.1f}s {kind} failed: {reason}",
                  file=sys.stderr, flush=True)

    def line(self):
        fields = " ".join(f"{k}={v}" for k, v in self.c.items())
        return f"{fields} tls_cert={self.cert}\n"


def split(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


async def echo_once(reader, writer):
    payload = os.urandom(64)
    writer.write(payload)
    await writer.drain()
    got = await reader.readexactly(len(payload))
    if got != payload:
        raise ValueError("echo mismatch")


async def close(writer):
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 2)
    except Exception:
        pass


def describe(e):
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, asyncio.IncompleteReadError):
        return f"connection closed after {len(e.partial)} of {e.expected} echoed bytes"
    return f"{type(e).__name__}: {e}"


async def one_shot(stats, kind, host, port, ctx):
    writer = None
    try:
        async def run():
            nonlocal writer
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname="localhost" if ctx else None,
                ssl_handshake_timeout=OP_TIMEOUT if ctx else None)
            if ctx:
                der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                stats.cert = hashlib.sha256(der).hexdigest()
            await echo_once(reader, writer)
        await asyncio.wait_for(run(), OP_TIMEOUT)
        stats.c[kind + "_ok"] += 1
    except Exception as e:  # noqa: BLE001 - every failure is counted and logged
        stats.fail(kind, describe(e))
    finally:
        if writer is not None:
            await close(writer)


async def paced(stats, kind, rate, host, port, ctx, deadline):
    """Starts `rate` operations a second (in 100 ms batches) until the deadline."""
    in_flight = set()
    credit = 0.0
    tick = 0.1
    next_t = time.monotonic()
    while time.monotonic() < deadline:
        credit += rate * tick
        while credit >= 1.0:
            credit -= 1.0
            if len(in_flight) >= MAX_IN_FLIGHT:
                stats.c[kind + "_skipped"] += 1
                continue
            task = asyncio.create_task(one_shot(stats, kind, host, port, ctx))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        next_t += tick
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))
    if in_flight:
        await asyncio.wait(in_flight, timeout=OP_TIMEOUT + 3)


async def idle_client(stats, host, port, ctx, idle_timeout, deadline):
    """Holds one idle connection, replacing it whenever the server closes it."""
    first = True
    while time.monotonic() < deadline:
        writer = None
        try:
            async def open_and_confirm():
                nonlocal writer
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname="localhost" if ctx else None,
                    ssl_handshake_timeout=OP_TIMEOUT if ctx else None)
                await echo_once(reader, writer)
                return reader
            reader = await asyncio.wait_for(open_and_confirm(), OP_TIMEOUT)
        except Exception as e:  # noqa: BLE001
            stats.fail("idle", describe(e))
            if writer is not None:
                await close(writer)
            await asyncio.sleep(1)
            continue
        if not first:
            stats.c["idle_replaced"] += 1
        first = False
        stats.c["idle_open"] += 1
        try:
            left = deadline - time.monotonic()
            wait = min(idle_timeout + 15, max(left, 0.1))
            try:
                data = await asyncio.wait_for(reader.read(1), wait)
                if data:
                    stats.fail("idle", "unexpected data on an idle connection")
                # b"": the server closed it (idle timeout or drain): replace it.
            except asyncio.TimeoutError:
                if time.monotonic() < deadline:
                    stats.c["idle_overdue"] += 1
            except (ConnectionError, ssl.SSLError, OSError):
                pass  # closed by the server, with a reset or no close_notify: replace it
        finally:
            stats.c["idle_open"] -= 1
            await close(writer)


async def status_writer(stats, path, deadline):
    tmp = path + ".tmp"
    while True:
        with open(tmp, "w") as f:
            f.write(stats.line())
        os.replace(tmp, path)
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(1)


async def load(args):
    stats = Stats()
    deadline = time.monotonic() + args.secs
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.check_hostname = True
    plain, tls = split(args.plain), split(args.tls)
    status = asyncio.create_task(status_writer(stats, args.status, deadline + 30))
    tasks = [
        asyncio.create_task(paced(stats, "churn", args.churn_rate, *plain, None, deadline)),
        asyncio.create_task(paced(stats, "tls", args.tls_rate, *tls, ctx, deadline)),
    ]
    tasks += [asyncio.create_task(idle_client(stats, *plain, None, args.idle_timeout, deadline))
              for _ in range(args.idle_plain)]
    tasks += [asyncio.create_task(idle_client(stats, *tls, ctx, args.idle_timeout, deadline))
              for _ in range(args.idle_tls)]
    await asyncio.wait(tasks, timeout=args.secs + 40)
    status.cancel()
    with open(args.status, "w") as f:
        f.write(stats.line())
    print("client done: " + stats.line().strip(), flush=True)


# --- summary ---------------------------------------------------------------------------

def summary(args):
    import csv
    import statistics

    with open(args.csv) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print("no samples")
        return 1

    def num(row, key):
        v = row.get(key, "")
        try:
            return float(v)
        except ValueError:
            return None

    def show(label, row):
        print(f"  {label:6} t={row['time']:>5}s  tls: pid={row['pid']} rss_kib={row['rss_kib']} "
              f"fds={row['fds']} open_conns={row['open_conns']}  |  plain: pid={row['plain_pid']} "
              f"rss_kib={row['plain_rss_kib']} fds={row['plain_fds']} "
              f"open_conns={row['plain_open_conns']}  |  idle_open={row['idle_open']} "
              f"echo_procs={row['echo_procs']}")

    print("samples (start / middle / end):")
    show("start", rows[0])
    show("middle", rows[len(rows) // 2])
    show("end", rows[-1])

    # Each upgrade starts a fresh process, so values saw-tooth within a minute: compare the
    # median of the first minute after warm-up with the median of the last minute.
    end_t = num(rows[-1], "time")
    warm = [r for r in rows if args.warmup <= num(r, "time") < args.warmup + 60]
    last = [r for r in rows if num(r, "time") > end_t - 60]
    if len(warm) < 2 or num(warm[0], "time") >= end_t - 60:
        # short run: the second quarter against the last quarter
        q = max(1, len(rows) // 4)
        warm, last = rows[q:2 * q], rows[-q:]
    flat_all = True
    print(f"flatness (median of samples t={warm[0]['time']}..{warm[-1]['time']}s vs "
          f"t={last[0]['time']}..{last[-1]['time']}s; flat = end <= base x 1.2 + slack):")
    for key, slack in [("rss_kib", 4096), ("fds", 16), ("open_conns", 40),
                       ("plain_rss_kib", 4096), ("plain_fds", 16), ("plain_open_conns", 40),
                       ("echo_procs", 2)]:
        a = [num(r, key) for r in warm if num(r, key) is not None]
        b = [num(r, key) for r in last if num(r, key) is not None]
        if not a or not b:
            print(f"  {key:17} no data")
            flat_all = False
            continue
        base, end = statistics.median(a), statistics.median(b)
        peak = max(num(r, key) for r in rows if num(r, key) is not None)
        flat = end <= base * 1.2 + slack
        flat_all &= flat
        print(f"  {key:17} base={base:.0f} end={end:.0f} max={peak:.0f} "
              f"({'flat' if flat else 'GREW'})")
    last_row = rows[-1]
    failures = {k: int(float(last_row[k] or 0)) for k in
                ["churn_failed", "tls_failed", "idle_failed", "idle_overdue",
                 "upgrade_failed", "reload_failed"]}
    print("totals: " + " ".join(f"{k}={last_row[k]}" for k in
          ["churn_ok", "tls_ok", "idle_replaced", "upgrades", "plain_upgrades", "reloads"]))
    print("failures: " + " ".join(f"{k}={v}" for k, v in failures.items()))
    ok = flat_all and not any(failures.values())
    print("verdict: " + ("PASS (flat, no failures)" if ok else "FAIL (see above)"))
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    l = sub.add_parser("load")
    l.add_argument("--plain", required=True)
    l.add_argument("--tls", required=True)
    l.add_argument("--ca", required=True)
    l.add_argument("--secs", type=float, required=True)
    l.add_argument("--status", required=True)
    l.add_argument("--churn-rate", type=float, default=100)
    l.add_argument("--tls-rate", type=float, default=5)
    l.add_argument("--idle-plain", type=int, default=150)
    l.add_argument("--idle-tls", type=int, default=50)
    l.add_argument("--idle-timeout", type=float, default=30)
    s = sub.add_parser("summary")
    s.add_argument("csv")
    s.add_argument("--warmup", type=float, default=120)
    args = p.parse_args()
    if args.cmd == "load":
        asyncio.run(load(args))
        return 0
    return summary(args)


if __name__ == "__main__":
    sys.exit(main())
