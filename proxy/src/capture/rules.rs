//! The capture rules as `iptables-restore` input: pure, so `--dry-run`, the
//! idempotence check and the tests all see exactly what is applied.

use super::Cidr;

/// Chain that PREROUTING jumps to: what arrives for the app.
pub const INBOUND_CHAIN: &str = "TETHER_INBOUND";
/// Chain that redirects to the inbound listener.
pub const INBOUND_REDIRECT_CHAIN: &str = "TETHER_INBOUND_REDIRECT";
/// Chain that OUTPUT jumps to: what the app (or anything local) opens.
pub const OUTBOUND_CHAIN: &str = "TETHER_OUTBOUND";
/// Chain that redirects to the outbound listener.
pub const OUTBOUND_REDIRECT_CHAIN: &str = "TETHER_OUTBOUND_REDIRECT";
/// Every chain Tether owns in the nat table, in the order they are declared.
pub const CHAINS: [&str; 4] = [
    INBOUND_CHAIN,
    INBOUND_REDIRECT_CHAIN,
    OUTBOUND_CHAIN,
    OUTBOUND_REDIRECT_CHAIN,
];
/// IPv6 filter chain that INPUT jumps to: TCP arriving over IPv6.
pub const INBOUND6_CHAIN: &str = "TETHER_INBOUND6";
/// IPv6 filter chain that OUTPUT jumps to: TCP leaving over IPv6.
pub const OUTBOUND6_CHAIN: &str = "TETHER_OUTBOUND6";
/// Every chain Tether owns in the IPv6 filter table.
pub const IPV6_CHAINS: [&str; 2] = [INBOUND6_CHAIN, OUTBOUND6_CHAIN];

/// What to capture and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSettings {
    /// Port of the proxy's outbound listener (redirect target for the app's
    /// connections).
    pub outbound_port: u16,
    /// Port of the proxy's inbound listener (redirect target for connections
    /// to the app's ports).
    pub inbound_port: u16,
    /// The proxy's admin port: never redirected inbound, so health checks
    /// and probes reach it.
    pub admin_port: u16,
    /// The uid the proxy runs as: its own connections are never captured.
    pub proxy_uid: u32,
    /// Capture inbound only to these ports; empty captures every inbound port
    /// but the excluded ones.
    pub inbound_ports: Vec<u16>,
    /// Destination blocks the app reaches directly (e.g. the Consul agent,
    /// the control plane): IPv4 blocks skip the capture, IPv6 blocks the
    /// IPv6 guard.
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Destination ports the app reaches directly.
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound ports that reach the app directly, not through the proxy.
    pub exclude_inbound_ports: Vec<u16>,
}

/// The rules for one table, as `iptables-save` would print them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// The table (`nat`, `filter`).
    pub table: &'static str,
    /// The chains Tether owns in it, in the order they are declared.
    pub chains: &'static [&'static str],
    /// The `-A …` lines, in order (chain declarations excluded).
    pub rules: Vec<String>,
}

impl RuleSet {
    /// The IPv6 guard of `settings` (ip6tables, filter table). Only IPv4 is
    /// redirected to the proxy, so TCP over IPv6 would go around it: a
    /// caller without a sidecar reaching the app, or the app reaching
    /// anything unseen. The guard refuses both with a TCP reset (so
    /// clients that tried IPv6 first fall back to IPv4 at once), except
    /// loopback, the proxy's own connections, replies, and what is
    /// excluded from the capture. UDP, ICMPv6 and neighbour discovery are
    /// untouched.
    pub fn ipv6_guard(settings: &CaptureSettings) -> Self {
        let mut rules = Vec::new();
        let mut add = |line: String| rules.push(line);
        add(format!("-A INPUT -p tcp -j {INBOUND6_CHAIN}"));
        add(format!("-A {INBOUND6_CHAIN} -i lo -j RETURN"));
        add(format!(
            "-A {INBOUND6_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
        ));
        for port in dedup(settings.exclude_inbound_ports.clone()) {
            add(format!(
                "-A {INBOUND6_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"
            ));
        }
        add(format!(
            "-A {INBOUND6_CHAIN} -p tcp -j REJECT --reject-with tcp-reset"
        ));
        add(format!("-A OUTPUT -p tcp -j {OUTBOUND6_CHAIN}"));
        add(format!("-A {OUTBOUND6_CHAIN} -o lo -j RETURN"));
        add(format!(
            "-A {OUTBOUND6_CHAIN} -m owner --uid-owner {} -j RETURN",
            settings.proxy_uid
        ));
        add(format!(
            "-A {OUTBOUND6_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
        ));
        for cidr in settings
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| !c.is_ipv4())
        {
            add(format!("-A {OUTBOUND6_CHAIN} -d {cidr} -j RETURN"));
        }
        for port in dedup(settings.exclude_outbound_ports.clone()) {
            add(format!(
                "-A {OUTBOUND6_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"
            ));
        }
        add(format!(
            "-A {OUTBOUND6_CHAIN} -p tcp -j REJECT --reject-with tcp-reset"
        ));
        Self {
            table: "filter",
            chains: &IPV6_CHAINS,
            rules,
        }
    }

    /// The capture rules of `settings` (iptables, nat table).
    pub fn new(settings: &CaptureSettings) -> Self {
        let mut rules = Vec::new();
        let mut add = |line: String| rules.push(line);

        // Inbound: PREROUTING sees what arrives from outside the namespace.
        add(format!("-A PREROUTING -p tcp -j {INBOUND_CHAIN}"));
        let mut skip_in = vec![settings.admin_port, settings.inbound_port];
        skip_in.extend(&settings.exclude_inbound_ports);
        for port in dedup(skip_in) {
            add(format!(
                "-A {INBOUND_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"
            ));
        }
        if settings.inbound_ports.is_empty() {
            add(format!(
                "-A {INBOUND_CHAIN} -p tcp -j {INBOUND_REDIRECT_CHAIN}"
            ));
        } else {
            for port in dedup(settings.inbound_ports.clone()) {
                add(format!(
                    "-A {INBOUND_CHAIN} -p tcp -m tcp --dport {port} -j {INBOUND_REDIRECT_CHAIN}"
                ));
            }
        }
        add(format!(
            "-A {INBOUND_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            settings.inbound_port
        ));

        // Outbound: OUTPUT sees what processes in the namespace open.
        add(format!("-A OUTPUT -p tcp -j {OUTBOUND_CHAIN}"));
        // The proxy's own connections (to endpoints, the control plane,
        // the app) go where they are addressed: otherwise they would loop.
        add(format!(
            "-A {OUTBOUND_CHAIN} -m owner --uid-owner {} -j RETURN",
            settings.proxy_uid
        ));
        // Loopback stays loopback: the app calling its own sidecar
        // explicitly (127.0.0.1:15001), itself, or a local agent.
        add(format!("-A {OUTBOUND_CHAIN} -o lo -j RETURN"));
        add(format!("-A {OUTBOUND_CHAIN} -d 127.0.0.1/32 -j RETURN"));
        for cidr in settings
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| c.is_ipv4())
        {
            add(format!("-A {OUTBOUND_CHAIN} -d {cidr} -j RETURN"));
        }
        for port in dedup(settings.exclude_outbound_ports.clone()) {
            add(format!(
                "-A {OUTBOUND_CHAIN} -p tcp -m tcp --dport {port} -j RETURN"
            ));
        }
        add(format!("-A {OUTBOUND_CHAIN} -j {OUTBOUND_REDIRECT_CHAIN}"));
        add(format!(
            "-A {OUTBOUND_REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            settings.outbound_port
        ));
        Self {
            table: "nat",
            chains: &CHAINS,
            rules,
        }
    }

    /// `iptables-restore --noflush` input that declares (and so empties)
    /// Tether's chains and adds every rule, in one transaction.
    pub fn restore_input(&self) -> String {
        let mut text = format!("*{}\n", self.table);
        for chain in self.chains {
            text.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for rule in &self.rules {
            text.push_str(rule);
            text.push('\n');
        }
        text.push_str("COMMIT\n");
        text
    }

    /// The Tether rules found in `iptables-save -t nat` output.
    pub fn installed(save_output: &str) -> Vec<String> {
        save_output
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("-A ") && line.contains("TETHER_"))
            .map(str::to_owned)
            .collect()
    }

    /// Whether `installed` (as [`RuleSet::installed`] reads it) holds exactly
    /// these rules. iptables-save groups rules by chain (built-in chains
    /// first), so the order within each chain is what is compared.
    pub fn same_as(&self, installed: &[String]) -> bool {
        by_chain(&self.rules) == by_chain(installed)
    }
}

/// Rules grouped by chain, each chain's rules in order.
fn by_chain(rules: &[String]) -> std::collections::BTreeMap<&str, Vec<&str>> {
    let mut chains: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for rule in rules {
        let chain = rule.split_whitespace().nth(1).unwrap_or_default();
        chains.entry(chain).or_default().push(rule);
    }
    chains
}

fn dedup(mut ports: Vec<u16>) -> Vec<u16> {
    let mut seen = Vec::with_capacity(ports.len());
    ports.retain(|p| {
        let new = !seen.contains(p);
        seen.push(*p);
        new
    });
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CaptureSettings {
        CaptureSettings {
            outbound_port: 15001,
            inbound_port: 15443,
            admin_port: 15000,
            proxy_uid: 1337,
            inbound_ports: Vec::new(),
            exclude_outbound_cidrs: vec![
                "10.5.0.2/32".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            exclude_outbound_ports: vec![8500, 8500],
            exclude_inbound_ports: vec![22],
        }
    }

    #[test]
    fn the_proxy_uid_and_loopback_are_never_redirected_and_come_first() {
        let rules = RuleSet::new(&settings()).rules;
        let out: Vec<&String> = rules
            .iter()
            .filter(|r| r.starts_with("-A TETHER_OUTBOUND "))
            .collect();
        assert_eq!(
            out[0],
            "-A TETHER_OUTBOUND -m owner --uid-owner 1337 -j RETURN"
        );
        assert_eq!(out[1], "-A TETHER_OUTBOUND -o lo -j RETURN");
        assert_eq!(
            out.last().unwrap().as_str(),
            "-A TETHER_OUTBOUND -j TETHER_OUTBOUND_REDIRECT"
        );
        assert!(rules.contains(
            &"-A TETHER_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001".to_owned()
        ));
    }

    #[test]
    fn exclusions_return_before_the_redirect_and_ipv6_blocks_are_left_out_of_nat() {
        let rules = RuleSet::new(&settings()).rules;
        assert!(rules.contains(&"-A TETHER_OUTBOUND -d 10.5.0.2/32 -j RETURN".to_owned()));
        assert!(!rules.iter().any(|r| r.contains("fd00")));
        let consul: Vec<_> = rules
            .iter()
            .filter(|r| r.contains("--dport 8500"))
            .collect();
        assert_eq!(consul.len(), 1, "duplicate ports are written once");
        for port in [15000, 15443, 22] {
            let line = format!("-A TETHER_INBOUND -p tcp -m tcp --dport {port} -j RETURN");
            let at = rules.iter().position(|r| *r == line).unwrap();
            let redirect = rules
                .iter()
                .position(|r| r == "-A TETHER_INBOUND -p tcp -j TETHER_INBOUND_REDIRECT")
                .unwrap();
            assert!(at < redirect, "{line} comes before the redirect");
        }
    }

    #[test]
    fn listed_inbound_ports_limit_the_inbound_capture() {
        let mut s = settings();
        s.inbound_ports = vec![8080];
        let rules = RuleSet::new(&s).rules;
        assert!(rules.contains(
            &"-A TETHER_INBOUND -p tcp -m tcp --dport 8080 -j TETHER_INBOUND_REDIRECT".to_owned()
        ));
        assert!(!rules.contains(&"-A TETHER_INBOUND -p tcp -j TETHER_INBOUND_REDIRECT".to_owned()));
    }

    #[test]
    fn the_ipv6_guard_lets_loopback_the_proxy_replies_and_exclusions_pass_and_resets_the_rest() {
        let guard = RuleSet::ipv6_guard(&settings());
        assert_eq!(guard.table, "filter");
        let rules = &guard.rules;
        let last_in = rules
            .iter()
            .rposition(|r| r.starts_with("-A TETHER_INBOUND6 "))
            .unwrap();
        assert_eq!(
            rules[last_in],
            "-A TETHER_INBOUND6 -p tcp -j REJECT --reject-with tcp-reset"
        );
        assert_eq!(
            rules.last().unwrap(),
            "-A TETHER_OUTBOUND6 -p tcp -j REJECT --reject-with tcp-reset"
        );
        for pass in [
            "-A TETHER_INBOUND6 -i lo -j RETURN",
            "-A TETHER_INBOUND6 -p tcp -m tcp --dport 22 -j RETURN",
            "-A TETHER_OUTBOUND6 -o lo -j RETURN",
            "-A TETHER_OUTBOUND6 -m owner --uid-owner 1337 -j RETURN",
            "-A TETHER_OUTBOUND6 -d fd00::/8 -j RETURN",
            "-A TETHER_OUTBOUND6 -p tcp -m tcp --dport 8500 -j RETURN",
        ] {
            assert!(
                rules.iter().any(|r| r == pass),
                "{pass} missing: {rules:#?}"
            );
        }
        assert!(
            !rules.iter().any(|r| r.contains("10.5.0.2")),
            "IPv4 blocks stay out"
        );
        let text = guard.restore_input();
        assert!(text.starts_with("*filter\n:TETHER_INBOUND6 - [0:0]\n:TETHER_OUTBOUND6 - [0:0]\n"));
    }

    #[test]
    fn restore_input_declares_every_chain_and_commits_once() {
        let text = RuleSet::new(&settings()).restore_input();
        assert!(text.starts_with("*nat\n:TETHER_INBOUND - [0:0]\n"));
        assert_eq!(text.matches("COMMIT").count(), 1);
        assert_eq!(
            text.lines().filter(|l| l.starts_with(':')).count(),
            CHAINS.len()
        );
    }

    #[test]
    fn installed_reads_back_what_iptables_save_prints() {
        let rules = RuleSet::new(&settings());
        let save = format!(
            "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:TETHER_INBOUND - [0:0]\n-A DOCKER_OUTPUT -d 127.0.0.11/32 -j DNAT\n{}\nCOMMIT\n",
            rules.rules.join("\n")
        );
        assert_eq!(RuleSet::installed(&save), rules.rules);
        assert!(rules.same_as(&RuleSet::installed(&save)));
    }

    #[test]
    fn same_as_ignores_the_order_of_chains_but_not_of_rules_within_one() {
        let rules = RuleSet::new(&settings());
        let mut regrouped = rules.rules.clone();
        regrouped.sort_by_key(|r| r.split_whitespace().nth(1).map(str::to_owned));
        assert!(rules.same_as(&regrouped));
        let mut swapped = rules.rules.clone();
        let first = swapped
            .iter()
            .position(|r| r.starts_with("-A TETHER_OUTBOUND "))
            .unwrap();
        swapped.swap(first, first + 1);
        assert!(!rules.same_as(&swapped));
        assert!(!rules.same_as(&rules.rules[1..]));
    }
}
