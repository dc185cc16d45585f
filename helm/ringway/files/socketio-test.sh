# The `helm test` check (templates/tests/socketio-test.yaml): a Socket.IO
# client in POSIX sh and curl, over Engine.IO v4 long-polling.
#   RINGWAY_URL      http://HOST:PORT of the client Service
#   RINGWAY_PATH     the Socket.IO path (gateway.config.path)
#   RINGWAY_NSP      the namespace to connect to (the first of
#                    gateway.config.namespaces)
#   RINGWAY_ECHO     "true": connect and expect the echo application to send
#                    the "echo" event back; otherwise stop after the handshake
#   RINGWAY_TIMEOUT  seconds for the whole check
# Each request may land on any gateway (the session is forwarded to its
# owner), so with several gateways this exercises the cluster too.
set -eu

base=${RINGWAY_URL%/}
poll="$base${RINGWAY_PATH:-/socket.io/}?EIO=4&transport=polling"
timeout=${RINGWAY_TIMEOUT:-60}
deadline=$(( $(date +%s) + timeout ))
rs=$(printf '\036')

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

left() {
  echo $(( deadline - $(date +%s) ))
}

# get URL [MAX_SECONDS]: prints the body of a GET; fails on an HTTP error.
get() {
  curl -sS --fail-with-body --max-time "${2:-10}" "$1"
}

# post URL BODY: fails unless the answer is "ok".
post() {
  answer=$(curl -sS --fail-with-body --max-time 10 \
    -H 'Content-Type: text/plain;charset=UTF-8' --data-binary "$2" "$1") \
    || fail "POST $2: $answer"
  [ "$answer" = ok ] || fail "POST $2: unexpected answer: $answer"
}

# 1. Readiness through the Service (retried: pods may still be joining).
echo "GET $base/readyz"
ready=""
until ready=$(get "$base/readyz" 5) && [ "$ready" = ready ]; do
  [ "$(left)" -gt 0 ] || fail "/readyz never answered \"ready\" (last: ${ready:-no answer})"
  sleep 2
done
echo "  $ready"

# 2. The Engine.IO handshake: 0{"sid":...,"pingInterval":...}.
echo "GET $poll"
open=$(get "$poll") || fail "handshake: $open"
case $open in
  "0{"*) ;;
  *) fail "handshake: expected an OPEN packet, got: $open" ;;
esac
sid=$(printf '%s' "$open" | sed -n 's/.*"sid":"\([^"]*\)".*/\1/p')
[ -n "$sid" ] || fail "handshake: no sid in $open"
interval=$(printf '%s' "$open" | sed -n 's/.*"pingInterval":\([0-9]*\).*/\1/p')
poll_max=$(( ${interval:-25000} / 1000 + 10 ))
url="$poll&sid=$sid"
echo "  session $sid"

if [ "${RINGWAY_ECHO:-false}" != true ]; then
  post "$url" 1
  echo "PASS: /readyz and an Engine.IO handshake (no echo: not the echo application)"
  exit 0
fi

# 3. CONNECT to the namespace, emit "echo", wait for it to come back.
nsp=${RINGWAY_NSP:-/}
if [ "$nsp" = / ]; then prefix=""; else prefix="$nsp,"; fi

# wait_for PREFIX WHAT: long-polls until a packet starts with PREFIX (a
# literal string) and leaves it in $packet; answers pings; fails on a
# close, a refused CONNECT or the deadline.
wait_for() {
  want=$1
  what=$2
  while [ "$(left)" -gt 0 ]; do
    body=$(get "$url" "$poll_max") || fail "poll: $body"
    saved_ifs=$IFS
    IFS=$rs
    set -f
    # Split the payload into its packets (separated by 0x1e).
    # shellcheck disable=SC2086
    set -- $body
    set +f
    IFS=$saved_ifs
    for packet in "$@"; do
      echo "  <- $packet"
      case $packet in
        "$want"*) return 0 ;;
        2) post "$url" 3 ;;
        1) fail "the server closed the session while waiting for $what" ;;
        "44$prefix"*) fail "CONNECT refused: $packet" ;;
      esac
    done
  done
  fail "no $what within $timeout s"
}

echo "POST 40$prefix"
post "$url" "40$prefix"
wait_for "40$prefix{" "the CONNECT answer"

token="helm-test-$(date +%s)-$$"
emit="42$prefix[\"echo\",\"$token\""
echo "POST $emit]"
post "$url" "$emit]"
wait_for "$emit" "the echo"
rest=${packet#"$emit"}
case $rest in
  "]") echo "  echo received" ;;
  ,*"]")
    offset=${rest#,}
    echo "  echo received, with its recovery offset ${offset%]}"
    ;;
  *) fail "unexpected echo: $packet" ;;
esac

post "$url" 1
echo "PASS: /readyz, a Socket.IO session on namespace $nsp and an echo"
