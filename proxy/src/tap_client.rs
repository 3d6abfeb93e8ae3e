//! `tether-proxy tap`: follows a proxy's admin `GET /tap` and prints one
//! readable line per sampled request (`--json`: the lines as they come).

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use http_body_util::BodyExt;

/// `tether-proxy tap [--admin ADDR] [filters]`.
#[derive(Debug, Args)]
pub struct TapArgs {
    /// The proxy's admin address.
    #[arg(long, env = "TETHER_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Only requests of this service (outbound: the called one; inbound:
    /// the proxy's own).
    #[arg(long)]
    pub service: Option<String>,
    /// Only `inbound` or `outbound` requests.
    #[arg(long)]
    pub direction: Option<String>,
    /// Only paths starting with this.
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// Events a second, at most (the proxy allows 1 to 100; default 10).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Show request header names (values are never tapped).
    #[arg(long)]
    pub header_names: bool,
    /// Stop after this many events (default: until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    /// Print the proxy's JSON lines as they come.
    #[arg(long)]
    pub json: bool,
}

/// How long to wait for the admin server to answer the tap request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl TapArgs {
    /// The `/tap` query string.
    pub fn query(&self) -> String {
        let mut query = String::new();
        let mut add = |key: &str, value: &str| {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(key);
            query.push('=');
            for byte in value.bytes() {
                if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
                    query.push(char::from(byte));
                } else {
                    let _ = write!(query, "%{byte:02X}");
                }
            }
        };
        if let Some(service) = &self.service {
            add("service", service);
        }
        if let Some(direction) = &self.direction {
            add("direction", direction);
        }
        if let Some(prefix) = &self.path_prefix {
            add("path_prefix", prefix);
        }
        if let Some(rate) = self.rate {
            add("rate", &rate.to_string());
        }
        if self.header_names {
            add("headers", "names");
        }
        query
    }
}

/// Follows the tap until it ends, `--count` events were printed or the
/// proxy refuses it: 0, or 1 with the reason on stderr.
pub async fn tap(args: &TapArgs) -> u8 {
    let Ok(authority) = args.admin.to_string().parse::<http::uri::Authority>() else {
        return 1;
    };
    let admin = crate::transport::PoolFactory::new(crate::transport::ConnectionSettings {
        http2: false,
        connect_timeout: CONNECT_TIMEOUT,
        idle_timeout: CONNECT_TIMEOUT,
        expected_identity: None,
    })
    .pool_for(&authority);
    let request = http::Request::get(format!("/tap?{}", args.query()))
        .header(http::header::HOST, authority.as_str())
        .body(crate::body::Body::Empty);
    let Ok(request) = request else {
        eprintln!("tether-proxy tap: bad filter");
        return 1;
    };
    let response = match admin.send(request).await {
        Ok(response) => response,
        Err(error) => {
            eprintln!("tether-proxy tap: {}: {error}", args.admin);
            return 1;
        }
    };
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        eprintln!(
            "tether-proxy tap: {status}: {}",
            String::from_utf8_lossy(&text).trim()
        );
        return 1;
    }
    let mut pending = Vec::new();
    let mut printed = 0;
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            if args.json {
                print!("{text}");
            } else {
                println!("{}", readable(text.trim_end()));
            }
            printed += 1;
            if args.count.is_some_and(|n| printed >= n) {
                return 0;
            }
        }
    }
    0
}

/// One event as `HH:MM:SS.mmm direction service METHOD authority path →
/// status latency [upstream] [peer] [tether-error] [dropped]`.
pub fn readable(line: &str) -> String {
    let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_owned();
    };
    let text = |key: &str| event[key].as_str().unwrap_or("-").to_owned();
    let millis = event["timestamp_ms"].as_u64().unwrap_or(0);
    let day = millis % 86_400_000;
    let mut out = format!(
        "{:02}:{:02}:{:02}.{:03} {:<8} {} {} {}{} → {} {:.1}ms",
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000,
        text("direction"),
        text("service"),
        text("method"),
        text("authority"),
        text("path"),
        event["status"].as_u64().unwrap_or(0),
        event["latency_ms"].as_f64().unwrap_or(0.0),
    );
    for (key, label) in [
        ("upstream", "upstream"),
        ("peer_identity", "peer"),
        ("tether_error", "tether-error"),
    ] {
        if let Some(value) = event[key].as_str() {
            let _ = write!(out, " {label}={value}");
        }
    }
    if let Some(headers) = event["headers"].as_array() {
        let names: Vec<&str> = headers.iter().filter_map(|h| h.as_str()).collect();
        let _ = write!(out, " headers=[{}]", names.join(","));
    }
    if let Some(dropped) = event["dropped"].as_u64().filter(|d| *d > 0) {
        let _ = write!(out, " (dropped so far: {dropped})");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tap: TapArgs,
    }

    #[test]
    fn flags_become_the_query() {
        let cli = Cli::parse_from([
            "t",
            "--service",
            "api",
            "--path-prefix",
            "/v1 x",
            "--rate",
            "50",
            "--header-names",
        ]);
        assert_eq!(
            cli.tap.query(),
            "service=api&path_prefix=/v1%20x&rate=50&headers=names"
        );
    }

    #[test]
    fn an_event_reads_as_one_line() {
        let line = r#"{"timestamp_ms":3723004,"direction":"inbound","service":"api","method":"GET","authority":"api","path":"/v1","status":200,"latency_ms":1.25,"peer_identity":"spiffe://t/service/web","upstream":"127.0.0.1:8080","tether_error":null,"dropped":2}"#;
        assert_eq!(
            readable(line),
            "01:02:03.004 inbound  api GET api/v1 → 200 1.2ms upstream=127.0.0.1:8080 peer=spiffe://t/service/web (dropped so far: 2)"
        );
    }
}
