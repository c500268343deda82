#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 30) from the seeds in bench/fuzz-corpus/, and a
# real mta for the smtp target. Exits non-zero if any input panicked (saved in
# bench/fuzz-crashes/). Not part of CI's default path.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-30}
cargo build --release --quiet -p mta-host --example fuzz
FUZZ=target/release/examples/fuzz
status=0
$FUZZ agents-file "$SECONDS_EACH" agents.config.example fetagents.config.example bench/fuzz-corpus/agents/* || status=1
$FUZZ replay "$SECONDS_EACH" bench/fuzz-corpus/replay/* || status=1
$FUZZ pickup "$SECONDS_EACH" bench/fuzz-corpus/pickup/* || status=1
$FUZZ host-config "$SECONDS_EACH" mta.toml.example || status=1
$FUZZ message "$SECONDS_EACH" bench/fuzz-corpus/pickup/* bench/fuzz-corpus/replay/* || status=1
# The SMTP session in process (sans-IO): at least 60 s, whatever FUZZ_SECONDS says.
$FUZZ session "$(( SECONDS_EACH > 60 ? SECONDS_EACH : 60 ))" bench/fuzz-corpus/session/* || status=1
# The SMTP session, over a socket to a real server that must survive every input.
work=$(mktemp -d)
cat > "$work/mta.toml" <<TOML
data_dir = "$work/data"
[frontend]
listen = "127.0.0.1:22525"
[transport]
listen = "127.0.0.1:22526"
max_connections_per_ip = 10000
[mailbox]
listen = "127.0.0.1:22527"
TOML
cargo build --release --quiet -p mta-host
target/release/mta --config "$work/mta.toml" run > "$work/mta.log" 2>&1 &
pid=$!
sleep 1
MTA_FUZZ_PORT=22526 $FUZZ smtp "$SECONDS_EACH" bench/fuzz-corpus/smtp/* || status=1
if ! kill -0 "$pid" 2>/dev/null; then echo "smtp: the server died"; tail "$work/mta.log"; status=1; fi
kill "$pid" 2>/dev/null || true
rm -rf "$work"
exit $status
