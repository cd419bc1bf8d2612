//! The server's own CPU time and peak memory over a run, when it tells
//! them: `process_cpu_seconds_total` and `process_resident_memory_max_bytes`
//! on its Prometheus endpoint (`GET /metrics` on `metricsPort`), read once
//! before the run and once after. A server without that endpoint (the
//! classic peers) is simply not measured: the report says nothing of it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest one scrape may take, connecting included: a server that does
/// not answer in this long is not measured, and the run does not wait.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// Most bytes of a response read (a scrape of our server is ~7 KiB).
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// One scrape's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Usage {
    /// `process_cpu_seconds_total`.
    pub(crate) cpu_seconds: f64,
    /// `process_resident_memory_max_bytes`, if given.
    pub(crate) resident_max_bytes: Option<u64>,
}

/// The server's figures over a run: the difference of two scrapes.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerUsage {
    /// Where they were read, `host:port`.
    pub endpoint: String,
    /// CPU time the server used between the two scrapes, in seconds.
    pub cpu_seconds: f64,
    /// Its peak resident memory at the end, if given.
    pub resident_max_bytes: Option<u64>,
}

impl ServerUsage {
    /// From the scrapes before and after a run.
    pub(crate) fn between(endpoint: String, before: Usage, after: Usage) -> ServerUsage {
        ServerUsage {
            endpoint,
            cpu_seconds: (after.cpu_seconds - before.cpu_seconds).max(0.0),
            resident_max_bytes: after.resident_max_bytes,
        }
    }
}

/// Reads `http://host:port/metrics`; `None` if nothing answers there in
/// time or the answer has no `process_cpu_seconds_total`.
pub(crate) async fn scrape(host: &str, port: u16) -> Option<Usage> {
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, get(host, port))
        .await
        .ok()??;
    parse(&body)
}

/// One `GET /metrics`, the connection closed after it.
async fn get(host: &str, port: u16) -> Option<String> {
    let mut stream = TcpStream::connect((host, port)).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut response)
        .await
        .ok()?;
    let response = String::from_utf8(response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The two samples from a Prometheus text exposition.
fn parse(body: &str) -> Option<Usage> {
    let sample = |name: &str| -> Option<f64> {
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    };
    Some(Usage {
        cpu_seconds: sample("process_cpu_seconds_total")?,
        resident_max_bytes: sample("process_resident_memory_max_bytes").map(|bytes| bytes as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_samples_are_read_from_an_exposition() {
        let body = "# HELP process_cpu_seconds_total CPU time\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total 1.44\n\
                    process_resident_memory_bytes 1000\n\
                    process_resident_memory_max_bytes 20873216\n";
        let usage = parse(body).unwrap();
        assert_eq!(usage.cpu_seconds, 1.44);
        assert_eq!(usage.resident_max_bytes, Some(20_873_216));
        assert!(parse("process_cpu_seconds_total_x 3\n").is_none());
        let before = Usage {
            cpu_seconds: 0.5,
            resident_max_bytes: Some(1),
        };
        let run = ServerUsage::between("h:1".into(), before, usage);
        assert!((run.cpu_seconds - 0.94).abs() < 1e-9);
    }

    #[tokio::test]
    async fn nothing_listening_is_not_measured() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert_eq!(scrape("127.0.0.1", port).await, None);
    }
}
