#!/usr/bin/env bash
# Side-by-side benchmark of Tether against nginx, HAProxy and Consul's
# built-in connect proxy (issue 6), in one command. Method: shared/BENCH.md.
#
#   deploy/scripts/bench/run.sh            full run (~65 min here; prints its estimate)
#   deploy/scripts/bench/run.sh --quick    every system once, 5 s per point (a few minutes)
#
# Knobs (environment):
#   RUNS=3        runs of the whole matrix (median and min..max reported)
#   SECONDS=30    recorded seconds per fixed-rate point (DURATION= works too)
#   BODY=1k|64k   answer size of the backend (or a byte count)
#   RATES="1000 4000"  PROTOCOLS="h1 h2"  CONNS=16  MAX_CONNS=64  MAX_SECONDS=10
#   SYSTEMS="tether tether-mtls haproxy"  only these (and direct, the baseline)
#   BENCH_NOTE="..."  a sentence added to BENCHMARKS.md's setup (e.g. what else ran)
#   OUT=DIR       where results go (default: docs/bench, BENCHMARKS.md at the
#                 repo root; with --quick: bench-results/quick, BENCHMARKS.md inside)
#
# What it does: builds tether-proxy and the examples (backend tether-sample,
# load generator tether-load, dev CA tether-pki), installs nginx and HAProxy
# from Debian if missing, builds Consul with install-consul.sh, and a
# matplotlib venv under ~/.cache/tether; then starts, all on loopback:
#
#   backend       tether-sample, 1 KiB (or BODY) answers, HTTP/1.1 + h2c   core 0
#   tether        client → web sidecar (outbound) → api sidecar (inbound) → backend
#   tether-mtls   the same with mTLS between the sidecars (TLS 1.3, P-256)
#   nginx         client → nginx A → nginx B → backend (upstream keepalive)
#   haproxy       client → haproxy A → haproxy B → backend (http mode, reuse)
#   consul        client → consul connect proxy (client) ══mTLS══ consul connect proxy (backend) → backend
#   caddy         client → caddy A (reverse_proxy) ══mTLS, HTTP/2══ caddy B (client certs required) → backend:
#                 the closest L7 equivalent of two sidecars with mTLS (see BENCHMARKS.md's framing)
#   *-1hop        client → one proxy → backend (tether: the api sidecar's outbound;
#                 nginx/haproxy: instance B directly). Not for consul (its proxies
#                 only carry mesh traffic; one hop would not be a mesh).
#
# Every proxy runs one worker thread (tether-proxy --worker-threads 1, nginx
# worker_processes 1, haproxy nbthread 1, consul and caddy GOMAXPROCS=1), pinned to
# core 1; the load generator, the backend and the Consul agent are pinned to
# core 0. All systems run the whole time; only one carries load at a time.
# The load is tether-load (examples/src/load.rs): open loop at fixed rates
# with latency from the intended send time, and a closed loop at MAX_CONNS
# connections for maximum throughput. Systems alternate within each run
# (A B C ... A B C ...), each run starting one system later than the last.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
cd "$root"

# ---- knobs --------------------------------------------------------------
quick=false
for arg in "$@"; do
  case $arg in
    --quick) quick=true ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "run.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
# SECONDS is also bash's own clock: take it only if it came from the environment.
env_secs=$(printenv SECONDS || true)
if $quick; then
  runs=${RUNS:-1}; secs=${env_secs:-${DURATION:-5}}; warm=1; max_secs=${MAX_SECONDS:-3}
  out=${OUT:-bench-results/quick}; report_md=$out/BENCHMARKS.md
else
  runs=${RUNS:-3}; secs=${env_secs:-${DURATION:-30}}; warm=2; max_secs=${MAX_SECONDS:-10}
  out=${OUT:-docs/bench}; report_md=${OUT:+$out/BENCHMARKS.md}; report_md=${report_md:-BENCHMARKS.md}
fi
case ${BODY:-1k} in
  1k | 1K) body=1024 ;;
  64k | 64K) body=65536 ;;
  *[!0-9]* | '') echo "run.sh: BODY must be 1k, 64k or a byte count" >&2; exit 2 ;;
  *) body=$BODY ;;
esac
rates=${RATES:-"1000 4000"}
protocols=${PROTOCOLS:-"h1 h2"}
conns=${CONNS:-16}
max_conns=${MAX_CONNS:-64}
all_systems="direct tether tether-mtls nginx haproxy consul caddy tether-1hop nginx-1hop haproxy-1hop"
# SYSTEMS= picks some (all are still started); `direct` is always measured: it is the baseline.
systems=(direct)
for s in ${SYSTEMS:-$all_systems}; do
  [[ " $all_systems " == *" $s "* ]] || { echo "run.sh: unknown system $s (known: $all_systems)" >&2; exit 2; }
  [ "$s" = direct ] || systems+=("$s")
done

n_sys=${#systems[@]}; n_rates=$(wc -w <<<"$rates"); n_protos=$(wc -w <<<"$protocols")
estimate=$(( runs * (n_sys * n_rates * n_protos * (secs + warm + 1) + n_sys * (max_secs + warm + 1)) + 120 ))
echo "== Tether side-by-side benchmark: $runs run(s), ${secs}s per point, rates [$rates], protocols [$protocols], body $body B"
echo "== estimated time: about $(( (estimate + 59) / 60 )) min (plus builds on a fresh machine)"
started=$(date +%s)

# ---- processes and cleanup -----------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/tether-bench.XXXXXX")
pids=()      # long-running processes we started
load_pid=    # the load generator of the point in progress, if any
cleanup() {
  local p
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do  # up to 5 s for a clean exit, then KILL
    local alive=false
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=true; done
    $alive || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM

pin0="taskset -c 0"; pin1="taskset -c 1"; pinned="load generator, backend and Consul agent on core 0; every proxy on core 1"
if [ "$(nproc)" -lt 2 ] || ! command -v taskset >/dev/null; then
  pin0=""; pin1=""; pinned="nothing pinned (fewer than 2 cores or no taskset)"
fi
echo "# exact commands of this run (ports on 127.0.0.1)" >"$work/commands.txt"

# start NAME PIN [ENV=VALUE...] CMD...: runs CMD in the background (logs in
# $work/NAME.log), remembers its pid in $last_pid and the command in commands.txt.
start() {
  local name=$1 pin=$2; shift 2
  local envs=()
  while [[ $1 == *=* && $1 != -* ]]; do envs+=("$1"); shift; done
  echo "$name: ${envs[*]} $pin $*" >>"$work/commands.txt"
  env "${envs[@]}" $pin "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  last_pid=$!
}

# wait_http LOG URL: polls until URL answers 200 with `Host: api` (30 s at
# most); shows $work/LOG.log if it never does.
wait_http() {
  local name=$1 url=$2 host=api
  for _ in $(seq 300); do
    curl -fsS -m 1 -o /dev/null -H "Host: $host" "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "run.sh: $name never answered at $url; its log:" >&2
  tail -n 30 "$work/$name.log" >&2 || true
  exit 1
}

# ---- builds and installs ---------------------------------------------------
uptime_before=$(uptime)
echo "== building tether-proxy and examples (release)"
cargo build --release --quiet -p tether-proxy -p tether-examples
bin=$root/target/release
# What was built, recorded now: the tree may change while the run goes on.
tether_rev="git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- 2>/dev/null || echo ' plus uncommitted changes'), built $(date -u '+%Y-%m-%d %H:%M UTC')"

if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  echo "== installing nginx and haproxy (Debian packages; run from our own configs, not as services)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx haproxy >/dev/null
fi
echo "== Consul (install-consul.sh: built once, cached)"
consul=$("$root/deploy/scripts/install-consul.sh")
echo "== Caddy (install-caddy.sh: built once, cached)"
caddy=$("$root/deploy/scripts/install-caddy.sh")

# Plotting: matplotlib in a venv of our own (PyPI), made once.
venv=${TETHER_CACHE:-$HOME/.cache/tether}/bench-venv
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
  echo "== making $venv with matplotlib"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check matplotlib
fi

# busy_pct SECONDS: how busy the whole machine is (all cores, % of their
# time), sampled from /proc/stat; run when none of our processes are, it
# measures the other work on the machine.
busy_pct() {
  local a b
  a=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
  sleep "$1"
  b=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f", (y[1] - x[1]) * 100 / (y[2] - x[2])}'
}
busy_before=$(busy_pct 5)
echo "== other work on the machine before the run: ${busy_before} % of all cores (5 s sample)"

# ---- the systems ---------------------------------------------------------------
backend=127.0.0.1:18190
start backend "$pin0" "$bin/tether-sample" --name backend --listen $backend --body-size "$body"
backend_pid=$last_pid
wait_http backend "http://$backend/"

# Tether: identities from a throwaway dev CA (ECDSA P-256).
"$bin/tether-pki" init --dir "$work/pki" >/dev/null
for svc in web api; do "$bin/tether-pki" issue --dir "$work/pki" --service $svc --out "$work/pki/$svc" >/dev/null; done

# tether_pair VARIANT PORT-BASE [TLS-ARGS...]: web and api sidecars, ports
#   base+0 web admin, +1 web outbound (client entry), +5 web inbound (unused)
#   base+2 api admin, +3 api inbound, +4 api outbound (1-hop entry: api → backend)
# Default policy (timeouts, retries with budget, p2c-ewma): what a user gets.
tether_pair() {
  local v=$1 base=$2; shift 2
  local tls=("$@")
  cat >"$work/tether-web-$v.yaml" <<YAML
services:
  api:
    endpoints: [ { address: "127.0.0.1:$((base + 3))" } ]
YAML
  cat >"$work/tether-api-$v.yaml" <<YAML
services:
  api:
    endpoints: [ { address: "$backend" } ]
YAML
  start "tether-api-$v" "$pin1" TETHER_LOG=warn "$bin/tether-proxy" --worker-threads 1 --service api \
    --snapshot "$work/tether-api-$v.yaml" --admin 127.0.0.1:$((base + 2)) --outbound 127.0.0.1:$((base + 4)) \
    --inbound 127.0.0.1:$((base + 3)) --app $backend "${tls[@]}"
  eval "pid_tether_api_${v}=$last_pid"
  [ ${#tls[@]} -gt 0 ] && tls=(--identity-dir "$work/pki/web" --trust-bundle "$work/pki/ca.pem")
  start "tether-web-$v" "$pin1" TETHER_LOG=warn "$bin/tether-proxy" --worker-threads 1 --service web \
    --snapshot "$work/tether-web-$v.yaml" --admin 127.0.0.1:$((base + 0)) --outbound 127.0.0.1:$((base + 1)) \
    --inbound 127.0.0.1:$((base + 5)) --app 127.0.0.1:9 "${tls[@]}"
  eval "pid_tether_web_${v}=$last_pid"
  "$bin/tether-proxy" wait-ready --admin 127.0.0.1:$((base + 0)) --timeout 30s
  "$bin/tether-proxy" wait-ready --admin 127.0.0.1:$((base + 2)) --timeout 30s
}
echo "== starting tether (plaintext and mTLS pairs)"
tether_pair plain 16100
tether_pair mtls 16110 --identity-dir "$work/pki/api" --trust-bundle "$work/pki/ca.pem"

# nginx INSTANCE H1-PORT H2-PORT UPSTREAM: one process (master_process off),
# one worker, upstream keep-alive, no access log, its own files in $work.
nginx_instance() {
  local name=$1 h1=$2 h2=$3 upstream=$4 dir=$work/$1
  mkdir -p "$dir/tmp"; chmod -R 777 "$dir"
  cat >"$dir/nginx.conf" <<CONF
# $name: generated by deploy/scripts/bench/run.sh
worker_processes 1;
master_process off;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream next { server $upstream; keepalive 128; keepalive_requests 1000000; keepalive_timeout 300s; }
  server {
    listen 127.0.0.1:$h1;
    listen 127.0.0.1:$h2 http2;
    location / {
      proxy_pass http://next;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
    }
  }
}
CONF
  start "$name" "$pin1" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
}
echo "== starting nginx (two instances, chained)"
nginx_instance nginx-b 16203 16204 $backend; pid_nginx_b=$last_pid
nginx_instance nginx-a 16201 16202 127.0.0.1:16203; pid_nginx_a=$last_pid

# haproxy INSTANCE H1-PORT H2-PORT UPSTREAM: http mode, one thread,
# keep-alive both sides, idle server connections reused for any request.
haproxy_instance() {
  local name=$1 h1=$2 h2=$3 upstream=$4 dir=$work/$1
  mkdir -p "$dir"
  cat >"$dir/haproxy.cfg" <<CONF
# $name: generated by deploy/scripts/bench/run.sh
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
frontend entry
  bind 127.0.0.1:$h1
  bind 127.0.0.1:$h2 proto h2
  default_backend next
backend next
  server next $upstream
CONF
  start "$name" "$pin1" haproxy -db -f "$dir/haproxy.cfg"
}
echo "== starting haproxy (two instances, chained)"
haproxy_instance haproxy-b 16403 16404 $backend; pid_haproxy_b=$last_pid
haproxy_instance haproxy-a 16401 16402 127.0.0.1:16403; pid_haproxy_a=$last_pid

# Consul: a dev agent on private loopback ports (not the tests' 18500), a
# `backend` service with a connect sidecar, a `client` service whose sidecar
# has an upstream to backend on 127.0.0.1:16301, and the built-in proxy for each.
echo "== starting consul (dev agent + two built-in connect proxies)"
chttp=18650
start consul-agent "$pin0" "$consul" agent -dev -bind=127.0.0.1 -client=127.0.0.1 -http-port=$chttp \
  -dns-port=-1 -grpc-port=-1 -grpc-tls-port=-1 -serf-lan-port=18651 -serf-wan-port=18652 -server-port=18653
consul_agent_pid=$last_pid
leader=
for _ in $(seq 120); do
  leader=$(curl -fsS -m 2 "http://127.0.0.1:$chttp/v1/status/leader" 2>/dev/null || true)
  [ -n "$leader" ] && [ "$leader" != '""' ] && break
  leader=; sleep 0.5
done
[ -n "$leader" ] || { tail -n 30 "$work/consul-agent.log" >&2; echo "run.sh: consul never elected a leader" >&2; exit 1; }
curl -fsS -X PUT "http://127.0.0.1:$chttp/v1/agent/service/register" -d @- <<JSON
{"ID": "backend", "Name": "backend", "Address": "127.0.0.1", "Port": ${backend##*:},
 "Connect": {"SidecarService": {"Port": 16311}}}
JSON
curl -fsS -X PUT "http://127.0.0.1:$chttp/v1/agent/service/register" -d @- <<JSON
{"ID": "client", "Name": "client", "Address": "127.0.0.1", "Port": 16399,
 "Connect": {"SidecarService": {"Port": 16312, "Proxy": {"Upstreams": [
   {"DestinationName": "backend", "LocalBindAddress": "127.0.0.1", "LocalBindPort": 16301}]}}}}
JSON
start consul-proxy-backend "$pin1" GOMAXPROCS=1 "$consul" connect proxy -sidecar-for backend \
  -http-addr=127.0.0.1:$chttp -log-level=warn
pid_consul_backend=$last_pid
start consul-proxy-client "$pin1" GOMAXPROCS=1 "$consul" connect proxy -sidecar-for client \
  -http-addr=127.0.0.1:$chttp -log-level=warn
pid_consul_client=$last_pid

# Caddy: A is the caller's side (plain HTTP/1.1 and h2c in, HTTP/2 over mTLS
# out, verifying B's certificate against the CA and the name api.mesh), B
# the callee's (TLS 1.3, a client certificate from the same CA required).
# Ordinary X.509 names, not SPIFFE IDs: Caddy checks a name, not a mesh
# identity. Certificates from openssl, P-256 like the mesh's.
echo "== starting caddy (two instances, mTLS between them)"
cpki=$work/caddy-pki; mkdir -p "$cpki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$cpki/ca-key.pem" -out "$cpki/ca.pem" 2>/dev/null
caddy_leaf() { # NAME SAN EKU
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$cpki/$1-key.pem" -out "$cpki/$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$2" "$3" >"$cpki/$1.ext"
  openssl x509 -req -in "$cpki/$1.csr" -CA "$cpki/ca.pem" -CAkey "$cpki/ca-key.pem" -CAcreateserial \
    -days 2 -extfile "$cpki/$1.ext" -out "$cpki/$1.pem" 2>/dev/null
}
caddy_leaf caddy-b "DNS:api.mesh,IP:127.0.0.1" serverAuth
caddy_leaf caddy-a "DNS:web.mesh" clientAuth
mkdir -p "$work/caddy-a" "$work/caddy-b"
cat >"$work/caddy-b/Caddyfile" <<CONF
{
	admin off
	auto_https off
	persist_config off
	servers {
		protocols h1 h2
	}
}
https://:16503 {
	tls $cpki/caddy-b.pem $cpki/caddy-b-key.pem {
		protocols tls1.3
		client_auth {
			mode require_and_verify
			trust_pool file $cpki/ca.pem
		}
	}
	reverse_proxy $backend
}
CONF
cat >"$work/caddy-a/Caddyfile" <<CONF
{
	admin off
	auto_https off
	persist_config off
	servers {
		protocols h1 h2c
	}
}
http://:16501 {
	reverse_proxy https://127.0.0.1:16503 {
		# B enforces Host = SNI (client auth on): the name its certificate carries.
		header_up Host api.mesh
		transport http {
			tls_trust_pool file $cpki/ca.pem
			tls_client_auth $cpki/caddy-a.pem $cpki/caddy-a-key.pem
			tls_server_name api.mesh
			versions 2
		}
	}
}
CONF
start caddy-b "$pin1" GOMAXPROCS=1 HOME="$work/caddy-b" XDG_DATA_HOME="$work/caddy-b" XDG_CONFIG_HOME="$work/caddy-b" \
  "$caddy" run --config "$work/caddy-b/Caddyfile" --adapter caddyfile
pid_caddy_b=$last_pid
start caddy-a "$pin1" GOMAXPROCS=1 HOME="$work/caddy-a" XDG_DATA_HOME="$work/caddy-a" XDG_CONFIG_HOME="$work/caddy-a" \
  "$caddy" run --config "$work/caddy-a/Caddyfile" --adapter caddyfile
pid_caddy_a=$last_pid

wait_http tether-web-plain "http://127.0.0.1:16101/"
wait_http tether-web-mtls "http://127.0.0.1:16111/"
wait_http tether-api-plain "http://127.0.0.1:16104/"
wait_http nginx-a "http://127.0.0.1:16201/"
wait_http haproxy-a "http://127.0.0.1:16401/"
wait_http consul-proxy-client "http://127.0.0.1:16301/"
wait_http caddy-a "http://127.0.0.1:16501/"

# Per system: HTTP/1.1 entry, h2c entry, the proxy processes (instance=pid).
declare -A entry_h1 entry_h2 procs
entry_h1[direct]=$backend;             entry_h2[direct]=$backend;             procs[direct]=""
entry_h1[tether]=127.0.0.1:16101;      entry_h2[tether]=127.0.0.1:16101;      procs[tether]="web=$pid_tether_web_plain api=$pid_tether_api_plain"
entry_h1[tether-mtls]=127.0.0.1:16111; entry_h2[tether-mtls]=127.0.0.1:16111; procs[tether-mtls]="web=$pid_tether_web_mtls api=$pid_tether_api_mtls"
entry_h1[nginx]=127.0.0.1:16201;       entry_h2[nginx]=127.0.0.1:16202;       procs[nginx]="a=$pid_nginx_a b=$pid_nginx_b"
entry_h1[haproxy]=127.0.0.1:16401;     entry_h2[haproxy]=127.0.0.1:16402;     procs[haproxy]="a=$pid_haproxy_a b=$pid_haproxy_b"
entry_h1[consul]=127.0.0.1:16301;      entry_h2[consul]=127.0.0.1:16301;      procs[consul]="client=$pid_consul_client backend=$pid_consul_backend"
entry_h1[caddy]=127.0.0.1:16501;       entry_h2[caddy]=127.0.0.1:16501;       procs[caddy]="a=$pid_caddy_a b=$pid_caddy_b"
entry_h1[tether-1hop]=127.0.0.1:16104; entry_h2[tether-1hop]=127.0.0.1:16104; procs[tether-1hop]="api=$pid_tether_api_plain"
entry_h1[nginx-1hop]=127.0.0.1:16203;  entry_h2[nginx-1hop]=127.0.0.1:16204;  procs[nginx-1hop]="b=$pid_nginx_b"
entry_h1[haproxy-1hop]=127.0.0.1:16403; entry_h2[haproxy-1hop]=127.0.0.1:16404; procs[haproxy-1hop]="b=$pid_haproxy_b"

rss() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# Idle memory: after a handful of requests over every entry, before any load.
raw=$work/raw; mkdir -p "$raw"
for s in "${systems[@]}"; do
  for _ in 1 2 3; do curl -fsS -o /dev/null -H "Host: api" "http://${entry_h1[$s]}/" || true; done
done
sleep 1
: >"$work/processes.txt"  # system instance pid idle_rss_kib
for s in "${systems[@]}"; do
  for ip in ${procs[$s]}; do echo "$s ${ip%%=*} ${ip##*=} $(rss "${ip##*=}" VmRSS)" >>"$work/processes.txt"; done
done

# point NAME SYSTEM PROTO RATE SECONDS [CONNS]: one load run (rate 0 = closed loop).
point() {
  local name=$1 s=$2 proto=$3 rate=$4 dur=$5 c=${6:-$conns}
  local addr pidargs=() h2=()
  if [ "$proto" = h2 ]; then addr=${entry_h2[$s]}; h2=(--http2); else addr=${entry_h1[$s]}; fi
  for ip in ${procs[$s]}; do pidargs+=(--pid "${ip##*=}"); done
  local cmd=("$bin/tether-load" --url "http://$addr/" --host api --rate "$rate" --connections "$c"
    --duration "${dur}s" --warmup "${warm}s" --timeout 5s "${h2[@]}" "${pidargs[@]}"
    --label "$s $proto $rate" --out "$raw/$name.json")
  [ -s "$work/load-command.txt" ] || echo "load (example): $pin0 ${cmd[*]}" >"$work/load-command.txt"
  # In the background and waited for, so that Ctrl-C acts at once (the trap
  # runs and stops it); `timeout` bounds it even if it hangs.
  timeout $((dur + warm + 30)) $pin0 "${cmd[@]}" 2>>"$work/load.log" &
  load_pid=$!
  if ! wait "$load_pid"; then
    echo "   $name: load generator failed (see the log)" >&2
    tail -n 2 "$work/load.log" >&2
  fi
  load_pid=
  tail -n 1 "$work/load.log" | sed "s/^/   $name: /"
}

# ---- the matrix -------------------------------------------------------------
echo "== warm-up: every system, ${warm}s at 500 rps each protocol"
for s in "${systems[@]}"; do
  for proto in $protocols; do point "warmup-$s-$proto" "$s" "$proto" 500 1 >/dev/null; done
done
rm -f "$raw"/warmup-*.json

for run in $(seq "$runs"); do
  # Rotate the order each run: run 2 starts with the second system, and so on.
  order=("${systems[@]:$(( (run - 1) % n_sys ))}" "${systems[@]:0:$(( (run - 1) % n_sys ))}")
  echo "== run $run/$runs (order: ${order[*]})"
  for proto in $protocols; do
    for rate in $rates; do
      for s in "${order[@]}"; do point "$s.$proto.$rate.$run" "$s" "$proto" "$rate" "$secs"; done
    done
  done
  for s in "${order[@]}"; do point "$s.h1.max.$run" "$s" h1 0 "$max_secs" "$max_conns"; done
done

# Peak memory over the whole benchmark (VmHWM), per proxy process.
: >"$work/peak.txt"
for s in "${systems[@]}"; do
  for ip in ${procs[$s]}; do echo "${ip##*=} $(rss "${ip##*=}" VmHWM) $(rss "${ip##*=}" VmRSS)" >>"$work/peak.txt"; done
done
uptime_after=$(uptime)
# Stop everything of ours, then sample the machine again for other work.
cleanup_keep_work() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup_keep_work
busy_after=$(busy_pct 5)
echo "== other work on the machine after the run: ${busy_after} % of all cores (5 s sample)"

# ---- versions, machine, report ---------------------------------------------------
{
  echo "tether-proxy: $("$bin/tether-proxy" --version) ($tether_rev)"
  echo "tether-load: tether-examples $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1) (examples/src/load.rs)"
  echo "rustc: $(rustc --version)"
  echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //') (Debian $(dpkg-query -W -f='${Version}' nginx 2>/dev/null || echo '?'))"
  echo "haproxy: $(haproxy -v | head -1 | sed 's/^HAProxy version //; s/ - https.*//') (Debian $(dpkg-query -W -f='${Version}' haproxy 2>/dev/null || echo '?'))"
  echo "consul: $("$consul" version | head -1) (built from the Go module by deploy/scripts/install-consul.sh)"
  echo "caddy: $("$caddy" version | head -1) (built from the Go module by deploy/scripts/install-caddy.sh)"
} >"$work/versions.txt"
{
  echo "nproc: $(nproc)"
  echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "kernel: $(uname -sr)"
  echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "load before: $uptime_before"
  echo "load after: $uptime_after"
  echo "other work before: ${busy_before} % of all cores (5 s, before our processes started)"
  echo "other work after: ${busy_after} % of all cores (5 s, after they stopped)"
} >"$work/machine.txt"

mkdir -p "$out/config"
cp "$work"/nginx-a/nginx.conf "$out/config/nginx-a.conf"; cp "$work"/nginx-b/nginx.conf "$out/config/nginx-b.conf"
cp "$work"/haproxy-a/haproxy.cfg "$out/config/haproxy-a.cfg"; cp "$work"/haproxy-b/haproxy.cfg "$out/config/haproxy-b.cfg"
cp "$work"/tether-*.yaml "$out/config/"
sed "s#$work#\$WORK#g" "$work/caddy-a/Caddyfile" >"$out/config/caddy-a.Caddyfile"
sed "s#$work#\$WORK#g" "$work/caddy-b/Caddyfile" >"$out/config/caddy-b.Caddyfile"
sed "s#$work#\$WORK#g; s#$root/##g" "$work/commands.txt" "$work/load-command.txt" >"$out/commands.txt"
cat >"$work/settings.json" <<JSON
{"runs": $runs, "seconds": $secs, "warmup_s": $warm, "max_seconds": $max_secs, "body_bytes": $body,
 "rates": [$(sed 's/ \+/, /g' <<<"$rates")], "protocols": [$(sed 's/\([a-z0-9]\+\)/"\1"/g; s/ \+/, /g' <<<"$protocols")],
 "connections": $conns, "max_connections": $max_conns, "quick": $quick, "pinned": "$pinned",
 "command": "deploy/scripts/bench/run.sh $*", "env": "RUNS=$runs SECONDS=$secs BODY=${BODY:-1k}",
 "clock_ticks": $(getconf CLK_TCK), "elapsed_s": $(( $(date +%s) - started ))}
JSON
"$venv/bin/python" "$here/report.py" --work "$work" --out "$out" --markdown "$report_md"
echo "== done in $(( ($(date +%s) - started) / 60 )) min: $report_md, $out/"
