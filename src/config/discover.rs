//! Checking `discover = [...]` entries: backends from DNS.

use std::net::{IpAddr, SocketAddr};

use toml::Spanned;

use super::file::FileDiscover;
use super::validate::Check;
use super::{
    DEFAULT_DISCOVER_MAX_INTERVAL, DEFAULT_DISCOVER_MIN_INTERVAL, DEFAULT_EMPTY_GRACE,
    DEFAULT_WEIGHT, DiscoverConfig, DiscoverTarget,
};
use crate::balance::member::MAX_WEIGHT;

/// The standard DNS port, for resolvers given without one.
const DNS_PORT: u16 = 53;

/// What a `dns` value names: SRV records (`_service._proto.name`), or a
/// host's A/AAAA records with the port backends listen on (`host:port`).
pub fn parse_target(text: &str) -> Result<DiscoverTarget, String> {
    let name_ok = |name: &str| {
        !name.is_empty()
            && name.len() <= 253
            && name.trim_end_matches('.').split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    if text.starts_with('_') {
        if !name_ok(text) || !text.contains('.') {
            return Err(format!(
                "{text:?} is not an SRV name such as \"_http._tcp.api.internal\""
            ));
        }
        return Ok(DiscoverTarget::Srv(text.to_owned()));
    }
    let usage = || {
        format!(
            "{text:?} is neither an SRV name (\"_http._tcp.api.internal\") nor a host and port (\"api.internal:8080\")"
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(usage)?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0).ok_or_else(usage)?;
    if !name_ok(host) || host.parse::<IpAddr>().is_ok() {
        return Err(usage());
    }
    Ok(DiscoverTarget::Host {
        host: host.to_owned(),
        port,
    })
}

impl Check<'_, '_> {
    /// The pool's `discover` entries, each checked.
    pub(super) fn discover(
        &mut self,
        file: Option<&Spanned<Vec<FileDiscover>>>,
    ) -> Vec<DiscoverConfig> {
        let entries = file.map(|f| f.get_ref().as_slice()).unwrap_or(&[]);
        entries
            .iter()
            .enumerate()
            .filter_map(|(i, entry)| self.discover_entry(i, entry))
            .collect()
    }

    fn discover_entry(&mut self, i: usize, entry: &FileDiscover) -> Option<DiscoverConfig> {
        let field = |name: &str| format!("discover[{i}].{name}");
        let s = self.source;
        let target = self
            .ok(parse_target(entry.dns.get_ref())
                .map_err(|m| s.error_at(field("dns"), &entry.dns, m)));
        let interval = match &entry.interval {
            Some(_) => self.duration(
                &entry.interval,
                &field("interval"),
                DEFAULT_DISCOVER_MIN_INTERVAL,
                false,
            ),
            None => None,
        };
        let min_interval = match interval {
            Some(interval) => Some(interval),
            None => self.duration(
                &entry.min_interval,
                &field("min_interval"),
                DEFAULT_DISCOVER_MIN_INTERVAL,
                false,
            ),
        };
        let max_interval = match interval {
            Some(interval) => Some(interval),
            None => self.duration(
                &entry.max_interval,
                &field("max_interval"),
                DEFAULT_DISCOVER_MAX_INTERVAL,
                false,
            ),
        };
        if let (Some(min), Some(max)) = (min_interval, max_interval)
            && min > max
        {
            let span = entry.min_interval.as_ref().map(Spanned::span);
            let error = self.source.error(
                field("min_interval"),
                span,
                format!(
                    "min_interval {} is above max_interval {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
            self.report(error);
        }
        let empty_grace = self.duration(
            &entry.empty_grace,
            &field("empty_grace"),
            DEFAULT_EMPTY_GRACE,
            true,
        );
        let mut resolvers = Vec::new();
        for (j, text) in entry.resolvers.iter().flatten().enumerate() {
            let parsed = text.get_ref().parse::<SocketAddr>().ok().or_else(|| {
                let ip: IpAddr = text.get_ref().parse().ok()?;
                Some(SocketAddr::new(ip, DNS_PORT))
            });
            match parsed {
                Some(address) => resolvers.push(address),
                None => {
                    let error = self.source.error_at(
                        format!("discover[{i}].resolvers[{j}]"),
                        text,
                        format!(
                            "{:?} is not a nameserver address such as \"10.0.0.2\" or \"127.0.0.1:5353\"",
                            text.get_ref()
                        ),
                    );
                    self.report(error);
                }
            }
        }
        let https = match &entry.scheme {
            None => Some(false),
            Some(scheme) => match scheme.get_ref().as_str() {
                "http" => Some(false),
                "https" => Some(true),
                other => {
                    let error = self.source.error_at(
                        field("scheme"),
                        scheme,
                        format!("unknown scheme {other:?}; expected \"http\" or \"https\""),
                    );
                    self.report(error);
                    None
                }
            },
        };
        let weight = self.count_in(
            &entry.weight.clone(),
            &field("weight"),
            DEFAULT_WEIGHT,
            1..=MAX_WEIGHT,
        );
        Some(DiscoverConfig {
            target: target?,
            min_interval: min_interval?,
            max_interval: max_interval?,
            resolvers,
            empty_grace: empty_grace?,
            probe_first: entry.probe_first.unwrap_or(false),
            https: https?,
            weight: weight?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_srv_records_or_a_host_and_port() {
        assert_eq!(
            parse_target("_http._tcp.api.internal"),
            Ok(DiscoverTarget::Srv("_http._tcp.api.internal".into()))
        );
        assert_eq!(
            parse_target("api.internal:8080"),
            Ok(DiscoverTarget::Host {
                host: "api.internal".into(),
                port: 8080
            })
        );
        assert_eq!(
            parse_target("api:80"),
            Ok(DiscoverTarget::Host {
                host: "api".into(),
                port: 80
            })
        );
        for bad in [
            "",
            "api.internal",
            "api.internal:0",
            "api.internal:70000",
            "_http",
            "10.0.0.1:80",
            "a..b:80",
            "a b:80",
            ":80",
            "_http._tcp.a b",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
