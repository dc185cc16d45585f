#!/usr/bin/env bash
# Soak benchmark: a local cluster under steady churn for a long time, one
# node restarted midway. Do memory and descriptors stay flat, and does
# every client error come from the restart?
#
#   loadtest/scripts/bench-soak.sh [--duration S] [--sessions N] [--churn R]
#                                  [--connect-rate R] [--polling-fraction F]
#                                  [--echo-fraction F] [--echo-every S]
#                                  [--room-fraction F] [--rooms N] [--publish-rate R]
#                                  [--sample-every S] [--warmup S]
#                                  [--restart-at S] [--restart-node I]
#                                  [--restart-signal KILL|TERM] [--no-restart]
#                                  [--restart-grace S] [--restart-exclude S]
#                                  [--tolerance PCT] [--nodes N] [--quick]
#                                  [--debug | --bin-dir DIR] [--out DIR]
#                                  [-- GATEWAY_ARGS...]
#   loadtest/scripts/bench-soak.sh --summary-only --out DIR [--warmup S] [--tolerance PCT]
#                                  [--restart-grace S] [--restart-exclude S]
#
# Starts loadtest/scripts/cluster.sh (redis, coordinator, --nodes (3)
# gateways, nginx round robin; it makes the cluster secret), then
# `ringway-loadtest soak` through nginx: --sessions (5000) held, --churn
# (100) of them a second closed and replaced by new ones, for --duration
# (1800) seconds after the ramp (--connect-rate, 500/s); --polling-fraction
# (0.1) of the sessions on long-polling (non-sticky through nginx), the
# rest on WebSocket; --echo-fraction (0.2) of them emitting `echo` every
# --echo-every (5) s; --room-fraction (0.2) in --rooms (10) rooms, into
# which a publisher broadcasts --publish-rate (10) messages a second.
# Sessions that drop reconnect (through nginx).
#
# At --restart-at seconds (default: the middle of the run) gateway
# --restart-node (2) gets --restart-signal (KILL; TERM waits up to 30 s
# for its drain) and is started again at once with the same flags, node
# id, and ports (nginx knows them). It joins the view once the lease of
# its earlier process lapsed (~1.5-5 s; it retries by itself); its clients
# reconnect through nginx meanwhile. --no-restart: none.
#
# Every --sample-every (10) seconds, into DIR/samples.csv: each gateway's
# pid, RSS (/proc/PID/status VmRSS, KiB), open descriptors (/proc/PID/fd)
# and sessions (its /metrics `ringway_sessions`, all transports), the
# coordinator's RSS, Redis `used_memory` (INFO memory) and key count, the
# load client's RSS, descriptors, held sessions, errors and drops. The
# client's own counter lines (cumulative, by kind) go to
# DIR/client.jsonl, its final report is the last line there.
#
# The verdict, in DIR/summary.md (printed at the end), covers the
# window after the warm-up (--warmup S, default 20% of the run) up to the
# end of the churn, without the restart (from the kill until
# --restart-exclude (300) s after the node is back in the view: its
# clients moved to the other nodes and come back slowly, the states of
# its sessions linger in Redis until they expire):
# - flat: for each series, the mean of its last fifth against the mean of
#   its first fifth (drift), and its maximum against its mean (peak), both
#   within --tolerance (5) percent. Series: each gateway's RSS and
#   descriptors, before and after the restart apart (the restarted node
#   is two processes; the others took over its clients for a while, and
#   the RSS that took stays with the allocator: the step across the
#   restart is shown, not judged), the gateways' descriptors summed, the
#   coordinator's RSS, Redis used_memory. A gateway's descriptors follow
#   its share of the sessions, which wanders under random churn through
#   round robin: they are judged by the part the node's sessions do not
#   explain (descriptors - sessions: its drift within the tolerance of the
#   descriptors, or 10, whichever is more); the sum is judged as it is.
# - errors: the client's errors, by kind and by --sample-every window (and
#   deliveries missed or out of order while connected). A window that
#   overlaps the restart (from the kill until --restart-grace (30) s after
#   the node is back in the view) explains its errors; any error in
#   another window fails the run.
# Exit status: 0 flat and no unexplained error, 1 otherwise, 2 when the
# run itself could not be made. `--summary-only --out DIR` judges an
# earlier run's files again (with other --warmup, --tolerance,
# --restart-grace or --restart-exclude if given).
#
# --quick: 2 minutes, 500 sessions, 10/s churn, samples every 4 s, a
# 40 s warm-up and 30 s left out after the restart, the gateways with a
# 20 s recovery window and a 10 s registry TTL (so that Redis settles
# within the warm-up): for trying the script more than for a verdict.
# DIR: --out, default target/bench-soak/<time>; it keeps the cluster's
# logs (cluster/). The binaries: target/release (built here; --debug:
# target/debug, --bin-dir DIR: DIR, not built). RUST_LOG (default warn)
# sets the gateways' log level; arguments after `--` go to every gateway.
#
# The gateways get --handshake-rate-per-ip 0 --max-sessions-per-ip 0:
# through nginx every client comes from nginx's address, 127.0.0.1, so the
# per-address limits (1,000 sessions, 20 handshakes a second) would refuse
# this load, and they are not what a soak measures. (The load client binds
# 127.0.0.1..16 as source addresses, which only nginx sees.)
#
# Needs redis-server, redis-cli, nginx, curl and python3.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# shellcheck source=lib/common.sh
source "$root/loadtest/scripts/lib/common.sh"

duration=1800
sessions=5000
churn=100
connect_rate=500
polling_fraction=0.1
echo_fraction=0.2
echo_every=5
room_fraction=0.2
rooms=10
publish_rate=10
sample_every=10
warmup=""
restart_at=""
restart_node=2
restart_signal=KILL
restart=1
restart_grace=30
restart_exclude=300
tolerance=5
nodes=3
bindir="$root/target/release"
bin_args=()
build=1
out=""
gateway_args=()
quick=0
summary_only=0
given=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --sessions) sessions=$2; shift 2 ;;
    --churn) churn=$2; shift 2 ;;
    --connect-rate) connect_rate=$2; shift 2 ;;
    --polling-fraction) polling_fraction=$2; shift 2 ;;
    --echo-fraction) echo_fraction=$2; shift 2 ;;
    --echo-every) echo_every=$2; shift 2 ;;
    --room-fraction) room_fraction=$2; shift 2 ;;
    --rooms) rooms=$2; shift 2 ;;
    --publish-rate) publish_rate=$2; shift 2 ;;
    --sample-every) sample_every=$2; shift 2 ;;
    --warmup) warmup=$2; given="$given warmup"; shift 2 ;;
    --restart-at) restart_at=$2; shift 2 ;;
    --restart-node) restart_node=$2; shift 2 ;;
    --restart-signal) restart_signal=$2; shift 2 ;;
    --no-restart) restart=0; shift ;;
    --restart-grace) restart_grace=$2; given="$given restart_grace"; shift 2 ;;
    --restart-exclude) restart_exclude=$2; given="$given restart_exclude"; shift 2 ;;
    --tolerance) tolerance=$2; given="$given tolerance"; shift 2 ;;
    --summary-only) summary_only=1; shift ;;
    --nodes) nodes=$2; shift 2 ;;
    --quick)
      duration=120; sessions=500; churn=10; connect_rate=200; sample_every=4
      warmup=40; restart_exclude=30; quick=1; shift ;;
    --debug) bindir="$root/target/debug"; bin_args=(--debug); build=0; shift ;;
    --bin-dir) bindir=$2; bin_args=(--bin-dir "$2"); build=0; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --) shift; gateway_args=("$@"); break ;;
    -h | --help) usage ;;
    *) echo "bench-soak.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$restart_signal" in
  KILL | TERM) ;;
  *) echo "bench-soak.sh: --restart-signal KILL or TERM" >&2; exit 2 ;;
esac
if [ "$restart" = 1 ] && { [ "$restart_node" -lt 1 ] || [ "$restart_node" -gt "$nodes" ]; }; then
  echo "bench-soak.sh: --restart-node must be 1..$nodes" >&2
  exit 2
fi
for tool in redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-soak.sh: $tool not installed" >&2; exit 2; }
done

# The verdict from the files of a run in $out (params.env, samples.csv,
# client.jsonl, events.txt): prints summary.md; its status is the
# verdict's. Options given on the command line override the run's.
analyse() {
  # shellcheck disable=SC1091
  source "$out/params.env"
  local v
  for v in tolerance warmup restart_grace restart_exclude; do
    case " $given " in *" $v "*) ;; *) eval "$v=\$saved_$v" ;; esac
  done
  python3 - "$out" "$nodes" "$tolerance" "$warmup" "$restart_node" "$restart_grace" "$restart_exclude" \
    "$client_rc" "$duration" "$sample_every" <<'PY'
import csv, json, math, os, re, sys

(out, nodes, tol, warmup, rnode, grace, exclude, client_rc, duration, every) = sys.argv[1:11]
nodes, tol, warmup, rnode = int(nodes), float(tol), float(warmup), int(rnode)
grace, exclude, client_rc = float(grace), float(exclude), int(client_rc)
duration, every = float(duration), float(every)
lines = []
report = None
for raw in open(os.path.join(out, "client.jsonl")):
    raw = raw.strip()
    if not raw:
        continue
    try:
        d = json.loads(raw)
    except ValueError:
        continue
    if "soak_sample" in d:
        lines.append(d)
    elif "scenario" in d:
        report = d
rows = list(csv.DictReader(open(os.path.join(out, "samples.csv"))))
events = []
for raw in open(os.path.join(out, "events.txt")):
    t, text = raw.rstrip("\n").split(" ", 1)
    events.append((float(t), text))

def ev(pattern):
    return next((t for t, text in events if re.search(pattern, text)), None)

t_kill = ev(r"^SIG(KILL|TERM) to n")
t_back = ev(r"back in the view")
t_load = ev(r"^load started")
problems = []
if t_kill is not None and t_back is None:
    problems.append(f"n{rnode} did not come back in the view after its restart")
for t, text in events:
    if "is not running at the end" in text or "exited after its restart" in text:
        problems.append(text)
if report is None:
    problems.append(f"the load client ended without its report (exit status {client_rc}; see client.err)")

# The client's clock starts a few ms after ours; its lines carry the wall
# clock, which places them on ours.
unix0 = None
if rows:
    unix0 = float(rows[0]["unix"]) - float(rows[0]["t"])
def client_t(d):
    return d["unix"] - unix0 if unix0 is not None else d["t"]

ramp = report["figures"].get("ramp_s", 0.0) if report else 0.0
end = ramp + duration - 1.0
restart_until = (t_back if t_back is not None else end) + exclude
def excluded(t):
    return t_kill is not None and t_kill - every <= t <= restart_until

def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None

def mean(v):
    return sum(v) / len(v)

# The window after the warm-up, without the restart's.
window = [r for r in rows if warmup <= float(r["t"]) <= end and not excluded(float(r["t"]))]

def column(name, rs=None):
    return [v for v in (num(r[name]) for r in (window if rs is None else rs)) if v is not None]

# Each series: (name, values, residuals). A gateway's samples before and
# after the restart are two series: the restarted node's are two
# processes, and the others took over its clients for a while, a step in
# RSS that the allocator keeps (shown apart, below). A node's descriptors
# are judged by the part its sessions do not explain (descriptors -
# sessions, its drift within the tolerance of the descriptors), as its
# share of the sessions wanders.
series = []
before = [r for r in window if t_kill is None or float(r["t"]) < t_kill]
after = [r for r in window if t_kill is not None and float(r["t"]) > restart_until]
steps = []
for i in range(1, nodes + 1):
    parts = [("", window)]
    if t_kill is not None:
        parts = [(" before the restart", before), (" after the restart", after)]
        b, a = column(f"n{i}_rss_kb", before), column(f"n{i}_rss_kb", after)
        sb, sa = column(f"n{i}_sessions", before), column(f"n{i}_sessions", after)
        if b and a and sb and sa:
            kb, ka = max(1, len(b) // 5), max(1, len(a) // 5)
            last_b, first_a = mean(b[-kb:]), mean(a[:ka])
            steps.append(f"| n{i}{' (restarted)' if i == rnode else ''} | {last_b:,.0f} | {first_a:,.0f} | "
                         f"{(first_a - last_b) / last_b * 100:+.1f}% | {mean(sb):,.0f} | {mean(sa):,.0f} |")
    for label, rs in parts:
        series.append((f"n{i} RSS (KiB){label}", column(f"n{i}_rss_kb", rs), None))
        both = [(num(r[f"n{i}_fds"]), num(r[f"n{i}_sessions"])) for r in rs]
        both = [(f, s) for f, s in both if f is not None and s is not None]
        series.append((f"n{i} descriptors{label}", [f for f, _ in both], [f - s for f, s in both]))
sums = []
for r in window:
    vals = [num(r[f"n{i}_fds"]) for i in range(1, nodes + 1)]
    if all(v is not None for v in vals):
        sums.append(sum(vals))
series.append(("gateways' descriptors, summed", sums, None))
series.append(("coordinator RSS (KiB)", column("coord_rss_kb"), None))
series.append(("Redis used_memory (bytes)", column("redis_used_memory"), None))

flat_rows = []
not_flat = []
for name, vals, residual in series:
    if len(vals) < 4:
        flat_rows.append(f"| {name} | {len(vals)} | - | - | - | - | - | too few samples |")
        problems.append(f"{name}: too few samples to judge ({len(vals)})")
        continue
    k = max(1, len(vals) // 5)
    first, last, m = mean(vals[:k]), mean(vals[-k:]), mean(vals)
    drift = (last - first) / first * 100 if first else math.inf
    peak = (max(vals) - m) / m * 100 if m else math.inf
    if residual is None:
        ok = abs(drift) <= tol and peak <= tol
        judged = f"{drift:+.1f}% | {max(vals):,.0f} | {peak:+.1f}%"
    else:
        # Descriptors beyond sessions: first and last fifth, against the
        # descriptors' mean.
        # (or 10 descriptors, whichever is more: small runs).
        delta = mean(residual[-k:]) - mean(residual[:k])
        moved = delta / m * 100 if m else math.inf
        ok = abs(delta) <= max(m * tol / 100, 10)
        judged = (f"{drift:+.1f}% (beyond sessions: {mean(residual[:k]):,.0f} -> "
                  f"{mean(residual[-k:]):,.0f}, {moved:+.1f}%) | {max(vals):,.0f} | {peak:+.1f}% (info)")
    if not ok:
        not_flat.append(name)
    flat_rows.append(f"| {name} | {len(vals)} | {first:,.0f} | {last:,.0f} | {judged} | "
                     f"{'flat' if ok else 'NOT FLAT'} |")

# Errors by window: the deltas between consecutive counter lines.
def restart_window(a, b):
    if t_kill is None:
        return False
    until = (t_back if t_back is not None else math.inf) + grace
    return b >= t_kill and a <= until

err_rows = []
unexplained = 0
explained = 0
prev = {"errors": {}, "missed": 0, "out_of_order": 0}
prev_t = 0.0
for d in lines:
    t = client_t(d)
    kinds = dict(d["errors"])
    kinds["missed (deliveries)"] = d["missed"]
    kinds["out_of_order (deliveries)"] = d["out_of_order"]
    before = dict(prev["errors"])
    before["missed (deliveries)"] = prev["missed"]
    before["out_of_order (deliveries)"] = prev["out_of_order"]
    in_restart = restart_window(prev_t, t)
    for kind, n in sorted(kinds.items()):
        delta = n - before.get(kind, 0)
        if delta > 0:
            if in_restart:
                explained += delta
            else:
                unexplained += delta
            err_rows.append(f"| {prev_t:.0f}-{t:.0f} | {d['phase']} | {kind} | {delta} | "
                            f"{'yes' if in_restart else 'NO'} |")
    prev, prev_t = d, t

# The summary.
p = report["params"] if report else {}
fig = report["figures"] if report else {}
md = []
md.append(f"# Soak: {nodes} nodes, {p.get('sessions', '?')} sessions, churn {p.get('churn', '?')}/s, "
          f"{duration:.0f} s after a {ramp:.0f} s ramp\n")
if report:
    polling = int(fig.get("polling_sessions", 0))
    md.append(f"Through nginx (round robin): {int(p['sessions']) - polling} WebSocket and {polling} "
              f"long-polling sessions; {p['echo_fraction']:.0%} echoing every {p['echo_every']} s, "
              f"{p['room_fraction']:.0%} in {p['rooms']} rooms with {p['publish_rate']} broadcasts/s. "
              f"Warm-up {warmup:.0f} s; tolerance {tol:g}%.\n")
md.append("Events (s from the start of the load):\n")
for t, text in events:
    md.append(f"- {t:.1f}: {text}")
md.append("")
if report:
    md.append("Client: " + ", ".join(f"{k} {fig[k]:,.0f}" for k in (
        "held_after_ramp", "held_at_end", "connects", "churned", "drops", "reconnects",
        "connect_failures", "echoes", "echo_timeouts", "broadcasts_sent", "deliveries",
        "missed", "out_of_order") if k in fig and fig[k] is not None) + ".")
    drops = {k[6:]: v for k, v in fig.items() if k.startswith("drops_") and v}
    if drops:
        md.append("Drops by kind: " + ", ".join(f"{k} {v:.0f}" for k, v in drops.items()) + ".")
    lat = report.get("latency", {})
    md.append("Latency p50/p99 (ms): " + ", ".join(
        f"{k} {lat[k]['p50_us'] / 1e3:.1f}/{lat[k]['p99_us'] / 1e3:.1f}"
        for k in ("connect", "echo_rtt", "delivery") if k in lat and lat[k]["count"]) + ".")
    errs = report.get("errors", {})
    if errs:
        md.append("Client errors by kind (first message): " + "; ".join(
            f"{k} {v['count']} ({v['first']})" for k, v in errs.items()) + ".")
    md.append("")
sess = []
for i in range(1, nodes + 1):
    v = column(f"n{i}_sessions")
    if v:
        sess.append(f"n{i} {mean(v):,.0f} (min {min(v):,.0f}, max {max(v):,.0f})")
if sess:
    md.append("Sessions per node after the warm-up (mean): " + ", ".join(sess) + ".\n")
md.append(f"## Flat within {tol:g}% after the warm-up ({warmup:.0f}-{end:.0f} s)\n")
if t_kill is not None:
    md.append(f"Samples from {max(t_kill - every, warmup):.0f} s to {restart_until:.0f} s (the restart) are "
              f"left out; each gateway is judged before and after the restart apart (n{rnode}: two "
              "processes; the others held its clients for a while). A node's descriptors are judged "
              "by the part its sessions do not explain (descriptors - sessions); their raw drift and "
              "peak follow the node's share of the sessions.\n")
md.append("| series | samples | first fifth | last fifth | drift | max | peak over mean | verdict |")
md.append("|---|---|---|---|---|---|---|---|")
md.extend(flat_rows)
md.append("")
if steps:
    md.append("Across the restart (not judged): RSS (KiB) in the last fifth before it and the first "
              "fifth after the left-out window, and the mean sessions of each part:\n")
    md.append("| node | RSS before | RSS after | step | sessions before | sessions after |")
    md.append("|---|---|---|---|---|---|")
    md.extend(steps)
    md.append("")
md.append("## Client errors by window\n")
if err_rows:
    md.append("| window (s) | phase | kind | count | during the restart |")
    md.append("|---|---|---|---|---|")
    md.extend(err_rows)
else:
    md.append("None.")
md.append("")
md.append(f"Errors explained by the restart: {explained}; not explained: {unexplained}.\n")
if not_flat:
    problems.append("not flat: " + ", ".join(not_flat))
if unexplained:
    problems.append(f"{unexplained} client errors outside the restart window")
if problems:
    md.append("**Verdict: FAIL** - " + "; ".join(problems) + ".")
else:
    md.append("**Verdict: PASS** - flat, and every client error came with the restart.")
md.append(f"\nFiles: {out}/samples.csv (samples), client.jsonl (client counters), events.txt, cluster/ (logs).")
text = "\n".join(md) + "\n"
open(os.path.join(out, "summary.md"), "w").write(text)
print(text)
sys.exit(1 if problems else 0)
PY
}

if [ "$summary_only" = 1 ]; then
  if [ -z "$out" ] || [ ! -f "$out/params.env" ]; then
    echo "bench-soak.sh: --summary-only needs --out DIR of an earlier run" >&2
    exit 2
  fi
  analyse
  exit $?
fi

out=${out:-$root/target/bench-soak/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
if [ "$build" = 1 ]; then
  cargo build --release -q -p ringway-gateway -p ringway-coordinator -p ringway-loadtest
fi
lt="$bindir/ringway-loadtest"
[ -x "$lt" ] || { echo "bench-soak.sh: $lt missing" >&2; exit 2; }
cluster="$root/loadtest/scripts/cluster.sh"
export RINGWAY_CLUSTER_DIR="$out/cluster"
state="$RINGWAY_CLUSTER_DIR/state.env"

# The run's length (ramp included) and its schedule, in seconds from the
# start of the load.
read -r run_s warmup restart_at < <(python3 - "$sessions" "$connect_rate" "$duration" "$warmup" "$restart_at" <<'PY'
import sys
sessions, rate, duration = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
ramp = sessions / rate if rate > 0 else 0.0
run = ramp + duration
warmup = float(sys.argv[4]) if sys.argv[4] else 0.2 * run
restart_at = float(sys.argv[5]) if sys.argv[5] else run / 2
print(f"{run:.1f} {warmup:.1f} {restart_at:.1f}")
PY
)

client_pid=""
cleanup() {
  if [ -n "$client_pid" ] && alive "$client_pid"; then kill "$client_pid" 2>/dev/null || true; fi
  "$cluster" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "bench-soak: $nodes nodes, $sessions sessions, churn $churn/s, ${duration} s after the ramp" \
  "(run ~${run_s} s, warm-up ${warmup} s, restart of n$restart_node at ${restart_at} s:" \
  "$([ "$restart" = 1 ] && echo "SIG$restart_signal" || echo none)); output in $out" >&2
# --quick: Redis's steady state (the recovery log trimmed to its window,
# the states of closed sockets expired) within its short warm-up.
quick_args=()
[ "$quick" = 1 ] && quick_args=(--recovery-window 20000 --registry-ttl 10000)
if ! "$cluster" up --nodes "$nodes" "${bin_args[@]}" -- \
  --handshake-rate-per-ip 0 --max-sessions-per-ip 0 "${quick_args[@]}" "${gateway_args[@]}" \
  >"$out/cluster.out" 2>&1; then
  echo "bench-soak.sh: the cluster did not start:" >&2
  tail -20 "$out/cluster.out" >&2
  exit 2
fi
# shellcheck disable=SC1090
source "$state"

# Per node: pid, URL, gRPC and API addresses (the restart changes the pid).
declare -a pids urls grpcs apis
for i in $(seq "$nodes"); do
  v="NODE${i}_PID"; pids[i]=${!v}
  v="NODE${i}_URL"; urls[i]=${!v}
  v="NODE${i}_GRPC"; grpcs[i]=${!v}
  v="NODE${i}_API"; apis[i]=${!v:-}
done

now_ms() { date +%s%3N; }

# The members of the view: "node_id state incarnation" per line.
view() {
  redis-cli -p "$REDIS_PORT" GET ringway:membership 2>/dev/null | python3 -c '
import json, sys
raw = sys.stdin.read().strip()
for m in (json.loads(raw).get("members", []) if raw else []):
    print(m["node_id"], m.get("state"), m.get("incarnation"))
' 2>/dev/null || true
}

proc_alive() { # a zombie is not alive
  [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
fd_count() { local n; n=$(ls "/proc/$1/fd" 2>/dev/null | wc -l) && [ "$n" -gt 0 ] && echo "$n" || true; }
node_sessions() {
  curl -s --max-time 2 "$1/metrics" 2>/dev/null |
    awk '/^ringway_sessions[{ ]/ { s += $NF; n++ } END { if (n) printf "%d", s }' || true
}

# The CSV header and one row per sample.
header="t,unix"
for i in $(seq "$nodes"); do header="$header,n${i}_pid,n${i}_rss_kb,n${i}_fds,n${i}_sessions"; done
header="$header,coord_rss_kb,redis_used_memory,redis_keys,client_rss_kb,client_fds,client_held,client_errors,client_drops"
echo "$header" >"$out/samples.csv"

sample() { # sample T_MS
  local t_ms=$1 row i pid
  row="$(awk -v t="$t_ms" 'BEGIN { printf "%.3f", t / 1000 }'),$(awk -v t="$(now_ms)" 'BEGIN { printf "%.3f", t / 1000 }')"
  for i in $(seq "$nodes"); do
    pid=${pids[i]}
    if proc_alive "$pid"; then
      row="$row,$pid,$(rss_kb "$pid"),$(fd_count "$pid"),$(node_sessions "${urls[i]}")"
    else
      row="$row,$pid,,,"
    fi
  done
  local mem keys client_line
  mem=$(redis-cli -p "$REDIS_PORT" INFO memory 2>/dev/null | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }' || true)
  keys=$(redis-cli -p "$REDIS_PORT" DBSIZE 2>/dev/null | tr -d '\r' || true)
  row="$row,$(rss_kb "$COORD_PID"),$mem,$keys"
  if proc_alive "$client_pid"; then
    row="$row,$(rss_kb "$client_pid"),$(fd_count "$client_pid")"
  else
    row="$row,,"
  fi
  client_line=$(grep '"soak_sample"' "$out/client.jsonl" 2>/dev/null | tail -1 || true)
  row="$row,$(printf '%s' "$client_line" | python3 -c '
import json, sys
try:
    d = json.loads(sys.stdin.read())
    print("%d,%d,%d" % (d["held"], d["error_total"], d["drops"]))
except Exception:
    print(",,")
')"
  echo "$row" >>"$out/samples.csv"
}

event() { # event T_MS TEXT
  echo "$(awk -v t="$1" 'BEGIN { printf "%.3f", t / 1000 }') $2" >>"$out/events.txt"
  echo "bench-soak: $(awk -v t="$1" 'BEGIN { printf "%.1f", t / 1000 }') s: $2" >&2
}

# The restart: the victim's command line, with the addresses it bound in
# place of its `:0` listeners, started again once it is gone.
old_incarnation=""
restart_node_now() { # restart_node_now T0_MS
  local t0=$1 i=$restart_node pid=${pids[$restart_node]} args=() cmd=() k a
  if ! proc_alive "$pid" || ! mapfile -d '' args <"/proc/$pid/cmdline" 2>/dev/null; then
    event "$(($(now_ms) - t0))" "n$i (pid $pid) is not running at the restart: no restart"
    return 1
  fi
  old_incarnation=$(view | awk -v n="n$i" '$1 == n { print $3 }')
  k=0
  while [ "$k" -lt "${#args[@]}" ]; do
    a=${args[k]}
    case "$a" in
      --listen) cmd+=("$a" "${urls[i]#http://}"); k=$((k + 2)) ;;
      --grpc-listen) cmd+=("$a" "${grpcs[i]}"); k=$((k + 2)) ;;
      --api-listen) cmd+=("$a" "${apis[i]:-${args[k + 1]}}"); k=$((k + 2)) ;;
      *) cmd+=("$a"); k=$((k + 1)) ;;
    esac
  done
  kill "-$restart_signal" "$pid"
  event "$(($(now_ms) - t0))" "SIG$restart_signal to n$i (pid $pid)"
  local waited=0
  while proc_alive "$pid"; do
    sleep 0.05
    waited=$((waited + 1))
    if [ "$waited" -ge 600 ]; then
      kill -KILL "$pid" 2>/dev/null || true
      event "$(($(now_ms) - t0))" "n$i still running 30 s after SIG$restart_signal: SIGKILL"
      waited=0
    fi
  done
  event "$(($(now_ms) - t0))" "n$i (pid $pid) exited"
  RUST_LOG=${RUST_LOG:-warn} "${cmd[@]}" >>"$RINGWAY_CLUSTER_DIR/n$i.restart.log" 2>&1 &
  local new=$!
  pids[i]=$new
  # `cluster.sh down` stops the new process too.
  sed -i -e "s/^NODE${i}_PID=.*/NODE${i}_PID=$new/" -e "/^GATEWAY_PIDS=/s/\b$pid\b/$new/" "$state"
  event "$(($(now_ms) - t0))" "n$i started again (pid $new)"
}

# The load.
"$lt" soak --url "$NGINX_URL" --sessions "$sessions" --churn "$churn" --duration "$duration" \
  --connect-rate "$connect_rate" --polling-fraction "$polling_fraction" \
  --echo-fraction "$echo_fraction" --echo-every "$echo_every" \
  --room-fraction "$room_fraction" --rooms "$rooms" --publish-rate "$publish_rate" \
  --report-every "$sample_every" --json --quiet >"$out/client.jsonl" 2>"$out/client.err" &
client_pid=$!
t0=$(now_ms)
: >"$out/events.txt"
event 0 "load started (ringway-loadtest pid $client_pid)"

step_ms=$(awk -v s="$sample_every" 'BEGIN { printf "%d", s * 1000 }')
restart_ms=$(awk -v s="$restart_at" 'BEGIN { printf "%d", s * 1000 }')
next_ms=$step_ms
restarted=0
rejoined=0
while alive "$client_pid"; do
  sleep 0.2
  t=$(($(now_ms) - t0))
  if [ "$restart" = 1 ] && [ "$restarted" = 0 ] && [ "$t" -ge "$restart_ms" ]; then
    if restart_node_now "$t0"; then restarted=1; else restarted=2; fi
    t=$(($(now_ms) - t0))
  fi
  if [ "$restarted" = 1 ] && [ "$rejoined" = 0 ]; then
    if view | awk -v n="n$restart_node" -v old="$old_incarnation" \
      '$1 == n && $2 == "active" && $3 != old { found = 1 } END { exit !found }'; then
      rejoined=1
      event "$t" "n$restart_node back in the view"
    elif ! proc_alive "${pids[$restart_node]}"; then
      event "$t" "n$restart_node exited after its restart (see $RINGWAY_CLUSTER_DIR/n$restart_node.restart.log)"
      rejoined=2
    fi
  fi
  if [ "$t" -ge "$next_ms" ]; then
    sample "$t"
    next_ms=$((next_ms + step_ms))
  fi
done
client_rc=0
wait "$client_pid" || client_rc=$?
client_pid=""
event "$(($(now_ms) - t0))" "load ended (exit status $client_rc)"
if [ "$restarted" = 1 ] && [ "$rejoined" = 0 ]; then
  event "$(($(now_ms) - t0))" "n$restart_node never came back in the view"
fi
# Gateways that died on their own.
for i in $(seq "$nodes"); do
  proc_alive "${pids[i]}" || event "$(($(now_ms) - t0))" "n$i (pid ${pids[i]}) is not running at the end"
done
"$cluster" down >/dev/null 2>&1 || true

cat >"$out/params.env" <<EOF
nodes=$nodes
duration=$duration
sample_every=$sample_every
restart_node=$restart_node
client_rc=$client_rc
saved_tolerance=$tolerance
saved_warmup=$warmup
saved_restart_grace=$restart_grace
saved_restart_exclude=$restart_exclude
EOF
given="tolerance warmup restart_grace restart_exclude"
set +e
analyse
exit $?
