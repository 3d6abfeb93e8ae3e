//! The chaos suite's network: a "switch" namespace holding a bridge, and one
//! namespace per host joined to it by a veth pair (`eth0` in the host,
//! named after the host on the bridge). Everything lives in namespaces the
//! suite creates, so addresses can be fixed (198.19.0.0/24, part of
//! 198.18.0.0/15, the benchmarking range) and nothing reaches a real network.
//!
//! Names are `tchaos-<pid>-<n>-<host>`. On creation, namespaces left by a run
//! that died (its pid gone) are removed with every process still in them;
//! on drop, this topology's processes and namespaces go.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace the suite creates.
const PREFIX: &str = "tchaos-";
/// The hosts' subnet (a /24 of the benchmarking range 198.18.0.0/15).
const SUBNET: &str = "198.19.0";

/// Runs `ip args`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) {
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

/// Kills every process in namespace `ns` and deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).output();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

/// Removes namespaces of earlier runs whose process is gone (a crashed or
/// killed run never reached its drop).
pub fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let owner: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            remove_namespace(name);
        }
    }
}

/// Descriptors the suite's processes may hold: the hostile scenarios keep
/// 10,000 connections open on each side (a production sidecar runs with a
/// limit of this order too).
const FD_LIMIT: u64 = 65_536;

/// Raises this process's RLIMIT_NOFILE to [`FD_LIMIT`] (root may raise
/// the hard limit); the programs it starts inherit it.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct; failure is only reported.
    let rc = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur >= FD_LIMIT {
            return;
        }
        let hard = limit.rlim_max;
        limit.rlim_cur = FD_LIMIT;
        limit.rlim_max = hard.max(FD_LIMIT);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            0
        } else {
            // Without CAP_SYS_RESOURCE: as high as the hard limit allows.
            limit.rlim_cur = hard.min(FD_LIMIT);
            limit.rlim_max = hard;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit)
        }
    };
    if rc != 0 {
        eprintln!(
            "chaos: cannot raise RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// This process's descriptor limit now (soft), which its children inherit.
pub fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

/// Runs `f` on a thread that has entered namespace `ns` (sockets it
/// creates belong to that namespace for their whole life).
pub fn in_netns<T, F>(ns: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // SAFETY: setns on a descriptor we own, affecting only this thread,
        // which ends when `f` returns.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap_or_else(|_| panic!("a thread in {ns} panicked"))
}

/// One host: a namespace with `eth0` on the bridge at `ip`.
pub struct Host {
    /// Short name (`web`, `api-1`, ...).
    pub name: String,
    /// Namespace name, for `ip netns exec`.
    pub ns: String,
    /// Address on the bridge.
    pub ip: String,
    children: Vec<Child>,
    /// The NFQUEUE delay program running (see `faults`).
    pub(super) delayer: Option<u32>,
}

impl Host {
    /// `ip netns exec NS program args`, not yet run.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns])
            .arg(program)
            .args(args);
        command
    }

    /// Runs a program in the host and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args)
            .output()
            .unwrap_or_else(|e| panic!("{program} in {}: {e}", self.name))
    }

    /// Runs a program in the host; panics when it fails.
    pub fn must(&self, program: &str, args: &[&str]) {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a long-running program in the host, its stdout and stderr to
    /// `log`; killed when the topology drops. Returns its pid (`ip netns
    /// exec` execs the program, so the pid is the program's).
    pub fn spawn(&mut self, program: &Path, args: &[String], log: &Path) -> u32 {
        let out = File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = self
            .command(program, &[])
            .args(args)
            .env("TETHER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{} in {}: {e}", program.display(), self.name));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Kills a program [`Host::spawn`] started.
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut child = self.children.swap_remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether a program [`Host::spawn`] started is still running.
    pub fn running(&mut self, pid: u32) -> bool {
        self.children
            .iter_mut()
            .find(|c| c.id() == pid)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// A blocking TCP connection from this host (created in its namespace).
    pub fn connect(&self, addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream> {
        self.connect_many(addr, 1)
            .pop()
            .unwrap_or_else(|| Err(std::io::Error::other("no connection")))
    }

    /// `n` connections from this host to `addr`, opened one after another.
    pub fn connect_many(
        &self,
        addr: std::net::SocketAddr,
        n: usize,
    ) -> Vec<std::io::Result<std::net::TcpStream>> {
        in_netns(&self.ns, move || {
            (0..n)
                .map(|_| {
                    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
                })
                .collect()
        })
    }

    /// An async connection from this host.
    pub async fn connect_async(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let ns = self.ns.clone();
        let std = tokio::task::spawn_blocking(move || {
            in_netns(&ns, move || {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
            })
        })
        .await
        .map_err(std::io::Error::other)??;
        std.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(std)
    }
}

/// The switch and the hosts on it.
pub struct Topology {
    switch: String,
    /// The hosts, in the order they were asked for.
    pub hosts: Vec<Host>,
}

impl Topology {
    /// A bridge and one host per name, at 198.19.0.(10 + i). Removes
    /// leftovers of dead runs first.
    pub fn new(names: &[&str]) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_leftovers();
        raise_fd_limit();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{}-{n}", std::process::id());
        let switch = format!("{base}-sw");
        let mut topology = Topology {
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        remove_namespace(&switch);
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{base}-{name}");
            remove_namespace(&ns);
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            // The bridge port is named after the host (at most 15 bytes).
            let port: String = name.chars().take(15).collect();
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            let address = format!("{SUBNET}.{}", 10 + i);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            // Clients here open tens of thousands of short connections to
            // one address (the hostile scenario's flood): a wide port range
            // and TIME_WAIT reuse, or the attacker runs out of ports first.
            for setting in [
                "net.ipv4.ip_local_port_range=10000 65535",
                "net.ipv4.tcp_tw_reuse=1",
            ] {
                let _ = Command::new("ip")
                    .args(["netns", "exec", &ns, "sysctl", "-q", "-w", setting])
                    .output();
            }
            topology.hosts.push(Host {
                name: (*name).to_owned(),
                ns,
                ip: address,
                children: Vec::new(),
                delayer: None,
            });
        }
        topology
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The host called `name`, mutable (to spawn programs).
    pub fn host_mut(&mut self, name: &str) -> &mut Host {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let mut names = vec![self.switch.clone()];
        for host in &mut self.hosts {
            for child in &mut host.children {
                let _ = child.kill();
                let _ = child.wait();
            }
            names.push(host.ns.clone());
        }
        for name in &names {
            remove_namespace(name);
        }
    }
}
