#!/usr/bin/env python3
"""Chaos: stop the mta at random points under load, many times, then count.

With kill -9, every message the server answered 250 must be delivered after the last restart
(at-least-once: duplicates are counted, not failures). With SIGTERM (--signal term) the server
drains, so the target is also no duplicate at all. Prints the figures; exits 1 if anything was
lost, or (with SIGTERM) duplicated.

    bench/kill9.py                     # 20 kill -9 cycles, target/release/mta (built if missing)
    bench/kill9.py --signal term       # 20 SIGTERM restarts
    bench/kill9.py --cycles 5 --senders 8 --large   # every 5th message 300 KB (spooled)
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


def sender(port, cycle, n, accepted, stop, large):
    i = 0
    big = ("y" * 98 + "\r\n") * 3000
    while not stop.is_set():
        subject = f"chaos-{cycle}-{n}-{i}"
        body = big if large and i % 5 == 0 else "x\r\n"
        i += 1
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.sendmail("load@elsewhere.test", ["alice@example.test"], f"Subject: {subject}\r\n\r\n{body}")
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
                for line in f.read().replace(b"\r\n", b"\n").split(b"\n"):
                    if line.startswith(b"Subject: chaos-"):
                        subjects.append(line[9:].decode())
                        break
    return subjects


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--mta", default=os.path.join(ROOT, "target/release/mta"))
    ap.add_argument("--signal", choices=["kill", "term"], default="kill")
    ap.add_argument("--large", action="store_true", help="every 5th message 300 KB")
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
        threads = [threading.Thread(target=sender, args=(ports[1], cycle, n, accepted, stop, args.large))
                   for n in range(args.senders)]
        for t in threads:
            t.start()
        time.sleep(random.uniform(0.3, 2.0))
        proc.send_signal(signal.SIGKILL if args.signal == "kill" else signal.SIGTERM)
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
    what = "kill -9" if args.signal == "kill" else "SIGTERM"
    print(f"{what} chaos: {args.cycles} cycles, {len(accepted)} messages answered 250, "
          f"{len(set(got) & wanted)} delivered, {len(lost)} lost, {duplicates} duplicates")
    if lost or (args.signal == "term" and duplicates):
        print("lost:", sorted(lost)[:20])
        print("keeping", work)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
