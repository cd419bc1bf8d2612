//! What a successful run measured, and how it is printed.

use std::time::Duration;

use super::config::Transport;
use super::drops::DropKind;
use super::generator::{MixCounts, Profile};
use super::latency::LatencySummary;
use super::line::Kind;
use super::server_usage::ServerUsage;
use super::session::ResumeStats;

/// See the module doc. Every field is a measurement of this run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The event mix used.
    pub profile: Profile,
    /// Client connections checked.
    pub clients: usize,
    /// Events written, opening broadcasts included.
    pub events: u64,
    /// Opening broadcasts (sent one at a time until every client was
    /// registered).
    pub opening_broadcasts: u64,
    /// Main-stream events by kind, in [`MixCounts`]' order.
    pub mix: MixCounts,
    /// Follow edges in the model at the end.
    pub edges: usize,
    /// Bytes written to the event port.
    pub bytes_sent: u64,
    /// Time to connect every client and send its user id.
    pub connect_time: Duration,
    /// Time from the first opening broadcast until every client had
    /// received one.
    pub opening_time: Duration,
    /// Time to generate and write the main stream.
    pub send_time: Duration,
    /// Time from the first main-stream write to the last client's final
    /// notification.
    pub stream_time: Duration,
    /// The whole run: connecting, the opening, the stream, the check.
    pub elapsed: Duration,
    /// Notifications received, all clients (each checked byte for byte,
    /// unless re-terminated).
    pub notifications: u64,
    /// Their bytes, as received.
    pub notification_bytes: u64,
    /// Notifications whose payload matched but whose terminator differed
    /// from the one sent, accepted only because `lineEndings=any`. Zero
    /// means the run was byte-exact.
    pub reterminated: u64,
    /// Source-to-client latency, if any notification was timed.
    pub latency: Option<LatencySummary>,
    /// Each client's figures, in client order.
    pub per_client: Vec<ClientSummary>,
    /// On a resumable run, its drops, resumes and replays.
    pub resume: Option<ResumeReport>,
    /// The server's CPU time and peak memory, if its `/metrics` told them.
    pub server: Option<ServerUsage>,
    /// Whether every connection carried a signed token (`authSecret`): the
    /// source's `#AUTH` line and each client handshake's fourth field.
    pub authenticated: bool,
    /// How the clients connected. Over Server-Sent Events each line is
    /// rebuilt from its event's data, so the run is checked line for line,
    /// not byte for byte.
    pub transport: Transport,
}

/// What a resumable run measured of its sessions.
#[derive(Debug, Clone)]
pub struct ResumeReport {
    /// Every client's counters, summed.
    pub stats: ResumeStats,
    /// From the start of each reconnect (after its offline wait) to its
    /// verdict, if any client resumed.
    pub verdict_latency: Option<LatencySummary>,
}

impl ResumeReport {
    /// Drops the clients made themselves.
    pub(crate) fn own_drops(&self) -> u64 {
        self.stats.drops.iter().sum()
    }
}

/// One client's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSummary {
    /// The user id it announced.
    pub user: u32,
    /// The first opening broadcast it received (when it was registered).
    pub first_broadcast: Option<u64>,
    /// Notifications it received, opening included.
    pub notifications: u64,
    /// Their bytes, as received.
    pub bytes: u64,
}

impl Report {
    /// Main-stream events per second of sending.
    pub fn events_per_sec(&self) -> f64 {
        let main = self.events - self.opening_broadcasts;
        main as f64 / self.send_time.as_secs_f64().max(1e-9)
    }

    /// Whether every notification arrived byte for byte, terminators
    /// included: never over Server-Sent Events, whose lines are rebuilt.
    pub fn byte_exact(&self) -> bool {
        self.reterminated == 0 && self.transport != Transport::Sse
    }

    /// Says how the run was not byte-exact, if it was not.
    fn inexactness(&self) -> Option<String> {
        if self.transport == Transport::Sse {
            return Some(
                "SSE: line-exact, not byte-exact (each line rebuilt from its event's data)".into(),
            );
        }
        (!self.byte_exact()).then(|| {
            let plural = if self.reterminated == 1 { "" } else { "s" };
            format!(
                "not byte-exact: {} notification{plural} re-terminated",
                grouped(self.reterminated)
            )
        })
    }

    /// The classic success line; a run that was not byte-exact says so at
    /// its end.
    pub fn banner(&self) -> String {
        let inexact = self
            .inexactness()
            .map(|inexact| format!("; {inexact}"))
            .unwrap_or_default();
        format!(
            "\\o/ ALL NOTIFICATIONS RECEIVED \\o/ (in {:.2} seconds{inexact})",
            self.elapsed.as_secs_f64()
        )
    }
}

/// `1234567` -> `1,234,567`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

impl std::fmt::Display for Report {
    /// The report, one line per subject: the stream, the notifications,
    /// the latency, the resumes and the server (when there are any), the
    /// timing.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.fmt_stream(f)?;
        self.fmt_notifications(f)?;
        if let Some(resume) = &self.resume {
            resume.fmt_with(f, self.elapsed)?;
        }
        if self.authenticated {
            self.fmt_auth(f)?;
        }
        if let Some(server) = &self.server {
            self.fmt_server(f, server)?;
        }
        // Clients drop on their schedule from their first connection, so
        // on a run with drops the opening waits for those away too.
        let drops = self.resume.as_ref().is_some_and(|r| r.own_drops() > 0);
        write!(
            f,
            "timing:        {} clients connected in {:.2} s, registered in {:.2} s{}; \
             first event to last notification in {:.2} s",
            self.clients,
            self.connect_time.as_secs_f64(),
            self.opening_time.as_secs_f64(),
            if drops {
                " (clients' own drops and offline waits included)"
            } else {
                ""
            },
            self.stream_time.as_secs_f64()
        )
    }
}

/// The report's lines, one subject each, for [`Report`]'s `Display`.
impl Report {
    /// The `events sent` and `event mix` lines.
    fn fmt_stream(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "events sent:   {} ({} opening broadcasts), {:.1} MB, in {:.2} s: {} events/s",
            grouped(self.events),
            self.opening_broadcasts,
            self.bytes_sent as f64 / 1e6,
            self.send_time.as_secs_f64(),
            grouped(self.events_per_sec() as u64),
        )?;
        let mix: Vec<String> = Kind::ALL
            .iter()
            .map(|&kind| format!("{} {}", grouped(self.mix[kind as usize]), kind.plural()))
            .collect();
        writeln!(
            f,
            "event mix:     {} ({}; {} follow edges at the end)",
            mix.join(", "),
            self.profile.name(),
            grouped(self.edges as u64)
        )
    }

    /// The `notifications` and `latency` lines.
    fn fmt_notifications(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "notifications: {} ({:.1} MB) to {} clients, {}",
            grouped(self.notifications),
            self.notification_bytes as f64 / 1e6,
            self.clients,
            match (self.transport, self.inexactness()) {
                (Transport::Tcp, None) => "all checked byte for byte, in order".to_owned(),
                (Transport::Ws, None) => "all checked byte for byte (the WebSocket text \
                                          payloads back to back), in order"
                    .to_owned(),
                (Transport::Sse, _) => "all checked line for line, in order: each line rebuilt \
                                        as its SSE event's data + \\r\\n (line-exact, not \
                                        byte-exact)"
                    .to_owned(),
                (_, Some(inexact)) => {
                    format!("all checked in order, payloads byte for byte; {inexact}")
                }
            }
        )?;
        match &self.latency {
            Some(latency) => writeln!(
                f,
                "latency:       source to client p50 {}, p99 {}, p99.9 {}, max {} ({} samples)",
                millis(latency.p50),
                millis(latency.p99),
                millis(latency.p999),
                millis(latency.max),
                grouped(latency.samples)
            ),
            None => writeln!(f, "latency:       no notifications to time"),
        }
    }

    /// The `auth` line: every connection was signed, and how many client
    /// handshakes that was.
    fn fmt_auth(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let handshakes = self
            .resume
            .as_ref()
            .map_or(0, |resume| resume.stats.connections);
        let form = match self.transport {
            Transport::Tcp => "user|stream|after|token",
            Transport::Ws | Transport::Sse => "?token=",
        };
        writeln!(
            f,
            "auth:          signed tokens (authSecret) on every connection: the source's #AUTH \
             line, and {} client handshakes ({form})",
            grouped(handshakes)
        )
    }

    /// The `server` line: its CPU time over the run, per event and per
    /// notification, and its peak memory if told.
    fn fmt_server(
        &self,
        f: &mut std::fmt::Formatter<'_>,
        server: &ServerUsage,
    ) -> std::fmt::Result {
        let per = |count: u64| grouped((server.cpu_seconds * 1e9 / count.max(1) as f64) as u64);
        write!(
            f,
            "server:        {:.2} s CPU over the run, {} ns per event, {} ns per notification",
            server.cpu_seconds,
            per(self.events),
            per(self.notifications),
        )?;
        if let Some(peak) = server.resident_max_bytes {
            write!(f, "; peak RSS {:.1} MB", peak as f64 / 1e6)?;
        }
        writeln!(f, " (from {}/metrics)", server.endpoint)
    }
}

impl ResumeReport {
    /// The report's resume lines, each ending in a newline; `elapsed` is the
    /// whole run, for the rate.
    fn fmt_with(&self, f: &mut std::fmt::Formatter<'_>, elapsed: Duration) -> std::fmt::Result {
        let stats = &self.stats;
        let kinds: Vec<String> = DropKind::ALL
            .iter()
            .map(|&kind| format!("{} {}", grouped(stats.drops[kind.index()]), kind.plural()))
            .collect();
        writeln!(
            f,
            "resumes:       {} ({:.0}/s): #OK {}, #GAP {}; drops: {} by the clients ({}), {} \
             by the server; {} reconnects refused (closed before a verdict), {} retried",
            grouped(stats.resumes()),
            stats.resumes() as f64 / elapsed.as_secs_f64().max(1e-9),
            grouped(stats.resumes_ok),
            grouped(stats.resumes_gap),
            grouped(self.own_drops()),
            kinds.join(", "),
            grouped(stats.server_drops),
            grouped(stats.refused),
            grouped(stats.retries),
        )?;
        writeln!(
            f,
            "replay:        {} lines replayed (written before a drop, received after its \
             resume), {} given up to #GAP; {} checkpoints checked (count and CRC-32)",
            grouped(stats.replayed),
            grouped(stats.lost_to_gaps),
            grouped(stats.checkpoints),
        )?;
        match &self.verdict_latency {
            Some(latency) => writeln!(
                f,
                "reconnect:     to verdict p50 {}, p99 {}, max {} ({} resumes); {:.2} s offline \
                 in all",
                millis(latency.p50),
                millis(latency.p99),
                millis(latency.max),
                grouped(latency.samples),
                stats.offline.as_secs_f64(),
            ),
            None => writeln!(f, "reconnect:     no resumes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(10_000_000), "10,000,000");
    }

    /// The report of a 10-event run with one client over `transport`
    /// that took `elapsed`, nothing else in it.
    fn small_run(elapsed: Duration, transport: Transport) -> Report {
        Report {
            profile: Profile::Classic,
            clients: 1,
            events: 10,
            opening_broadcasts: 1,
            mix: [0; 5],
            edges: 0,
            bytes_sent: 0,
            connect_time: Duration::from_millis(1),
            opening_time: Duration::from_millis(1),
            send_time: Duration::from_millis(1),
            stream_time: Duration::from_millis(1),
            elapsed,
            notifications: 0,
            notification_bytes: 0,
            reterminated: 0,
            latency: None,
            per_client: Vec::new(),
            resume: None,
            server: None,
            authenticated: false,
            transport,
        }
    }

    #[test]
    fn the_banner_is_the_classic_one_and_says_when_not_byte_exact() {
        let report = small_run(Duration::from_millis(2500), Transport::Tcp);
        assert!(report.byte_exact());
        assert_eq!(
            report.banner(),
            "\\o/ ALL NOTIFICATIONS RECEIVED \\o/ (in 2.50 seconds)"
        );
        assert!(report.to_string().contains("events sent:   10"));
        assert!(report.to_string().contains("all checked byte for byte"));

        let reterminated = Report {
            reterminated: 1234,
            ..report
        };
        assert!(!reterminated.byte_exact());
        assert_eq!(
            reterminated.banner(),
            "\\o/ ALL NOTIFICATIONS RECEIVED \\o/ (in 2.50 seconds; not byte-exact: 1,234 \
             notifications re-terminated)"
        );
        let text = reterminated.to_string();
        assert!(
            text.contains("not byte-exact: 1,234 notifications re-terminated")
                && !text.contains("all checked byte for byte"),
            "{text}"
        );
        assert!(!text.contains("auth:"), "{text}");
        let signed = Report {
            authenticated: true,
            resume: Some(ResumeReport {
                stats: ResumeStats {
                    connections: 1500,
                    ..ResumeStats::default()
                },
                verdict_latency: None,
            }),
            ..reterminated
        };
        let text = signed.to_string();
        assert!(
            text.contains("auth:          signed tokens (authSecret) on every connection")
                && text.contains("1,500 client handshakes"),
            "{text}"
        );
        assert!(text.contains("registered in 0.00 s; "), "no drops: {text}");
        let dropping = Report {
            resume: Some(ResumeReport {
                stats: ResumeStats {
                    drops: [2, 0, 1],
                    ..ResumeStats::default()
                },
                verdict_latency: None,
            }),
            ..signed
        };
        let text = dropping.to_string();
        assert!(
            text.contains("registered in 0.00 s (clients' own drops and offline waits included);"),
            "{text}"
        );
    }

    #[test]
    fn a_web_run_says_how_it_was_checked_and_sse_is_never_byte_exact() {
        let report = small_run(Duration::from_millis(1000), Transport::Ws);
        assert!(report.byte_exact());
        assert_eq!(
            report.banner(),
            "\\o/ ALL NOTIFICATIONS RECEIVED \\o/ (in 1.00 seconds)"
        );
        let text = report.to_string();
        assert!(
            text.contains("all checked byte for byte (the WebSocket text payloads"),
            "{text}"
        );
        let signed = Report {
            authenticated: true,
            ..report.clone()
        };
        assert!(
            signed.to_string().contains("0 client handshakes (?token=)"),
            "{signed}"
        );
        let sse = Report {
            transport: Transport::Sse,
            ..report
        };
        assert!(!sse.byte_exact());
        assert_eq!(
            sse.banner(),
            "\\o/ ALL NOTIFICATIONS RECEIVED \\o/ (in 1.00 seconds; SSE: line-exact, not \
             byte-exact (each line rebuilt from its event's data))"
        );
        let text = sse.to_string();
        assert!(
            text.contains(
                "all checked line for line, in order: each line rebuilt as its SSE \
                           event's data + \\r\\n (line-exact, not byte-exact)"
            ) && !text.contains("byte for byte"),
            "{text}"
        );
    }
}
