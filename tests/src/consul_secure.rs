//! A Consul dev agent run the way production runs it: its HTTP API on
//! HTTPS with a CA of its own and client certificates required
//! (`verify_incoming`), and ACLs on with a default-deny policy. Plain HTTP
//! stays open on loopback for the harness's own setup calls, which carry
//! the management token; Tether is only ever pointed at the HTTPS port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::consul::Consul;
use crate::free_port;

/// The management token of the test agent.
const MANAGEMENT_TOKEN: &str = "5ecf0b1e-0000-4000-8000-000000000001";

/// An HTTPS + ACL agent and the files to reach it.
pub struct SecureConsul {
    /// The agent (its plain-HTTP API, used by the harness with the
    /// management token).
    pub agent: Consul,
    /// The HTTPS API.
    pub https: SocketAddr,
    dir: tempfile::TempDir,
}

impl SecureConsul {
    /// Starts the agent with a fresh CA, server and client certificates.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        write_pki(dir.path());
        let https: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let file = |name: &str| dir.path().join(name).display().to_string();
        let config = serde_json::json!({
            "ports": { "https": https.port() },
            "tls": {
                "defaults": {
                    "ca_file": file("ca.pem"),
                    "cert_file": file("server.pem"),
                    "key_file": file("server-key.pem"),
                    "verify_incoming": false,
                    "verify_outgoing": false
                },
                "https": { "verify_incoming": true }
            },
            "acl": {
                "enabled": true,
                "default_policy": "deny",
                "enable_token_persistence": false,
                "tokens": { "initial_management": MANAGEMENT_TOKEN, "agent": MANAGEMENT_TOKEN }
            }
        });
        let config_path = dir.path().join("consul.json");
        std::fs::write(&config_path, config.to_string()).unwrap_or_else(|e| panic!("{e}"));
        let agent = Consul::start_with(
            free_port(),
            &[format!("-config-file={}", config_path.display())],
            Some(MANAGEMENT_TOKEN.to_owned()),
        )
        .await;
        Self { agent, https, dir }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.https)
    }

    /// A file of the test PKI: `ca.pem`, `client.pem`, `client-key.pem`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Creates an ACL policy with `rules` and a token holding only it;
    /// returns the token's secret.
    pub async fn token_with(&self, name: &str, rules: &str) -> String {
        let policy = serde_json::json!({ "Name": name, "Rules": rules });
        self.agent.put("/v1/acl/policy", policy.to_string()).await;
        let token = serde_json::json!({ "Description": name, "Policies": [{ "Name": name }] });
        let body = self.agent.put("/v1/acl/token", token.to_string()).await;
        let answer: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        answer["SecretID"]
            .as_str()
            .unwrap_or_else(|| panic!("no SecretID in {body}"))
            .to_owned()
    }

    /// Writes `token` to a file (0600) and returns its path.
    pub fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{token}\n")).unwrap_or_else(|e| panic!("{e}"));
        path
    }
}

/// CA, a server certificate for 127.0.0.1 / localhost / server.dc1.consul,
/// and a client certificate, as PEM files in `dir`.
fn write_pki(dir: &Path) {
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let ca_key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
    ca.distinguished_name
        .push(DnType::CommonName, "Consul test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap_or_else(|e| panic!("{e}"));
    write("ca.pem", ca_cert.pem());
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, stem: &str| {
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut params = CertificateParams::new(names).unwrap_or_else(|e| panic!("{e}"));
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &issuer)
            .unwrap_or_else(|e| panic!("{e}"));
        write(&format!("{stem}.pem"), cert.pem());
        write(&format!("{stem}-key.pem"), key.serialize_pem());
    };
    leaf(
        vec!["localhost".into(), "server.dc1.consul".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "server",
    );
    leaf(
        vec!["client.dc1.consul".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
        "client",
    );
}
