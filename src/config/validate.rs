//! The validation pass: file structs in, runtime structs out, with every
//! default filled in and every rule checked; every broken rule is reported,
//! and what is valid but likely a mistake becomes a warning.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use http::uri::PathAndQuery;
use ipnet::IpNet;
use toml::Spanned;

use super::error::Source;
use super::file::*;
use super::url::{backend_url_text, parse_backend_url};
use super::*;
use crate::balance::key::is_cookie_token;
use crate::balance::maglev::TableSizeError;
use crate::balance::member::{MAX_BACKENDS, MAX_WEIGHT, MemberError};

impl Source<'_> {
    /// Checks every rule; the config if none is broken, else every broken
    /// one in file order.
    pub(super) fn validate(&self, file: &FileConfig) -> Result<Config, ConfigErrors> {
        let mut check = Check {
            source: self,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let config = check.config(file);
        match ConfigErrors::in_file_order(check.errors) {
            Some(errors) => Err(errors),
            None => Ok(config),
        }
    }
}

/// One validation pass. Every rule is checked and every broken one recorded,
/// so one `--check` lists them all. A value that breaks a rule is `None` to
/// the rules that depend on it (which then do not run: a mistake is reported
/// once, never again as a consequence), and its default in the `Config`
/// being built, which is thrown away.
/// The tables of one pool, in either form of the file.
struct PoolTables<'f> {
    balancer: &'f FileBalancer,
    health_check: &'f FileHealthCheck,
    upstream: &'f FileUpstream,
    backends: Option<&'f Spanned<Vec<FileBackend>>>,
    discover: Option<&'f Spanned<Vec<FileDiscover>>>,
    max_in_flight_per_backend: Option<&'f Spanned<i64>>,
}

pub(super) struct Check<'s, 'a> {
    pub(super) source: &'s Source<'a>,
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<ConfigWarning>,
}

impl Check<'_, '_> {
    pub(super) fn report(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// The value, or `None` after recording why there is none.
    pub(super) fn ok<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.report(e)).ok()
    }

    fn config(&mut self, file: &FileConfig) -> Config {
        let drain_timeout = self
            .duration(
                &file.listener.drain_timeout,
                "listener.drain_timeout",
                DEFAULT_DRAIN_TIMEOUT,
                true,
            )
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT);
        let limits = self.limits(&file.limits);
        let listeners = self.listeners(file);
        let admin = file
            .admin
            .as_ref()
            .map(|admin| self.admin(admin, &listeners));
        let pools = self.pools(file, &limits);
        let routes = self.routes(file, &listeners, &pools);
        self.tcp_backends_only_behind_tcp(&listeners, &routes, &pools);
        Config {
            listeners: listeners.into_iter().map(|(l, _)| l).collect(),
            drain_timeout,
            admin,
            limits,
            pools,
            routes,
            warnings: std::mem::take(&mut self.warnings),
        }
    }

    /// A pool with `tcp://` backends speaks no HTTP, and a PROXY protocol
    /// header goes only on a connection of one client: only tcp listeners
    /// may send such a pool connections.
    fn tcp_backends_only_behind_tcp(
        &mut self,
        listeners: &[(ListenerConfig, bool)],
        routes: &[RouteConfig],
        pools: &[Arc<PoolConfig>],
    ) {
        let http = |name: &str| {
            listeners
                .iter()
                .any(|(l, _)| l.protocol == Protocol::Http && l.name == name)
        };
        let any_http = listeners.iter().any(|(l, _)| l.protocol == Protocol::Http);
        let routed = routes.iter().filter(|r| match &r.listener {
            Some(listener) => http(listener),
            None => any_http,
        });
        let http_pools = routed.map(|r| r.pool.as_str()).chain(
            listeners
                .iter()
                .filter(|(l, _)| l.protocol == Protocol::Http)
                .filter_map(|(l, _)| l.pool.as_deref()),
        );
        let mut reported = Vec::new();
        for name in http_pools {
            let Some(pool) = pools.iter().find(|p| p.name == name) else {
                continue;
            };
            if reported.contains(&name) {
                continue;
            }
            let tcp = pool
                .backends
                .iter()
                .find(|b| b.url.scheme_str() == Some("tcp"));
            let message = if let Some(backend) = tcp {
                format!(
                    "pool {name:?} has a tcp:// backend ({:?}) but an http listener or route sends it requests; tcp:// backends serve tcp listeners only (use http:// for HTTP)",
                    backend.name
                )
            } else if pool.upstream.send_proxy_protocol != SendProxyProtocol::Off {
                format!(
                    "pool {name:?} has upstream.send_proxy_protocol = {:?} but an http listener or route sends it requests; a PROXY header names one client per backend connection, so it is sent by tcp listeners only (HTTP backends get X-Forwarded-For)",
                    pool.upstream.send_proxy_protocol.as_str()
                )
            } else {
                continue;
            };
            reported.push(name);
            let error = self.source.error(format!("pools.{name}"), None, message);
            self.report(error);
        }
        for pool in pools {
            let tls = pool
                .backends
                .iter()
                .find(|b| b.url.scheme_str() == Some("https"));
            if pool.upstream.send_proxy_protocol != SendProxyProtocol::Off
                && let Some(backend) = tls
            {
                let error = self.source.error(
                    format!("pools.{}", pool.name),
                    None,
                    format!(
                        "pool {:?} sends a PROXY header to https:// backend {:?}; the header goes before any TLS, so send it to tcp:// backends (a tcp listener passes TLS through untouched)",
                        pool.name, backend.name
                    ),
                );
                self.report(error);
            }
        }
    }

    /// The listeners, each with whether its address is valid: the
    /// `[[listeners]]` entries, or the `[listener]` table's one.
    fn listeners(&mut self, file: &FileConfig) -> Vec<(ListenerConfig, bool)> {
        let Some(entries) = &file.listeners else {
            let address = self.socket_addr(
                &file.listener.address,
                "listener.address",
                DEFAULT_LISTEN_ADDRESS,
            );
            let tls = file
                .listener
                .tls
                .as_ref()
                .map(|t| self.tls(t, "listener.tls"));
            let (proxy_protocol, trusted) = self.proxy_protocol(
                &file.listener.proxy_protocol,
                &file.listener.trusted,
                "listener",
            );
            let listener = ListenerConfig {
                address: address.unwrap_or(DEFAULT_LISTEN_ADDRESS),
                tls,
                proxy_protocol,
                trusted,
                ..ListenerConfig::default()
            };
            return vec![(listener, address.is_some())];
        };
        let single = [
            (
                "listener.address",
                file.listener.address.as_ref().map(Spanned::span),
            ),
            (
                "listener.tls",
                file.listener.tls.as_ref().map(Spanned::span),
            ),
            (
                "listener.proxy_protocol",
                file.listener.proxy_protocol.as_ref().map(Spanned::span),
            ),
            (
                "listener.trusted",
                file.listener.trusted.as_ref().map(Spanned::span),
            ),
        ];
        for (field, span) in single {
            if let Some(span) = span {
                let error = self.source.error(
                    field,
                    Some(span),
                    "with [[listeners]], each listener has its own address, tls, proxy_protocol and trusted; [listener] keeps only drain_timeout",
                );
                self.report(error);
            }
        }
        if entries.get_ref().is_empty() {
            let error = self.source.error(
                "listeners",
                Some(entries.span()),
                "no listeners: add a [[listeners]] table with a name and an address",
            );
            self.report(error);
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addresses: HashMap<SocketAddr, usize> = HashMap::new();
        let mut listeners = Vec::new();
        for (i, entry) in entries.get_ref().iter().enumerate() {
            self.unique_name("listeners", &entry.name, &mut names, i, |j| {
                entries.get_ref()[j].name.span()
            });
            let address = self.socket_addr(
                &Some(entry.address.clone()),
                &format!("listeners[{i}].address"),
                DEFAULT_LISTEN_ADDRESS,
            );
            if let Some(address) = address
                && address.port() != 0
            {
                if let Some(&first) = addresses.get(&address) {
                    let error = self.source.error_at(
                        format!("listeners[{i}].address"),
                        &entry.address,
                        format!(
                            "{address} is also the address of listeners[{first}] (line {}); each listener needs its own",
                            self.source.line_of(entries.get_ref()[first].address.span())
                        ),
                    );
                    self.report(error);
                } else {
                    addresses.insert(address, i);
                }
            }
            let protocol = match &entry.protocol {
                None => Some(Protocol::Http),
                Some(text) => match text.get_ref().as_str() {
                    "http" => Some(Protocol::Http),
                    "tcp" => Some(Protocol::Tcp),
                    other => {
                        let error = self.source.error_at(
                            format!("listeners[{i}].protocol"),
                            text,
                            format!("unknown protocol {other:?}; expected \"http\" or \"tcp\""),
                        );
                        self.report(error);
                        None
                    }
                },
            };
            if protocol == Some(Protocol::Tcp) && entry.pool.is_none() {
                let error = self.source.error_at(
                    format!("listeners[{i}].protocol"),
                    entry.protocol.as_ref().unwrap_or(&entry.name),
                    "a tcp listener sends every connection to one pool: add pool = \"NAME\"",
                );
                self.report(error);
            }
            let mut tls = entry
                .tls
                .as_ref()
                .map(|t| self.tls(t, &format!("listeners[{i}].tls")));
            if protocol == Some(Protocol::Tcp)
                && let (Some(settings), Some(file_tls)) = (&mut tls, &entry.tls)
            {
                // TLS terminated, then raw bytes: no protocol to agree on.
                settings.alpn.clear();
                if let Some(alpn) = &file_tls.get_ref().alpn {
                    let error = self.source.error_at(
                        format!("listeners[{i}].tls.alpn"),
                        alpn,
                        "a tcp listener relays raw bytes after the handshake and offers no ALPN; remove alpn",
                    );
                    self.report(error);
                }
            }
            let idle_timeout = self
                .duration(
                    &entry.idle_timeout,
                    &format!("listeners[{i}].idle_timeout"),
                    DEFAULT_IDLE_TIMEOUT,
                    true,
                )
                .unwrap_or(DEFAULT_IDLE_TIMEOUT);
            let field = format!("listeners[{i}]");
            let (proxy_protocol, trusted) =
                self.proxy_protocol(&entry.proxy_protocol, &entry.trusted, &field);
            let max_connections = entry.max_connections.as_ref().and_then(|value| {
                self.count(
                    &Some(value.clone()),
                    &format!("{field}.max_connections"),
                    DEFAULT_MAX_CONNECTIONS,
                    1,
                )
            });
            listeners.push((
                ListenerConfig {
                    name: entry.name.get_ref().clone(),
                    address: address.unwrap_or(DEFAULT_LISTEN_ADDRESS),
                    protocol: protocol.unwrap_or(Protocol::Http),
                    pool: entry.pool.as_ref().map(|p| p.get_ref().clone()),
                    tls,
                    idle_timeout,
                    proxy_protocol,
                    trusted,
                    max_connections,
                },
                address.is_some(),
            ));
        }
        listeners
    }

    /// A listener's `proxy_protocol` and `trusted` (at `field`): the peers
    /// allowed to send a PROXY header must be named when one is required,
    /// and naming them without requiring one is a mistake.
    fn proxy_protocol(
        &mut self,
        flag: &Option<Spanned<bool>>,
        trusted: &Option<Spanned<Vec<Spanned<String>>>>,
        field: &str,
    ) -> (bool, Vec<IpNet>) {
        let on = flag.as_ref().is_some_and(|f| *f.get_ref());
        let s = self.source;
        let networks: Vec<IpNet> = trusted
            .iter()
            .flat_map(|t| t.get_ref().iter().enumerate())
            .filter_map(|(i, text)| {
                self.ok(parse_cidr(text.get_ref()).ok_or_else(|| {
                    s.error_at(
                        format!("{field}.trusted[{i}]"),
                        text,
                        format!(
                            "{:?} is not a CIDR such as \"10.0.0.0/8\" or an IP address such as \"192.0.2.7\"",
                            text.get_ref()
                        ),
                    )
                }))
            })
            .collect();
        match (on, trusted) {
            (true, None) => {
                let error = s.error(
                    format!("{field}.proxy_protocol"),
                    flag.as_ref().map(Spanned::span),
                    "proxy_protocol = true needs trusted = [...]: the addresses of the proxies allowed to send the header (such as [\"10.0.0.0/8\"]; [\"0.0.0.0/0\", \"::/0\"] trusts every peer)",
                );
                self.report(error);
            }
            (true, Some(list)) if list.get_ref().is_empty() => {
                let error = s.error_at(
                    format!("{field}.trusted"),
                    list,
                    "no trusted peers: every connection would be closed; name the proxies allowed to send the PROXY header",
                );
                self.report(error);
            }
            (false, Some(list)) => {
                let error = s.error_at(
                    format!("{field}.trusted"),
                    list,
                    "trusted names the peers allowed to send a PROXY protocol header: it needs proxy_protocol = true (for X-Forwarded-For from trusted proxies, see balancer.trusted_proxies)",
                );
                self.report(error);
            }
            _ => {}
        }
        (on, networks)
    }

    /// A `tls` table at `field`. Certificate paths are resolved against the
    /// config file's folder; the files themselves are read when the
    /// listener starts (and by `--check`).
    fn tls(&mut self, file: &Spanned<FileTls>, field: &str) -> TlsConfig {
        let tls = file.get_ref();
        if tls.certificates.get_ref().is_empty() {
            let error = self.source.error(
                format!("{field}.certificates"),
                Some(tls.certificates.span()),
                "no certificates: add at least one { cert = \"FILE.pem\", key = \"FILE.key\" }",
            );
            self.report(error);
        }
        let folder = self.source.file.parent().unwrap_or(Path::new(""));
        let mut certificates = Vec::new();
        for (i, entry) in tls.certificates.get_ref().iter().enumerate() {
            let at = format!("{field}.certificates[{i}]");
            let mut path = |value: &Spanned<String>, name: &str| {
                if value.get_ref().trim().is_empty() {
                    let error =
                        self.source
                            .error_at(format!("{at}.{name}"), value, "an empty path");
                    self.report(error);
                }
                folder.join(value.get_ref())
            };
            let cert = path(&entry.cert, "cert");
            let key = path(&entry.key, "key");
            certificates.push(CertificateFiles {
                cert,
                key,
                field: at,
            });
        }
        let mut alpn = Vec::new();
        match &tls.alpn {
            None => alpn.extend([Alpn::H2, Alpn::Http11]),
            Some(list) => {
                if list.get_ref().is_empty() {
                    let error = self.source.error(
                        format!("{field}.alpn"),
                        Some(list.span()),
                        "no protocols: use [\"h2\", \"http/1.1\"], [\"http/1.1\"] or [\"h2\"]",
                    );
                    self.report(error);
                }
                for (i, name) in list.get_ref().iter().enumerate() {
                    let protocol = match name.get_ref().as_str() {
                        "h2" => Alpn::H2,
                        "http/1.1" => Alpn::Http11,
                        other => {
                            let error = self.source.error_at(
                                format!("{field}.alpn[{i}]"),
                                name,
                                format!(
                                    "unknown protocol {other:?}; expected \"h2\" or \"http/1.1\""
                                ),
                            );
                            self.report(error);
                            continue;
                        }
                    };
                    if alpn.contains(&protocol) {
                        let error = self.source.error_at(
                            format!("{field}.alpn[{i}]"),
                            name,
                            format!("{other:?} is listed twice", other = name.get_ref()),
                        );
                        self.report(error);
                        continue;
                    }
                    alpn.push(protocol);
                }
            }
        }
        let handshake_timeout = self
            .duration(
                &tls.handshake_timeout,
                &format!("{field}.handshake_timeout"),
                DEFAULT_HANDSHAKE_TIMEOUT,
                false,
            )
            .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
        TlsConfig {
            certificates,
            alpn,
            handshake_timeout,
        }
    }

    /// Records `name` (of entry `i` of the list `what`) in `names` when it
    /// is allowed and not already used; reports it otherwise. `span_of(j)`
    /// is where entry `j`'s name is.
    fn unique_name<'e>(
        &mut self,
        what: &str,
        name: &'e Spanned<String>,
        names: &mut HashMap<&'e str, usize>,
        i: usize,
        span_of: impl Fn(usize) -> std::ops::Range<usize>,
    ) -> bool {
        let field = format!("{what}[{i}].name");
        if let Some(problem) = name_problem(name.get_ref()) {
            let error = self.source.error_at(field, name, problem);
            self.report(error);
            return false;
        }
        if let Some(&first) = names.get(name.get_ref().as_str()) {
            let error = self.source.error_at(
                field,
                name,
                format!(
                    "name {:?} is already used by {what}[{first}] (line {}); names must be unique",
                    name.get_ref(),
                    self.source.line_of(span_of(first))
                ),
            );
            self.report(error);
            return false;
        }
        names.insert(name.get_ref(), i);
        true
    }

    /// The pools: the `[[pools]]` entries, or the single-pool form's one,
    /// named `default`.
    fn pools(&mut self, file: &FileConfig, limits: &LimitsConfig) -> Vec<Arc<PoolConfig>> {
        let default_balancer = FileBalancer::default();
        let default_health = FileHealthCheck::default();
        let default_upstream = FileUpstream::default();
        let Some(entries) = &file.pools else {
            let pool = self.pool(
                DEFAULT_NAME,
                PoolTables {
                    balancer: file
                        .balancer
                        .as_ref()
                        .map_or(&default_balancer, |b| b.get_ref()),
                    health_check: file
                        .health_check
                        .as_ref()
                        .map_or(&default_health, |h| h.get_ref()),
                    upstream: file
                        .upstream
                        .as_ref()
                        .map_or(&default_upstream, |u| u.get_ref()),
                    backends: file.backends.as_ref(),
                    discover: file.discover.as_ref(),
                    max_in_flight_per_backend: None,
                },
                limits,
            );
            return vec![Arc::new(pool)];
        };
        let single_pool_tables = [
            ("balancer", file.balancer.as_ref().map(Spanned::span)),
            (
                "health_check",
                file.health_check.as_ref().map(Spanned::span),
            ),
            ("upstream", file.upstream.as_ref().map(Spanned::span)),
            ("backends", file.backends.as_ref().map(Spanned::span)),
            ("discover", file.discover.as_ref().map(Spanned::span)),
        ];
        for (table, span) in single_pool_tables {
            if let Some(span) = span {
                let error = self.source.error(
                    table,
                    Some(span),
                    format!(
                        "with [[pools]], {table} belongs in each [[pools]] entry (its [balancer] keys at the entry's top level)"
                    ),
                );
                self.report(error);
            }
        }
        if entries.get_ref().is_empty() {
            let error = self.source.error(
                "pools",
                Some(entries.span()),
                "no pools: add a [[pools]] table with a name and backends",
            );
            self.report(error);
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut pools = Vec::new();
        for (i, entry) in entries.get_ref().iter().enumerate() {
            self.unique_name("pools", &entry.name, &mut names, i, |j| {
                entries.get_ref()[j].name.span()
            });
            let source = Source {
                pool: Some(i),
                ..*self.source
            };
            let mut check = Check {
                source: &source,
                errors: Vec::new(),
                warnings: Vec::new(),
            };
            let balancer = entry.balancer();
            let pool = check.pool(
                entry.name.get_ref(),
                PoolTables {
                    balancer: &balancer,
                    health_check: &entry.health_check,
                    upstream: &entry.upstream,
                    backends: entry.backends.as_ref(),
                    discover: entry.discover.as_ref(),
                    max_in_flight_per_backend: entry.max_in_flight_per_backend.as_ref(),
                },
                limits,
            );
            self.errors.append(&mut check.errors);
            self.warnings.append(&mut check.warnings);
            pools.push(Arc::new(pool));
        }
        pools
    }

    /// One pool from its tables.
    fn pool(&mut self, name: &str, tables: PoolTables<'_>, limits: &LimitsConfig) -> PoolConfig {
        let algorithm = self.algorithm(tables.balancer);
        let table_size = self.table_size(tables.balancer);
        let balancer = self.balancer(tables.balancer, algorithm, table_size);
        let health_check = self.health_check(tables.health_check);
        let upstream = self.upstream(tables.upstream);
        let max_in_flight_per_backend = self
            .count(
                &tables.max_in_flight_per_backend.cloned(),
                "max_in_flight_per_backend",
                limits.max_in_flight_per_backend,
                0,
            )
            .unwrap_or(limits.max_in_flight_per_backend);
        let discover = self.discover(tables.discover);
        let backends = self.backends(tables.backends, !discover.is_empty());

        if algorithm == Some(Algorithm::Maglev)
            && let Some(size) = table_size
        {
            self.table_size_fits(size, backends.as_deref(), tables.balancer);
        }
        if let (Some(backends), Some(text)) = (&backends, &tables.upstream.protocol) {
            let wants_tls = upstream.protocol == UpstreamProtocol::H2;
            let mismatch = backends.iter().find(|b| {
                upstream.protocol.is_h2() && (b.url.scheme_str() == Some("https")) != wants_tls
            });
            if let Some(backend) = mismatch {
                let error = self.source.error_at(
                    "upstream.protocol",
                    text,
                    format!(
                        "{:?} is HTTP/2 over {}, but backend {:?} is {}: use \"h2\" with https:// backends and \"h2c\" with http:// ones",
                        upstream.protocol.as_str(),
                        if wants_tls { "TLS" } else { "plain TCP" },
                        backend.name,
                        backend_url_text(&backend.url),
                    ),
                );
                self.report(error);
            }
        }
        if algorithm == Some(Algorithm::RingHash)
            && let Some(backends) = &backends
            && let Err(e) = crate::balance::ring::check_points(
                &members(backends),
                crate::balance::ring::DEFAULT_POINTS_PER_WEIGHT,
            )
        {
            let span = tables.balancer.algorithm.as_ref().map(Spanned::span);
            let error = self.source.error("balancer.algorithm", span, e.to_string());
            self.report(error);
        }
        PoolConfig {
            name: name.to_owned(),
            balancer,
            health_check,
            upstream,
            max_in_flight_per_backend,
            backends: backends.unwrap_or_default(),
            discover,
        }
    }

    /// The routes: the `[[routes]]` entries, or, without any, one that
    /// sends everything to the only pool.
    fn routes(
        &mut self,
        file: &FileConfig,
        listeners: &[(ListenerConfig, bool)],
        pools: &[Arc<PoolConfig>],
    ) -> Vec<RouteConfig> {
        let mut pool_names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        pool_names.dedup();
        let known_pool = |name: &str| pool_names.contains(&name);
        for (i, (listener, _)) in listeners.iter().enumerate() {
            if let Some(pool) = &listener.pool
                && !known_pool(pool)
                && let Some(entry) = file.listeners.as_ref().and_then(|l| l.get_ref().get(i))
                && let Some(spanned) = &entry.pool
            {
                let error = self.source.error_at(
                    format!("listeners[{i}].pool"),
                    spanned,
                    format!(
                        "unknown pool {pool:?}; the pools are {}",
                        pool_names.join(", ")
                    ),
                );
                self.report(error);
            }
        }
        let routes = match &file.routes {
            None => self.implicit_routes(file, listeners, pools),
            Some(entries) => {
                let mut routes = Vec::with_capacity(entries.len());
                for (i, entry) in entries.iter().enumerate() {
                    if let Some(route) = self.route(i, entry, listeners, &pool_names) {
                        routes.push((i, route));
                    }
                }
                self.shadowed(entries, &routes);
                routes.into_iter().map(|(_, r)| r).collect()
            }
        };
        self.unreached_pools(file, listeners, &routes);
        routes
    }

    /// Warns of each pool that no route and no listener sends requests to.
    fn unreached_pools(
        &mut self,
        file: &FileConfig,
        listeners: &[(ListenerConfig, bool)],
        routes: &[RouteConfig],
    ) {
        let Some(pools) = &file.pools else {
            return;
        };
        let used: Vec<&str> = routes
            .iter()
            .map(|r| r.pool.as_str())
            .chain(listeners.iter().filter_map(|(l, _)| l.pool.as_deref()))
            .collect();
        for (i, entry) in pools.get_ref().iter().enumerate() {
            if !used.contains(&entry.name.get_ref().as_str()) {
                let warning = self.source.warning(
                    format!("pools[{i}].name"),
                    &entry.name,
                    format!(
                        "no route or listener sends requests to pool {:?}",
                        entry.name.get_ref()
                    ),
                );
                self.warnings.push(warning);
            }
        }
    }

    /// Without `[[routes]]`: everything to the only pool; with several
    /// pools, every http listener needs a `pool` of its own.
    fn implicit_routes(
        &mut self,
        file: &FileConfig,
        listeners: &[(ListenerConfig, bool)],
        pools: &[Arc<PoolConfig>],
    ) -> Vec<RouteConfig> {
        if let [pool] = pools {
            return vec![RouteConfig {
                listener: None,
                host: None,
                path_prefix: "/".to_owned(),
                strip_prefix: false,
                pool: pool.name.clone(),
            }];
        }
        let unrouted = listeners
            .iter()
            .any(|(l, _)| l.protocol == Protocol::Http && l.pool.is_none());
        if unrouted && let Some(entries) = &file.pools {
            let error = self.source.error(
                "routes",
                Some(entries.span()),
                "with more than one pool, add [[routes]] (or give each listener a pool) to say which requests go where",
            );
            self.report(error);
        }
        Vec::new()
    }

    /// Route `i`; `None` when it is invalid (reported).
    fn route(
        &mut self,
        i: usize,
        entry: &FileRoute,
        listeners: &[(ListenerConfig, bool)],
        pool_names: &[&str],
    ) -> Option<RouteConfig> {
        let mut valid = true;
        if !pool_names.contains(&entry.pool.get_ref().as_str()) {
            let error = self.source.error_at(
                format!("routes[{i}].pool"),
                &entry.pool,
                format!(
                    "unknown pool {:?}; the pools are {}",
                    entry.pool.get_ref(),
                    pool_names.join(", ")
                ),
            );
            self.report(error);
            valid = false;
        }
        if let Some(name) = &entry.listener {
            match listeners.iter().find(|(l, _)| l.name == *name.get_ref()) {
                None => {
                    let mut names: Vec<&str> =
                        listeners.iter().map(|(l, _)| l.name.as_str()).collect();
                    names.dedup();
                    let error = self.source.error_at(
                        format!("routes[{i}].listener"),
                        name,
                        format!(
                            "unknown listener {:?}; the listeners are {}",
                            name.get_ref(),
                            names.join(", ")
                        ),
                    );
                    self.report(error);
                    valid = false;
                }
                Some((listener, _)) if listener.protocol == Protocol::Tcp => {
                    let error = self.source.error_at(
                        format!("routes[{i}].listener"),
                        name,
                        format!(
                            "listener {:?} is a tcp listener: it has no routes (its connections all go to its pool)",
                            name.get_ref()
                        ),
                    );
                    self.report(error);
                    valid = false;
                }
                Some(_) => {}
            }
        }
        let host = match &entry.host {
            None => None,
            Some(text) => {
                let s = self.source;
                let parsed = self.ok(HostPattern::parse(text.get_ref())
                    .map_err(|m| s.error_at(format!("routes[{i}].host"), text, m)));
                valid &= parsed.is_some();
                parsed
            }
        };
        let path_prefix = match &entry.path_prefix {
            None => "/".to_owned(),
            Some(prefix) => {
                let text = prefix.get_ref();
                if !text.starts_with('/')
                    || text.contains(['?', '#'])
                    || text.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    let error = self.source.error_at(
                        format!("routes[{i}].path_prefix"),
                        prefix,
                        format!(
                            "{text:?} is not a path prefix: it starts with \"/\" and has no query, fragment or spaces (\"/api\" matches /api and /api/x, not /apix)"
                        ),
                    );
                    self.report(error);
                    valid = false;
                }
                text.clone()
            }
        };
        valid.then(|| RouteConfig {
            listener: entry.listener.as_ref().map(|l| l.get_ref().clone()),
            host,
            path_prefix,
            strip_prefix: entry.strip_prefix.unwrap_or(false),
            pool: entry.pool.get_ref().clone(),
        })
    }

    /// Reports every route that an earlier one shadows: the same hosts and
    /// prefix on a listener both apply to, so the later could never be taken.
    fn shadowed(&mut self, entries: &[FileRoute], routes: &[(usize, RouteConfig)]) {
        for (n, (j, later)) in routes.iter().enumerate() {
            let by = routes[..n].iter().find(|(_, earlier)| {
                earlier.host == later.host
                    && earlier.path_prefix == later.path_prefix
                    && match (&earlier.listener, &later.listener) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    }
            });
            if let Some((i, earlier)) = by {
                let entry = &entries[*j];
                let span = entry
                    .path_prefix
                    .as_ref()
                    .or(entry.host.as_ref())
                    .map_or_else(|| entry.pool.span(), Spanned::span);
                let error = self.source.error(
                    format!("routes[{j}]"),
                    Some(span),
                    format!(
                        "shadowed by routes[{i}] (line {}): both are for {} and path_prefix {:?} on the same listener, so this one is never taken",
                        self.source.line_of(entries[*i].pool.span()),
                        earlier.host.as_ref().map_or_else(|| "any host".to_owned(), |h| format!("host {h}")),
                        later.path_prefix,
                    ),
                );
                self.report(error);
            }
        }
    }

    fn admin(&mut self, file: &FileAdmin, listeners: &[(ListenerConfig, bool)]) -> AdminConfig {
        let address = self.socket_addr(&file.address, "admin.address", DEFAULT_ADMIN_ADDRESS);
        let taken = listeners
            .iter()
            .find(|(l, valid)| *valid && Some(l.address) == address && l.address.port() != 0);
        if let (Some(address), Some((listener, _))) = (address, taken) {
            let span = file.address.as_ref().map(Spanned::span);
            let error = self.source.error(
                "admin.address",
                span,
                format!(
                    "{address} is also the address of listener {:?}; the admin endpoint needs its own port",
                    listener.name
                ),
            );
            self.report(error);
        }
        AdminConfig {
            address: address.unwrap_or(DEFAULT_ADMIN_ADDRESS),
            token_file: file.token_file.as_ref().map(|p| self.file_path(p)),
        }
    }

    fn algorithm(&mut self, file: &FileBalancer) -> Option<Algorithm> {
        let Some(text) = &file.algorithm else {
            return Some(DEFAULT_ALGORITHM);
        };
        let algorithm = Algorithm::parse(text.get_ref());
        if algorithm.is_none() {
            let names: Vec<&str> = Algorithm::ALL.iter().map(Algorithm::as_str).collect();
            let error = self.source.error_at(
                "balancer.algorithm",
                text,
                format!(
                    "unknown algorithm {:?}; expected one of {}",
                    text.get_ref(),
                    names.join(", ")
                ),
            );
            self.report(error);
        }
        algorithm
    }

    fn table_size(&mut self, file: &FileBalancer) -> Option<usize> {
        let Some(size) = &file.table_size else {
            return Some(DEFAULT_TABLE_SIZE);
        };
        let s = self.source;
        self.ok(usize::try_from(*size.get_ref()).map_err(|_| {
            s.error_at(
                "balancer.table_size",
                size,
                format!(
                    "table_size {} must be a positive prime such as 65537",
                    size.get_ref()
                ),
            )
        }))
    }

    /// `algorithm` and `table_size` are `None` when invalid (already reported).
    fn balancer(
        &mut self,
        file: &FileBalancer,
        algorithm: Option<Algorithm>,
        table_size: Option<usize>,
    ) -> BalancerConfig {
        let s = self.source;
        let key = match &file.key {
            None => Some(DEFAULT_KEY),
            Some(text) => self
                .ok(KeySource::parse(text.get_ref())
                    .map_err(|m| s.error_at("balancer.key", text, m))),
        };
        let trusted_proxies = file
            .trusted_proxies
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, text)| {
                self.ok(parse_cidr(text.get_ref()).ok_or_else(|| {
                    s.error_at(
                        format!("balancer.trusted_proxies[{i}]"),
                        text,
                        format!(
                            "{:?} is not a CIDR such as \"10.0.0.0/8\" or an IP address such as \"192.0.2.7\"",
                            text.get_ref()
                        ),
                    )
                }))
            })
            .collect();
        let hash_key = match &file.hash_key {
            None => None,
            Some(text) => self
                .ok(parse_hash_key(text.get_ref())
                    .map_err(|m| s.error_at("balancer.hash_key", text, m)))
                .flatten(),
        };
        let bounded_load = match &file.bounded_load {
            None => Some(DEFAULT_BOUNDED_LOAD),
            Some(value) => self.bounded_load(value, algorithm),
        };
        let panic_threshold = match &file.panic_threshold {
            None => Some(DEFAULT_PANIC_THRESHOLD),
            Some(value) => self.panic_threshold(value),
        };
        let sticky_cookie = file.sticky_cookie.as_ref().map(|sticky| {
            if let Some(algorithm) = algorithm
                && !algorithm.is_hash()
            {
                let error = s.error(
                    "balancer.sticky_cookie",
                    file.algorithm.as_ref().map(Spanned::span),
                    format!(
                        "a sticky cookie is hashed to pick the backend, so it needs maglev or ring_hash, not {algorithm}"
                    ),
                );
                self.report(error);
            }
            self.sticky_cookie(sticky)
        });
        let slow_start = self.duration(
            &file.slow_start,
            "balancer.slow_start",
            Duration::ZERO,
            true,
        );
        BalancerConfig {
            slow_start: slow_start.unwrap_or(Duration::ZERO),
            algorithm: algorithm.unwrap_or(DEFAULT_ALGORITHM),
            key: key.unwrap_or(DEFAULT_KEY),
            table_size: table_size.unwrap_or(DEFAULT_TABLE_SIZE),
            trusted_proxies,
            hash_key,
            bounded_load: bounded_load.unwrap_or(DEFAULT_BOUNDED_LOAD),
            panic_threshold: panic_threshold.unwrap_or(DEFAULT_PANIC_THRESHOLD),
            sticky_cookie,
        }
    }

    /// The factor's range is checked first; whether the algorithm can use it
    /// only when it is in range and the algorithm is valid.
    fn bounded_load(&mut self, value: &Spanned<f64>, algorithm: Option<Algorithm>) -> Option<f64> {
        let c = *value.get_ref();
        if !c.is_finite() || c < 0.0 || (c > 0.0 && c <= 1.0) {
            let error = self.source.error_at(
                "balancer.bounded_load",
                value,
                format!(
                    "bounded_load {c} is out of range; use 0 (off) or a factor above 1.0 such as 1.25 (each backend takes at most c times the mean load)"
                ),
            );
            self.report(error);
            return None;
        }
        if let Some(algorithm) = algorithm
            && c > 0.0
            && !algorithm.is_hash()
        {
            let error = self.source.error_at(
                "balancer.bounded_load",
                value,
                format!(
                    "bounded_load only applies to the hash algorithms maglev and ring_hash, not {algorithm}; remove it or set it to 0"
                ),
            );
            self.report(error);
            return None;
        }
        Some(c)
    }

    fn panic_threshold(&mut self, value: &Spanned<f64>) -> Option<f64> {
        let percent = *value.get_ref();
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            let error = self.source.error_at(
                "balancer.panic_threshold",
                value,
                format!(
                    "panic_threshold {percent} is out of range; use a percentage from 0 (off) to 100, such as 50 (below half the backends healthy, route over all of them)"
                ),
            );
            self.report(error);
            return None;
        }
        Some(percent)
    }

    fn sticky_cookie(&mut self, file: &FileStickyCookie) -> StickyCookieConfig {
        let name = match &file.name {
            None => DEFAULT_STICKY_COOKIE_NAME.to_owned(),
            Some(name) if is_cookie_token(name.get_ref()) => name.get_ref().clone(),
            Some(name) => {
                let error = self.source.error_at(
                    "balancer.sticky_cookie.name",
                    name,
                    format!(
                        "{:?} is not a valid cookie name (a non-empty token without spaces or ()<>@,;:\\\"/[]?={{}})",
                        name.get_ref()
                    ),
                );
                self.report(error);
                DEFAULT_STICKY_COOKIE_NAME.to_owned()
            }
        };
        let max_age = self
            .duration(
                &file.max_age,
                "balancer.sticky_cookie.max_age",
                DEFAULT_STICKY_COOKIE_MAX_AGE,
                false,
            )
            .unwrap_or(DEFAULT_STICKY_COOKIE_MAX_AGE);
        StickyCookieConfig {
            name,
            max_age,
            pin: file.pin.unwrap_or(false),
        }
    }

    fn health_check(&mut self, file: &FileHealthCheck) -> HealthCheckConfig {
        let path = match &file.path {
            None => DEFAULT_HEALTH_PATH.to_owned(),
            Some(path) => self
                .health_path(path)
                .unwrap_or_else(|| DEFAULT_HEALTH_PATH.to_owned()),
        };
        let interval = self.duration(
            &file.interval,
            "health_check.interval",
            DEFAULT_HEALTH_INTERVAL,
            false,
        );
        let timeout = self.duration(
            &file.timeout,
            "health_check.timeout",
            DEFAULT_HEALTH_TIMEOUT,
            false,
        );
        if let (Some(interval), Some(timeout)) = (interval, timeout)
            && timeout >= interval
        {
            let error = self.timeout_not_below_interval(file, timeout, interval);
            self.report(error);
        }
        let kind = match &file.kind {
            None => Some(ProbeKind::Http),
            Some(text) => match text.get_ref().as_str() {
                "http" => Some(ProbeKind::Http),
                "tcp" => Some(ProbeKind::Tcp),
                other => {
                    let error = self.source.error_at(
                        "health_check.type",
                        text,
                        format!("unknown probe type {other:?}; expected \"http\" or \"tcp\""),
                    );
                    self.report(error);
                    None
                }
            },
        };
        HealthCheckConfig {
            kind: kind.unwrap_or(ProbeKind::Http),
            path,
            interval: interval.unwrap_or(DEFAULT_HEALTH_INTERVAL),
            timeout: timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT),
            healthy_threshold: self
                .count(
                    &file.healthy_threshold,
                    "health_check.healthy_threshold",
                    DEFAULT_HEALTHY_THRESHOLD,
                    1,
                )
                .unwrap_or(DEFAULT_HEALTHY_THRESHOLD),
            unhealthy_threshold: self
                .count(
                    &file.unhealthy_threshold,
                    "health_check.unhealthy_threshold",
                    DEFAULT_UNHEALTHY_THRESHOLD,
                    1,
                )
                .unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD),
        }
    }

    fn health_path(&mut self, path: &Spanned<String>) -> Option<String> {
        let text = path.get_ref();
        let problem = if !text.starts_with('/') {
            format!("{text:?} must start with \"/\", such as \"/health\"")
        } else if PathAndQuery::from_str(text).is_err() {
            format!(
                "{text:?} is not a valid URL path (spaces and control characters must be percent-encoded)"
            )
        } else {
            return Some(text.clone());
        };
        let error = self.source.error_at("health_check.path", path, problem);
        self.report(error);
        None
    }

    /// Points at the timeout when the file sets one, else at the interval.
    fn timeout_not_below_interval(
        &self,
        file: &FileHealthCheck,
        timeout: Duration,
        interval: Duration,
    ) -> ConfigError {
        let shown = |d| humantime::format_duration(d);
        match (&file.timeout, &file.interval) {
            (Some(t), _) => self.source.error_at(
                "health_check.timeout",
                t,
                format!(
                    "timeout {} must be below interval {}: a probe has to finish before the next one starts",
                    shown(timeout),
                    shown(interval)
                ),
            ),
            (None, i) => self.source.error(
                "health_check.interval",
                i.as_ref().map(Spanned::span),
                format!(
                    "interval {} must be above timeout {} (the default); raise the interval or set a shorter timeout",
                    shown(interval),
                    shown(timeout)
                ),
            ),
        }
    }

    fn upstream(&mut self, file: &FileUpstream) -> UpstreamConfig {
        UpstreamConfig {
            connect_timeout: self
                .duration(
                    &file.connect_timeout,
                    "upstream.connect_timeout",
                    DEFAULT_CONNECT_TIMEOUT,
                    false,
                )
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            request_timeout: self
                .duration(
                    &file.request_timeout,
                    "upstream.request_timeout",
                    DEFAULT_REQUEST_TIMEOUT,
                    false,
                )
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            retries: self
                .count(&file.retries, "upstream.retries", DEFAULT_RETRIES, 0)
                .unwrap_or(DEFAULT_RETRIES),
            ca_file: file.ca_file.as_ref().map(|p| self.file_path(p)),
            client_cert: self.paired(
                &file.client_cert,
                &file.client_key,
                "upstream.client_cert",
                "client_key",
            ),
            client_key: self.paired(
                &file.client_key,
                &file.client_cert,
                "upstream.client_key",
                "client_cert",
            ),
            protocol: match &file.protocol {
                None => UpstreamProtocol::Http1,
                Some(text) => match text.get_ref().as_str() {
                    "http1" => UpstreamProtocol::Http1,
                    "h2c" => UpstreamProtocol::H2c,
                    "h2" => UpstreamProtocol::H2,
                    other => {
                        let error = self.source.error_at(
                            "upstream.protocol",
                            text,
                            format!("unknown protocol {other:?}; expected \"http1\", \"h2c\" (HTTP/2 over plain TCP) or \"h2\" (HTTP/2 over TLS)"),
                        );
                        self.report(error);
                        UpstreamProtocol::Http1
                    }
                },
            },
            send_proxy_protocol: match &file.send_proxy_protocol {
                None => SendProxyProtocol::Off,
                Some(text) => match text.get_ref().as_str() {
                    "off" => SendProxyProtocol::Off,
                    "v1" => SendProxyProtocol::V1,
                    "v2" => SendProxyProtocol::V2,
                    other => {
                        let error = self.source.error_at(
                            "upstream.send_proxy_protocol",
                            text,
                            format!("unknown value {other:?}; expected \"off\", \"v1\" (text) or \"v2\" (binary)"),
                        );
                        self.report(error);
                        SendProxyProtocol::Off
                    }
                },
            },
        }
    }

    /// `path` resolved against the config file's folder.
    fn file_path(&self, path: &Spanned<String>) -> PathBuf {
        let folder = self.source.file.parent().unwrap_or(Path::new(""));
        folder.join(path.get_ref())
    }

    /// `value`'s path, reported when `other` (named `other_name`) is not
    /// given beside it.
    fn paired(
        &mut self,
        value: &Option<Spanned<String>>,
        other: &Option<Spanned<String>>,
        field: &str,
        other_name: &str,
    ) -> Option<PathBuf> {
        let value = value.as_ref()?;
        if other.is_none() {
            let error = self.source.error_at(
                field,
                value,
                format!(
                    "needs {other_name} beside it: a client certificate and its key come together"
                ),
            );
            self.report(error);
        }
        Some(self.file_path(value))
    }

    fn limits(&mut self, file: &FileLimits) -> LimitsConfig {
        let max_header_bytes = self
            .count_in(
                &file.max_header_bytes,
                "limits.max_header_bytes",
                DEFAULT_MAX_HEADER_BYTES,
                MIN_MAX_HEADER_BYTES..=MAX_MAX_HEADER_BYTES,
            )
            .unwrap_or(DEFAULT_MAX_HEADER_BYTES);
        let max_body_bytes = match &file.max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(value) => {
                let s = self.source;
                self.ok(u64::try_from(*value.get_ref()).map_err(|_| {
                    s.error_at(
                        "limits.max_body_bytes",
                        value,
                        format!(
                            "{} is out of range; use 0 (no limit) or a size in bytes",
                            value.get_ref()
                        ),
                    )
                }))
                .unwrap_or(DEFAULT_MAX_BODY_BYTES)
            }
        };
        LimitsConfig {
            header_timeout: self
                .duration(
                    &file.header_timeout,
                    "limits.header_timeout",
                    DEFAULT_HEADER_TIMEOUT,
                    false,
                )
                .unwrap_or(DEFAULT_HEADER_TIMEOUT),
            max_header_bytes,
            max_headers: self
                .count(
                    &file.max_headers,
                    "limits.max_headers",
                    DEFAULT_MAX_HEADERS,
                    1,
                )
                .unwrap_or(DEFAULT_MAX_HEADERS),
            max_body_bytes,
            max_connections: self
                .count(
                    &file.max_connections,
                    "limits.max_connections",
                    DEFAULT_MAX_CONNECTIONS,
                    1,
                )
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            max_in_flight_per_backend: self
                .count(
                    &file.max_in_flight_per_backend,
                    "limits.max_in_flight_per_backend",
                    DEFAULT_MAX_IN_FLIGHT_PER_BACKEND,
                    0,
                )
                .unwrap_or(DEFAULT_MAX_IN_FLIGHT_PER_BACKEND),
        }
    }

    /// The pool; `None` when it or any entry is invalid, so the rules that
    /// weigh the whole pool (table size, ring points) do not run.
    /// The static backends; with `discovered` (the pool discovers more from
    /// DNS) there may be none.
    fn backends(
        &mut self,
        file: Option<&Spanned<Vec<FileBackend>>>,
        discovered: bool,
    ) -> Option<Vec<BackendConfig>> {
        let list_span = file.map(Spanned::span);
        let entries: &[FileBackend] = file.map(|f| f.get_ref().as_slice()).unwrap_or(&[]);
        if entries.is_empty() && discovered {
            return Some(Vec::new());
        }
        let mut valid = true;
        if entries.is_empty() {
            let error = self.source.error(
                "backends",
                list_span.clone(),
                "no backends: add at least one backend with a name and a url, or discover them from DNS (discover = [{ dns = ... }])",
            );
            self.report(error);
            valid = false;
        }
        if entries.len() > MAX_BACKENDS {
            let error = self.source.error(
                "backends",
                list_span.clone(),
                MemberError::TooMany(entries.len()).to_string(),
            );
            self.report(error);
            valid = false;
        }

        // The first entry with each valid name, and with each address.
        let mut names: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        let mut addresses: HashMap<String, usize> = HashMap::with_capacity(entries.len());
        let mut backends = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let name = self.backend_name(i, entries, &mut names);
            let weight = match &entry.weight {
                None => Some(DEFAULT_WEIGHT),
                Some(w) => self.weight(i, w),
            };
            let s = self.source;
            let url = self.ok(parse_backend_url(entry.url.get_ref())
                .map_err(|m| s.error_at(format!("backends[{i}].url"), &entry.url, m)));
            if let Some(url) = &url {
                self.same_address(i, url, entries, &mut addresses);
            }
            let drain = match &entry.state {
                None => Some(false),
                Some(state) => match state.get_ref().as_str() {
                    "active" => Some(false),
                    "drain" => Some(true),
                    other => {
                        let error = self.source.error_at(
                            format!("backends[{i}].state"),
                            state,
                            format!("unknown state {other:?}; expected \"active\" or \"drain\""),
                        );
                        self.report(error);
                        None
                    }
                },
            };
            match (name, weight, url, drain) {
                (Some(name), Some(weight), Some(url), Some(drain)) => {
                    backends.push(BackendConfig {
                        name: name.to_owned(),
                        url,
                        weight,
                        drain,
                    })
                }
                _ => valid = false,
            }
        }
        if !valid {
            return None;
        }
        // The core's own rules, which the checks above already imply: should
        // it ever add one, the file is still refused instead of the proxy
        // failing to build its table.
        if let Err(e) = crate::balance::member::validate(&members(&backends)) {
            let error = self.source.error("backends", list_span, e.to_string());
            self.report(error);
            return None;
        }
        Some(backends)
    }

    /// Entry `i`'s name if it is allowed and not already used, recording it
    /// in `names`; an invalid name is never compared, so it is reported once.
    fn backend_name<'e>(
        &mut self,
        i: usize,
        entries: &'e [FileBackend],
        names: &mut HashMap<&'e str, usize>,
    ) -> Option<&'e str> {
        let name = &entries[i].name;
        self.unique_name("backends", name, names, i, |j| entries[j].name.span())
            .then_some(name.get_ref().as_str())
    }

    fn weight(&mut self, i: usize, weight: &Spanned<i64>) -> Option<u32> {
        let value = *weight.get_ref();
        let in_range = u32::try_from(value)
            .ok()
            .filter(|w| (1..=MAX_WEIGHT).contains(w));
        if in_range.is_none() {
            let error = self.source.error_at(
                format!("backends[{i}].weight"),
                weight,
                weight_out_of_range(value),
            );
            self.report(error);
        }
        in_range
    }

    /// Warns when entry `i` connects where an earlier backend does: two
    /// names on one server may be deliberate (two shares of the keys), but
    /// more often one of them was copied and not edited.
    fn same_address(
        &mut self,
        i: usize,
        url: &Uri,
        entries: &[FileBackend],
        addresses: &mut HashMap<String, usize>,
    ) {
        let Some(authority) = url.authority() else {
            return;
        };
        // Host names are case-insensitive and port 80 is the default, so
        // `http://A` and `http://a:80` are one server.
        let address = connect_address(authority).to_ascii_lowercase();
        match addresses.get(&address) {
            None => {
                addresses.insert(address, i);
            }
            Some(&first) => {
                let warning = self.source.warning(
                    format!("backends[{i}].url"),
                    &entries[i].url,
                    format!(
                        "same URL as backends[{first}] ({:?}, line {}): {} gets the keys of both names; fine if deliberate, otherwise change or remove one (a larger weight gives one server more keys)",
                        entries[first].name.get_ref(),
                        self.source.line_of(entries[first].url.span()),
                        backend_url_text(url),
                    ),
                );
                self.warnings.push(warning);
            }
        }
    }

    /// The Maglev table size: a prime, and (once every weight is valid) at
    /// least the pool's total weight.
    fn table_size_fits(
        &mut self,
        size: usize,
        backends: Option<&[BackendConfig]>,
        file: &FileBalancer,
    ) {
        let fits = match backends {
            Some(backends) => crate::balance::maglev::check_table_size(size, &members(backends)),
            None if !crate::balance::maglev::is_prime(size) => Err(TableSizeError::NotPrime(size)),
            None => Ok(()),
        };
        if let Err(e) = fits {
            let span = file.table_size.as_ref().map(Spanned::span);
            let error = self
                .source
                .error("balancer.table_size", span, e.to_string());
            self.report(error);
        }
    }

    /// `value`, its `default` when absent, or `None` after reporting why it
    /// is not a duration (or is zero where zero is not allowed).
    pub(super) fn duration(
        &mut self,
        value: &Option<Spanned<DurationText>>,
        field: &str,
        default: Duration,
        allow_zero: bool,
    ) -> Option<Duration> {
        let Some(value) = value else {
            return Some(default);
        };
        let text = &value.get_ref().0;
        let problem = match humantime::parse_duration(text) {
            Ok(duration) if duration.is_zero() && !allow_zero => {
                format!("{text:?} is zero; it must be greater than zero")
            }
            Ok(duration) => return Some(duration),
            Err(e) => format!(
                "{text:?} is not a duration ({e}); write durations like \"500ms\", \"5s\" or \"1h\""
            ),
        };
        let error = self.source.error_at(field, value, problem);
        self.report(error);
        None
    }

    fn count(
        &mut self,
        value: &Option<Spanned<i64>>,
        field: &str,
        default: u32,
        min: u32,
    ) -> Option<u32> {
        self.count_in(value, field, default, min..=u32::MAX)
    }

    pub(super) fn count_in(
        &mut self,
        value: &Option<Spanned<i64>>,
        field: &str,
        default: u32,
        range: std::ops::RangeInclusive<u32>,
    ) -> Option<u32> {
        let Some(value) = value else {
            return Some(default);
        };
        let n = *value.get_ref();
        let s = self.source;
        self.ok(u32::try_from(n)
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                s.error_at(
                    field,
                    value,
                    format!(
                        "{n} is out of range; it must be between {} and {}",
                        range.start(),
                        range.end()
                    ),
                )
            }))
    }

    fn socket_addr(
        &mut self,
        value: &Option<Spanned<String>>,
        field: &str,
        default: SocketAddr,
    ) -> Option<SocketAddr> {
        let Some(value) = value else {
            return Some(default);
        };
        let text = value.get_ref();
        let s = self.source;
        self.ok(text.parse().map_err(|_| {
            s.error_at(
                field,
                value,
                format!("{text:?} is not an IP:PORT address such as \"127.0.0.1:8080\" or \"[::1]:8080\" (host names are not resolved)"),
            )
        }))
    }
}

/// The backends as the hashing core sees them.
fn members(backends: &[BackendConfig]) -> Vec<Member> {
    backends
        .iter()
        .map(|b| Member::new(b.name.clone(), b.weight))
        .collect()
}

/// What a backend name may be, as every message about it says.
const NAME_RULE: &str = "a name may contain any characters except control characters (such as tab or newline), and must not start or end with whitespace";

/// Why `name` cannot name a backend, if it cannot. Names are shown in logs,
/// `/status`, metric labels and `--check`, and are what is hashed: a blank
/// name, a stray space at either end or an invisible control character makes
/// two names look alike that hash apart.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the name is empty; every backend needs a unique, non-empty name".to_owned());
    }
    if name.trim().is_empty() {
        return Some(format!("the name {name:?} is blank; {NAME_RULE}"));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Some(format!(
            "the name {name:?} contains the control character {c:?}; {NAME_RULE}"
        ));
    }
    if name.starts_with(char::is_whitespace) {
        return Some(format!(
            "the name {name:?} starts with whitespace; {NAME_RULE}"
        ));
    }
    if name.ends_with(char::is_whitespace) {
        return Some(format!(
            "the name {name:?} ends with whitespace; {NAME_RULE}"
        ));
    }
    None
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
