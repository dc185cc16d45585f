#!/usr/bin/env bash
# Fixed sleeps in tests (issue 16): tests wait on conditions the server
# reports (ringway_testkit::eventually), not on delays. The few sleeps
# left are ones no condition can replace (time passing is what is tested,
# a negative check, an order no server reports); each carries a
# `// fixed: <why>` comment on one of the three lines above it. Lists
# them; fails when one has no reason or when there are more than MAX.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX=20

# Test code: the integration test folders, and the #[cfg(test)] part of
# every source file (from its first #[cfg(test)] on).
files=$(find gateway/tests coordinator/tests loadtest/tests examples/*/tests \
  -name '*.rs' -not -path '*/node_modules/*' 2>/dev/null || true)
# Unit tests kept in a file of their own (`#[cfg(test)] mod tests;`).
files="$files
$(find gateway/*/src -name tests.rs 2>/dev/null || true)"
src_files=$(grep -rl --include='*.rs' '#\[cfg(test)\]' gateway/src gateway/engineio/src \
  gateway/socketio/src gateway/socketio-codec/src gateway/ring/src gateway/cluster/src coordinator/src loadtest/src \
  telemetry/src proto/src 2>/dev/null || true)

report() { # file, first line to look at
  awk -v from="$2" -v file="$1" '
    NR >= from && /sleep\(/ {
      reason = ""
      for (i = 1; i <= 3; i++) if (prev[i] ~ /\/\/ fixed:/) reason = "yes"
      printf "%s:%d:%s:%s\n", file, NR, (reason ? "ok" : "NO REASON"), $0
    }
    { prev[3] = prev[2]; prev[2] = prev[1]; prev[1] = $0 }
  ' "$1"
}

out=""
for f in $files; do out+="$(report "$f" 1)"$'\n'; done
for f in $src_files; do
  first=$(grep -n '#\[cfg(test)\]' "$f" | head -1 | cut -d: -f1)
  out+="$(report "$f" "$first")"$'\n'
done
out="$(printf '%s' "$out" | sed '/^$/d')"
count=$(printf '%s' "$out" | grep -c . || true)
printf '%s\n' "$out" | sed 's/^/  /'
echo "fixed sleeps in tests: $count (at most $MAX)"
status=0
if printf '%s' "$out" | grep -q ":NO REASON:"; then
  echo "a fixed sleep without a '// fixed:' reason: wait on a condition (ringway_testkit::eventually)" >&2
  status=1
fi
if [ "$count" -gt "$MAX" ]; then
  echo "more than $MAX fixed sleeps in tests" >&2
  status=1
fi
exit $status
