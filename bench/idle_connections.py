#!/usr/bin/env python3
"""Memory per idle SMTP connection: opens N connections to a fresh mta (each greeted, then
idle) and reports the growth of the server's resident memory per connection.

    bench/idle_connections.py            # N = 10000
    bench/idle_connections.py --count 2000
"""

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--mta", default=os.path.join(ROOT, "target/release/mta"))
    args = ap.parse_args()
    if not os.path.exists(args.mta):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "mta-host"], cwd=ROOT, check=True)
    limit = args.count + 1000
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    work = tempfile.mkdtemp(prefix="mta-idle-")
    with open(os.path.join(work, "mta.toml"), "w") as f:
        f.write(
            f'data_dir = "{work}/data"\n[tls]\nstarttls = false\n'
            '[frontend]\nlisten = "127.0.0.1:23525"\n'
            f'[transport]\nlisten = "127.0.0.1:23526"\nmax_connections_per_ip = {args.count + 10}\n'
            '[mailbox]\nlisten = "127.0.0.1:23527"\n'
        )
    proc = subprocess.Popen(
        [args.mta, "--config", os.path.join(work, "mta.toml"), "run"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
    )
    time.sleep(1)
    before = rss_kb(proc.pid)
    sockets = []
    for _ in range(args.count):
        s = socket.create_connection(("127.0.0.1", 23526))
        s.recv(512)  # the greeting: the session is running
        sockets.append(s)
    time.sleep(1)
    during = rss_kb(proc.pid)
    per = (during - before) / args.count
    print(f"idle connections: {args.count} open, RSS {before} KB -> {during} KB, {per:.1f} KB per connection")
    for s in sockets:
        s.close()
    proc.terminate()
    proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
