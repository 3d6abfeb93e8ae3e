//! `tether-proxy init`: the transparent-capture rules, applied for real in
//! network namespaces the test creates, with both iptables back ends.

use std::process::Output;

use tether_e2e::netns::{Netns, Pair};
use tether_e2e::proxy::proxy_bin;

const APP_PORT: u16 = 8080;

fn init(ns: &Netns, args: &[&str]) -> Output {
    let bin = proxy_bin();
    let mut all = vec!["init"];
    all.extend_from_slice(args);
    ns.run(bin.to_str().unwrap_or_default(), &all)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn nat_rules(ns: &Netns, iptables: &str) -> String {
    let out = ns.run(&format!("{iptables}-save"), &["-t", "nat"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn captures_and_cleans_up_with(iptables: &str) {
    let mut pair = Pair::new();
    // The peer host's app; the app host's stand-in listeners for the proxy.
    pair.peer.respond("0.0.0.0", APP_PORT, "peer-app");
    pair.app.respond("127.0.0.1", 15001, "outbound-listener");
    pair.app.respond("0.0.0.0", 15443, "inbound-listener");
    pair.app.respond("0.0.0.0", APP_PORT, "app");
    let peer_ip = pair.peer_ip.clone();
    let app_ip = pair.app_ip.clone();
    assert_eq!(
        pair.app.connect(&peer_ip, APP_PORT, None).as_deref(),
        Some("peer-app")
    );

    let out = init(&pair.app, &["--iptables-binary", iptables]);
    assert!(out.status.success(), "init failed: {}", stderr(&out));
    assert!(
        stderr(&out).contains("capture rules applied"),
        "{}",
        stderr(&out)
    );

    // The app's connection goes to the outbound listener...
    assert_eq!(
        pair.app.connect(&peer_ip, APP_PORT, None).as_deref(),
        Some("outbound-listener"),
        "an app connection is redirected to the outbound listener"
    );
    // ...the proxy's own (uid 1337) goes where it is addressed...
    assert_eq!(
        pair.app.connect(&peer_ip, APP_PORT, Some(1337)).as_deref(),
        Some("peer-app"),
        "the proxy's uid is not captured"
    );
    // ...and loopback stays loopback.
    assert_eq!(
        pair.app.connect("127.0.0.1", APP_PORT, None).as_deref(),
        Some("app")
    );
    // A caller from outside reaching the app's port lands on the inbound
    // listener, not the app.
    assert_eq!(
        pair.peer.connect(&app_ip, APP_PORT, None).as_deref(),
        Some("inbound-listener"),
        "inbound to the app's port is redirected to the inbound listener"
    );

    // A second run changes nothing.
    let before = nat_rules(&pair.app, iptables);
    let out = init(&pair.app, &["--iptables-binary", iptables]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already in force"),
        "{}",
        stderr(&out)
    );
    assert_eq!(nat_rules(&pair.app, iptables), before);

    // --cleanup restores direct connections and leaves no Tether rule.
    let out = init(&pair.app, &["--cleanup", "--iptables-binary", iptables]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!nat_rules(&pair.app, iptables).contains("TETHER"));
    assert_eq!(
        pair.app.connect(&peer_ip, APP_PORT, None).as_deref(),
        Some("peer-app")
    );
    assert_eq!(
        pair.peer.connect(&app_ip, APP_PORT, None).as_deref(),
        Some("app")
    );
}

#[test]
fn init_captures_the_app_not_the_proxy_with_nft() {
    captures_and_cleans_up_with("iptables-nft");
}

#[test]
fn init_captures_the_app_not_the_proxy_with_legacy() {
    captures_and_cleans_up_with("iptables-legacy");
}

fn ip6_rules(ns: &Netns, ip6tables: &str) -> String {
    let out = ns.run(&format!("{ip6tables}-save"), &["-t", "filter"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// TCP over IPv6 is not redirected, so it must not go around the proxy.
fn ipv6_is_refused_around_the_proxy_with(iptables: &str) {
    let ip6tables = iptables.replacen("iptables", "ip6tables", 1);
    let mut pair = Pair::new();
    pair.peer.respond("::", APP_PORT, "peer-app6");
    pair.app.respond("::", APP_PORT, "app6");
    pair.app.respond("::", 2222, "ssh6");
    let (app6, peer6) = (pair.app_ip6.clone(), pair.peer_ip6.clone());
    assert_eq!(
        pair.app.connect(&peer6, APP_PORT, None).as_deref(),
        Some("peer-app6"),
        "IPv6 works before init"
    );
    assert_eq!(
        pair.peer.connect(&app6, APP_PORT, None).as_deref(),
        Some("app6")
    );

    let args = [
        "--iptables-binary",
        iptables,
        "--exclude-inbound-ports",
        "2222",
    ];
    let out = init(&pair.app, &args);
    assert!(out.status.success(), "init failed: {}", stderr(&out));
    assert!(
        stderr(&out).contains("IPv6 guard applied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        pair.app.connect(&peer6, APP_PORT, None),
        None,
        "the app cannot go around its sidecar over IPv6"
    );
    assert_eq!(
        pair.peer.connect(&app6, APP_PORT, None),
        None,
        "a caller cannot reach the app around its sidecar over IPv6"
    );
    assert_eq!(
        pair.app.connect(&peer6, APP_PORT, Some(1337)).as_deref(),
        Some("peer-app6"),
        "the proxy's own IPv6 connections pass"
    );
    assert_eq!(
        pair.app.connect("::1", APP_PORT, None).as_deref(),
        Some("app6"),
        "IPv6 loopback passes"
    );
    assert_eq!(
        pair.peer.connect(&app6, 2222, None).as_deref(),
        Some("ssh6"),
        "an excluded inbound port passes"
    );

    let before = ip6_rules(&pair.app, &ip6tables);
    let out = init(&pair.app, &args);
    assert!(
        stderr(&out).contains("IPv6 guard already in force"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        ip6_rules(&pair.app, &ip6tables),
        before,
        "a second run is a no-op"
    );

    // --ipv6 leave takes the guard away.
    let out = init(
        &pair.app,
        &["--iptables-binary", iptables, "--ipv6", "leave"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!ip6_rules(&pair.app, &ip6tables).contains("TETHER"));
    assert_eq!(
        pair.app.connect(&peer6, APP_PORT, None).as_deref(),
        Some("peer-app6")
    );

    // --cleanup removes the guard too.
    let out = init(&pair.app, &["--iptables-binary", iptables]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ip6_rules(&pair.app, &ip6tables).contains("TETHER_OUTBOUND6"));
    let out = init(&pair.app, &["--cleanup", "--iptables-binary", iptables]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!ip6_rules(&pair.app, &ip6tables).contains("TETHER"));
    assert_eq!(
        pair.peer.connect(&app6, APP_PORT, None).as_deref(),
        Some("app6")
    );
}

#[test]
fn ipv6_is_refused_around_the_proxy_with_nft() {
    ipv6_is_refused_around_the_proxy_with("iptables-nft");
}

#[test]
fn ipv6_is_refused_around_the_proxy_with_legacy() {
    ipv6_is_refused_around_the_proxy_with("iptables-legacy");
}

#[test]
fn excluded_destinations_and_ports_are_reached_directly() {
    let mut pair = Pair::new();
    pair.peer.respond("0.0.0.0", APP_PORT, "peer-app");
    pair.peer.respond("0.0.0.0", 8500, "consul");
    pair.app.respond("127.0.0.1", 15001, "outbound-listener");
    let peer_ip = pair.peer_ip.clone();
    let out = init(&pair.app, &["--exclude-outbound-ports", "8500"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        pair.app.connect(&peer_ip, 8500, None).as_deref(),
        Some("consul")
    );
    assert_eq!(
        pair.app.connect(&peer_ip, APP_PORT, None).as_deref(),
        Some("outbound-listener")
    );
    let cidr = format!("{peer_ip}/32");
    let out = init(&pair.app, &["--exclude-outbound-cidrs", &cidr]);
    assert!(stderr(&out).contains("replaced"), "{}", stderr(&out));
    assert_eq!(
        pair.app.connect(&peer_ip, APP_PORT, None).as_deref(),
        Some("peer-app")
    );
}

#[test]
fn dry_run_prints_the_rules_and_changes_nothing() {
    let pair = Pair::new();
    let out = init(
        &pair.app,
        &["--dry-run", "--iptables-binary", "iptables-nft"],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-A TETHER_OUTBOUND -m owner --uid-owner 1337 -j RETURN"),
        "{text}"
    );
    assert!(text.contains("REDIRECT --to-ports 15001"), "{text}");
    assert!(!nat_rules(&pair.app, "iptables-nft").contains("TETHER"));
}

#[test]
fn without_net_admin_init_fails_clearly() {
    let pair = Pair::new();
    let bin = proxy_bin();
    let out = pair.app.run(
        "setpriv",
        &[
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "--inh-caps=-all",
            bin.to_str().unwrap_or_default(),
            "init",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("NET_ADMIN"), "{}", stderr(&out));
}
