//! The token and TLS the registration uses with its agent, resolved as
//! Consul's own tools do: the `--consul-*` flags first, then Consul's
//! environment variables (`CONSUL_HTTP_TOKEN_FILE`, `CONSUL_HTTP_TOKEN`,
//! `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`,
//! `CONSUL_TLS_SERVER_NAME`). Files are read once, at start.

use std::path::{Path, PathBuf};

use super::AgentTls;

/// What the flags say (each `None` when not given).
#[derive(Debug, Clone, Default)]
pub struct AccessFlags {
    /// `--consul-token`.
    pub token: Option<String>,
    /// `--consul-token-file`.
    pub token_file: Option<PathBuf>,
    /// `--consul-ca-cert`.
    pub ca_cert: Option<PathBuf>,
    /// `--consul-client-cert`.
    pub client_cert: Option<PathBuf>,
    /// `--consul-client-key`.
    pub client_key: Option<PathBuf>,
    /// `--consul-tls-server-name`.
    pub server_name: Option<String>,
}

/// The ACL token and, for an `https://` agent, its TLS: from `flags`, then
/// `env`. A file that cannot be read is an error naming it.
pub fn resolve(
    agent_url: &str,
    flags: &AccessFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Option<String>, Option<AgentTls>), String> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let token_file = flags.token_file.clone().or_else(|| {
        flags
            .token
            .is_none()
            .then(|| env("CONSUL_HTTP_TOKEN_FILE").map(PathBuf::from))
            .flatten()
    });
    let token = match token_file {
        Some(path) => {
            let text = read(&path, "token file")?;
            let token = text.trim();
            if token.is_empty() {
                return Err(format!("Consul token file {} is empty", path.display()));
            }
            Some(token.to_owned())
        }
        None => flags
            .token
            .clone()
            .or_else(|| env("CONSUL_HTTP_TOKEN").map(|t| t.trim().to_owned())),
    };
    if !agent_url.starts_with("https://") {
        return Ok((token, None));
    }
    let Some(ca) = flags
        .ca_cert
        .clone()
        .or_else(|| env("CONSUL_CACERT").map(PathBuf::from))
    else {
        // AgentClient says what is missing, with the URL.
        return Ok((token, None));
    };
    let cert = flags
        .client_cert
        .clone()
        .or_else(|| env("CONSUL_CLIENT_CERT").map(PathBuf::from));
    let key = flags
        .client_key
        .clone()
        .or_else(|| env("CONSUL_CLIENT_KEY").map(PathBuf::from));
    let ca_pem = read(&ca, "CA certificate")?;
    let client = match (cert, key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((read(&cert, "client certificate")?, read(&key, "client key")?)),
        _ => {
            return Err(
                "Consul client certificate: give both --consul-client-cert and --consul-client-key (or CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY), or neither".into(),
            )
        }
    };
    let pem = client
        .as_ref()
        .map(|(chain, key)| tether_certs::ClientCertPem { chain, key });
    let config = tether_certs::ca_client_config(&ca_pem, pem)
        .map_err(|e| format!("Consul TLS ({}): {e}", ca.display()))?;
    let server_name = flags
        .server_name
        .clone()
        .or_else(|| env("CONSUL_TLS_SERVER_NAME"));
    Ok((
        token,
        Some(AgentTls {
            config,
            server_name,
        }),
    ))
}

fn read(path: &Path, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("Consul {what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn flags_win_over_the_environment_and_token_files_over_tokens() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("token");
        std::fs::write(&file, " from-file \n").unwrap_or_else(|e| panic!("{e}"));
        let env_file = file.display().to_string();
        let env = move |name: &str| match name {
            "CONSUL_HTTP_TOKEN" => Some("from-env".to_owned()),
            "CONSUL_HTTP_TOKEN_FILE" => Some(env_file.clone()),
            _ => None,
        };
        let url = "http://127.0.0.1:8500";
        let (token, tls) =
            resolve(url, &AccessFlags::default(), &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.as_deref(), Some("from-file"));
        assert!(tls.is_none());
        let flags = AccessFlags {
            token: Some("from-flag".into()),
            ..AccessFlags::default()
        };
        let (token, _) = resolve(url, &flags, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.as_deref(), Some("from-flag"));
        let (token, _) = resolve(url, &AccessFlags::default(), &|n: &str| {
            (n == "CONSUL_HTTP_TOKEN").then(|| "from-env".to_owned())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.as_deref(), Some("from-env"));
        let (token, tls) =
            resolve(url, &AccessFlags::default(), &none).unwrap_or_else(|e| panic!("{e}"));
        assert!(token.is_none() && tls.is_none());
    }

    #[test]
    fn https_reads_the_ca_and_unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .and_then(|p| p.self_signed(&key))
            .unwrap_or_else(|e| panic!("{e}"));
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        let flags = AccessFlags {
            ca_cert: Some(ca.clone()),
            server_name: Some("localhost".into()),
            ..AccessFlags::default()
        };
        let (_, tls) =
            resolve("https://127.0.0.1:8501", &flags, &none).unwrap_or_else(|e| panic!("{e}"));
        let tls = tls.unwrap_or_else(|| panic!("TLS for https"));
        assert_eq!(tls.server_name.as_deref(), Some("localhost"));
        // Plain http ignores TLS settings (the environment may carry them for another agent).
        let (_, tls) =
            resolve("http://127.0.0.1:8500", &flags, &none).unwrap_or_else(|e| panic!("{e}"));
        assert!(tls.is_none());
        let flags = AccessFlags {
            token_file: Some("/nonexistent/token".into()),
            ..AccessFlags::default()
        };
        let error = resolve("http://127.0.0.1:8500", &flags, &none)
            .err()
            .unwrap_or_default();
        assert!(
            error.starts_with("Consul token file /nonexistent/token:"),
            "{error}"
        );
        let flags = AccessFlags {
            ca_cert: Some(ca),
            client_cert: Some("/x.pem".into()),
            ..AccessFlags::default()
        };
        let error = resolve("https://127.0.0.1:8501", &flags, &none)
            .err()
            .unwrap_or_default();
        assert!(
            error.contains("give both --consul-client-cert and --consul-client-key"),
            "{error}"
        );
    }
}
