//! How the control plane reaches Consul, resolved the way Consul's own tools
//! do: mesh.yaml's `mesh.catalog.consul` keys first, then Consul's
//! conventional environment variables (`CONSUL_HTTP_ADDR`,
//! `CONSUL_HTTP_TOKEN_FILE`, `CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_SSL`,
//! `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`,
//! `CONSUL_TLS_SERVER_NAME`), then the local agent's default address. Files
//! (token, CA, client certificate) are read here, at load and on every
//! reload, so a bad one is reported with the rest of mesh.yaml's problems
//! and a rotated token is picked up by a reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::validate::Problems;
use super::ConsulConfig;

/// Where a local Consul agent listens when nothing says otherwise.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";

/// Environment variables read, as Consul's CLI and API client name them.
const ENV_ADDR: &str = "CONSUL_HTTP_ADDR";
const ENV_SSL: &str = "CONSUL_HTTP_SSL";
const ENV_TOKEN: &str = "CONSUL_HTTP_TOKEN";
const ENV_TOKEN_FILE: &str = "CONSUL_HTTP_TOKEN_FILE";
const ENV_CACERT: &str = "CONSUL_CACERT";
const ENV_CLIENT_CERT: &str = "CONSUL_CLIENT_CERT";
const ENV_CLIENT_KEY: &str = "CONSUL_CLIENT_KEY";
const ENV_SERVER_NAME: &str = "CONSUL_TLS_SERVER_NAME";

/// TLS to Consul's HTTPS API, built from the CA (and client certificate)
/// files.
#[derive(Clone)]
pub struct ConsulTls {
    /// The rustls config (Consul's CA as the only root; TLS 1.3).
    pub config: Arc<tokio_rustls::rustls::ClientConfig>,
    /// The name Consul's certificate must carry, when not the address's host.
    pub server_name: Option<String>,
    /// The files' contents, so a reload with changed files counts as a change.
    material: String,
}

impl std::fmt::Debug for ConsulTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ConsulTls {
    fn eq(&self, other: &Self) -> bool {
        self.server_name == other.server_name && self.material == other.material
    }
}

/// Fills in `consul`'s address, token and TLS from its own keys, then from
/// `env` (Consul's variables), reporting unusable values to `problems`.
pub fn resolve(
    problems: &mut Problems<'_>,
    consul: &mut ConsulConfig,
    env: &dyn Fn(&str) -> Option<String>,
) {
    let keys = ["mesh", "catalog", "consul"];
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if consul.address.is_empty() {
        consul.address = match env(ENV_ADDR) {
            Some(addr) => with_scheme(addr.trim(), env(ENV_SSL).as_deref()),
            None => DEFAULT_ADDRESS.to_owned(),
        };
    }
    let token_file = consul.token_file.clone().or_else(|| {
        consul
            .token
            .is_none()
            .then(|| env(ENV_TOKEN_FILE).map(PathBuf::from))
            .flatten()
    });
    if let Some(path) = token_file {
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => consul.token = Some(text.trim().to_owned()),
            Ok(_) => problems.at(
                &keys,
                format!("consul token file {} is empty", path.display()),
            ),
            Err(e) => problems.at(&keys, format!("consul token file {}: {e}", path.display())),
        }
    } else if consul.token.is_none() {
        consul.token = env(ENV_TOKEN).map(|t| t.trim().to_owned());
    }
    let https = consul.address.starts_with("https://");
    let ca_file = consul
        .ca_file
        .clone()
        .or_else(|| env(ENV_CACERT).map(PathBuf::from));
    let cert_file = consul
        .cert_file
        .clone()
        .or_else(|| env(ENV_CLIENT_CERT).map(PathBuf::from));
    let key_file = consul
        .key_file
        .clone()
        .or_else(|| env(ENV_CLIENT_KEY).map(PathBuf::from));
    let server_name = consul
        .tls_server_name
        .clone()
        .or_else(|| env(ENV_SERVER_NAME));
    if !https {
        // Only complain about TLS keys written in mesh.yaml: the environment
        // may be shared with Consul's CLI, which uses them for another agent.
        if consul.ca_file.is_some()
            || consul.cert_file.is_some()
            || consul.tls_server_name.is_some()
        {
            problems.at(
                &keys,
                format!(
                    "consul TLS settings given but consul.address `{}` is not https://",
                    consul.address
                ),
            );
        }
        return;
    }
    let Some(ca_file) = ca_file else {
        problems.at(
            &keys,
            format!("consul.address `{}` is https: set consul.ca_file (or CONSUL_CACERT) to the CA that signed Consul's certificate", consul.address),
        );
        return;
    };
    let read = |path: &Path, what: &str, problems: &mut Problems<'_>| match std::fs::read_to_string(
        path,
    ) {
        Ok(text) => Some(text),
        Err(e) => {
            problems.at(&keys, format!("consul {what} {}: {e}", path.display()));
            None
        }
    };
    let Some(ca) = read(&ca_file, "CA file", problems) else {
        return;
    };
    let client = match (cert_file, key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let (Some(cert), Some(key)) = (
                read(&cert, "client certificate", problems),
                read(&key, "client key", problems),
            ) else {
                return;
            };
            Some((cert, key))
        }
        _ => {
            problems.at(&keys, "consul client certificate: set both cert_file and key_file (or CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY), or neither");
            return;
        }
    };
    let pem = client
        .as_ref()
        .map(|(chain, key)| tether_certs::ClientCertPem { chain, key });
    match tether_certs::ca_client_config(&ca, pem) {
        Ok(config) => {
            let mut material = ca;
            if let Some((cert, key)) = &client {
                material.push_str(cert);
                material.push_str(key);
            }
            consul.tls = Some(ConsulTls {
                config,
                server_name,
                material,
            });
        }
        Err(e) => problems.at(&keys, format!("consul TLS ({}): {e}", ca_file.display())),
    }
}

/// `CONSUL_HTTP_ADDR` may be `host:port` alone; the scheme then follows
/// `CONSUL_HTTP_SSL`, as in Consul's client.
fn with_scheme(addr: &str, ssl: Option<&str>) -> String {
    if addr.contains("://") {
        return addr.to_owned();
    }
    let https = ssl.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "t" | "yes"
        )
    });
    format!("{}://{addr}", if https { "https" } else { "http" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TEXT: &str = "mesh:\n  catalog:\n    consul: {}\n";

    fn consul() -> ConsulConfig {
        serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"))
    }

    fn resolved(mut consul: ConsulConfig, env: &[(&str, String)]) -> (ConsulConfig, Vec<String>) {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let mut problems = Problems::new(Path::new("mesh.yaml"), TEXT);
        resolve(&mut problems, &mut consul, &|name| env.get(name).cloned());
        let found = problems.finish().err().map(|e| e.0).unwrap_or_default();
        (consul, found)
    }

    fn ca_file(dir: &Path) -> String {
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = rcgen::CertificateParams::new(vec!["consul".to_owned()])
            .and_then(|p| p.self_signed(&key))
            .unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("consul-ca.pem");
        std::fs::write(&path, cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        path.display().to_string()
    }

    #[test]
    fn nothing_set_is_the_local_agent() {
        let (c, problems) = resolved(consul(), &[]);
        assert_eq!(c.address, DEFAULT_ADDRESS);
        assert_eq!(c.token, None);
        assert!(c.tls.is_none());
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn consul_environment_variables_fill_what_mesh_yaml_leaves_out() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let token = dir.path().join("token");
        std::fs::write(&token, "file-secret\n").unwrap_or_else(|e| panic!("{e}"));
        let env = [
            ("CONSUL_HTTP_ADDR", "consul.example:8501".to_owned()),
            ("CONSUL_HTTP_SSL", "true".to_owned()),
            ("CONSUL_CACERT", ca_file(dir.path())),
            ("CONSUL_HTTP_TOKEN", "env-secret".to_owned()),
            ("CONSUL_HTTP_TOKEN_FILE", token.display().to_string()),
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul".to_owned()),
        ];
        let (c, problems) = resolved(consul(), &env);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.address, "https://consul.example:8501");
        // Like Consul's client: the token file wins over the token variable.
        assert_eq!(c.token.as_deref(), Some("file-secret"));
        let tls = c.tls.unwrap_or_else(|| panic!("TLS from CONSUL_CACERT"));
        assert_eq!(tls.server_name.as_deref(), Some("server.dc1.consul"));
        // mesh.yaml's own keys win over the environment.
        let mut own = consul();
        own.address = "http://127.0.0.1:8500".to_owned();
        own.token = Some("yaml-secret".to_owned());
        let (c, problems) = resolved(own, &env);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.address, "http://127.0.0.1:8500");
        assert_eq!(c.token.as_deref(), Some("yaml-secret"));
        assert!(c.tls.is_none(), "plain http needs no TLS");
    }

    #[test]
    fn unusable_files_are_reported() {
        let mut c = consul();
        c.address = "https://consul:8501".to_owned();
        c.token_file = Some("/nonexistent/token".into());
        c.ca_file = Some("/nonexistent/ca.pem".into());
        let (_, problems) = resolved(c, &[]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("mesh.yaml:3:5: consul token file /nonexistent/token:"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("consul CA file /nonexistent/ca.pem"),
            "{problems:?}"
        );
        let mut c = consul();
        c.address = "http://consul:8500".to_owned();
        c.ca_file = Some("/x.pem".into());
        let (_, problems) = resolved(c, &[]);
        assert_eq!(problems, ["mesh.yaml:3:5: consul TLS settings given but consul.address `http://consul:8500` is not https://"]);
    }

    #[test]
    fn an_address_without_scheme_follows_consul_http_ssl() {
        assert_eq!(with_scheme("127.0.0.1:8500", None), "http://127.0.0.1:8500");
        assert_eq!(
            with_scheme("consul:8501", Some("true")),
            "https://consul:8501"
        );
        assert_eq!(
            with_scheme("https://consul:8501", Some("false")),
            "https://consul:8501"
        );
    }
}
