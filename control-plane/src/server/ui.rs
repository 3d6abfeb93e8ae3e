//! `GET /v1/topology` ([`crate::topology`]) and the topology page: `/ui`
//! (HTML), `/ui/app.js`, `/ui/style.css`, built into the binary (no CDN,
//! nothing fetched from outside: the page works on an air-gapped host).
//! Served on the API and on the admin listener.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use tether_api::TOPOLOGY_PATH;

use super::{json, query, text, Api, Chunks, Rsp};
use crate::topology::{compute, window_from_query, Inputs};

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const STYLE_CSS: &str = include_str!("../../ui/style.css");

/// Only the page's own assets and its own API: nothing else may load.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

/// Whether `path` is the topology endpoint or one of the page's files.
pub(super) fn serves(path: &str) -> bool {
    path == TOPOLOGY_PATH || asset(path).is_some()
}

fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/ui" | "/ui/" | "/ui/index.html" => Some((INDEX_HTML, "text/html; charset=utf-8")),
        "/ui/app.js" => Some((APP_JS, "text/javascript; charset=utf-8")),
        "/ui/style.css" => Some((STYLE_CSS, "text/css; charset=utf-8")),
        _ => None,
    }
}

impl Api {
    /// `GET /v1/topology?window=30s` or one of the page's files.
    pub(super) fn ui(&self, path: &str, params: Option<&str>) -> Rsp {
        if path == TOPOLOGY_PATH {
            return json(&self.topology(params));
        }
        let Some((body, content_type)) = asset(path) else {
            return text(StatusCode::NOT_FOUND, "no such page\n");
        };
        let mut response = Response::new(Chunks::from(Bytes::from_static(body.as_bytes())));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        response
    }

    fn topology(&self, params: Option<&str>) -> tether_api::Topology {
        let window = window_from_query(query(params, "window"));
        let spans = self
            .rollouts
            .as_ref()
            .map(|r| r.stats().spans(window))
            .unwrap_or_default();
        let status = self.status();
        let endpoints = self.snapshots.endpoints();
        let now_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        compute(Inputs {
            spans: &spans,
            proxies: &status.proxies,
            endpoints: &endpoints,
            window,
            now_unix_ms,
        })
    }
}
