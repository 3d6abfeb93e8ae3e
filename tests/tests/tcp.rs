//! Opaque TCP between sidecars with the real binaries: an app connects to
//! web's sidecar on the tcp service's outbound port, and bytes flow through
//! db's sidecar to a TCP echo app; mTLS (ALPN `tether-tcp`) or the plaintext
//! preamble, L4 authorization, listeners that follow snapshots, draining.

use std::net::SocketAddr;
use std::time::Duration;

use tether_e2e::echo::{exchange, exchange_on, payload, ping, refused, same, EchoServer};
use tether_e2e::{assert_eventually, free_port, metric, Client, Proxy, TestPki};
use tokio::net::TcpStream;

/// web's snapshot: the tcp service `db` on `port`, at `endpoints`.
fn web_snapshot(port: u16, endpoints: &[SocketAddr], policy: &str) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!(
        "service: web\nservices:\n  db:\n    protocol: tcp\n    outbound_port: {port}\n    policy: {policy}\n    endpoints: [ {} ]\n",
        list.join(", ")
    )
}

fn db_snapshot(authorization: &str) -> String {
    format!("service: db\nservices: {{}}\n{authorization}")
}

/// app ─► web's sidecar :port ══► db's sidecar inbound ─► echo app.
struct Mesh {
    echo: EchoServer,
    db: Proxy,
    web: Proxy,
    port: u16,
    _pki: Option<TestPki>,
}

impl Mesh {
    /// Where the app connects for `db`.
    fn tcp(&self) -> SocketAddr {
        SocketAddr::new(self.web.outbound.ip(), self.port)
    }
}

async fn mesh(mtls: bool, authorization: &str, web_args: &[&str]) -> Mesh {
    let echo = EchoServer::start().await;
    let app = echo.addr;
    mesh_to(echo, app, mtls, authorization, web_args, "{}").await
}

/// [`mesh`] with db's app at `app` and web's policy for db.
async fn mesh_to(
    echo: EchoServer,
    app: SocketAddr,
    mtls: bool,
    authorization: &str,
    web_args: &[&str],
    policy: &str,
) -> Mesh {
    let pki = mtls.then(TestPki::new);
    let mut db = Proxy::builder(&db_snapshot(authorization))
        .app(app)
        .arg("--service")
        .arg("db")
        .arg("--access-log");
    if let Some(pki) = &pki {
        db = db.identity(&pki.issue("db"), &pki.bundle());
    }
    let db = db.start().await;
    let port = free_port();
    let mut web = Proxy::builder(&web_snapshot(port, &[db.inbound], policy))
        .arg("--service")
        .arg("web")
        .arg("--access-log");
    if let Some(pki) = &pki {
        web = web.identity(&pki.issue("web"), &pki.bundle());
    }
    for arg in web_args {
        web = web.arg(arg);
    }
    let web = web.start().await;
    Mesh {
        echo,
        db,
        web,
        port,
        _pki: pki,
    }
}

/// The value of `series` in `proxy`'s metrics, 0 when absent.
async fn value(proxy: &Proxy, series: &str) -> f64 {
    metric(&proxy.metrics().await, series).unwrap_or(0.0)
}

/// A real Redis (Debian's `redis-server`) on a free loopback port, no
/// persistence; killed on drop.
struct Redis {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Redis {
    fn start() -> Self {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server: {e} (apt-get install redis-server)"));
        let redis = Self {
            child,
            addr: ([127, 0, 0, 1], port).into(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while redis_cli(redis.addr, &["PING"], None) != "PONG" {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-cli -h IP -p PORT ARGS` (the last argument from `stdin` with
/// `-x`), its trimmed output.
fn redis_cli(addr: SocketAddr, args: &[&str], stdin: Option<&[u8]>) -> String {
    use std::io::Write;
    let mut command = std::process::Command::new("redis-cli");
    command.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()]);
    if stdin.is_some() {
        command.arg("-x");
    }
    let mut child = command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("redis-cli: {e} (apt-get install redis-tools)"));
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(data)
            .unwrap_or_else(|e| panic!("redis-cli stdin: {e}"));
    }
    drop(child.stdin.take());
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("redis-cli: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn redis_through_two_sidecars_over_mtls() {
    let redis = Redis::start();
    let echo = EchoServer::start().await;
    let mesh = mesh_to(echo, redis.addr, true, "", &[], "{}").await;
    let via = mesh.tcp();
    let cli = move |args: Vec<String>, stdin: Option<Vec<u8>>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            redis_cli(via, &args, stdin.as_deref())
        })
    };
    let run = |args: &[&str]| cli(args.iter().map(|a| a.to_string()).collect(), None);
    assert_eq!(
        run(&["PING"]).await.unwrap_or_default(),
        "PONG",
        "web:\n{}",
        mesh.web.log()
    );
    assert_eq!(run(&["SET", "k", "v"]).await.unwrap_or_default(), "OK");
    assert_eq!(run(&["GET", "k"]).await.unwrap_or_default(), "v");
    // 1 MiB each way: SET from stdin, then STRLEN and GETRANGE of the end.
    let big = vec![b'x'; 1 << 20];
    let set = cli(vec!["SET".into(), "big".into()], Some(big)).await;
    assert_eq!(set.unwrap_or_default(), "OK");
    assert_eq!(run(&["STRLEN", "big"]).await.unwrap_or_default(), "1048576");
    let got = run(&["GET", "big"]).await.unwrap_or_default();
    assert_eq!(got.len(), 1 << 20, "the whole value came back");
    assert_eq!(
        redis_cli(redis.addr, &["GET", "k"], None),
        "v",
        "the data is in the real server"
    );
    let streams = value(
        &mesh.web,
        r#"tether_tcp_connections_total{direction="outbound",service="db"}"#,
    )
    .await;
    assert_eq!(
        streams, 6.0,
        "one stream per redis-cli run through the mesh"
    );
}

#[tokio::test]
async fn an_idle_stream_is_closed_at_the_services_stream_idle_timeout() {
    let echo = EchoServer::start().await;
    let app = echo.addr;
    let mesh = mesh_to(echo, app, true, "", &[], "{ stream_idle_timeout: 1s }").await;
    let mut stream = TcpStream::connect(mesh.tcp())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ping(&mut stream, 7).await, "the stream works");
    // Then nothing: the caller's sidecar closes both ends.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncReadExt;
        stream.read_to_end(&mut rest).await
    })
    .await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the idle stream was not closed: {read:?}"
    );
    assert_eventually!(
        Duration::from_secs(5),
        || async { mesh.web.stdout().contains(r#""error":"idle-timeout""#) },
        "web's access log names the idle timeout:\n{}",
        mesh.web.stdout()
    );
    assert_eventually!(
        Duration::from_secs(5),
        || async {
            value(
                &mesh.db,
                r#"tether_tcp_connections_open{direction="inbound",service="db"}"#,
            )
            .await
                == 0.0
        },
        "db's sidecar closed its side too"
    );
}

#[tokio::test]
async fn bytes_echo_through_mtls_both_ways_with_half_close() {
    let mesh = mesh(true, "", &[]).await;
    let sent = payload(256 * 1024);
    // The client half-closes once all is written and still reads the echo.
    let echoed = exchange(mesh.tcp(), &sent)
        .await
        .unwrap_or_else(|e| panic!("{e}\nweb:\n{}\ndb:\n{}", mesh.web.log(), mesh.db.log()));
    assert!(
        same(&echoed, &sent),
        "{} of {} bytes came back",
        echoed.len(),
        sent.len()
    );
    assert_eq!(mesh.echo.connections(), 1);

    let len = sent.len() as f64;
    let web = &mesh.web;
    assert_eventually!(
        Duration::from_secs(5),
        || async {
            value(
                web,
                r#"tether_tcp_connections_total{direction="outbound",service="db"}"#,
            )
            .await
                == 1.0
                && value(
                    web,
                    r#"tether_tcp_connections_open{direction="outbound",service="db"}"#,
                )
                .await
                    == 0.0
                && value(
                    web,
                    r#"tether_tcp_bytes_total{direction="outbound",flow="received",service="db"}"#,
                )
                .await
                    == len
                && value(
                    web,
                    r#"tether_tcp_bytes_total{direction="outbound",flow="sent",service="db"}"#,
                )
                .await
                    == len
                && value(
                    web,
                    r#"tether_bytes_total{direction="outbound",flow="sent"}"#,
                )
                .await
                    == len
        },
        "web's metrics:\n{}",
        web.metrics().await
    );
    let db = &mesh.db;
    assert_eventually!(
        Duration::from_secs(5),
        || async {
            value(
                db,
                r#"tether_tcp_connections_total{direction="inbound",service="db"}"#,
            )
            .await
                == 1.0
                && value(
                    db,
                    r#"tether_tcp_bytes_total{direction="inbound",flow="received",service="db"}"#,
                )
                .await
                    == len
                && value(
                    db,
                    r#"tether_bytes_total{direction="inbound",flow="received"}"#,
                )
                .await
                    == len
        },
        "db's metrics:\n{}",
        db.metrics().await
    );
    // One access-log line per stream, with the caller's identity (inbound).
    let line = format!(
        r#""protocol":"tcp","service":"db","peer_identity":"spiffe://tether.local/service/web","bytes_received":{0},"bytes_sent":{0}"#,
        sent.len()
    );
    assert_eventually!(
        Duration::from_secs(5),
        || async { db.stdout().contains(&line) },
        "db's access log:\n{}",
        db.stdout()
    );
    assert_eventually!(
        Duration::from_secs(5),
        || async {
            web.stdout()
                .contains(r#""direction":"outbound","protocol":"tcp","service":"db""#)
        },
        "web's access log:\n{}",
        web.stdout()
    );
}

#[tokio::test]
async fn a_caller_not_allowed_at_l4_is_cut_off_before_the_app() {
    // web may make GET requests (L7) but open no stream; batch may.
    let rules = "authorization:\n  default: deny\n  rules:\n    - { from: [web], methods: [GET] }\n    - { from: [batch] }\n";
    let mesh = mesh(true, rules, &[]).await;
    let result = exchange(mesh.tcp(), b"hello").await;
    assert!(
        result.as_ref().map_or(true, Vec::is_empty),
        "nothing may come back: {result:?}"
    );
    let db = &mesh.db;
    assert_eventually!(
        Duration::from_secs(5),
        || async { value(db, r#"tether_authz_denied_total{service="db"}"#).await == 1.0 },
        "the refusal is counted:\n{}",
        db.metrics().await
    );
    assert_eq!(mesh.echo.connections(), 0, "the app never saw it");
    // The access log is written off the request path: poll for the line.
    assert_eventually!(
        Duration::from_secs(5),
        || async { db.stdout().contains(r#""error":"unauthorized""#) },
        "no access log line for the refusal:\n{}",
        db.stdout()
    );

    // A rule naming web with no methods or paths allows the stream.
    let version = db.config_version().await;
    db.write_snapshot(&db_snapshot(
        "authorization:\n  default: deny\n  rules:\n    - { from: [web] }\n",
    ));
    assert_eventually!(
        Duration::from_secs(5),
        || async { db.config_version().await != version },
        "policy not applied"
    );
    let echoed = exchange(mesh.tcp(), b"hello").await.ok();
    assert_eq!(echoed.as_deref(), Some(&b"hello"[..]));
    assert_eq!(mesh.echo.connections(), 1);
}

#[tokio::test]
async fn an_endpoint_with_another_services_identity_is_refused_and_the_other_used() {
    let pki = TestPki::new();
    let echo = EchoServer::start().await;
    let impostor_app = EchoServer::start().await;
    let db = Proxy::builder(&db_snapshot(""))
        .app(echo.addr)
        .identity(&pki.issue("db"), &pki.bundle())
        .start()
        .await;
    // A valid mesh certificate, but for `batch`, not `db`.
    let impostor = Proxy::builder(&db_snapshot(""))
        .app(impostor_app.addr)
        .identity(&pki.issue("batch"), &pki.bundle())
        .start()
        .await;
    let port = free_port();
    let policy = "{ load_balancer: round-robin, retries: { attempts: 2 } }";
    let web = Proxy::builder(&web_snapshot(port, &[impostor.inbound, db.inbound], policy))
        .identity(&pki.issue("web"), &pki.bundle())
        .start()
        .await;
    let addr = SocketAddr::new(web.outbound.ip(), port);
    for i in 0..4 {
        let sent = payload(4096 + i);
        let echoed = exchange(addr, &sent).await.ok().unwrap_or_default();
        assert!(
            same(&echoed, &sent),
            "stream {i}: {} bytes back",
            echoed.len()
        );
    }
    assert_eq!(echo.connections(), 4);
    assert_eq!(
        impostor_app.connections(),
        0,
        "nothing reached the impostor's app"
    );
    let metrics = web.metrics().await;
    let mismatches =
        r#"tether_tls_handshake_errors_total{direction="outbound",reason="identity-mismatch"}"#;
    assert!(
        metric(&metrics, mismatches).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            r#"tether_tcp_connect_failures_total{service="db"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_plaintext_mesh_uses_the_preamble_and_http_shares_the_inbound_port() {
    let mesh = mesh(false, "", &[]).await;
    let sent = payload(64 * 1024);
    let echoed = exchange(mesh.tcp(), &sent).await.ok().unwrap_or_default();
    assert!(same(&echoed, &sent), "{} bytes back", echoed.len());
    // An app stream that itself looks like HTTP is still just bytes.
    let request = b"GET / HTTP/1.1\r\nhost: db\r\n\r\n";
    let answer = exchange(mesh.tcp(), request).await.ok().unwrap_or_default();
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-backend: echo-app"));
    // Plain HTTP on the same inbound port is served as HTTP, through the
    // proxy's HTTP path, as before.
    let reply = Client::http1().get(mesh.db.inbound, "db", "/").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-backend"), "echo-app");
    let metrics = mesh.db.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"tether_tcp_connections_total{direction="inbound",service="db"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"tether_requests_total{direction="inbound",service="db",status_class="2xx"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_silent_plaintext_caller_on_the_inbound_port_gets_the_server_first_app() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The app speaks first, like SMTP or MySQL.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let app = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let greeter = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.write_all(b"220 greetings\r\n").await;
        }
    });
    let echo = EchoServer::start().await;
    let mesh = mesh_to(echo, app, false, "", &[], "{}").await;
    // A caller without a sidecar (plaintext mesh) that sends nothing: after
    // the detection wait the stream goes to the app, which greets it.
    // What a client that sends nothing reads first at `addr`.
    let greeting_at = |addr: SocketAddr| async move {
        let mut stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut greeting = [0u8; 15];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut greeting))
            .await
            .unwrap_or_else(|_| panic!("no greeting at {addr}"))
            .unwrap_or_else(|e| panic!("{e}"));
        greeting
    };
    let waits = r#"tether_protocol_detect_timeouts_total{direction="inbound"}"#;
    assert_eq!(&greeting_at(mesh.db.inbound).await, b"220 greetings\r\n");
    assert_eq!(value(&mesh.db, waits).await, 1.0);
    // Through web's sidecar (preamble first): greeted too, no wait counted.
    assert_eq!(&greeting_at(mesh.tcp()).await, b"220 greetings\r\n");
    assert_eq!(value(&mesh.db, waits).await, 1.0);
    greeter.abort();
}

#[tokio::test]
async fn removing_the_service_closes_its_listener_and_adding_it_back_reopens_it() {
    let mesh = mesh(false, "", &[]).await;
    let addr = mesh.tcp();
    assert_eq!(
        exchange(addr, b"one").await.ok().as_deref(),
        Some(&b"one"[..])
    );
    mesh.web.write_snapshot("service: web\nservices: {}\n");
    assert_eventually!(
        Duration::from_secs(5),
        || refused(addr),
        "the listener of a removed service must close"
    );
    mesh.web
        .write_snapshot(&web_snapshot(mesh.port, &[mesh.db.inbound], "{}"));
    assert_eventually!(
        Duration::from_secs(5),
        || async { exchange(addr, b"two").await.ok().as_deref() == Some(&b"two"[..]) },
        "the listener must reopen when the service is back"
    );
}

#[tokio::test]
async fn a_port_already_taken_refuses_the_snapshot_and_names_the_port() {
    let echo = EchoServer::start().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = taken.local_addr().map(|a| a.port()).unwrap_or_default();
    let wanted = web_snapshot(port, &[echo.addr], "{}");

    // At start: the proxy does not start (exit 1, like any taken port).
    let mut refused_at_start = Proxy::builder(&wanted).spawn();
    let status = refused_at_start.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "{}",
        refused_at_start.log()
    );
    let needle = format!("cannot listen on 127.0.0.1:{port}");
    assert!(
        refused_at_start.log().contains(&needle),
        "{}",
        refused_at_start.log()
    );

    // Running: the snapshot is refused, the last good one stays.
    let web = Proxy::start("service: web\nservices: {}\n").await;
    let version = web.config_version().await;
    web.write_snapshot(&wanted);
    assert_eventually!(
        Duration::from_secs(5),
        || async { value(&web, "tether_config_errors_total").await == 1.0 },
        "the snapshot must be refused:\n{}",
        web.log()
    );
    assert!(web.log().contains(&needle), "{}", web.log());
    assert_eq!(web.config_version().await, version);
    drop(taken);
}

#[tokio::test]
async fn sigterm_closes_tcp_listeners_and_open_streams_get_the_drain_timeout() {
    let mut mesh = mesh(false, "", &["--drain-timeout", "2s"]).await;
    let addr = mesh.tcp();
    let mut open = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ping(&mut open, 1).await);
    mesh.web.signal("TERM");
    assert_eventually!(
        Duration::from_secs(2),
        || refused(addr),
        "new streams must be refused once draining"
    );
    assert!(
        ping(&mut open, 2).await,
        "an open stream keeps flowing while draining"
    );
    let status = mesh.web.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", mesh.web.log());
    assert!(
        mesh.web.log().contains("drain deadline passed"),
        "{}",
        mesh.web.log()
    );
    // Dropped at the deadline: the app sees the end of its stream.
    let rest = exchange_on(open, b"").await.ok().unwrap_or_default();
    assert!(rest.is_empty(), "{rest:?}");
}
