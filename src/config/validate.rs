//! The validation pass: file structs in, runtime structs out, with every
//! default filled in and every rule checked.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use http::uri::PathAndQuery;
use ipnet::IpNet;
use toml::Spanned;

use super::error::Source;
use super::file::*;
use super::url::parse_backend_url;
use super::*;
use crate::balance::key::is_cookie_token;
use crate::balance::member::{MAX_WEIGHT, MemberError};

impl Source<'_> {
    pub(super) fn validate(&self, file: FileConfig) -> Result<Config, ConfigError> {
        let listener = self.listener(&file.listener)?;
        let admin = match &file.admin {
            Some(admin) => Some(self.admin(admin, &listener)?),
            None => None,
        };
        let balancer = self.balancer(&file.balancer)?;
        let health_check = self.health_check(&file.health_check)?;
        let upstream = self.upstream(&file.upstream)?;
        let limits = self.limits(&file.limits)?;
        let backends = self.backends(file.backends.as_ref())?;

        let members: Vec<Member> = backends
            .iter()
            .map(|b| Member::new(b.name.clone(), b.weight))
            .collect();
        if balancer.algorithm == Algorithm::Maglev
            && let Err(e) = crate::balance::maglev::check_table_size(balancer.table_size, &members)
        {
            let span = file.balancer.table_size.as_ref().map(Spanned::span);
            return Err(self.error("balancer.table_size", span, e.to_string()));
        }
        if balancer.algorithm == Algorithm::RingHash
            && let Err(e) = crate::balance::ring::check_points(
                &members,
                crate::balance::ring::DEFAULT_POINTS_PER_WEIGHT,
            )
        {
            let span = file.balancer.algorithm.as_ref().map(Spanned::span);
            return Err(self.error("balancer.algorithm", span, e.to_string()));
        }

        Ok(Config {
            listener,
            admin,
            balancer,
            health_check,
            upstream,
            limits,
            backends,
        })
    }

    fn listener(&self, file: &FileListener) -> Result<ListenerConfig, ConfigError> {
        Ok(ListenerConfig {
            address: self.socket_addr(&file.address, "listener.address", DEFAULT_LISTEN_ADDRESS)?,
            drain_timeout: self.duration(
                &file.drain_timeout,
                "listener.drain_timeout",
                DEFAULT_DRAIN_TIMEOUT,
                true,
            )?,
        })
    }

    fn admin(
        &self,
        file: &FileAdmin,
        listener: &ListenerConfig,
    ) -> Result<AdminConfig, ConfigError> {
        let address = self.socket_addr(&file.address, "admin.address", DEFAULT_ADMIN_ADDRESS)?;
        if address == listener.address && address.port() != 0 {
            let span = file.address.as_ref().map(Spanned::span);
            return Err(self.error(
                "admin.address",
                span,
                format!(
                    "{address} is also the listener address; the admin endpoint needs its own port"
                ),
            ));
        }
        Ok(AdminConfig { address })
    }

    fn balancer(&self, file: &FileBalancer) -> Result<BalancerConfig, ConfigError> {
        let algorithm = match &file.algorithm {
            None => DEFAULT_ALGORITHM,
            Some(text) => Algorithm::parse(text.get_ref()).ok_or_else(|| {
                let names: Vec<&str> = Algorithm::ALL.iter().map(Algorithm::as_str).collect();
                self.error_at(
                    "balancer.algorithm",
                    text,
                    format!(
                        "unknown algorithm {:?}; expected one of {}",
                        text.get_ref(),
                        names.join(", ")
                    ),
                )
            })?,
        };
        let key = match &file.key {
            None => DEFAULT_KEY,
            Some(text) => KeySource::parse(text.get_ref())
                .map_err(|m| self.error_at("balancer.key", text, m))?,
        };
        let table_size = match &file.table_size {
            None => DEFAULT_TABLE_SIZE,
            Some(size) => usize::try_from(*size.get_ref()).map_err(|_| {
                self.error_at(
                    "balancer.table_size",
                    size,
                    format!(
                        "table_size {} must be a positive prime such as 65537",
                        size.get_ref()
                    ),
                )
            })?,
        };
        let mut trusted_proxies = Vec::new();
        for (i, text) in file.trusted_proxies.iter().flatten().enumerate() {
            trusted_proxies.push(parse_cidr(text.get_ref()).ok_or_else(|| {
                self.error_at(
                    format!("balancer.trusted_proxies[{i}]"),
                    text,
                    format!(
                        "{:?} is not a CIDR such as \"10.0.0.0/8\" or an IP address such as \"192.0.2.7\"",
                        text.get_ref()
                    ),
                )
            })?);
        }
        let hash_key = match &file.hash_key {
            None => None,
            Some(text) => parse_hash_key(text.get_ref())
                .map_err(|m| self.error_at("balancer.hash_key", text, m))?,
        };
        let bounded_load = match &file.bounded_load {
            None => DEFAULT_BOUNDED_LOAD,
            Some(value) => {
                let c = *value.get_ref();
                if !c.is_finite() || c < 0.0 || (c > 0.0 && c <= 1.0) {
                    return Err(self.error_at(
                        "balancer.bounded_load",
                        value,
                        format!(
                            "bounded_load {c} is out of range; use 0 (off) or a factor above 1.0 such as 1.25 (each backend takes at most c times the mean load)"
                        ),
                    ));
                }
                if c > 0.0 && !algorithm.is_hash() {
                    return Err(self.error_at(
                        "balancer.bounded_load",
                        value,
                        format!(
                            "bounded_load only applies to the hash algorithms maglev and ring_hash, not {algorithm}; remove it or set it to 0"
                        ),
                    ));
                }
                c
            }
        };
        let panic_threshold = match &file.panic_threshold {
            None => DEFAULT_PANIC_THRESHOLD,
            Some(value) => {
                let percent = *value.get_ref();
                if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
                    return Err(self.error_at(
                        "balancer.panic_threshold",
                        value,
                        format!(
                            "panic_threshold {percent} is out of range; use a percentage from 0 (off) to 100, such as 50 (below half the backends healthy, route over all of them)"
                        ),
                    ));
                }
                percent
            }
        };
        let sticky_cookie = match &file.sticky_cookie {
            None => None,
            Some(_) if !algorithm.is_hash() => {
                return Err(self.error(
                    "balancer.sticky_cookie",
                    file.algorithm.as_ref().map(Spanned::span),
                    format!(
                        "a sticky cookie is hashed to pick the backend, so it needs maglev or ring_hash, not {algorithm}"
                    ),
                ));
            }
            Some(sticky) => Some(self.sticky_cookie(sticky)?),
        };
        Ok(BalancerConfig {
            algorithm,
            key,
            table_size,
            trusted_proxies,
            hash_key,
            bounded_load,
            panic_threshold,
            sticky_cookie,
        })
    }

    fn sticky_cookie(&self, file: &FileStickyCookie) -> Result<StickyCookieConfig, ConfigError> {
        let name = match &file.name {
            None => DEFAULT_STICKY_COOKIE_NAME.to_owned(),
            Some(name) if is_cookie_token(name.get_ref()) => name.get_ref().clone(),
            Some(name) => {
                return Err(self.error_at(
                    "balancer.sticky_cookie.name",
                    name,
                    format!(
                        "{:?} is not a valid cookie name (a non-empty token without spaces or ()<>@,;:\\\"/[]?={{}})",
                        name.get_ref()
                    ),
                ));
            }
        };
        let max_age = self.duration(
            &file.max_age,
            "balancer.sticky_cookie.max_age",
            DEFAULT_STICKY_COOKIE_MAX_AGE,
            false,
        )?;
        Ok(StickyCookieConfig { name, max_age })
    }

    fn health_check(&self, file: &FileHealthCheck) -> Result<HealthCheckConfig, ConfigError> {
        let path = match &file.path {
            None => DEFAULT_HEALTH_PATH.to_owned(),
            Some(path) => {
                let text = path.get_ref();
                if !text.starts_with('/') {
                    return Err(self.error_at(
                        "health_check.path",
                        path,
                        format!("{text:?} must start with \"/\", such as \"/health\""),
                    ));
                }
                if PathAndQuery::from_str(text).is_err() {
                    return Err(self.error_at(
                        "health_check.path",
                        path,
                        format!("{text:?} is not a valid URL path (spaces and control characters must be percent-encoded)"),
                    ));
                }
                text.clone()
            }
        };
        let interval = self.duration(
            &file.interval,
            "health_check.interval",
            DEFAULT_HEALTH_INTERVAL,
            false,
        )?;
        let timeout = self.duration(
            &file.timeout,
            "health_check.timeout",
            DEFAULT_HEALTH_TIMEOUT,
            false,
        )?;
        if timeout >= interval {
            let shown = |d| humantime::format_duration(d);
            return Err(match (&file.timeout, &file.interval) {
                (Some(t), _) => self.error_at(
                    "health_check.timeout",
                    t,
                    format!(
                        "timeout {} must be below interval {}: a probe has to finish before the next one starts",
                        shown(timeout),
                        shown(interval)
                    ),
                ),
                (None, i) => self.error(
                    "health_check.interval",
                    i.as_ref().map(Spanned::span),
                    format!(
                        "interval {} must be above timeout {} (the default); raise the interval or set a shorter timeout",
                        shown(interval),
                        shown(timeout)
                    ),
                ),
            });
        }
        Ok(HealthCheckConfig {
            path,
            interval,
            timeout,
            healthy_threshold: self.count(
                &file.healthy_threshold,
                "health_check.healthy_threshold",
                DEFAULT_HEALTHY_THRESHOLD,
                1,
            )?,
            unhealthy_threshold: self.count(
                &file.unhealthy_threshold,
                "health_check.unhealthy_threshold",
                DEFAULT_UNHEALTHY_THRESHOLD,
                1,
            )?,
        })
    }

    fn upstream(&self, file: &FileUpstream) -> Result<UpstreamConfig, ConfigError> {
        Ok(UpstreamConfig {
            connect_timeout: self.duration(
                &file.connect_timeout,
                "upstream.connect_timeout",
                DEFAULT_CONNECT_TIMEOUT,
                false,
            )?,
            request_timeout: self.duration(
                &file.request_timeout,
                "upstream.request_timeout",
                DEFAULT_REQUEST_TIMEOUT,
                false,
            )?,
            retries: self.count(&file.retries, "upstream.retries", DEFAULT_RETRIES, 0)?,
        })
    }

    fn limits(&self, file: &FileLimits) -> Result<LimitsConfig, ConfigError> {
        let max_header_bytes = self.count_in(
            &file.max_header_bytes,
            "limits.max_header_bytes",
            DEFAULT_MAX_HEADER_BYTES,
            MIN_MAX_HEADER_BYTES..=MAX_MAX_HEADER_BYTES,
        )?;
        let max_body_bytes = match &file.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(value) => u64::try_from(*value.get_ref()).map_err(|_| {
                self.error_at(
                    "limits.max_body_bytes",
                    value,
                    format!(
                        "{} is out of range; use 0 (no limit) or a size in bytes",
                        value.get_ref()
                    ),
                )
            })?,
        };
        Ok(LimitsConfig {
            header_timeout: self.duration(
                &file.header_timeout,
                "limits.header_timeout",
                DEFAULT_HEADER_TIMEOUT,
                false,
            )?,
            max_header_bytes,
            max_headers: self.count(
                &file.max_headers,
                "limits.max_headers",
                DEFAULT_MAX_HEADERS,
                1,
            )?,
            max_body_bytes,
            max_connections: self.count(
                &file.max_connections,
                "limits.max_connections",
                DEFAULT_MAX_CONNECTIONS,
                1,
            )?,
            max_in_flight_per_backend: self.count(
                &file.max_in_flight_per_backend,
                "limits.max_in_flight_per_backend",
                DEFAULT_MAX_IN_FLIGHT_PER_BACKEND,
                0,
            )?,
        })
    }

    fn backends(
        &self,
        file: Option<&Spanned<Vec<FileBackend>>>,
    ) -> Result<Vec<BackendConfig>, ConfigError> {
        let list_span = file.map(Spanned::span);
        let entries: &[FileBackend] = file.map(|f| f.get_ref().as_slice()).unwrap_or(&[]);

        let mut members = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let weight = match &entry.weight {
                None => DEFAULT_WEIGHT,
                Some(w) => u32::try_from(*w.get_ref()).map_err(|_| {
                    self.error_at(
                        format!("backends[{i}].weight"),
                        w,
                        weight_out_of_range(*w.get_ref()),
                    )
                })?,
            };
            members.push(Member::new(entry.name.get_ref().clone(), weight));
        }
        if let Err(e) = crate::balance::member::validate(&members) {
            return Err(self.member_error(e, entries, &members, list_span));
        }

        let mut backends = Vec::with_capacity(entries.len());
        for (i, (entry, member)) in entries.iter().zip(members).enumerate() {
            let url = parse_backend_url(entry.url.get_ref())
                .map_err(|m| self.error_at(format!("backends[{i}].url"), &entry.url, m))?;
            backends.push(BackendConfig {
                name: member.name,
                url,
                weight: member.weight,
            });
        }
        Ok(backends)
    }

    /// Points a pool-level error from `member::validate` at the backend and
    /// key it is about.
    fn member_error(
        &self,
        error: MemberError,
        entries: &[FileBackend],
        members: &[Member],
        list_span: Option<Range<usize>>,
    ) -> ConfigError {
        match error {
            MemberError::Empty => self.error(
                "backends",
                list_span,
                "no backends: add at least one [[backends]] table with a name and a url",
            ),
            MemberError::TooMany(_) => self.error("backends", list_span, error.to_string()),
            MemberError::EmptyName(i) => self.error(
                format!("backends[{i}].name"),
                entries.get(i).map(|e| e.name.span()),
                "the name is empty; every backend needs a unique, non-empty name",
            ),
            MemberError::DuplicateName(ref name) => {
                let mut uses = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.name.get_ref() == name);
                match (uses.next(), uses.next()) {
                    (Some((first, first_entry)), Some((second, second_entry))) => self.error_at(
                        format!("backends[{second}].name"),
                        &second_entry.name,
                        format!(
                            "name {name:?} is already used by backends[{first}] (line {}); names must be unique",
                            self.line_of(first_entry.name.span())
                        ),
                    ),
                    _ => self.error("backends", list_span, error.to_string()),
                }
            }
            MemberError::BadWeight { ref name, weight } => {
                let at = members
                    .iter()
                    .position(|m| &m.name == name && m.weight == weight)
                    .and_then(|i| Some((i, entries.get(i)?.weight.as_ref()?.span())));
                match at {
                    Some((i, span)) => self.error(
                        format!("backends[{i}].weight"),
                        Some(span),
                        weight_out_of_range(i64::from(weight)),
                    ),
                    None => self.error("backends", list_span, error.to_string()),
                }
            }
        }
    }

    fn duration(
        &self,
        value: &Option<Spanned<DurationText>>,
        field: &str,
        default: Duration,
        allow_zero: bool,
    ) -> Result<Duration, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let text = &value.get_ref().0;
        let duration = humantime::parse_duration(text).map_err(|e| {
            self.error_at(
                field,
                value,
                format!("{text:?} is not a duration ({e}); write durations like \"500ms\", \"5s\" or \"1h\""),
            )
        })?;
        if duration.is_zero() && !allow_zero {
            return Err(self.error_at(
                field,
                value,
                format!("{text:?} is zero; it must be greater than zero"),
            ));
        }
        Ok(duration)
    }

    fn count(
        &self,
        value: &Option<Spanned<i64>>,
        field: &str,
        default: u32,
        min: u32,
    ) -> Result<u32, ConfigError> {
        self.count_in(value, field, default, min..=u32::MAX)
    }

    fn count_in(
        &self,
        value: &Option<Spanned<i64>>,
        field: &str,
        default: u32,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<u32, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let n = *value.get_ref();
        u32::try_from(n)
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                self.error_at(
                    field,
                    value,
                    format!(
                        "{n} is out of range; it must be between {} and {}",
                        range.start(),
                        range.end()
                    ),
                )
            })
    }

    fn socket_addr(
        &self,
        value: &Option<Spanned<String>>,
        field: &str,
        default: SocketAddr,
    ) -> Result<SocketAddr, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let text = value.get_ref();
        text.parse().map_err(|_| {
            self.error_at(
                field,
                value,
                format!("{text:?} is not an IP:PORT address such as \"127.0.0.1:8080\" or \"[::1]:8080\" (host names are not resolved)"),
            )
        })
    }
}

fn weight_out_of_range(weight: i64) -> String {
    format!("weight {weight} is out of range; weights must be between 1 and {MAX_WEIGHT}")
}

/// A CIDR, or a bare address taken as a single host (/32 or /128).
fn parse_cidr(text: &str) -> Option<IpNet> {
    match text.parse::<IpNet>() {
        Ok(net) => Some(net.trunc()),
        Err(_) => text.parse::<IpAddr>().ok().map(IpNet::from),
    }
}

/// `""` is no key; otherwise exactly 32 hex characters.
fn parse_hash_key(text: &str) -> Result<Option<[u8; 16]>, String> {
    const HOW: &str = "generate one with `openssl rand -hex 16`";
    if text.is_empty() {
        return Ok(None);
    }
    if let Some(bad) = text.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "hash_key must be empty or exactly 32 hex characters (16 bytes), but contains {bad:?}; {HOW}"
        ));
    }
    if text.len() != 32 {
        return Err(format!(
            "hash_key must be empty or exactly 32 hex characters (16 bytes), got {}; {HOW}",
            text.len()
        ));
    }
    let mut key = [0u8; 16];
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        // Both checks above make every pair two ASCII hex digits.
        let digit = |b: u8| char::from(b).to_digit(16).unwrap_or(0) as u8;
        *byte = (digit(pair[0]) << 4) | digit(pair[1]);
    }
    Ok(Some(key))
}
