//! Tether's images on the real container engine: what the runtime image
//! holds and runs as, and the init image writing the capture rules into a
//! container's network namespace (with NET_ADMIN only).

use tether_e2e::docker::{docker, ensure_images, Container, INIT_IMAGE, RUNTIME_IMAGE};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_runtime_image_runs_the_binaries_as_uid_1337_with_no_shell() {
    ensure_images();
    let user = docker(&[
        "image",
        "inspect",
        RUNTIME_IMAGE,
        "--format",
        "{{.Config.User}}",
    ]);
    assert_eq!(text(&user.stdout).trim(), "1337:1337");
    let version = docker(&["run", "--rm", RUNTIME_IMAGE, "--version"]);
    assert!(
        text(&version.stdout).starts_with("tether-proxy "),
        "{version:?}"
    );
    for bin in [
        "/usr/local/bin/tether-control",
        "/usr/local/bin/tether-sample",
    ] {
        let out = docker(&["run", "--rm", "--entrypoint", bin, RUNTIME_IMAGE, "--help"]);
        assert!(out.status.success(), "{bin}: {}", text(&out.stderr));
    }
    let shell = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/sh",
        RUNTIME_IMAGE,
        "-c",
        "true",
    ]);
    assert!(!shell.status.success(), "the runtime image has no shell");
}

#[test]
fn the_init_image_captures_a_pods_namespace_only_with_net_admin() {
    ensure_images();
    // The "pod": a container whose network namespace the init step joins.
    let pod = Container::run(&[
        "--entrypoint",
        "/usr/local/bin/tether-sample",
        RUNTIME_IMAGE,
        "--listen",
        "0.0.0.0:8080",
    ]);
    let net = pod.net();

    let refused = docker(&["run", "--rm", "--net", &net, INIT_IMAGE]);
    // docker's default capabilities lack NET_ADMIN.
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("NET_ADMIN"),
        "{}",
        text(&refused.stderr)
    );

    let init = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--rm",
            "--net",
            &net,
            "--cap-add",
            "NET_ADMIN",
            INIT_IMAGE,
        ];
        args.extend_from_slice(extra);
        docker(&args)
    };
    let first = init(&["--exclude-outbound-ports", "8500"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("capture rules applied"),
        "{}",
        text(&first.stderr)
    );
    let again = init(&["--exclude-outbound-ports", "8500"]);
    assert!(
        text(&again.stderr).contains("already in force"),
        "{}",
        text(&again.stderr)
    );
    let cleanup = init(&["--cleanup"]);
    assert!(
        text(&cleanup.stderr).contains("capture rules removed"),
        "{}",
        text(&cleanup.stderr)
    );
}
