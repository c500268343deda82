#!/usr/bin/env python3
"""Live reload cost: the time from writing the agents file to the first new SMTP session served
by the new pipeline (p50 and p99, idle and under a steady SMTP load), the time from a rebuilt
library's rename to its swap, and the throughput of that load while the file is rewritten every
50 ms against none.

    bench/reload.py [--reloads N] [--libraries N] [--debounce MS]
        # target/release/mta and the release sample agents, built if missing; the host's
        # default debounce unless --debounce is given

"Serving" is seen from outside, as a client would see it: the agents file holds a connection
filter that refuses 127.0.0.2 with a text that names the file's version, and a prober connecting
from 127.0.0.2 reads greetings until one names the version just written. The load connects from
127.0.0.1, which the filter lets through to a header stamper (one agent call per message), from
separate processes so that the prober is not held back by the load generator's interpreter.
A rebuilt library changes no greeting: its swap is seen in the status file, written just after.
"""

import argparse
import json
import multiprocessing
import os
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target/release")
LOAD_PROCESSES = 4


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agents_file(path, value, stamper=os.path.join(RELEASE, "libheader_stamper.so")):
    text = (
        '<configuration><mexRuntime><monitoring><agentExecution timeLimitInMilliseconds="90000" />'
        '</monitoring><agentList>'
        f'<agent name="Filter" baseType="SmtpReceiveAgent" classFactory="Mta.Samples.ConnectionFilterFactory" '
        f'assemblyPath="{RELEASE}/libconnection_filter.so" enabled="true">'
        f'<parameter name="deny" value="127.0.0.2" /><parameter name="response" value="version {value}" /></agent>'
        f'<agent name="Stamper" baseType="SmtpReceiveAgent" classFactory="Mta.Samples.HeaderStamperFactory" '
        f'assemblyPath="{stamper}" enabled="true"><parameter name="value" value="{value}" /></agent>'
        '</agentList></mexRuntime></configuration>\n'
    )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def greeting(port):
    """The first reply line a new session from 127.0.0.2 gets."""
    with socket.socket() as s:
        s.settimeout(5)
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", port))
        data = b""
        while b"\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace")


def write_to_serving(port, write, value):
    """Milliseconds from `write()` (the agents file's rename) to the first session refused with
    `value`."""
    expected = f"version {value}\r"
    t0 = time.monotonic()
    write()
    while time.monotonic() - t0 < 10:
        try:
            if expected in greeting(port):
                return (time.monotonic() - t0) * 1000
        except OSError:
            pass
        time.sleep(0.001)
    raise SystemExit(f"version {value} not served after 10 s")


def generation(status):
    try:
        with open(status) as f:
            return json.load(f)["generation"]
    except (OSError, ValueError, KeyError):
        return 0


def library_swap(status, original, path, n):
    """Milliseconds from a rebuilt library's rename over `path` to the status file's new
    generation (the swap happens just before the status file is written). Each version is the
    original with `n` bytes appended: new content, so a new shadow copy and a new image."""
    with open(original, "rb") as f:
        data = f.read() + b"\0" * n
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    before = generation(status)
    t0 = time.monotonic()
    os.rename(tmp, path)
    while generation(status) == before:
        if time.monotonic() - t0 > 10:
            raise SystemExit("rebuilt library not swapped in after 10 s")
        time.sleep(0.001)
    return (time.monotonic() - t0) * 1000


def sender(port, stop, counter, failures):
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.sendmail("a@elsewhere.test", ["alice@example.test"], "Subject: r\r\n\r\nx\r\n")
            with counter.get_lock():
                counter.value += 1
        except (OSError, smtplib.SMTPException):
            with failures.get_lock():
                failures.value += 1


class Load:
    """A steady SMTP load from separate processes while the block runs."""

    def __init__(self, port):
        self.port = port

    def __enter__(self):
        self.stop = multiprocessing.Event()
        self.count = multiprocessing.Value("l", 0)
        self.failures = multiprocessing.Value("l", 0)
        self.procs = [
            multiprocessing.Process(target=sender, args=(self.port, self.stop, self.count, self.failures))
            for _ in range(LOAD_PROCESSES)
        ]
        for p in self.procs:
            p.start()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for p in self.procs:
            p.join()
        self.rate = self.count.value / (time.monotonic() - self.started)


def rewrites(write, seconds, every):
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        write(i)
        i += 1
        time.sleep(every)
    return i


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summary(latencies):
    return (f"p50 {statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 99):.1f} ms, "
            f"max {max(latencies):.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=100, help="reloads measured idle and under load (default 100)")
    parser.add_argument("--libraries", type=int, default=30,
                        help="library rebuilds measured under load (default 30; each image stays loaded)")
    parser.add_argument("--debounce", type=int, help="[agents] reload_debounce_ms (default: the host's default)")
    args = parser.parse_args()
    mta = os.path.join(RELEASE, "mta")
    libs = [os.path.join(RELEASE, f"lib{n}.so") for n in ("connection_filter", "header_stamper")]
    if not all(os.path.exists(p) for p in [mta] + libs):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "mta-host", "-p", "connection-filter",
                        "-p", "header-stamper"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="mta-reload-")
    agents = os.path.join(work, "agents.config")
    original = os.path.join(RELEASE, "libheader_stamper.so")
    stamper = os.path.join(work, "libheader_stamper.so")
    shutil.copy(original, stamper)
    agents_file(agents, "start", stamper)
    ports = [free_port() for _ in range(3)]
    debounce = "" if args.debounce is None else f"reload_debounce_ms = {args.debounce}\n"
    with open(os.path.join(work, "mta.toml"), "w") as f:
        f.write(
            f'data_dir = "{work}/data"\nallow_root_agents = true\n[agents]\ntransport = "{agents}"\n{debounce}'
            f'[tls]\nstarttls = false\n[frontend]\nlisten = "127.0.0.1:{ports[0]}"\n'
            f'[transport]\nlisten = "127.0.0.1:{ports[1]}"\nmax_connections_per_ip = 1000\n'
            f'[mailbox]\nlisten = "127.0.0.1:{ports[2]}"\n'
        )
    os.chmod(os.path.join(work, "mta.toml"), 0o600)
    log = open(os.path.join(work, "mta.log"), "w")
    # The controller's debug line says how long each reload waited for the debounce.
    env = dict(os.environ, MTA_LOG="info,mta_host::agents::reload=debug", NO_COLOR="1")
    proc = subprocess.Popen([mta, "--config", os.path.join(work, "mta.toml"), "run"],
                            stdout=subprocess.DEVNULL, stderr=log, cwd=work, env=env)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if "version start" in greeting(ports[1]):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"mta did not start; see {work}/mta.log")
            time.sleep(0.05)

        status = os.path.join(work, "data/run/agents-transport.json")
        write = lambda value: write_to_serving(ports[1], lambda: agents_file(agents, value, stamper), value)
        idle = []
        for i in range(args.reloads):
            idle.append(write(f"idle-{i}"))
            time.sleep(0.1)
        with Load(ports[1]) as load:
            time.sleep(1)  # the load reaches its steady rate
            loaded = []
            idle_done = generation(status)
            for i in range(args.reloads):
                loaded.append(write(f"load-{i}"))
                time.sleep(0.1)
            files_done = generation(status)
            rebuilt = []
            for i in range(args.libraries):
                rebuilt.append(library_swap(status, original, stamper, i + 1))
                time.sleep(0.1)
        libraries_done = generation(status)
        with Load(ports[1]) as quiet_a:
            time.sleep(5)
        with Load(ports[1]) as stormy:
            storm = rewrites(lambda i: agents_file(agents, f"storm {i}", stamper), 5, 0.05)
        with Load(ports[1]) as quiet_b:
            time.sleep(5)
        failed = load.failures.value + quiet_a.failures.value + stormy.failures.value + quiet_b.failures.value
    finally:
        proc.terminate()
        proc.wait()
        log.close()
    # Where the time goes, from the host's log: the debounce wait (first event to reload) and
    # the reload itself (read, parse, load, build, swap, status file), by the generation each
    # swap made: file rewrites idle, under load, then library rebuilds.
    waited, built, pending = {}, {}, None
    with open(os.path.join(work, "mta.log")) as f:
        for line in f:
            field = lambda name: float(line.split(f" {name}=")[1].split()[0])
            if "Agent files changed; reloading." in line:
                pending = field("waited_us") / 1000
            elif "Agent pipeline swapped." in line:
                g = int(field("generation"))
                built[g] = field("elapsed_us") / 1000
                if pending is not None:
                    waited[g] = pending
                pending = None
    phase = lambda table, lo, hi: [v for g, v in table.items() if lo < g <= hi]
    shutil.rmtree(work, ignore_errors=True)
    quiet = (quiet_a.rate + quiet_b.rate) / 2
    label = "default" if args.debounce is None else f"{args.debounce} ms"
    print(f"reload: write to first new session served, debounce {label}, {args.reloads} reloads each")
    print(f"  idle:                                      {summary(idle)}")
    print(f"  under load ({LOAD_PROCESSES} senders, {load.rate:.0f} msg/s): {summary(loaded)}")
    for name, lo, hi in (("idle", 1, idle_done), ("under load", idle_done, files_done)):
        if phase(waited, lo, hi) and phase(built, lo, hi):
            print(f"  {name}, of which debounce wait: {summary(phase(waited, lo, hi))}")
            print(f"  {name}, of which reload, swap and status file: {summary(phase(built, lo, hi))}")
    print(f"reload: rebuilt library renamed over the old one, under load, to the status file's new generation, "
          f"{args.libraries} rebuilds: {summary(rebuilt)}")
    if phase(built, files_done, libraries_done):
        print(f"  of which reload (shadow copy, load), swap and status file: "
              f"{summary(phase(built, files_done, libraries_done))}")
    print(f"reload: load without reloads {quiet:.0f} msg/s (before and after), with a rewrite every 50 ms "
          f"({storm} rewrites) {stormy.rate:.0f} msg/s ({stormy.rate / quiet:.2f}x); {failed} sessions failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
