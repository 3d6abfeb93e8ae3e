//! Test hosts in network namespaces the test creates (and deletes on drop):
//! an "app" host and a "peer" host joined by a veth pair, with small TCP
//! responders that answer every connection with a fixed tag. For the
//! transparent-capture tests, which need real netfilter rules in a namespace
//! of their own. Needs root (CI runs as root) and `ip` (iproute2), python3.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Debian's python3, by full path: a python3 earlier in PATH may live in
/// root's home (pyenv), which the unprivileged uids of these tests cannot read.
const PYTHON: &str = "/usr/bin/python3";

/// One network namespace.
pub struct Netns {
    /// Its name (for `ip netns exec`).
    pub name: String,
    children: Vec<Child>,
}

/// Two namespaces joined by a veth pair: `app` at `app_ip`, `peer` at
/// `peer_ip` (a /30 of 198.18.0.0/15, the benchmarking range, so it can
/// clash with nothing real; the addresses exist only inside these namespaces).
pub struct Pair {
    /// The host whose traffic is captured.
    pub app: Netns,
    /// The host on the other end of the link.
    pub peer: Netns,
    /// `app`'s address.
    pub app_ip: String,
    /// `peer`'s address.
    pub peer_ip: String,
    /// `app`'s IPv6 address (a /64 of fd18::/16, unique local).
    pub app_ip6: String,
    /// `peer`'s IPv6 address.
    pub peer_ip6: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (install iproute2)"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn create(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self {
            name,
            children: Vec::new(),
        }
    }

    /// `ip netns exec NAME` + `program args`, not yet run.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, program])
            .args(args);
        command
    }

    /// Runs `program args` in the namespace and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args)
            .output()
            .unwrap_or_else(|e| panic!("{program} in {}: {e}", self.name))
    }

    /// Starts a responder on `host:port` that writes `tag` to every
    /// connection and closes it; returns once it accepts connections.
    pub fn respond(&mut self, host: &str, port: u16, tag: &str) {
        // An IPv6 host (`::`) listens on IPv6 only, beside an IPv4 one.
        let (family, v6only) = if host.contains(':') {
            (
                "AF_INET6",
                "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n",
            )
        } else {
            ("AF_INET", "")
        };
        let script = format!(
            "import socket\ns = socket.socket(socket.{family}, socket.SOCK_STREAM)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n{v6only}\
             s.bind(('{host}', {port}))\ns.listen(64)\n\
             while True:\n    c, _ = s.accept()\n    c.sendall(b'{tag}')\n    c.close()\n"
        );
        let child = self
            .command(PYTHON, &["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 responder: {e}"));
        self.children.push(child);
        let target = match host {
            "0.0.0.0" => "127.0.0.1",
            "::" => "::1",
            other => other,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.connect(target, port, None).as_deref() != Some(tag) {
            assert!(
                Instant::now() < deadline,
                "responder {tag} on {host}:{port} never answered"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects to `host:port` from this namespace (as `uid` if given) and
    /// returns what the other side wrote, or `None` if it could not connect.
    pub fn connect(&self, host: &str, port: u16, uid: Option<u32>) -> Option<String> {
        let script = format!(
            "import socket\ns = socket.create_connection(('{host}', {port}), timeout=20)\n\
             print(s.recv(64).decode(), end='')\n"
        );
        let out = match uid {
            None => self.run(PYTHON, &["-c", &script]),
            Some(uid) => {
                let reuid = format!("--reuid={uid}");
                let regid = format!("--regid={uid}");
                self.run(
                    "setpriv",
                    &[&reuid, &regid, "--clear-groups", PYTHON, "-c", &script],
                )
            }
        };
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl Pair {
    /// Two new namespaces with a link between them.
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let app = Netns::create(format!("tether-app-{pid}-{n}"));
        let peer = Netns::create(format!("tether-peer-{pid}-{n}"));
        // Interface names are at most 15 bytes.
        let (va, vp) = (
            format!("tva{}{n}", pid % 10000),
            format!("tvp{}{n}", pid % 10000),
        );
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vp]);
        ip(&["link", "set", &va, "netns", &app.name]);
        ip(&["link", "set", &vp, "netns", &peer.name]);
        // 198.18.0.0/15 in /30s: .1 app, .2 peer.
        let base = 4 * (n % 16000);
        let addr = |i: u32| {
            let v = base + i;
            format!("198.18.{}.{}", v / 256, v % 256)
        };
        let (app_ip, peer_ip) = (addr(1), addr(2));
        ip(&[
            "-n",
            &app.name,
            "addr",
            "add",
            &format!("{app_ip}/30"),
            "dev",
            &va,
        ]);
        ip(&[
            "-n",
            &peer.name,
            "addr",
            "add",
            &format!("{peer_ip}/30"),
            "dev",
            &vp,
        ]);
        // fd18:<n>::/64; nodad: usable at once, no duplicate detection wait.
        let (app_ip6, peer_ip6) = (format!("fd18:{n:x}::1"), format!("fd18:{n:x}::2"));
        for (ns, dev, address) in [(&app, &va, &app_ip6), (&peer, &vp, &peer_ip6)] {
            ip(&[
                "-n",
                &ns.name,
                "-6",
                "addr",
                "add",
                &format!("{address}/64"),
                "dev",
                dev,
                "nodad",
            ]);
        }
        ip(&["-n", &app.name, "link", "set", &va, "up"]);
        ip(&["-n", &peer.name, "link", "set", &vp, "up"]);
        Self {
            app,
            peer,
            app_ip,
            peer_ip,
            app_ip6,
            peer_ip6,
        }
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}
