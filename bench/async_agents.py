#!/usr/bin/env python3
"""Async agent handlers: N concurrent SMTP sessions, each with an agent that waits W ms.

Starts the real `mta` binary with the probe test agent on the Transport service, opens N
sessions at once (greeting and EHLO first), then sends MAIL FROM on all of them together. The
probe waits W ms at OnMailCommand: with --mode async it takes its async context and completes
from its timer thread (no agent pool thread held); with --mode sync it sleeps in the handler
(an agent pool thread held for the whole wait). Prints the wall time from the first MAIL FROM
to the last reply, per-session latency, and the host's agent threads before, during and after.

    bench/async_agents.py                          # 1000 sessions x 200 ms, async
    bench/async_agents.py --mode sync --sessions 200
"""

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads(pid):
    """(all threads, threads named `agents`) of the process."""
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return len(names), sum(1 for n in names if n == "agents")


async def session(port, ready, go, opening):
    try:
        return await conversation(port, ready, go, opening)
    except Exception as e:  # reported with the replies: a session that failed
        ready.release()
        return repr(e), 0.0, 0.0


async def conversation(port, ready, go, opening):
    # Sessions are opened a hundred at a time (a burst of a thousand connects on a busy
    # machine can outlast the wait below); they all wait together afterwards.
    async with opening:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await greeted(reader, writer)
    ready.release()
    await go.wait()
    asked = time.monotonic()
    writer.write(b"MAIL FROM:<bench@elsewhere.test>\r\n")
    code = await reply(reader)
    done = time.monotonic()
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()
    return code, asked, done


async def reply(reader):
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def greeted(reader, writer):
    await reply(reader)
    writer.write(b"EHLO bench.example.test\r\n")
    await reply(reader)


async def run(port, n, pid):
    ready = asyncio.Semaphore(0)
    go = asyncio.Event()
    opening = asyncio.Semaphore(100)
    tasks = [asyncio.create_task(session(port, ready, go, opening)) for _ in range(n)]
    for i in range(n):
        try:
            await asyncio.wait_for(ready.acquire(), 60)
        except asyncio.TimeoutError:
            sys.exit(f"only {i} of {n} sessions got their greeting and EHLO reply within 60 s")
    before = threads(pid)
    go.set()
    await asyncio.sleep(0.1)
    during = threads(pid)
    results = await asyncio.gather(*tasks)
    return results, before, during


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--wait-ms", type=int, default=200)
    ap.add_argument("--mode", choices=["async", "sync"], default="async")
    ap.add_argument("--pool-threads", type=int, default=16)
    ap.add_argument("--mta", default=os.path.join(ROOT, "target/debug/mta"))
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "-q", "-p", "mta-host", "-p", "probe"], cwd=ROOT, check=True)
    probe = os.path.join(os.path.dirname(args.mta), "libprobe.so")
    limit = args.sessions * 2 + 1000
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    work = tempfile.mkdtemp(prefix="mta-async-")
    ports = [free_port() for _ in range(3)]
    with open(os.path.join(work, "mta.toml"), "w") as f:
        f.write(
            f'data_dir = "{work}/data"\n'
            # Root (a container) may run agents only when told so.
            + ('allow_root_agents = true\n' if os.geteuid() == 0 else '')
            + '[tls]\nstarttls = false\n'
            + f'[agents]\ntransport = "{work}/agents.config"\npool_threads = {args.pool_threads}\n'
            f'[frontend]\nlisten = "127.0.0.1:{ports[0]}"\n'
            f'[transport]\nlisten = "127.0.0.1:{ports[1]}"\n'
            f'max_connections_per_ip = {args.sessions + 10}\n'
            f'[mailbox]\nlisten = "127.0.0.1:{ports[2]}"\n'
        )
    action = "async_sleep" if args.mode == "async" else "sleep"
    with open(os.path.join(work, "agents.config"), "w") as f:
        f.write(
            '<?xml version="1.0" encoding="utf-8"?>\n<configuration><mexRuntime>\n'
            '<monitoring><agentExecution timeLimitInMilliseconds="60000" /></monitoring>\n'
            '<agentList>\n'
            f'<agent name="Waiter" baseType="SmtpReceiveAgent" classFactory="Tests.ProbeFactory" '
            f'assemblyPath="{probe}" enabled="true">\n'
            f'<parameter name="{action}" value="OnMailCommand" />\n'
            f'<parameter name="sleep_ms" value="{args.wait_ms}" />\n'
            '</agent>\n</agentList>\n</mexRuntime></configuration>\n'
        )
    os.chmod(os.path.join(work, "mta.toml"), 0o600)
    log = open(os.path.join(work, "mta.log"), "w")
    proc = subprocess.Popen(
        [args.mta, "--config", os.path.join(work, "mta.toml"), "run"],
        stdout=subprocess.DEVNULL, stderr=log,
        env=dict(os.environ, MTA_LOG="warn"),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    )
    try:
        time.sleep(1.5)
        if proc.poll() is not None:
            sys.exit("mta exited:\n" + open(os.path.join(work, "mta.log")).read())
        idle = threads(proc.pid)
        results, before, during = asyncio.run(
            asyncio.wait_for(run(ports[1], args.sessions, proc.pid), 120))
        after = threads(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    codes = {}
    for code, _, _ in results:
        codes[code] = codes.get(code, 0) + 1
    answered = [r for r in results if isinstance(r[0], int)]
    first = min(a for _, a, _ in answered)
    last = max(d for _, _, d in answered)
    latencies = sorted((d - a) * 1000 for _, a, d in answered)
    pct = lambda p: latencies[min(len(latencies) - 1, int(len(latencies) * p))]
    print(f"mode={args.mode} sessions={args.sessions} wait_ms={args.wait_ms} pool_threads={args.pool_threads} binary={os.path.relpath(args.mta, ROOT)}")
    print(f"MAIL FROM replies: {codes}")
    print(f"wall time, first MAIL FROM to last reply: {(last - first) * 1000:.0f} ms")
    print(f"per-session latency: p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms, max {latencies[-1]:.0f} ms")
    print(f"host threads (all / agents): idle {idle[0]}/{idle[1]}, sessions open {before[0]}/{before[1]}, "
          f"waits pending {during[0]}/{during[1]}, after {after[0]}/{after[1]}")
    if codes != {250: args.sessions}:
        print(open(os.path.join(work, "mta.log")).read()[-3000:], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
