#!/usr/bin/env python3
"""Chaos: kill -9 the mta at random points under load, many times, then count.

Every message the server answered 250 must be delivered after the last restart (at-least-once:
duplicates are counted, not failures). Prints the figures; exits 1 if anything was lost.

    bench/kill9.py                     # 20 cycles, uses target/release/mta (built if missing)
    bench/kill9.py --cycles 5 --senders 8
"""

import argparse
import os
import random
import shutil
import signal
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


def start(mta, config, log):
    proc = subprocess.Popen([mta, "--config", config, "run"], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 20
    while time.time() < deadline:
        with open(log.name) as f:
            if f.read().count(" listening.") >= 3 * start.count + 3:
                start.count += 1
                return proc
        time.sleep(0.05)
    raise SystemExit("mta did not start")


start.count = 0


def sender(port, cycle, n, accepted, stop):
    i = 0
    while not stop.is_set():
        subject = f"chaos-{cycle}-{n}-{i}"
        i += 1
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.sendmail("load@elsewhere.test", ["alice@example.test"], f"Subject: {subject}\r\n\r\nx\r\n")
            accepted.append(subject)  # only after the 250
        except (OSError, smtplib.SMTPException):
            if stop.is_set():
                return
            time.sleep(0.02)


def delivered(maildir):
    subjects = []
    for sub in ("new", "cur"):
        path = os.path.join(maildir, sub)
        for name in os.listdir(path) if os.path.isdir(path) else []:
            with open(os.path.join(path, name), "rb") as f:
                for line in f.read().split(b"\r\n"):
                    if line.startswith(b"Subject: chaos-"):
                        subjects.append(line[9:].decode())
                        break
    return subjects


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--mta", default=os.path.join(ROOT, "target/release/mta"))
    args = ap.parse_args()
    if not os.path.exists(args.mta):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "mta-host"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="mta-kill9-")
    ports = [free_port() for _ in range(3)]
    config = os.path.join(work, "mta.toml")
    with open(config, "w") as f:
        f.write(
            f'data_dir = "{work}/data"\n[tls]\nstarttls = false\n'
            f'[frontend]\nlisten = "127.0.0.1:{ports[0]}"\n'
            f'[transport]\nlisten = "127.0.0.1:{ports[1]}"\nmax_connections_per_ip = 1000\n'
            f'[mailbox]\nlisten = "127.0.0.1:{ports[2]}"\n'
        )
    log = open(os.path.join(work, "mta.log"), "w")
    accepted = []
    for cycle in range(args.cycles):
        proc = start(args.mta, config, log)
        stop = threading.Event()
        threads = [threading.Thread(target=sender, args=(ports[1], cycle, n, accepted, stop)) for n in range(args.senders)]
        for t in threads:
            t.start()
        time.sleep(random.uniform(0.3, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join()
    proc = start(args.mta, config, log)
    maildir = os.path.join(work, "data/mailboxes/alice")
    wanted = set(accepted)
    deadline = time.time() + 180
    while time.time() < deadline and not wanted <= set(delivered(maildir)):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    got = delivered(maildir)
    lost = wanted - set(got)
    duplicates = len(got) - len(set(got))
    print(f"kill -9 chaos: {args.cycles} cycles, {len(accepted)} messages answered 250, "
          f"{len(set(got) & wanted)} delivered, {len(lost)} lost, {duplicates} duplicates")
    if lost:
        print("lost:", sorted(lost)[:20])
        print("keeping", work)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
