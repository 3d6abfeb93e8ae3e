#!/usr/bin/env bash
# Consul catalog watch at scale (issue #16). Prints numbers.
#
# A real Consul dev agent with its DEFAULT limits (http_max_conns_per_client
# = 200) holding SERVICES services × INSTANCES instances (each with a
# passing check) over NODES nodes, registered with /v1/txn; tether-control
# watching it (core 1; Consul on core 0). Prints: time from start to
# /ready, the most TCP connections the control plane held to Consul
# (sampled every 20 ms from /proc), its RSS and CPU seconds (sync, 10 s
# idle, the changes), and the propagation latency of CHANGES single
# changes of two kinds, from the Consul API call returning to a long-poll
# of a probe service whose only upstream is the changed service answering
# with the new state:
#   - check: one instance's check goes critical (or passing again), which
#     moves only Consul's check index: the changed service is read;
#   - re-registration: one instance re-registered on another port, check
#     untouched, which moves only the service index: every service is read
#     again (a sweep).
#
# Usage: deploy/scripts/bench-consul-watch.sh
# Env: SERVICES=5000 INSTANCES=3 NODES=100 CHANGES=20 PROFILE=release|debug
#      KEEP_LOG=FILE (keep the control plane's log)
set -euo pipefail
cd "$(dirname "$0")/../.."
consul=$(deploy/scripts/install-consul.sh)
profile=${PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release --quiet -p tether-control
else
  cargo build --quiet -p tether-control
fi
bin=target/$profile
pin0="taskset -c 0"; pin1="taskset -c 1"
[ "$(nproc)" -ge 2 ] || { pin0=""; pin1=""; }
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT INT TERM

$pin0 "$consul" agent -dev -bind=127.0.0.1 -client=127.0.0.1 -http-port=18700 -dns-port=-1 -grpc-port=-1 \
  -grpc-tls-port=-1 -serf-lan-port=18701 -serf-wan-port=18702 -server-port=18703 -log-level=warn \
  >"$work/consul.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do
  leader=$(curl -fsS http://127.0.0.1:18700/v1/status/leader 2>/dev/null || true)
  [ -n "$leader" ] && [ "$leader" != '""' ] && break
  sleep 0.2
done

export SERVICES=${SERVICES:-5000} INSTANCES=${INSTANCES:-3} NODES=${NODES:-100} CHANGES=${CHANGES:-20}
export CONSUL=http://127.0.0.1:18700 CONTROL=http://127.0.0.1:18710 WORK=$work
export CONTROL_CMD="$pin1 $bin/tether-control serve --config $work/mesh.yaml --listen 127.0.0.1:18710"
echo "consul $("$consul" version | head -1), tether-control $profile build, $SERVICES services × $INSTANCES instances on $NODES nodes, default Consul limits"
python3 - <<'PY'
import json, os, shlex, subprocess, threading, time, urllib.parse, urllib.request

S, I, N, C = (int(os.environ[k]) for k in ("SERVICES", "INSTANCES", "NODES", "CHANGES"))
consul, control, work = os.environ["CONSUL"], os.environ["CONTROL"], os.environ["WORK"]
port = int(consul.rsplit(":", 1)[1])
name = lambda s: f"svc-{s:05d}"
node = lambda s, i: f"node-{(s * I + i) % N:03d}"
iid = lambda s, i: f"{name(s)}-{i}"
ipport = lambda s, i: 20000 + (s * I + i) % 40000

def req(method, url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(r, timeout=timeout) as resp:
        return resp.status, resp.read()

def svc_op(s, i, port):
    return {"Service": {"Verb": "set", "Node": node(s, i), "Service": {
        "ID": iid(s, i), "Service": name(s), "Address": "127.0.0.1", "Port": port}}}

def check_op(s, i, status):
    return {"Check": {"Verb": "set", "Check": {"Node": node(s, i), "CheckID": "chk:" + iid(s, i),
        "Name": "probe", "Status": status, "ServiceID": iid(s, i)}}}

t0 = time.time()
ops = [{"Node": {"Verb": "set", "Node": {"Node": f"node-{n:03d}", "Address": "127.0.0.1"}}} for n in range(N)]
for s in range(S):
    for i in range(I):
        ops += [svc_op(s, i, ipport(s, i)), check_op(s, i, "passing")]
for k in range(0, len(ops), 128):
    req("PUT", consul + "/v1/txn", ops[k:k + 128])
print(f"registered {S * I} instances of {S} services in {time.time() - t0:.1f} s")

# Probe services: each has one changed service as its only upstream, so its
# snapshot is small and a long-poll on it answers exactly on that change.
targets = [(k * 997 + 13) % S for k in range(C)]
with open(os.path.join(work, "mesh.yaml"), "w") as f:
    f.write(f'mesh:\n  catalog:\n    consul: {{ address: "{consul}" }}\nservices:\n')
    for k, s in enumerate(targets):
        f.write(f"  probe-{k}: {{ upstreams: [{name(s)}] }}\n")

def sockets(pid):
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            f = line.split()
            if int(f[2].rsplit(":", 1)[1], 16) == port and f[3] != "0A" and f[9] in inodes:
                count += 1
    return count

def ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])

def status_kib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

hz = os.sysconf("SC_CLK_TCK")
log = open(os.path.join(work, "control.log"), "w")
t0 = time.time()
# Debug on the catalog: each publish is logged, to split a change's time
# into the watcher's part and the snapshot computation's.
env = dict(os.environ, TETHER_LOG="info,tether_control::catalog=debug")
proc = subprocess.Popen(shlex.split(os.environ["CONTROL_CMD"]), stdout=log, stderr=log, env=env)
pid = proc.pid
peak = [0]
stop = threading.Event()
def sample():
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], sockets(pid))
        except OSError:
            pass
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
while True:
    try:
        if req("GET", control + "/ready", timeout=2)[0] == 200:
            break
    except Exception:
        pass
    if time.time() - t0 > 300:
        raise SystemExit("not ready within 300 s")
    time.sleep(0.02)
ready = time.time() - t0
sync_cpu = ticks(pid) / hz
print(f"ready in {ready:.2f} s; CPU {sync_cpu:.2f} s to get there; RSS {status_kib(pid, 'VmRSS') // 1024} MiB")

def snapshot(k, version, wait):
    status, body = req("GET", f"{control}/v1/snapshot/probe-{k}?version={version}&wait={wait}", timeout=70)
    if status != 200:
        return version, None
    snap = json.loads(body)
    eps = snap["services"].get(name(targets[k]), {}).get("endpoints", [])
    return snap["version"], sorted(e["address"] for e in eps)

before = ticks(pid)
time.sleep(10)
idle_cpu = (ticks(pid) - before) / hz
print(f"idle 10 s: CPU {idle_cpu:.3f} s; connections now {sockets(pid)}")

lat = {"check": [], "re-registration": []}
stamps = []  # (kind, when the change was made, wall clock)
before = ticks(pid)
for k, s in enumerate(targets):
    version, eps = snapshot(k, 0, "0s")
    if k % 2 == 0:
        kind, change = "check", [check_op(s, 0, "critical")]
        want = sorted(f"127.0.0.1:{ipport(s, i)}" for i in range(1, I))
    else:
        kind, newport = "re-registration", 60000 + k
        change = [svc_op(s, 0, newport)]
        want = sorted([f"127.0.0.1:{newport}"] + [f"127.0.0.1:{ipport(s, i)}" for i in range(1, I)])
    req("PUT", consul + "/v1/txn", change)
    t = time.time()
    stamps.append((kind, t))
    while True:
        version, eps = snapshot(k, version, "30s")
        if eps == want:
            break
        if time.time() - t > 60:
            raise SystemExit(f"change {k} ({kind}) never arrived: {eps} != {want}")
    lat[kind].append(time.time() - t)
changes_cpu = (ticks(pid) - before) / hz
stop.set()

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000
for kind, xs in lat.items():
    print(f"propagation, {kind} ({len(xs)} changes): p50 {pct(xs, 50):.0f} ms, p99 {pct(xs, 99):.0f} ms, max {max(xs) * 1000:.0f} ms")
allx = lat["check"] + lat["re-registration"]
print(f"propagation, all {len(allx)}: p50 {pct(allx, 50):.0f} ms, p99 {pct(allx, 99):.0f} ms")
print(f"CPU over the {len(allx)} changes: {changes_cpu:.2f} s")

# Split each change at the log lines after it: the catalog watcher's
# publish, then the snapshot store's update.
import datetime
def when(line):
    return datetime.datetime.strptime(line[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc).timestamp()
log.flush()
lines = open(os.path.join(work, "control.log")).read().splitlines()
published = [when(l) for l in lines if "consul catalog published" in l]
updated = [when(l) for l in lines if "snapshots updated" in l]
split = {"check": ([], []), "re-registration": ([], [])}
for kind, t in stamps:
    p = next((x for x in published if x >= t), None)
    u = next((x for x in updated if p is not None and x >= p), None)
    if p is not None and u is not None:
        split[kind][0].append(p - t)
        split[kind][1].append(u - p)
for kind, (w, s) in split.items():
    if w:
        print(f"  {kind}: Consul change → catalog published p50 {pct(w, 50):.0f} ms (max {max(w) * 1000:.0f}); → snapshots computed p50 {pct(s, 50):.0f} ms (max {max(s) * 1000:.0f})")
print(f"connections to Consul: at most {peak[0]} at once (bound 11; Consul's default limit 200)")
print(f"RSS now {status_kib(pid, 'VmRSS') // 1024} MiB, peak {status_kib(pid, 'VmHWM') // 1024} MiB")
t = time.time()
size = len(req("GET", consul + "/v1/health/state/any")[1])
print(f"for scale: Consul answers /v1/health/state/any ({size / 1e6:.1f} MB) in {(time.time() - t) * 1000:.0f} ms")
t = time.time()
size = len(req("GET", consul + "/v1/health/state/any?filter=" + urllib.parse.quote('Status != "passing"'))[1])
print(f"the checks not passing ({size} B, filtered from all) in {(time.time() - t) * 1000:.0f} ms")
t = time.time()
size = len(req("GET", f"{consul}/v1/catalog/node-services/node-000")[1])
print(f"and one node's instances ({size / 1e3:.0f} kB) in {(time.time() - t) * 1000:.0f} ms")
metrics = req("GET", control + "/metrics")[1].decode()
for line in metrics.splitlines():
    if line.startswith(("tether_control_consul_sweeps_total", "tether_control_consul_service_reads_total",
                        "tether_control_consul_watch_errors_total", "tether_control_consul_connections")):
        print("  " + line)
proc.terminate()
proc.wait()
if os.environ.get("KEEP_LOG"):
    import shutil
    shutil.copy(os.path.join(work, "control.log"), os.environ["KEEP_LOG"])
PY
