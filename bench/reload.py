#!/usr/bin/env python3
"""Live reload cost: the time from writing the agents file to the new pipeline serving, and the
throughput of a steady load while the file is rewritten every 50 ms against none.

    bench/reload.py                  # uses target/release/mta and the release sample agents
"""

import os
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target/release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agents_file(path, value):
    text = (
        '<configuration><mexRuntime><monitoring><agentExecution timeLimitInMilliseconds="90000" />'
        '</monitoring><agentList>'
        f'<agent name="Stamper" baseType="SmtpReceiveAgent" classFactory="Mta.Samples.HeaderStamperFactory" '
        f'assemblyPath="{RELEASE}/libheader_stamper.so" enabled="true"><parameter name="value" value="{value}" /></agent>'
        '</agentList></mexRuntime></configuration>\n'
    )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def generation(status):
    try:
        with open(status) as f:
            return json.load(f)["generation"]
    except (OSError, ValueError, KeyError):
        return 0


def load(port, seconds, reload_every=None, path=None):
    stop = threading.Event()
    counts = []

    def send(n):
        sent = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                    s.sendmail("a@elsewhere.test", ["alice@example.test"], "Subject: r\r\n\r\nx\r\n")
                sent += 1
            except (OSError, smtplib.SMTPException) as e:
                print("failed:", e)
        counts.append(sent)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    end = time.time() + seconds
    i = 0
    while time.time() < end:
        if reload_every:
            agents_file(path, f"storm {i}")
            i += 1
            time.sleep(reload_every)
        else:
            time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / seconds, i


def main():
    mta = os.path.join(RELEASE, "mta")
    if not os.path.exists(mta) or not os.path.exists(os.path.join(RELEASE, "libheader_stamper.so")):
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "mta-host", "-p", "header-stamper"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="mta-reload-")
    agents = os.path.join(work, "agents.config")
    agents_file(agents, "v0")
    ports = [free_port() for _ in range(3)]
    with open(os.path.join(work, "mta.toml"), "w") as f:
        f.write(
            f'data_dir = "{work}/data"\n[agents]\ntransport = "{agents}"\nreload_debounce_ms = 20\n'
            f'[tls]\nstarttls = false\n[frontend]\nlisten = "127.0.0.1:{ports[0]}"\n'
            f'[transport]\nlisten = "127.0.0.1:{ports[1]}"\nmax_connections_per_ip = 1000\n'
            f'[mailbox]\nlisten = "127.0.0.1:{ports[2]}"\n'
        )
    proc = subprocess.Popen([mta, "--config", os.path.join(work, "mta.toml"), "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = os.path.join(work, "data/run/agents-transport.json")
    time.sleep(1)
    latencies = []
    for i in range(1, 21):
        before = generation(status)
        t0 = time.time()
        agents_file(agents, f"v{i}")
        while generation(status) == before and time.time() - t0 < 10:
            time.sleep(0.001)
        latencies.append((time.time() - t0) * 1000)
        time.sleep(0.05)
    load(ports[1], 2)  # warm-up
    quiet_a, _ = load(ports[1], 5)
    stormy, reloads = load(ports[1], 5, reload_every=0.05, path=agents)
    quiet_b, _ = load(ports[1], 5)
    quiet = (quiet_a + quiet_b) / 2
    proc.terminate()
    proc.wait()
    shutil.rmtree(work, ignore_errors=True)
    latencies.sort()
    print(f"reload: file write to new pipeline serving, 20 reloads (20 ms debounce included): "
          f"median {statistics.median(latencies):.1f} ms, max {latencies[-1]:.1f} ms")
    print(f"reload: load without reloads {quiet:.0f} msg/s (before and after), with a rewrite every 50 ms ({reloads} rewrites) "
          f"{stormy:.0f} msg/s ({stormy / quiet:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
