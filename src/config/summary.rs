//! The summary of a checked config that `affinity --check` prints.

use super::url::backend_url_text;
use super::{
    Algorithm, Config, DEFAULT_KEY, HostPattern, PoolConfig, Protocol, RouteConfig,
    SendProxyProtocol,
};

impl Config {
    /// A human summary for `affinity --check`: the listeners, each http
    /// listener's routes in match order, the limits, then each pool with its
    /// settings and one line per backend with its share of the pool's weight.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;

        let mut out = String::new();
        for l in &self.listeners {
            let _ = write!(
                out,
                "listener      {} {} ({})",
                l.name,
                l.address,
                l.protocol.as_str()
            );
            if let Some(tls) = &l.tls {
                let alpn: Vec<&str> = tls.alpn.iter().map(|a| a.as_str()).collect();
                let _ = write!(
                    out,
                    " with TLS: {} certificate{}, {}, handshake timeout {}",
                    tls.certificates.len(),
                    if tls.certificates.len() == 1 { "" } else { "s" },
                    if alpn.is_empty() {
                        "no ALPN".to_owned()
                    } else {
                        format!("ALPN {}", alpn.join(" "))
                    },
                    humantime::format_duration(tls.handshake_timeout)
                );
            }
            if let Some(pool) = &l.pool {
                let what = match l.protocol {
                    Protocol::Http => "unrouted requests to",
                    Protocol::Tcp => "every connection to",
                };
                let _ = write!(out, ", {what} {pool}");
            }
            if l.protocol == Protocol::Tcp {
                let _ = write!(
                    out,
                    ", idle timeout {}",
                    humantime::format_duration(l.idle_timeout)
                );
            }
            if l.proxy_protocol {
                let trusted: Vec<String> = l.trusted.iter().map(|n| n.to_string()).collect();
                let _ = write!(
                    out,
                    ", PROXY protocol header required from {}",
                    trusted.join(" ")
                );
            }
            if let Some(max) = l.max_connections {
                let _ = write!(out, ", at most {max} connections");
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "drain timeout {}",
            humantime::format_duration(self.drain_timeout)
        );
        match &self.admin {
            Some(admin) => {
                let _ = writeln!(out, "admin         {}", admin.address);
            }
            None => out.push_str("admin         off\n"),
        }
        let l = &self.limits;
        let _ = writeln!(
            out,
            "limits        header timeout {}, head {} bytes / {} headers, body {}, {} connections",
            humantime::format_duration(l.header_timeout),
            l.max_header_bytes,
            l.max_headers,
            match l.max_body_bytes {
                0 => "unlimited".to_owned(),
                n => format!("{n} bytes"),
            },
            l.max_connections,
        );
        self.routes_summary(&mut out);
        for pool in &self.pools {
            pool_summary(pool, &mut out);
        }
        out
    }

    /// Each http listener's routes, in the order a request is matched
    /// against them.
    fn routes_summary(&self, out: &mut String) {
        use std::fmt::Write as _;

        for listener in self
            .listeners
            .iter()
            .filter(|l| l.protocol == Protocol::Http)
        {
            let _ = writeln!(out, "routes        on {}, in match order:", listener.name);
            let mut routes: Vec<&RouteConfig> = self
                .routes
                .iter()
                .filter(|r| r.listener.as_deref().is_none_or(|l| l == listener.name))
                .collect();
            routes.sort_by_key(|r| match_order(r));
            let width = routes
                .iter()
                .map(|r| r.pattern().len())
                .max()
                .unwrap_or(0)
                .max("(no match)".len());
            for route in routes {
                let strip = if route.strip_prefix {
                    " (prefix stripped)"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "  {:<width$}  -> {}{strip}",
                    route.pattern(),
                    route.pool
                );
            }
            let otherwise = listener
                .pool
                .as_deref()
                .map_or_else(|| "404".to_owned(), ToOwned::to_owned);
            let _ = writeln!(out, "  {:<width$}  -> {otherwise}", "(no match)");
        }
    }
}

/// Exact hosts first, then wildcards (longest suffix first), then any host;
/// within each, the longest prefix first.
fn match_order(
    route: &RouteConfig,
) -> (
    u8,
    std::cmp::Reverse<usize>,
    String,
    std::cmp::Reverse<usize>,
) {
    let prefix = std::cmp::Reverse(route.path_prefix.len());
    match &route.host {
        Some(HostPattern::Exact(host)) => (0, std::cmp::Reverse(0), host.clone(), prefix),
        Some(HostPattern::Suffix(suffix)) => {
            (1, std::cmp::Reverse(suffix.len()), suffix.clone(), prefix)
        }
        None => (2, std::cmp::Reverse(0), String::new(), prefix),
    }
}

/// One pool: its settings, then its backends.
fn pool_summary(pool: &PoolConfig, out: &mut String) {
    use std::fmt::Write as _;

    let _ = writeln!(out, "pool          {}", pool.name);
    let b = &pool.balancer;
    let _ = write!(out, "  balancer      {}", b.algorithm);
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
            "  sticky cookie {} (max age {})",
            sticky.name,
            humantime::format_duration(sticky.max_age)
        );
    }
    if !b.trusted_proxies.is_empty() {
        let proxies: Vec<String> = b.trusted_proxies.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(out, "  trusted       {}", proxies.join(", "));
    }
    if b.hash_key.is_some() {
        out.push_str("  hash key      custom\n");
    }
    let h = &pool.health_check;
    let probe = match h.kind {
        crate::config::ProbeKind::Http => format!("GET {}", h.path),
        crate::config::ProbeKind::Tcp => "TCP connect".to_owned(),
    };
    let _ = writeln!(
        out,
        "  health check  {probe} every {}, timeout {}, restore after {}, remove after {}",
        humantime::format_duration(h.interval),
        humantime::format_duration(h.timeout),
        plural(h.healthy_threshold, "success", "successes"),
        plural(h.unhealthy_threshold, "failure", "failures"),
    );
    let u = &pool.upstream;
    let _ = writeln!(
        out,
        "  upstream      connect timeout {}, request timeout {}, {}, {}",
        humantime::format_duration(u.connect_timeout),
        humantime::format_duration(u.request_timeout),
        plural(u.retries, "retry", "retries"),
        match pool.max_in_flight_per_backend {
            0 => "unlimited in flight per backend".to_owned(),
            n => format!("{n} in flight per backend"),
        },
    );
    if u.send_proxy_protocol != SendProxyProtocol::Off {
        let _ = writeln!(
            out,
            "  upstream      PROXY protocol {} header before the client's bytes",
            u.send_proxy_protocol.as_str()
        );
    }
    if u.ca_file.is_some() || u.client_cert.is_some() {
        let _ = writeln!(
            out,
            "  upstream TLS  {}{}",
            u.ca_file.as_ref().map_or_else(
                || "system roots".to_owned(),
                |ca| format!("CA file {}", ca.display())
            ),
            u.client_cert
                .as_ref()
                .map_or_else(String::new, |cert| format!(
                    ", client certificate {}",
                    cert.display()
                )),
        );
    }
    if !b.slow_start.is_zero() {
        let _ = writeln!(
            out,
            "  slow start    {}",
            humantime::format_duration(b.slow_start)
        );
    }
    for d in &pool.discover {
        let resolvers: Vec<String> = d.resolvers.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  discover      {} via {}, every {} to {} (the TTL within), empty answers after {}{}{}",
            d.target,
            if resolvers.is_empty() {
                "/etc/resolv.conf".to_owned()
            } else {
                resolvers.join(", ")
            },
            humantime::format_duration(d.min_interval),
            humantime::format_duration(d.max_interval),
            humantime::format_duration(d.empty_grace),
            if d.probe_first {
                ", probed before traffic"
            } else {
                ""
            },
            if d.https { ", https" } else { "" },
        );
    }
    let total: u64 = pool.backends.iter().map(|b| u64::from(b.weight)).sum();
    let _ = writeln!(
        out,
        "  backends      {}{}, total weight {total}",
        pool.backends.len(),
        if pool.discover.is_empty() {
            ""
        } else {
            " in the file (and those discovered)"
        }
    );
    let urls: Vec<String> = pool
        .backends
        .iter()
        .map(|b| backend_url_text(&b.url))
        .collect();
    let name_width = pool
        .backends
        .iter()
        .map(|b| b.name.len())
        .max()
        .unwrap_or(0);
    let url_width = urls.iter().map(String::len).max().unwrap_or(0);
    for (backend, url) in pool.backends.iter().zip(&urls) {
        let share = if total == 0 {
            0.0
        } else {
            100.0 * f64::from(backend.weight) / total as f64
        };
        let _ = writeln!(
            out,
            "    {:<name_width$}  {:<url_width$}  weight {:>4}  {share:5.1}%",
            backend.name, url, backend.weight
        );
    }
}

fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}
