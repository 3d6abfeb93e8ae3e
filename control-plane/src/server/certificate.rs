//! `POST /v1/certificate`: the CA's door. The caller proves which service
//! it is with its current certificate (renewal) or a join token (first
//! issue); the [`Issuer`](crate::issuer::Issuer) signs only that identity.

use http::{header, Request, StatusCode};
use hyper::body::Incoming;
use tether_api::CertificateRequest;

use super::{json, read_json, text, Api, Caller, Rsp};
use crate::issuer::Proof;

/// Largest request body accepted: a P-256 CSR in PEM is well under 1 KiB.
const MAX_CSR_BYTES: usize = 16 * 1024;

/// The token of an `Authorization: Bearer <token>` header, if any.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl Api {
    pub(super) async fn certificate(&self, request: Request<Incoming>, caller: &Caller) -> Rsp {
        let Some(issuer) = &self.issuer else {
            return text(
                StatusCode::NOT_FOUND,
                "this control plane runs no CA: start it with `serve --ca-dir DIR` (create one with `tether-control ca init`)\n",
            );
        };
        if matches!(caller, Caller::Plaintext) {
            return text(
                StatusCode::FORBIDDEN,
                "certificates are issued over TLS only\n",
            );
        }
        let token = bearer(request.headers()).map(str::to_owned);
        let request: CertificateRequest = match read_json(
            request,
            MAX_CSR_BYTES,
            "JSON {\"csr_pem\": \"-----BEGIN CERTIFICATE REQUEST-----...\"}",
        )
        .await
        {
            Ok(request) => request,
            Err(refusal) => return refusal,
        };
        let proof = match (caller.identity(), token.as_deref()) {
            (Some(id), _) => Proof::Peer(id),
            (None, Some(token)) => Proof::Token(token),
            (None, None) => Proof::Nothing,
        };
        match issuer.issue(&request.csr_pem, proof).await {
            Ok(issued) => json(&issued),
            Err(error) => text(error.status(), format!("{error}\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_trimmed() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            "authorization",
            http::HeaderValue::from_static("Bearer  abc "),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(
            "authorization",
            http::HeaderValue::from_static("bearer xyz"),
        );
        assert_eq!(bearer(&headers), Some("xyz"));
        headers.insert("authorization", http::HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", http::HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }
}
