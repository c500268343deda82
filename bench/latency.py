#!/usr/bin/env python3
"""End-to-end latency under load: Front End -> Transport -> Mailbox Transport -> Maildir.

Four clients keep a background load going (to bob); meanwhile a probe sends messages to alice
at a steady rate, each stamped with its send time. The latency of a probe message is the
Maildir file's modification time minus its send time. Prints p50, p99 and max.

    bench/latency.py                     # 1000 probes at 100/s
    bench/latency.py --probes 300 --rate 50
"""

import argparse
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--mta", default=os.path.join(ROOT, "target/release/mta"))
    args = ap.parse_args()
    if not os.path.exists(args.mta):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "mta-host"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="mta-latency-")
    ports = [free_port() for _ in range(3)]
    with open(os.path.join(work, "mta.toml"), "w") as f:
        f.write(
            f'data_dir = "{work}/data"\n[tls]\nstarttls = false\n'
            f'[frontend]\nlisten = "127.0.0.1:{ports[0]}"\nmax_connections_per_ip = 1000\n'
            f'[transport]\nlisten = "127.0.0.1:{ports[1]}"\nmax_connections_per_ip = 1000\n'
            f'[mailbox]\nlisten = "127.0.0.1:{ports[2]}"\n'
        )
    proc = subprocess.Popen([args.mta, "--config", os.path.join(work, "mta.toml"), "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    stop = threading.Event()
    background = [0]

    def load():
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", ports[0], timeout=10) as s:
                    for _ in range(20):
                        s.sendmail("load@elsewhere.test", ["bob@example.test"], "Subject: load\r\n\r\n" + "x" * 5000 + "\r\n")
                        background[0] += 1
            except (OSError, smtplib.SMTPException):
                time.sleep(0.01)

    loaders = [threading.Thread(target=load) for _ in range(4)]
    for t in loaders:
        t.start()
    time.sleep(1)
    sent = {}
    interval = 1.0 / args.rate
    with smtplib.SMTP("127.0.0.1", ports[0], timeout=10) as s:
        next_at = time.time()
        for i in range(args.probes):
            now = time.time()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            stamp = time.time_ns()
            s.sendmail("probe@elsewhere.test", ["alice@example.test"], f"Subject: probe {i}\r\nX-Sent: {stamp}\r\n\r\nx\r\n")
            sent[i] = stamp
    maildir = os.path.join(work, "data/mailboxes/alice/new")
    deadline = time.time() + 60
    while time.time() < deadline and len(os.listdir(maildir)) < args.probes:
        time.sleep(0.1)
    stop.set()
    for t in loaders:
        t.join()
    latencies = []
    for name in os.listdir(maildir):
        path = os.path.join(maildir, name)
        with open(path, "rb") as f:
            for line in f.read().split(b"\r\n"):
                if line.startswith(b"X-Sent: "):
                    latencies.append((os.stat(path).st_mtime_ns - int(line[8:])) / 1e6)
                    break
    proc.terminate()
    proc.wait()
    shutil.rmtree(work, ignore_errors=True)
    latencies.sort()
    if len(latencies) < args.probes:
        print(f"only {len(latencies)} of {args.probes} probes arrived")
        return 1
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(f"latency Front End -> Maildir under load ({background[0]} background messages): "
          f"p50 {pick(0.50):.1f} ms, p99 {pick(0.99):.1f} ms, max {latencies[-1]:.1f} ms over {len(latencies)} probes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
