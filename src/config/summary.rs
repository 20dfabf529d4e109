//! The summary of a checked config that `affinity --check` prints.

use super::url::backend_url_text;
use super::{Algorithm, Config, DEFAULT_KEY};

impl Config {
    /// A human summary of the pool for `affinity --check`: one line per
    /// section, then one line per backend with its share of the total weight.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;

        let mut out = String::new();
        let l = &self.listener;
        let _ = writeln!(
            out,
            "listener      {} (drain timeout {})",
            l.address,
            humantime::format_duration(l.drain_timeout)
        );
        match &self.admin {
            Some(admin) => {
                let _ = writeln!(out, "admin         {}", admin.address);
            }
            None => out.push_str("admin         off\n"),
        }

        let b = &self.balancer;
        let _ = write!(out, "balancer      {}", b.algorithm);
        if b.algorithm.is_hash() {
            let _ = write!(out, " on {}", b.key);
            if b.algorithm == Algorithm::Maglev {
                let _ = write!(out, ", table size {}", b.table_size);
            }
            if b.bounded_load > 0.0 {
                let _ = write!(out, ", bounded load {}", b.bounded_load);
            }
        } else if b.key != DEFAULT_KEY {
            let _ = write!(out, " (key {} is ignored by {})", b.key, b.algorithm);
        }
        if b.panic_threshold > 0.0 {
            let _ = write!(out, ", panic below {}% healthy", b.panic_threshold);
        }
        out.push('\n');
        if let Some(sticky) = &b.sticky_cookie {
            let _ = writeln!(
                out,
                "sticky cookie {} (max age {})",
                sticky.name,
                humantime::format_duration(sticky.max_age)
            );
        }
        if !b.trusted_proxies.is_empty() {
            let proxies: Vec<String> = b.trusted_proxies.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(out, "trusted       {}", proxies.join(", "));
        }
        if b.hash_key.is_some() {
            out.push_str("hash key      custom\n");
        }

        let h = &self.health_check;
        let _ = writeln!(
            out,
            "health check  GET {} every {}, timeout {}, restore after {}, remove after {}",
            h.path,
            humantime::format_duration(h.interval),
            humantime::format_duration(h.timeout),
            plural(h.healthy_threshold, "success", "successes"),
            plural(h.unhealthy_threshold, "failure", "failures"),
        );
        let u = &self.upstream;
        let _ = writeln!(
            out,
            "upstream      connect timeout {}, request timeout {}, {}",
            humantime::format_duration(u.connect_timeout),
            humantime::format_duration(u.request_timeout),
            plural(u.retries, "retry", "retries"),
        );
        let l = &self.limits;
        let _ = writeln!(
            out,
            "limits        header timeout {}, head {} bytes / {} headers, body {}, {} connections, {} per backend",
            humantime::format_duration(l.header_timeout),
            l.max_header_bytes,
            l.max_headers,
            match l.max_body_bytes {
                0 => "unlimited".to_owned(),
                n => format!("{n} bytes"),
            },
            l.max_connections,
            match l.max_in_flight_per_backend {
                0 => "unlimited in flight".to_owned(),
                n => format!("{n} in flight"),
            },
        );

        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        let _ = writeln!(
            out,
            "backends      {}, total weight {total}",
            self.backends.len()
        );
        let urls: Vec<String> = self
            .backends
            .iter()
            .map(|b| backend_url_text(&b.url))
            .collect();
        let name_width = self
            .backends
            .iter()
            .map(|b| b.name.len())
            .max()
            .unwrap_or(0);
        let url_width = urls.iter().map(String::len).max().unwrap_or(0);
        for (backend, url) in self.backends.iter().zip(&urls) {
            let share = if total == 0 {
                0.0
            } else {
                100.0 * f64::from(backend.weight) / total as f64
            };
            let _ = writeln!(
                out,
                "  {:<name_width$}  {:<url_width$}  weight {:>4}  {share:5.1}%",
                backend.name, url, backend.weight
            );
        }
        out
    }
}

fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}
