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

#[test]
fn tokens_are_stored_as_hashes_0600_and_revocable() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path().join("ca");
    assert!(ca_init(&dir).status.success());
    let created = run(&["token", "create", "--service", "api"], &dir);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let token = text(&created.stdout).trim().to_owned();
    assert_eq!(token.len(), 43, "32 random bytes, base64url: {token}");
    let store = std::fs::read_to_string(dir.join("tokens.json")).unwrap_or_default();
    assert!(!store.contains(&token), "only the hash is stored");
    assert!(store.contains("\"service\": \"api\""), "{store}");
    assert_eq!(mode(&dir.join("tokens.json")), 0o600);

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

    let listed = text(&run(&["token", "list"], &dir).stdout);
    assert!(listed.contains("api") && listed.contains("web"), "{listed}");
    let revoked = run(&["token", "revoke", "--service", "api"], &dir);
    assert!(text(&revoked.stdout).contains("revoked 1 token(s) of api"));
    assert!(!text(&run(&["token", "list"], &dir).stdout).contains("api"));
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
