//! The process's own CPU time and memory, for `/metrics`: the standard
//! `process_cpu_seconds_total` and `process_resident_memory_bytes`, and
//! `process_resident_memory_max_bytes` (the peak, `VmHWM`). A benchmark
//! (or the verifier, `serverMetricsPort`) reads them before and after a
//! run to give the server's CPU per event without `/proc` access of its
//! own.
//!
//! Read from `/proc/self` at each scrape, so they cost nothing between
//! scrapes. Where there is no `/proc` (not Linux) or it cannot be read,
//! the families are simply absent.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};

/// Name and help of each family, in the order they are written.
const FAMILIES: [(&str, &str, MetricType); 3] = [
    (
        "process_cpu_seconds_total",
        "CPU time the process has used, user and system, in seconds",
        MetricType::COUNTER,
    ),
    (
        "process_resident_memory_bytes",
        "resident memory of the process now, in bytes",
        MetricType::GAUGE,
    ),
    (
        "process_resident_memory_max_bytes",
        "the most resident memory the process has had, in bytes (VmHWM)",
        MetricType::GAUGE,
    ),
];

/// What `/proc/self` says of us.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Usage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory now (`VmRSS`), in bytes.
    pub resident_bytes: u64,
    /// Peak resident memory (`VmHWM`), in bytes.
    pub resident_max_bytes: u64,
}

impl Usage {
    /// Reads our own figures; `None` if `/proc/self` cannot tell them.
    pub(crate) fn now() -> Option<Usage> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        Usage::parse(&stat, &status, clock_ticks_per_second())
    }

    /// From the texts of `/proc/<pid>/stat` and `/proc/<pid>/status`.
    fn parse(stat: &str, status: &str, ticks_per_second: f64) -> Option<Usage> {
        // The command name (field 2) is in parentheses and may hold spaces
        // or parentheses itself: count fields from the last `)`.
        let after_name = &stat[stat.rfind(')')? + 1..];
        let mut fields = after_name.split_ascii_whitespace();
        // Fields 14 and 15 (utime, stime) are the 12th and 13th after it.
        let utime: u64 = fields.nth(11)?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find(|line| line.starts_with(key))?;
            let value = line[key.len()..].trim().strip_suffix("kB")?.trim();
            value.parse::<u64>().ok().map(|kib| kib * 1024)
        };
        Some(Usage {
            cpu_seconds: (utime + stime) as f64 / ticks_per_second,
            resident_bytes: kib("VmRSS:")?,
            resident_max_bytes: kib("VmHWM:")?,
        })
    }
}

/// The kernel's unit for CPU times in `/proc/<pid>/stat`.
fn clock_ticks_per_second() -> f64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 {
            return ticks as f64;
        }
    }
    100.0
}

/// Collects [`Usage`] for the Prometheus registry.
pub(crate) struct ProcessCollector {
    descs: Vec<Desc>,
}

impl ProcessCollector {
    pub(crate) fn new() -> ProcessCollector {
        let descs = FAMILIES
            .iter()
            .map(|&(name, help, _)| {
                Desc::new(name.into(), help.into(), Vec::new(), Default::default())
                    .expect("metric names and help texts are valid constants")
            })
            .collect();
        ProcessCollector { descs }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(usage) = Usage::now() else {
            return Vec::new();
        };
        let values = [
            usage.cpu_seconds,
            usage.resident_bytes as f64,
            usage.resident_max_bytes as f64,
        ];
        FAMILIES
            .iter()
            .zip(values)
            .map(|(&(name, help, kind), value)| {
                let mut metric = proto::Metric::default();
                if kind == MetricType::COUNTER {
                    let mut counter = proto::Counter::default();
                    counter.set_value(value);
                    metric.set_counter(counter);
                } else {
                    let mut gauge = proto::Gauge::default();
                    gauge.set_value(value);
                    metric.set_gauge(gauge);
                }
                let mut family = MetricFamily::default();
                family.set_name(name.to_owned());
                family.set_help(help.to_owned());
                family.set_field_type(kind);
                family.set_metric(vec![metric]);
                family
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_texts_parse() {
        // A command name with a space and a parenthesis in it.
        let stat = "4242 (follower) maze) S 1 4242 4242 0 -1 4194560 2211 0 0 0 \
                    150 44 0 0 20 0 5 0 123 456789 1234 18446744073709551615";
        let status = "Name:\tfollowermaze\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t5\n";
        let usage = Usage::parse(stat, status, 100.0).unwrap();
        assert_eq!(usage.cpu_seconds, 1.94);
        assert_eq!(usage.resident_bytes, 10 << 20);
        assert_eq!(usage.resident_max_bytes, 20 << 20);
        assert!(Usage::parse("4242 (x) S 1", status, 100.0).is_none());
        assert!(Usage::parse(stat, "VmRSS:\t1 kB\n", 100.0).is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn our_own_usage_is_read() {
        let usage = Usage::now().expect("/proc/self on Linux");
        assert!(usage.resident_bytes > 0);
        assert!(usage.resident_max_bytes >= usage.resident_bytes);
    }
}
