//! Network faults on a host's link, on what it sends through `eth0`:
//! latency with jitter (packets also reorder) and loss, with `tc netem`
//! where the kernel has it; on kernels without sch_netem (this suite's
//! firecracker VMs), loss by `iptables -m statistic` DROP and delay by an
//! NFQUEUE program (tests/chaos/delay.py) that holds each packet its
//! delay ± jitter. Partitions are `iptables` DROP rules (packets vanish:
//! no RST, no ICMP, as when a host or a link dies).
//!
//! Rules live in chains of their own (`TCHAOS_LINK` for link faults,
//! `TCHAOS_CUT` for partitions), so healing one leaves the other.

use std::path::PathBuf;
use std::time::Duration;

use super::topology::Host;

/// Debian's python3 by full path (one earlier in PATH may be root's pyenv).
const PYTHON: &str = "/usr/bin/python3";
/// The NFQUEUE queue the delay program reads (one per namespace).
const QUEUE: &str = "0";
/// Longest a delay program runs (every helper is bounded): past the
/// longest scenario of the full run.
const DELAYER_LIFETIME_S: u32 = 3 * 3600;

/// What happens to a host's outgoing packets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Netem {
    /// Added delay, ms.
    pub delay_ms: u32,
    /// Jitter around the delay, ms (uniform, so packets also reorder).
    pub jitter_ms: u32,
    /// Loss, percent.
    pub loss_pct: f64,
}

/// How link faults are made on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFaults {
    /// `tc qdisc ... netem`.
    Netem,
    /// iptables statistic DROP + NFQUEUE delay.
    Netfilter,
}

impl Host {
    fn iptables(&self, args: &[&str]) {
        let mut all = vec!["-w"];
        all.extend_from_slice(args);
        self.must("iptables", &all);
    }

    /// Creates chain `name` hooked first into `hook` for `dir` `eth0`
    /// (`-o` or `-i`), if not there yet.
    fn hook_chain(&self, name: &str, hooks: &[(&str, &str)]) {
        let exists = self
            .run("iptables", &["-w", "-n", "-L", name])
            .status
            .success();
        if exists {
            return;
        }
        self.iptables(&["-N", name]);
        for (hook, dir) in hooks {
            self.iptables(&["-I", hook, dir, "eth0", "-j", name]);
        }
    }

    /// Which mechanism this kernel allows (netem is tried on `lo` of this host).
    pub fn link_faults(&self) -> LinkFaults {
        let probe = self.run(
            "tc",
            &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
        );
        if probe.status.success() {
            let _ = self.run("tc", &["qdisc", "del", "dev", "lo", "root"]);
            LinkFaults::Netem
        } else {
            LinkFaults::Netfilter
        }
    }

    /// Applies `netem` to everything this host sends on `eth0`, replacing
    /// any link fault before. Returns the mechanism used.
    pub fn netem(&mut self, netem: Netem) -> LinkFaults {
        self.clear_netem();
        let kind = self.link_faults();
        match kind {
            LinkFaults::Netem => {
                let mut args: Vec<String> = ["qdisc", "replace", "dev", "eth0", "root", "netem"]
                    .map(String::from)
                    .to_vec();
                if netem.delay_ms > 0 {
                    args.extend(["delay".into(), format!("{}ms", netem.delay_ms)]);
                    if netem.jitter_ms > 0 {
                        args.push(format!("{}ms", netem.jitter_ms));
                    }
                }
                if netem.loss_pct > 0.0 {
                    args.extend(["loss".into(), format!("{}%", netem.loss_pct)]);
                }
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                self.must("tc", &refs);
            }
            LinkFaults::Netfilter => {
                self.hook_chain("TCHAOS_LINK", &[("OUTPUT", "-o")]);
                if netem.loss_pct > 0.0 {
                    let p = format!("{}", netem.loss_pct / 100.0);
                    self.iptables(&[
                        "-A",
                        "TCHAOS_LINK",
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &p,
                        "-j",
                        "DROP",
                    ]);
                }
                if netem.delay_ms > 0 {
                    self.start_delayer(netem);
                    // Bypass: were the program gone, packets would pass undelayed.
                    self.iptables(&[
                        "-A",
                        "TCHAOS_LINK",
                        "-j",
                        "NFQUEUE",
                        "--queue-num",
                        QUEUE,
                        "--queue-bypass",
                    ]);
                }
            }
        }
        kind
    }

    fn start_delayer(&mut self, netem: Netem) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("chaos/delay.py");
        let log = std::env::temp_dir().join(format!("{}-delay.log", self.ns));
        let args = [
            script.display().to_string(),
            QUEUE.to_owned(),
            netem.delay_ms.to_string(),
            netem.jitter_ms.to_string(),
            DELAYER_LIFETIME_S.to_string(),
        ];
        let pid = self.spawn(std::path::Path::new(PYTHON), &args, &log);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready")
        {
            assert!(
                std::time::Instant::now() < deadline && self.running(pid),
                "delay program on {} did not start: {}",
                self.name,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.delayer = Some(pid);
    }

    /// Removes every link fault (netem or rules and delay program).
    pub fn clear_netem(&mut self) {
        let _ = self.run("tc", &["qdisc", "del", "dev", "eth0", "root"]);
        let _ = self.run("iptables", &["-w", "-F", "TCHAOS_LINK"]);
        if let Some(pid) = self.delayer.take() {
            self.kill(pid);
        }
    }

    /// Drops every packet in and out of `eth0` silently (no RST, no ICMP):
    /// the host is cut off from the network. Loopback is untouched.
    pub fn partition(&self) {
        self.hook_chain("TCHAOS_CUT", &[("INPUT", "-i"), ("OUTPUT", "-o")]);
        self.iptables(&["-A", "TCHAOS_CUT", "-j", "DROP"]);
    }

    /// Drops packets between this host and `peer_ip` only.
    pub fn partition_from(&self, peer_ip: &str) {
        self.hook_chain("TCHAOS_CUT", &[("INPUT", "-i"), ("OUTPUT", "-o")]);
        self.iptables(&["-A", "TCHAOS_CUT", "-s", peer_ip, "-j", "DROP"]);
        self.iptables(&["-A", "TCHAOS_CUT", "-d", peer_ip, "-j", "DROP"]);
    }

    /// Removes every partition rule: the partition heals.
    pub fn heal(&self) {
        let _ = self.run("iptables", &["-w", "-F", "TCHAOS_CUT"]);
    }
}
