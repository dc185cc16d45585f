# The `helm test` check (templates/tests/socketio-test.yaml): a Socket.IO
# client in POSIX sh and curl, over Engine.IO v4 long-polling.
#   RINGWAY_URL      http://HOST:PORT of the client Service
#   RINGWAY_PATH     the Socket.IO path (gateway.config.path)
#   RINGWAY_NSP      the namespace to connect to (the first of
#                    gateway.config.namespaces)
#   RINGWAY_ECHO     "true": connect and expect the echo application to send
#                    the "echo" event back; otherwise stop after the handshake
#   RINGWAY_PARSER   "msgpack": the gateways speak socket.io-msgpack-parser
#                    (gateway.config.parser); default: the text parser
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
msgpack=false
[ "${RINGWAY_PARSER:-default}" = msgpack ] && msgpack=true
token="helm-test-$(date +%s)-$$"

# msgpack: each Socket.IO packet is one binary message, `b` + base64 in a
# polling payload. mp_str S writes S as a msgpack string (up to 255 bytes).
mp_str() {
  n=$(printf '%s' "$1" | wc -c | tr -d ' ')
  if [ "$n" -lt 32 ]; then
    # shellcheck disable=SC2059
    printf "\\$(printf '%03o' $((160 + n)))"
  else
    # shellcheck disable=SC2059
    printf "\\331\\$(printf '%03o' "$n")"
  fi
  printf '%s' "$1"
}

# b64: stdin as one base64 line.
b64() {
  base64 | tr -d '\n'
}

# show ITEM: a payload item as the log and the matching below see it;
# msgpack packets decoded, their bytes outside printable ASCII as dots.
show() {
  case $1 in
    b*) printf '%s' "${1#b}" | base64 -d 2>/dev/null | tr -c ' -~' '.' ;;
    *) printf '%s' "$1" ;;
  esac
}

# matches PACKET: whether it is the one awaited ($want: a literal prefix
# of a text packet, a shell pattern for a msgpack one).
matches() {
  if $msgpack; then
    # shellcheck disable=SC2254
    case $1 in $want) return 0 ;; esac
  else
    case $1 in "$want"*) return 0 ;; esac
  fi
  return 1
}

# refused PACKET: whether it is a CONNECT_ERROR.
refused() {
  if $msgpack; then
    case $1 in *type.*message*) return 0 ;; esac
  else
    case $1 in "44$prefix"*) return 0 ;; esac
  fi
  return 1
}

# wait_for WANT WHAT: long-polls until a packet (as `show` gives it) is
# the one awaited (see `matches`) and leaves it in $packet; answers pings;
# fails on a close, a refused CONNECT or the deadline.
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
    for item in "$@"; do
      packet=$(show "$item")
      echo "  <- $packet"
      matches "$packet" && return 0
      refused "$packet" && fail "CONNECT refused: $packet"
      case $packet in
        2) post "$url" 3 ;;
        1) fail "the server closed the session while waiting for $what" ;;
      esac
    done
  done
  fail "no $what within $timeout s"
}

if $msgpack; then
  # {type: 0, nsp}, then {type: 2, nsp, data: ["echo", token]}.
  echo "POST CONNECT $nsp (msgpack)"
  post "$url" "b$({ printf '\202\244type\000\243nsp'; mp_str "$nsp"; } | b64)"
  wait_for "*type.*sid*" "the CONNECT answer"
  echo "POST EVENT echo $token (msgpack)"
  post "$url" "b$({ printf '\203\244type\002\243nsp'; mp_str "$nsp"; printf '\244data\222'; mp_str echo; mp_str "$token"; } | b64)"
  wait_for "*echo?$token*" "the echo"
  case $packet in
    *"$token"?[0-9]*-[0-9]*) echo "  echo received (msgpack), with its recovery offset" ;;
    *) echo "  echo received (msgpack)" ;;
  esac
  post "$url" 1
  echo "PASS: /readyz, a Socket.IO session on namespace $nsp and an echo (msgpack)"
  exit 0
fi

echo "POST 40$prefix"
post "$url" "40$prefix"
wait_for "40$prefix{" "the CONNECT answer"

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
