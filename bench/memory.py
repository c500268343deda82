#!/usr/bin/env python3
"""Memory under load: peak resident memory (VmHWM) of the mta process in three runs.

  1. LARGE:  100 concurrent sessions each sending one 30 MB message: to Transport, relayed by
             a send connector to smtp-sink, and through the Front End, Transport and Mailbox
             Transport into a Maildir (target: peak RSS under 300 MB, each).
  2. PICKUP: one 200 MB file in the pickup directory, relayed to smtp-sink
             (target: peak RSS under 100 MB).
  3. FLOOD:  200 concurrent sessions sharing 50,000 messages of 5 KB, to Transport, relayed to
             smtp-sink (target: peak RSS under 64 MB, end-to-end rate equal to accepted rate:
             back pressure refuses what cannot be kept up with, so the backlog, accepted and not
             yet delivered, never grows past the high-water mark and the sessions in flight; the
             end-to-end rate is lower than the accepted one only by the time that bounded
             backlog takes to drain after the load). The load comes from
             `examples/smtp_load.rs`, which retries a message refused for now as a sending MTA
             would; smtp-source exits at the first 452.

    bench/memory.py                      # all three, target/release/mta (built if missing)
    bench/memory.py --only flood --flood-messages 20000

Needs Postfix's smtp-sink (Debian's postfix package; bench/postfix.sh installs it). Prints one line per run; exits 1 if a run lost mail or missed its target.
"""

import argparse
import os
import shutil
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


class Sink:
    """smtp-sink, counting what it took."""

    def __init__(self, work):
        self.port = free_port()
        self.out = open(os.path.join(work, "sink.out"), "w")
        self.proc = subprocess.Popen(
            ["smtp-sink", "-u", "postfix", "-c", f"127.0.0.1:{self.port}", "1000"],
            stdout=self.out, stderr=subprocess.STDOUT)
        time.sleep(0.3)

    def count(self):
        with open(self.out.name, "rb") as f:
            text = f.read().replace(b"\r", b"\n").decode(errors="replace")
        found = [int(w.split("=")[1]) for w in text.split() if w.startswith("mesg=")]
        return found[-1] if found else 0

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Mta:
    def __init__(self, mta, work, sink_port, extra=""):
        self.ports = {r: free_port() for r in ("frontend", "transport", "mailbox")}
        self.data = os.path.join(work, "mta-data")
        shutil.rmtree(self.data, ignore_errors=True)
        self.config = os.path.join(work, "mta.toml")
        big = 400 * 1024 * 1024
        with open(self.config, "w") as f:
            f.write(f'data_dir = "{self.data}"\n{extra}\n')
            for role, port in self.ports.items():
                f.write(f'[{role}]\nlisten = "127.0.0.1:{port}"\nmax_message_size = {big}\n'
                        'max_connections_per_ip = 1000\n')
                if role == "transport":
                    # The load generator relays to sink.test as a trusted sending MTA would
                    # (Transport trusts no address by default).
                    f.write('trusted = ["127.0.0.1"]\n')
            f.write('[tls]\nstarttls = false\n[directories]\npoll_interval_ms = 100\n')
            f.write('[[send_connectors]]\nname = "Sink"\naddress_spaces = ["SMTP:sink.test;1"]\n'
                    f'smart_hosts = ["127.0.0.1:{sink_port}"]\ntls = "none"\n'
                    'max_concurrent_connections = 100\n')
        self.log = open(os.path.join(work, "mta.log"), "w")
        self.proc = subprocess.Popen([mta, "--config", self.config, "run"],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 20
        while time.time() < deadline:
            with open(self.log.name) as f:
                if f.read().count(" listening.") >= 3:
                    return
            time.sleep(0.1)
        raise SystemExit("mta did not start:\n" + open(self.log.name).read())

    def peak_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def queued(self):
        with open(self.log.name) as f:
            return f.read().count("Message queued.")

    def queued_counter(self):
        """A counter of "Message queued." that reads only what the log gained since its last
        call (reading the whole log every 100 ms would compete with mta for the CPU)."""
        state = {"offset": 0, "count": 0, "tail": b""}

        def count():
            with open(self.log.name, "rb") as f:
                f.seek(state["offset"])
                data = f.read()
            state["offset"] += len(data)
            data = state["tail"] + data
            complete, _, state["tail"] = data.rpartition(b"\n")
            state["count"] += complete.count(b"Message queued.")
            return state["count"]
        return count

    def maildir(self, mailbox):
        path = os.path.join(self.data, "mailboxes", mailbox, "new")
        return len(os.listdir(path)) if os.path.isdir(path) else 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def wait_for(what, target, timeout, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if what() >= target:
            return True
        time.sleep(step)
    return False


def smtp_send(port, to, message):
    """One session, one message (CRLF, dot-stuffed, ends in CRLF.CRLF); the final reply code."""
    s = socket.create_connection(("127.0.0.1", port), timeout=300)
    f = s.makefile("rb")

    def reply():
        while True:
            line = f.readline()
            if line[3:4] != b"-":
                return int(line[:3])

    reply()
    for cmd in (b"EHLO bench\r\n", b"MAIL FROM:<bench@example.net>\r\n",
                f"RCPT TO:<{to}>\r\n".encode(), b"DATA\r\n"):
        s.sendall(cmd)
        code = reply()
        if code >= 400:
            s.close()
            return code
    s.sendall(message)
    code = reply()
    s.sendall(b"QUIT\r\n")
    s.close()
    return code


def large(mta_bin, work, sink, count, size, maildir):
    mta = Mta(mta_bin, work, sink.port)
    line = b"x" * 98 + b"\r\n"
    message = b"Subject: large\r\nFrom: bench@example.net\r\n\r\n" + line * (size // len(line)) \
        + b".\r\n"
    to = "alice@example.test" if maildir else "big@sink.test"
    base = sink.count()
    codes = []
    t0 = time.time()
    port = mta.ports["frontend" if maildir else "transport"]
    threads = [threading.Thread(target=lambda: codes.append(
        smtp_send(port, to, message))) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = codes.count(250)
    done = (lambda: mta.maildir("alice")) if maildir else (lambda: sink.count() - base)
    delivered = wait_for(done, accepted, 600)
    elapsed = time.time() - t0
    peak = mta.peak_kb()
    mta.stop()
    name = f"large: {count} x {size >> 20} MB, " + (
        "Front End -> Maildir" if maildir else "Transport -> smtp-sink")
    ok = accepted == count and delivered and peak < 300 * 1024
    print(f"{name:<52} accepted {accepted}/{count}, delivered {done() if not delivered else accepted}, "
          f"{elapsed:.1f} s, peak RSS {peak // 1024} MB (target < 300)  {'ok' if ok else 'MISSED'}")
    return ok


def pickup(mta_bin, work, sink, size):
    mta = Mta(mta_bin, work, sink.port)
    base = sink.count()
    path = os.path.join(mta.data, "pickup")
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, "big.writing")
    line = b"p" * 99 + b"\n"
    with open(tmp, "wb") as f:
        f.write(b"From: bench@example.test\nTo: big@sink.test\nSubject: pickup\n\n")
        for _ in range(size // len(line)):
            f.write(line)
    t0 = time.time()
    os.rename(tmp, os.path.join(path, "big.eml"))
    delivered = wait_for(lambda: sink.count() - base, 1, 600)
    elapsed = time.time() - t0
    peak = mta.peak_kb()
    mta.stop()
    ok = delivered and peak < 100 * 1024
    print(f"{'pickup: one ' + str(size >> 20) + ' MB file -> smtp-sink':<52} delivered {int(delivered)}/1, "
          f"{elapsed:.1f} s, peak RSS {peak // 1024} MB (target < 100)  {'ok' if ok else 'MISSED'}")
    return ok


def flood(mta_bin, work, sink, sessions, messages, extra):
    mta = Mta(mta_bin, work, sink.port, extra)
    base = sink.count()
    load = os.path.join(ROOT, "target", "release", "examples", "smtp_load")
    # Both counts are sampled every 100 ms while the load runs (and only then), so the steady
    # state (back pressure holding the backlog between its marks) can be told from the ramp-up
    # and from the drain after the load.
    samples, running = [], threading.Event()
    running.set()
    queued = mta.queued_counter()

    def sample():
        while running.is_set():
            samples.append((time.time(), queued(), sink.count() - base))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    t0 = time.time()
    sampler.start()
    source = subprocess.run(
        [load, f"127.0.0.1:{mta.ports['transport']}", str(sessions), str(messages), "5120",
         "to@sink.test"], capture_output=True, text=True)
    t1 = time.time()
    running.clear()
    during = sink.count() - base
    accepted = mta.queued()
    delivered = wait_for(lambda: sink.count() - base, accepted, 600, step=0.01)
    t2 = time.time()
    sampler.join()
    peak = mta.peak_kb()
    refused = open(mta.log.name).read().count("Back pressure: new mail is refused")
    mta.stop()
    got = sink.count() - base
    acc_rate, e2e_rate = accepted / (t1 - t0), got / (t2 - t0)
    # Steady state: from the first sample past 20 % of the messages to the last sample taken
    # while the load ran.
    during_load = [s for s in samples if s[0] <= t1] or samples
    start = next((s for s in during_load if s[1] >= messages // 5), during_load[0])
    end = during_load[-1]
    span = max(end[0] - start[0], 1e-9)
    ss_acc, ss_del = (end[1] - start[1]) / span, (end[2] - start[2]) / span
    deferred = source.stdout.split("deferred=")[1].split()[0] if "deferred=" in source.stdout else "?"
    # Delivery keeps pace: what is accepted and not yet delivered never grows past back
    # pressure's high-water mark (2000 items by default) and the sessions' messages in flight.
    # A node that accepted faster than it delivers would show a backlog that grows with the run.
    backlog = max(q - d for _, q, d in samples) if samples else 0
    ok = (delivered and got >= accepted == messages and peak < 64 * 1024
          and backlog <= 2000 + sessions)
    print(f"{'flood: ' + str(sessions) + ' sessions x 5 KB -> smtp-sink':<52} accepted {accepted} "
          f"({acc_rate:.0f}/s; {deferred} refused for now and sent again), delivered {got} "
          f"({e2e_rate:.0f}/s end to end, {e2e_rate / acc_rate:.2f} of accepted); "
          f"steady state over {span:.1f} s: accepted {ss_acc:.0f}/s, delivered {ss_del:.0f}/s "
          f"({ss_del / max(ss_acc, 1e-9):.3f}); largest backlog {backlog} (bound {2000 + sessions}), "
          f"{accepted - during} when the load ended, "
          f"drained in {t2 - t1:.2f} s; back pressure engaged {refused}x, "
          f"peak RSS {peak // 1024} MB (target < 64)  {'ok' if ok else 'MISSED'}")
    return ok


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--only", choices=["large", "pickup", "flood"])
    p.add_argument("--large-count", type=int, default=100)
    p.add_argument("--large-mb", type=int, default=30)
    p.add_argument("--pickup-mb", type=int, default=200)
    p.add_argument("--flood-sessions", type=int, default=200)
    p.add_argument("--flood-messages", type=int, default=50000)
    p.add_argument("--config", default="", help="extra mta.toml text (e.g. back pressure marks)")
    args = p.parse_args()
    if not shutil.which("smtp-sink"):
        raise SystemExit("needs smtp-sink (Debian: apt-get install postfix)")
    mta = os.path.join(ROOT, "target", "release", "mta")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "mta-host", "--bin", "mta",
                    "--example", "smtp_load"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="mta-memory.")
    sink = Sink(work)
    ok = True
    try:
        if args.only in (None, "large"):
            ok &= large(mta, work, sink, args.large_count, args.large_mb << 20, False)
            ok &= large(mta, work, sink, args.large_count, args.large_mb << 20, True)
        if args.only in (None, "pickup"):
            ok &= pickup(mta, work, sink, args.pickup_mb << 20)
        if args.only in (None, "flood"):
            ok &= flood(mta, work, sink, args.flood_sessions, args.flood_messages,
                        args.config.replace("\\n", "\n"))
    finally:
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
