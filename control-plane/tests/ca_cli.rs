//! `tether-control ca init` and `token ...`: files, modes and refusals as an
//! operator meets them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether-control"))
        .args(args)
        .arg("--ca-dir")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn ca_init(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether-control"))
        .args(["ca", "init", "--trust-domain", "tether.local", "--dir"])
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn ca_init_writes_the_key_0600_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path().join("ca");
    let first = ca_init(&dir);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(mode(&dir.join("ca-key.pem")), 0o600, "the CA key is 0600");
    assert_eq!(mode(&dir.join("ca.pem")), 0o644);
    assert_eq!(mode(&dir), 0o700, "the CA directory is 0700");
    let key = std::fs::read(dir.join("ca-key.pem")).unwrap_or_default();
    assert!(
        !text(&first.stdout).contains("PRIVATE KEY")
            && !text(&first.stderr).contains("PRIVATE KEY"),
        "the key is never printed"
    );
    let second = ca_init(&dir);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        text(&second.stderr).contains("already exists"),
        "{}",
        text(&second.stderr)
    );
    assert_eq!(
        std::fs::read(dir.join("ca-key.pem")).unwrap_or_default(),
        key,
        "the existing key is untouched"
    );
}

/// A mesh.yaml with a static catalog: revocations live in the CA directory.
fn static_mesh(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("mesh.yaml");
    std::fs::write(
        &path,
        "mesh:\n  catalog:\n    static:\n      services: {}\nservices:\n  api: {}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    path
}

#[test]
fn tokens_are_signed_stored_nowhere_and_revocable_by_id_or_text() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path().join("ca");
    assert!(ca_init(&dir).status.success());
    let created = run(
        &["token", "create", "--service", "api", "--ttl", "2h"],
        &dir,
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let token = text(&created.stdout).trim().to_owned();
    assert!(token.starts_with("tjt1.api."), "{token}");
    assert!(
        !dir.join("tokens.json").exists(),
        "signed tokens are stored nowhere"
    );
    let claims =
        tether_certs::TokenClaims::read_unverified(&token).unwrap_or_else(|e| panic!("{e}"));
    let stderr = text(&created.stderr);
    assert!(
        stderr.contains(&format!("token id {} for api, valid until", claims.id)),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&token),
        "the token is printed once, on stdout"
    );

    let out_file = tmp.path().join("web.token");
    let to_file = Command::new(env!("CARGO_BIN_EXE_tether-control"))
        .args(["token", "create", "--service", "web", "--out"])
        .arg(&out_file)
        .arg("--ca-dir")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(to_file.status.success(), "{}", text(&to_file.stderr));
    assert!(
        text(&to_file.stdout).is_empty(),
        "the token goes to the file only"
    );
    assert_eq!(mode(&out_file), 0o600);
    let too_long = run(
        &["token", "create", "--service", "api", "--ttl", "20y"],
        &dir,
    );
    assert_eq!(too_long.status.code(), Some(1));
    assert!(text(&too_long.stderr).contains("outlives the CA"));

    // Static catalog: the CA directory holds the revocations.
    let mesh = static_mesh(tmp.path());
    let mesh = mesh.to_str().unwrap_or_default();
    let revoke = |target: &str, ca_dir: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tether-control"));
        command.args(["token", "revoke", target, "--config", mesh]);
        if ca_dir {
            command.arg("--ca-dir").arg(&dir);
        }
        command.output().unwrap_or_else(|e| panic!("{e}"))
    };
    let no_dir = revoke(&claims.id, false);
    assert_eq!(no_dir.status.code(), Some(1));
    assert!(
        text(&no_dir.stderr).contains("pass --ca-dir"),
        "{}",
        text(&no_dir.stderr)
    );
    let by_id = revoke(&claims.id, true);
    assert!(by_id.status.success(), "{}", text(&by_id.stderr));
    assert!(
        text(&by_id.stdout).contains(&format!("revoked join token {}", claims.id)),
        "{}",
        text(&by_id.stdout)
    );
    assert_eq!(mode(&dir.join("revoked-tokens.json")), 0o600);
    let again = revoke(&token, true);
    assert!(
        text(&again.stdout).contains("was already revoked"),
        "{}",
        text(&again.stdout)
    );
    let listed = Command::new(env!("CARGO_BIN_EXE_tether-control"))
        .args(["token", "list-revoked", "--config", mesh, "--ca-dir"])
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text(&listed.stdout).contains(&claims.id),
        "{}",
        text(&listed.stdout)
    );

    // A token of another CA is not this mesh's to revoke.
    let other = tmp.path().join("other");
    assert!(ca_init(&other).status.success());
    let foreign = text(&run(&["token", "create", "--service", "api"], &other).stdout);
    let refused = revoke(foreign.trim(), true);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("not made with the CA"),
        "{}",
        text(&refused.stderr)
    );
    let garbage = revoke("not-a-token", true);
    assert_eq!(garbage.status.code(), Some(1));

    // Legacy tokens.json: revoked per service.
    let legacy = run(&["token", "revoke", "--service", "api"], &dir);
    assert!(
        text(&legacy.stdout).contains("revoked 0 token(s) of api"),
        "{}",
        text(&legacy.stderr)
    );
}

#[test]
fn no_token_for_the_control_plane_identity_or_without_a_ca() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path().join("ca");
    let no_ca = run(&["token", "create", "--service", "api"], &dir);
    assert_eq!(no_ca.status.code(), Some(1));
    assert!(
        text(&no_ca.stderr).contains("ca init"),
        "{}",
        text(&no_ca.stderr)
    );
    assert!(ca_init(&dir).status.success());
    let reserved = run(&["token", "create", "--service", "tether-control"], &dir);
    assert_eq!(reserved.status.code(), Some(1));
    assert!(text(&reserved.stderr).contains("control plane's own identity"));
}
