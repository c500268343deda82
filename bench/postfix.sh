#!/usr/bin/env bash
# Throughput against Postfix on this machine, in one run, alternating:
#   (a) Postfix relaying to smtp-sink
#   (b) mta's Transport relaying to smtp-sink through a Send connector
#   (c) mta's full path: Front End -> Transport -> Mailbox Transport into Maildirs
#   (d) (b) with the sample SmtpReceive and Routing agents loaded
# Load from Postfix's smtp-source; durability on for both (Postfix's defaults, mta's fsync'd
# journal). Prints accepted and end-to-end msg/s, the ratios to Postfix, and mta's peak RSS.
#
#   bench/postfix.sh                    # N=20000 messages of 5 KB over 50 sessions, 2 rounds
#   N=5000 SESSIONS=20 ROUNDS=1 bench/postfix.sh
#
# Needs root (it installs Debian's postfix package if missing and runs a private Postfix
# instance under a temporary directory, registered in alternate_config_directories).
set -euo pipefail

N=${N:-20000}
SESSIONS=${SESSIONS:-50}
SIZE=${SIZE:-5120}
ROUNDS=${ROUNDS:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/mta-bench.XXXXXX)
chmod 755 "$WORK" # Postfix's unprivileged processes work below it
SINK=127.0.0.1:21026
PF=21025
MT_FE=21035
MT_TR=21036
MT_MB=21037

if ! command -v smtp-source >/dev/null || ! command -v bc >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix bc
fi
postfix stop >/dev/null 2>&1 || true

echo "building mta (release)..."
(cd "$ROOT" && cargo build --release --quiet -p mta-host -p header-stamper -p connection-filter -p recipient-router)
MTA="$ROOT/target/release/mta"

cleanup() {
    set +e
    [ -n "${SINK_PID:-}" ] && kill "$SINK_PID" 2>/dev/null
    [ -n "${MTA_PID:-}" ] && kill "$MTA_PID" 2>/dev/null
    postfix -c "$WORK/postfix" stop >/dev/null 2>&1
    postconf -e "alternate_config_directories =" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- the sink -------------------------------------------------------------------------
smtp-sink -u postfix -c "$SINK" 2000 > "$WORK/sink.out" 2>&1 &
SINK_PID=$!
sunk() { tr '\r' '\n' < "$WORK/sink.out" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2 || echo 0; }

# --- a private Postfix ----------------------------------------------------------------
mkdir -p "$WORK/postfix" "$WORK/postfix-queue" "$WORK/postfix-data"
cp /etc/postfix/main.cf /etc/postfix/master.cf "$WORK/postfix/"
postconf -e "alternate_config_directories = $WORK/postfix"
postconf -c "$WORK/postfix" -e \
    "queue_directory = $WORK/postfix-queue" "data_directory = $WORK/postfix-data" \
    "inet_interfaces = 127.0.0.1" "inet_protocols = ipv4" "mydestination =" \
    "relayhost = [127.0.0.1]:${SINK##*:}" "mynetworks = 127.0.0.0/8" \
    "smtpd_relay_restrictions = permit_mynetworks, reject" "alias_maps =" "alias_database =" \
    "default_process_limit = 200" "smtp_destination_concurrency_limit = 50" \
    "default_destination_concurrency_limit = 50" "maillog_file = $WORK/postfix.log" \
    "smtputf8_enable = no" "myhostname = bench.example.test" "maillog_file_prefixes = /tmp"
sed -i "s/^smtp      inet.*/$PF inet n - n - - smtpd/" "$WORK/postfix/master.cf"
chown postfix "$WORK/postfix-data"
postfix -c "$WORK/postfix" check >/dev/null 2>&1 || true
if ! postfix -c "$WORK/postfix" start >/dev/null 2>&1; then
    echo "Postfix did not start:"; tail -5 "$WORK/postfix.log"; exit 1
fi

# --- mta configurations ---------------------------------------------------------------
# The bench runs as root (it drives a private Postfix), and mta refuses to load agents as root
# unless told to, which (d) needs: production sets `user = "mta"`.
cat > "$WORK/mta.toml" <<EOF
data_dir = "$WORK/mta-data"
allow_root_agents = true
[frontend]
listen = "127.0.0.1:$MT_FE"
max_connections_per_ip = 1000
[transport]
listen = "127.0.0.1:$MT_TR"
max_connections_per_ip = 1000
# smtp-source relays to sink.test as a trusted sending MTA would (Transport trusts no address
# by default).
trusted = ["127.0.0.1"]
[mailbox]
listen = "127.0.0.1:$MT_MB"
[tls]
starttls = false
# smtp-source gives up at the first 452, and Postfix queues the whole run on disk: the marks are
# raised so both take all N messages (bench/memory.py measures back pressure itself).
[back_pressure]
queued_items_high = 100000
queued_items_low = 90000
queued_mb_high = 4096
queued_mb_low = 3072
[[send_connectors]]
name = "Sink"
address_spaces = ["SMTP:*;1"]
smart_hosts = ["$SINK"]
tls = "none"
max_concurrent_connections = 50
EOF
R="$ROOT/target/release"
# Not named agents.config: mta takes an agents.config beside mta.toml by default, and (b) and
# (c) run without agents.
cat > "$WORK/sample-agents.config" <<EOF
<configuration><mexRuntime><monitoring><agentExecution timeLimitInMilliseconds="90000" /></monitoring><agentList>
<agent name="Connection Filter" baseType="SmtpReceiveAgent" classFactory="Mta.Samples.ConnectionFilterFactory" assemblyPath="$R/libconnection_filter.so" enabled="true"><parameter name="deny" value="203.0.113.0/24" /></agent>
<agent name="Header Stamper" baseType="SmtpReceiveAgent" classFactory="Mta.Samples.HeaderStamperFactory" assemblyPath="$R/libheader_stamper.so" enabled="true" />
<agent name="Mobile Router" baseType="RoutingAgent" classFactory="Mta.Samples.RecipientRouterFactory" assemblyPath="$R/librecipient_router.so" enabled="true"><parameter name="pattern" value="*@mobile.example.test" /><parameter name="routing_domain" value="MOBILE" /></agent>
</agentList></mexRuntime></configuration>
EOF
sed "s|^\[tls\]|[agents]\ntransport = \"$WORK/sample-agents.config\"\n[tls]|" "$WORK/mta.toml" > "$WORK/mta-agents.toml"

start_mta() { # config roles
    rm -rf "$WORK/mta-data"
    "$MTA" --config "$1" run --roles "$2" > "$WORK/mta.log" 2>&1 &
    MTA_PID=$!
    for _ in $(seq 100); do grep -q "mta running" "$WORK/mta.log" 2>/dev/null && return; sleep 0.1; done
    echo "mta did not start"; cat "$WORK/mta.log"; exit 1
}
expect_agents() { # N: the Transport pipeline mta started with has N agents
    grep -q "Agent pipeline loaded. service=transport generation=[0-9]* agents=$1\b" "$WORK/mta.log" \
        || { echo "mta's Transport pipeline is not the $1 agents this case needs:"; grep "Agent pipeline" "$WORK/mta.log"; exit 1; }
}
stop_mta() {
    PEAK=$(grep VmHWM "/proc/$MTA_PID/status" | awk '{print $2}')
    kill "$MTA_PID"; wait "$MTA_PID" 2>/dev/null || true; MTA_PID=
}
maildir_count() { ls "$WORK/mta-data/mailboxes/alice/new" 2>/dev/null | wc -l; }

now() { date +%s.%N; }
# run NAME PORT RCPT DONE_FN: prints "accepted_s e2e_s"
run() {
    local port=$2 rcpt=$3 done_fn=$4 base t0 t1 t2
    base=$($done_fn)
    t0=$(now)
    smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -f bench@example.net -t "$rcpt" "127.0.0.1:$port"
    t1=$(now)
    for _ in $(seq 6000); do
        [ "$(( $($done_fn) - base ))" -ge "$N" ] && break
        sleep 0.05
    done
    t2=$(now)
    echo "$(echo "$t1 - $t0" | bc) $(echo "$t2 - $t0" | bc)"
}

declare -A ACC E2E RSS
for round in $(seq "$ROUNDS"); do
    echo "round $round: (a) postfix"
    read -r a e < <(run a "$PF" to@sink.test sunk); ACC[a]+="$a "; E2E[a]+="$e "
    echo "round $round: (b) mta transport -> send connector"
    start_mta "$WORK/mta.toml" transport; expect_agents 0
    read -r a e < <(run b "$MT_TR" to@sink.test sunk); ACC[b]+="$a "; E2E[b]+="$e "
    stop_mta; RSS[b]=$PEAK
    echo "round $round: (c) mta front end -> transport -> mailbox"
    start_mta "$WORK/mta.toml" frontend,transport,mailbox; expect_agents 0
    read -r a e < <(run c "$MT_FE" alice@example.test maildir_count); ACC[c]+="$a "; E2E[c]+="$e "
    stop_mta; RSS[c]=$PEAK
    echo "round $round: (d) (b) with sample agents"
    start_mta "$WORK/mta-agents.toml" transport; expect_agents 3
    read -r a e < <(run d "$MT_TR" to@sink.test sunk); ACC[d]+="$a "; E2E[d]+="$e "
    stop_mta; RSS[d]=$PEAK
done

best() { tr ' ' '\n' <<< "$1" | grep . | sort -g | head -1; }
rate() { echo "scale=0; $N / $1" | bc; }
pa=$(best "${E2E[a]}")
printf '\n%d messages of %d bytes, %d sessions, best of %d rounds\n' "$N" "$SIZE" "$SESSIONS" "$ROUNDS"
printf '%-44s %12s %12s %10s %12s\n' "system" "accepted/s" "end-to-end/s" "vs Postfix" "peak RSS KB"
for k in a b c d; do
    case $k in
        a) name="(a) Postfix -> smtp-sink";;
        b) name="(b) mta Transport -> Send connector -> sink";;
        c) name="(c) mta Front End -> Transport -> Maildir";;
        d) name="(d) (b) with sample agents";;
    esac
    acc=$(best "${ACC[$k]}"); e2e=$(best "${E2E[$k]}")
    printf '%-44s %12s %12s %9sx %12s\n' "$name" "$(rate "$acc")" "$(rate "$e2e")" \
        "$(echo "scale=2; $pa / $e2e" | bc)" "${RSS[$k]:--}"
done
