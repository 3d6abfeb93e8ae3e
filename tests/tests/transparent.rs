//! Transparent capture end to end: `tether-proxy init` rules in a network
//! namespace, the real proxy inside it as uid 1337, and an "app" (python)
//! that calls addresses as if it had resolved names through its own DNS.
//! There is no DNS in the namespace: the app connects to the peer's IP and
//! sends the `Host` an app resolving `api` would send.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tether_e2e::metric;
use tether_e2e::netns::{Netns, Pair};
use tether_e2e::pki::TestPki;
use tether_e2e::proxy::place_proxy_bin;

const PYTHON: &str = "/usr/bin/python3";
/// The mesh service `api`'s endpoint (a plain HTTP server on the peer).
const API_PORT: u16 = 8080;
/// A peer port where nothing listens: routing by `Host` must not go there.
const NOWHERE_PORT: u16 = 8081;
/// The tcp service `db`'s endpoint on the peer.
const DB_PORT: u16 = 9000;
/// A peer port outside the mesh.
const OUTSIDE_PORT: u16 = 7000;
/// The app's own port on the app host, redirected to the inbound listener.
const APP_PORT: u16 = 8080;
const ADMIN: &str = "127.0.0.1:15000";

/// The hosts, the proxy and the servers, killed on drop.
struct Host {
    pair: Pair,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A python program on `ns`, running until the test ends.
fn spawn(ns: &Netns, script: &str) -> Child {
    ns.command(PYTHON, &["-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("python3: {e}"))
}

/// An HTTP/1.1 server on `port` of `ns`: `200` with `x-backend: <tag>`.
fn http_server(ns: &Netns, port: u16, tag: &str) -> Child {
    spawn(
        ns,
        &format!(
            "import http.server\n\
             class H(http.server.BaseHTTPRequestHandler):\n    \
                 protocol_version = 'HTTP/1.1'\n    \
                 def do_GET(self):\n        \
                     self.send_response(200)\n        \
                     self.send_header('x-backend', '{tag}')\n        \
                     self.send_header('content-length', '0')\n        \
                     self.end_headers()\n\
             http.server.ThreadingHTTPServer(('0.0.0.0', {port}), H).serve_forever()\n"
        ),
    )
}

/// From `ns`, `GET /` with `host` to `ip:port` in plaintext; returns the
/// response head (lowercase), or "" when the connection gave none.
fn http(ns: &Netns, ip: &str, port: u16, host: &str) -> String {
    http_after(ns, ip, port, host, 0.0)
}

/// [`http`], the connection left silent for `pause` seconds before the
/// request (an HTTP client pool's connection that waited for its first use).
fn http_after(ns: &Netns, ip: &str, port: u16, host: &str, pause: f64) -> String {
    let script = format!(
        "import socket, time\n\
         s = socket.create_connection(('{ip}', {port}), timeout=15)\n\
         time.sleep({pause})\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n')\n\
         data = b''\n\
         while True:\n    d = s.recv(65536)\n    if not d: break\n    data += d\n\
         print(data.split(b'\\r\\n\\r\\n')[0].decode())\n"
    );
    let out = ns.run(PYTHON, &["-c", &script]);
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

/// The hosts, `init`'s rules on the app host and the proxy on it as uid
/// 1337 with `mesh` in its snapshot; `setup` returns more flags, given a
/// directory uid 1337 can read.
fn start(mesh: &str, setup: impl FnOnce(&Path) -> Vec<String>) -> Host {
    let mut pair = Pair::new();
    let peer_ip = pair.peer_ip.clone();
    let mut children = vec![http_server(&pair.peer, API_PORT, "peer-api")];
    // `db`'s endpoint: says whether the stream came through a sidecar
    // (which sends the plaintext preamble first) or straight from the app.
    children.push(spawn(
        &pair.peer,
        &format!(
            "import socket\ns = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', {DB_PORT}))\ns.listen(64)\n\
             while True:\n    c, _ = s.accept()\n    c.settimeout(2)\n    \
                 try:\n        first = c.recv(14)\n    except OSError:\n        first = b''\n    \
                 c.sendall(b'db-via-mesh' if first == b'TETHER-TCP/1\\r\\n' else b'db-direct')\n    \
                 c.close()\n"
        ),
    ));
    pair.peer.respond("0.0.0.0", OUTSIDE_PORT, "outside");

    // The proxy's binary and snapshot, readable by uid 1337.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mode = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(dir.path(), mode.clone()).unwrap_or_else(|e| panic!("chmod: {e}"));
    let bin = dir.path().join("tether-proxy");
    place_proxy_bin(&bin);
    std::fs::set_permissions(&bin, mode).unwrap_or_else(|e| panic!("chmod: {e}"));
    let snapshot = dir.path().join("snapshot.yaml");
    let text = format!(
        "{mesh}services:\n  \
           api:\n    endpoints: [ {{ address: \"{peer_ip}:{API_PORT}\" }} ]\n  \
           db:\n    protocol: tcp\n    outbound_port: 15432\n    \
             endpoints: [ {{ address: \"{peer_ip}:{DB_PORT}\" }} ]\n"
    );
    std::fs::write(&snapshot, text).unwrap_or_else(|e| panic!("write: {e}"));

    let bin_text = bin.display().to_string();
    let out = pair.app.run(&bin_text, &["init"]);
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log =
        std::fs::File::create(dir.path().join("proxy.log")).unwrap_or_else(|e| panic!("log: {e}"));
    let snapshot_text = snapshot.display().to_string();
    let extra = setup(dir.path());
    let mut args = vec![
        "--reuid=1337",
        "--regid=1337",
        "--clear-groups",
        &bin_text,
        "--snapshot",
        &snapshot_text,
        "--admin",
        ADMIN,
    ];
    args.extend(extra.iter().map(String::as_str));
    let proxy = pair
        .app
        .command("setpriv", &args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("tether-proxy: {e}"));
    children.push(proxy);
    let host = Host {
        pair,
        children,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !host.admin("/ready").starts_with("200") {
        assert!(
            Instant::now() < deadline,
            "the proxy never became ready: {}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    host
}

impl Host {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// `STATUS\nBODY` of an admin path (loopback is not captured), or "".
    fn admin(&self, path: &str) -> String {
        let script = format!(
            "import urllib.request\n\
             r = urllib.request.urlopen('http://{ADMIN}{path}', timeout=2)\n\
             print(r.status); print(r.read().decode())\n"
        );
        let out = self.pair.app.run(PYTHON, &["-c", &script]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn metrics(&self) -> String {
        self.admin("/metrics")
    }

    /// The app sends `GET /` with `host` to `port` on the peer.
    fn http(&self, port: u16, host: &str) -> String {
        http(&self.pair.app, &self.pair.peer_ip, port, host)
    }

    /// The app opens a TCP connection to `port` on the peer and sends
    /// nothing (server-first); returns what it read.
    fn tcp(&self, port: u16) -> Option<String> {
        let ip = self.pair.peer_ip.clone();
        self.pair.app.connect(&ip, port, None)
    }
}

#[test]
fn http_routes_by_host_and_tcp_by_original_destination() {
    let host = start("", |_| Vec::new());
    // `api:8080` sent to a port where nothing listens: routed by Host.
    let head = host.http(NOWHERE_PORT, &format!("api:{API_PORT}"));
    assert!(head.starts_with("http/1.1 200"), "{head}\n{}", host.log());
    assert!(head.contains("x-backend: peer-api"), "{head}");
    for name in [
        "api.service.consul",
        "api.service.dc1.consul:80",
        "api.service.consul.",
    ] {
        let head = host.http(NOWHERE_PORT, name);
        assert!(head.starts_with("http/1.1 200"), "{name}: {head}");
    }
    let metrics = host.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"tether_requests_total{direction="outbound",service="api",status_class="2xx"}"#
        ),
        Some(4.0),
        "{metrics}"
    );

    // A name outside the mesh goes to where the app sent it (allow-any).
    let head = host.http(API_PORT, "example.com");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // A tcp service's endpoint goes through the service (the preamble
    // proves a sidecar sent it); any other address passes through.
    assert_eq!(host.tcp(DB_PORT).as_deref(), Some("db-via-mesh"));
    assert_eq!(host.tcp(OUTSIDE_PORT).as_deref(), Some("outside"));
    let metrics = host.metrics();
    for (series, want) in [
        (r#"tether_passthrough_total{protocol="http"}"#, 1.0),
        (r#"tether_passthrough_total{protocol="tcp"}"#, 1.0),
        (
            r#"tether_tcp_connections_total{direction="outbound",service="db"}"#,
            1.0,
        ),
        // Both connections sent nothing first; only the undeclared one
        // waited for detection: a tcp service's endpoint is served at once.
        (
            r#"tether_protocol_detect_timeouts_total{direction="outbound"}"#,
            1.0,
        ),
    ] {
        assert_eq!(metric(&metrics, series), Some(want), "{series}\n{metrics}");
    }
}

#[test]
fn an_http_connection_silent_before_its_first_request_is_still_http() {
    let host = start("", |_| Vec::new());
    // Hyper's pool, for one, opens connections it uses only later. Silent
    // for 2 s, then a request for `api`: routed by Host through the mesh,
    // not relayed raw to where it was dialled (here, nothing listens).
    let head = http_after(&host.pair.app, &host.pair.peer_ip, NOWHERE_PORT, "api", 2.0);
    assert!(head.starts_with("http/1.1 200"), "{head}\n{}", host.log());
    assert!(head.contains("x-backend: peer-api"), "{head}");
    let metrics = host.metrics();
    let waited = metric(
        &metrics,
        r#"tether_protocol_detect_timeouts_total{direction="outbound"}"#,
    );
    assert_eq!(waited.unwrap_or(0.0), 0.0, "{metrics}");
}

#[test]
fn registry_only_refuses_destinations_outside_the_mesh() {
    let host = start("mesh: { outbound_policy: registry-only }\n", |_| Vec::new());
    let head = host.http(API_PORT, "example.com");
    assert!(head.starts_with("http/1.1 503"), "{head}\n{}", host.log());
    assert!(head.contains("tether-error: unknown-service"), "{head}");
    assert_eq!(host.tcp(OUTSIDE_PORT).as_deref().unwrap_or(""), "");
    // The mesh is still reachable.
    assert!(host.http(NOWHERE_PORT, "api").starts_with("http/1.1 200"));
    assert_eq!(host.tcp(DB_PORT).as_deref(), Some("db-via-mesh"));
    let metrics = host.metrics();
    for series in [
        r#"tether_outbound_refused_total{protocol="http"}"#,
        r#"tether_outbound_refused_total{protocol="tcp"}"#,
    ] {
        assert_eq!(metric(&metrics, series), Some(1.0), "{series}\n{metrics}");
    }
    assert_eq!(
        metric(&metrics, r#"tether_passthrough_total{protocol="tcp"}"#).unwrap_or(0.0),
        0.0
    );
}

/// The proxy with mTLS (identity `api`, `flags` added) and the app, an
/// HTTP server on `APP_PORT`.
fn start_with_identity(flags: &[&str]) -> Host {
    let pki = TestPki::new();
    let flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
    let mut host = start("", |dir| {
        let identity = dir.join("identity");
        std::fs::create_dir(&identity).unwrap_or_else(|e| panic!("mkdir: {e}"));
        pki.issue_to("api", Duration::from_secs(3600), &identity);
        let bundle = dir.join("bundle.pem");
        std::fs::copy(pki.bundle(), &bundle).unwrap_or_else(|e| panic!("copy: {e}"));
        // Readable by uid 1337 (a throwaway key).
        let chmod = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        };
        chmod(&identity, 0o755);
        for entry in std::fs::read_dir(&identity).unwrap_or_else(|e| panic!("{e}")) {
            chmod(&entry.unwrap_or_else(|e| panic!("{e}")).path(), 0o644);
        }
        chmod(&bundle, 0o644);
        let mut args = vec![
            "--service".to_owned(),
            "api".to_owned(),
            "--app".to_owned(),
            format!("127.0.0.1:{APP_PORT}"),
            "--identity-dir".to_owned(),
            identity.display().to_string(),
            "--trust-bundle".to_owned(),
            bundle.display().to_string(),
        ];
        args.extend(flags);
        args
    });
    let app = http_server(&host.pair.app, APP_PORT, "app");
    host.children.push(app);
    // Loopback is not captured: the app answers there once it listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http(&host.pair.app, "127.0.0.1", APP_PORT, "app").starts_with("http/1.1 200") {
        assert!(Instant::now() < deadline, "the app never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    host
}

#[test]
fn a_caller_without_a_sidecar_is_refused_by_mtls_and_counted() {
    let host = start_with_identity(&[]);
    let app_ip = host.pair.app_ip.clone();
    let head = http(&host.pair.peer, &app_ip, APP_PORT, "api");
    assert_eq!(head, "", "plaintext must not reach the app\n{}", host.log());
    let metrics = host.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"tether_tls_handshake_errors_total{direction="inbound",reason="not-tls"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[test]
fn a_caller_without_a_sidecar_is_let_through_in_permissive_mode_and_counted() {
    let host = start_with_identity(&["--inbound-permissive"]);
    let app_ip = host.pair.app_ip.clone();
    let head = http(&host.pair.peer, &app_ip, APP_PORT, "api");
    assert!(head.starts_with("http/1.1 200"), "{head}\n{}", host.log());
    assert!(head.contains("x-backend: app"), "{head}");
    let metrics = host.metrics();
    assert_eq!(
        metric(&metrics, "tether_inbound_plaintext_connections_total"),
        Some(1.0),
        "{metrics}"
    );
}
