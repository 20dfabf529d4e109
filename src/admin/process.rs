//! The standard process metrics, as Prometheus's client libraries define
//! them (<https://prometheus.io/docs/instrumenting/writing_clientlibs/#process-metrics>),
//! read from `/proc` at scrape time on Linux:
//!
//! | metric | from |
//! |---|---|
//! | `process_cpu_seconds_total` | `/proc/self/stat`: user + system time |
//! | `process_resident_memory_bytes` | `/proc/self/status`: `VmRSS` |
//! | `process_virtual_memory_bytes` | `/proc/self/stat`: `vsize` |
//! | `process_open_fds` | the entries of `/proc/self/fd` |
//! | `process_max_fds` | `/proc/self/limits`: the soft limit of open files |
//! | `process_start_time_seconds` | `/proc/stat`'s `btime` + `/proc/self/stat`'s `starttime` |
//!
//! `/proc/self/stat` counts time in clock ticks of `USER_HZ`, which the
//! kernel fixes at 100 for user space on every architecture it runs on
//! today (Prometheus's Go library assumes the same); the resident set is
//! read in kB from `/proc/self/status`, which needs no page size. A value
//! that cannot be read is left out of the scrape rather than reported
//! wrong. On other systems [`ProcessMetrics`] reports nothing.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc`'s times.
const USER_HZ: f64 = 100.0;

/// The process figures of one scrape; each `None` when it could not be
/// read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessFigures {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, in bytes.
    pub resident_memory_bytes: Option<f64>,
    /// Virtual memory, in bytes.
    pub virtual_memory_bytes: Option<f64>,
    /// File descriptors open now.
    pub open_fds: Option<f64>,
    /// The soft limit of open file descriptors (`None` when unlimited).
    pub max_fds: Option<f64>,
    /// When the process started, in Unix seconds.
    pub start_time_seconds: Option<f64>,
}

impl ProcessFigures {
    /// This process's figures now.
    #[cfg(target_os = "linux")]
    pub fn read() -> ProcessFigures {
        let read = |path: &str| match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(error) => {
                tracing::debug!(path, %error, "cannot read a process metric's source");
                None
            }
        };
        let stat = read("/proc/self/stat").and_then(|text| parse_stat(&text));
        let boot_time = read("/proc/stat").and_then(|text| parse_boot_time(&text));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|entries| entries.count() as f64)
            .ok();
        ProcessFigures {
            cpu_seconds: stat.map(|s| s.cpu_ticks as f64 / USER_HZ),
            resident_memory_bytes: read("/proc/self/status")
                .and_then(|text| parse_resident_bytes(&text))
                .map(|bytes| bytes as f64),
            virtual_memory_bytes: stat.map(|s| s.virtual_bytes as f64),
            open_fds,
            max_fds: read("/proc/self/limits")
                .and_then(|text| parse_max_open_files(&text))
                .map(|n| n as f64),
            start_time_seconds: stat
                .zip(boot_time)
                .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / USER_HZ),
        }
    }

    /// Nothing: `/proc` is Linux's.
    #[cfg(not(target_os = "linux"))]
    pub fn read() -> ProcessFigures {
        ProcessFigures::default()
    }
}

/// What the admin endpoint needs of `/proc/self/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// `utime` + `stime`, in clock ticks.
    cpu_ticks: u64,
    /// `starttime`: clock ticks after boot.
    start_ticks: u64,
    /// `vsize`, in bytes.
    virtual_bytes: u64,
}

/// Parses `/proc/self/stat` (proc(5)). The command name, field 2, is in
/// parentheses and may itself hold spaces and parentheses, so the fields
/// are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // Fields 3 (state) onward: field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
    })
}

/// The `btime` line of `/proc/stat`: boot time in Unix seconds.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The `VmRSS` line of `/proc/self/status` (`VmRSS:   12345 kB`), in bytes.
fn parse_resident_bytes(text: &str) -> Option<u64> {
    let value = text.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kilobytes: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kilobytes.checked_mul(1024)
}

/// The soft limit of `Max open files` in `/proc/self/limits`; `None` when
/// it is `unlimited`.
fn parse_max_open_files(text: &str) -> Option<u64> {
    let rest = text
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The process metrics, read when scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessMetrics;

impl ProcessMetrics {
    fn one(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        kind: MetricType,
        value: Option<impl EncodeMetric>,
    ) -> fmt::Result {
        if let Some(value) = value {
            value.encode(encoder.encode_descriptor(name, help, None, kind)?)?;
        }
        Ok(())
    }
}

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let now = ProcessFigures::read();
        let gauge = |value: Option<f64>| value.map(ConstGauge::new);
        Self::one(
            &mut encoder,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            MetricType::Counter,
            now.cpu_seconds.map(ConstCounter::new),
        )?;
        Self::one(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            MetricType::Gauge,
            gauge(now.resident_memory_bytes),
        )?;
        Self::one(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            MetricType::Gauge,
            gauge(now.virtual_memory_bytes),
        )?;
        Self::one(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors.",
            MetricType::Gauge,
            gauge(now.open_fds),
        )?;
        Self::one(
            &mut encoder,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            MetricType::Gauge,
            gauge(now.max_fds),
        )?;
        Self::one(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            MetricType::Gauge,
            gauge(now.start_time_seconds),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line, with a command name that holds `) (` and spaces.
    const STAT: &str = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1337 0 2 0 \
                        250 75 0 0 20 0 9 0 123456 1099511627776 3210 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17642 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        assert_eq!(
            parse_stat(STAT),
            Some(Stat {
                cpu_ticks: 325,
                start_ticks: 123_456,
                virtual_bytes: 1_099_511_627_776,
            })
        );
        assert_eq!(parse_stat("4242 (short) S 1 2 3\n"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
    }

    #[test]
    fn boot_time_resident_memory_and_the_fd_limit_are_read_from_their_lines() {
        let stat = "cpu  1 2 3 4\nintr 5\nctxt 6\nbtime 1700000000\nprocesses 7\n";
        assert_eq!(parse_boot_time(stat), Some(1_700_000_000));
        assert_eq!(parse_boot_time("cpu 1 2\n"), None);

        let status = "Name:\taffinity\nVmPeak:\t  99999 kB\nVmRSS:\t   20480 kB\nThreads:\t3\n";
        assert_eq!(parse_resident_bytes(status), Some(20_480 * 1024));
        assert_eq!(parse_resident_bytes("VmRSS:\t12 MB\n"), None);

        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_plausible_figures() {
        let now = ProcessFigures::read();
        assert!(now.cpu_seconds.unwrap() >= 0.0);
        assert!(now.resident_memory_bytes.unwrap() > 1024.0 * 1024.0);
        assert!(now.virtual_memory_bytes.unwrap() >= now.resident_memory_bytes.unwrap());
        let open = now.open_fds.unwrap();
        assert!(open >= 3.0, "{open}");
        if let Some(max) = now.max_fds {
            assert!(open <= max, "{open} > {max}");
        }
        let started = now.start_time_seconds.unwrap();
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Within the last day, and not in the future (btime is whole
        // seconds: a second of slack).
        assert!(
            started <= unix_now + 1.0 && started > unix_now - 86_400.0,
            "{started}"
        );
    }
}
