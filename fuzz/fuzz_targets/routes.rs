//! Builds route tables from arbitrary routes and checks `select` against a
//! brute-force model of the rules `src/balance/route.rs` documents, written
//! here from those rules and not from the crate's code:
//!
//! * hosts compare lowercase, without the port (everything after the last
//!   `:`, or after the `]` of an IPv6 literal, which keeps its brackets) and
//!   without one final dot; an empty, over-long (> `MAX_HOST_LEN`) or
//!   non-ASCII host is no host;
//! * the most specific host group wins: the routes for exactly that host,
//!   else those of the longest `*.suffix` the host ends with after a dot
//!   with a label before it (`HostPattern::Suffix`: "at least one label";
//!   so `.example.com` is not under `*.example.com`), else the routes
//!   without a host; only that group is searched;
//! * within it the longest `path_prefix` that matches on a segment boundary.
//!
//! Routes are drawn from a small alphabet so that hosts and prefixes
//! collide: duplicates must be refused with `RouteError::Shadowed` and
//! prefixes without a leading `/` with `BadPrefix`, never a panic. Also
//! checked: `normalize_host` returns lowercase ASCII, a prefix of the host;
//! `HostPattern::parse` accepts exactly the documented names; listing the
//! routes in reverse picks the same route; adding a route that cannot match
//! the request changes nothing.

#![no_main]

use affinity::balance::route::{
    HostPattern, MAX_HOST_LEN, RouteError, RouteSpec, RouteTable, normalize_host,
};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const MAX_ROUTES: usize = 24;
const MAX_REQUESTS: usize = 16;

/// Labels of route hosts and request hosts: few, so that they collide.
const LABELS: [&str; 5] = ["a", "b", "shop", "example", "com"];
/// Segments of prefixes and paths, the empty one included (`//`).
const SEGMENTS: [&str; 7] = ["api", "apix", "v1", "a", "", "API", "static"];

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<Route>,
    /// Appended to the routes when it cannot match a request.
    extra: Route,
    requests: Vec<Request>,
    /// Host patterns as an operator could write anything.
    patterns: Vec<String>,
}

#[derive(Arbitrary, Debug, Clone)]
struct Route {
    host: Option<PatternText>,
    prefix: Prefix,
}

#[derive(Arbitrary, Debug, Clone)]
struct PatternText {
    wildcard: bool,
    labels: Vec<u8>,
    /// Bit i upper-cases label i.
    upper: u8,
    final_dot: bool,
}

/// A prefix or path: segments of the alphabet, or (one time in 16, so that
/// most tables of many routes stay valid) raw text, which may lack its `/`.
#[derive(Arbitrary, Debug, Clone)]
struct Prefix {
    segments: Vec<u8>,
    trailing_slash: bool,
    raw: u8,
    text: String,
}

#[derive(Arbitrary, Debug)]
struct Request {
    host: Option<HostText>,
    path: Path,
}

#[derive(Arbitrary, Debug)]
enum Path {
    Prefix(Prefix),
    /// A route's prefix, maybe cut short, and more segments after it.
    OfRoute {
        route: u8,
        cut: u8,
        tail: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
enum HostText {
    /// Labels of the alphabet (or an empty label), mixed case, maybe a final
    /// dot and a port.
    Name {
        labels: Vec<u8>,
        upper: u8,
        final_dot: bool,
        port: Port,
    },
    /// `[...]` with a port or not, or an unclosed bracket.
    V6 {
        inside: String,
        closed: bool,
        port: Port,
    },
    /// A name of the alphabet repeated past `MAX_HOST_LEN`, or near it.
    Long {
        labels: Vec<u8>,
        length: u16,
        final_dot: bool,
        port: Port,
    },
    /// A route's host (`*` replaced by labels of the alphabet, or by
    /// nothing), its case changed.
    OfRoute {
        route: u8,
        star: Vec<u8>,
        upper: bool,
        port: Port,
    },
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Port {
    None,
    Number(u16),
    Empty,
    Text(String),
}

fn pick<'a>(table: &[&'a str], n: u8) -> &'a str {
    table[usize::from(n) % table.len()]
}

fn port_text(port: &Port) -> String {
    match port {
        Port::None => String::new(),
        Port::Number(n) => format!(":{n}"),
        Port::Empty => ":".to_owned(),
        Port::Text(t) => format!(":{t}"),
    }
}

fn cased(labels: &[u8], upper: u8, extra_labels: &[&str]) -> String {
    let alphabet: Vec<&str> = LABELS.iter().chain(extra_labels).copied().collect();
    labels
        .iter()
        .take(5)
        .enumerate()
        .map(|(i, &n)| {
            let label = pick(&alphabet, n);
            if upper & (1 << (i % 8)) != 0 {
                label.to_uppercase()
            } else {
                label.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl PatternText {
    fn text(&self) -> String {
        let mut labels = self.labels.clone();
        if labels.is_empty() {
            labels.push(0);
        }
        let name = cased(&labels, self.upper, &[]);
        let dot = if self.final_dot { "." } else { "" };
        let star = if self.wildcard { "*." } else { "" };
        format!("{star}{name}{dot}")
    }
}

impl Prefix {
    fn text(&self) -> String {
        if self.raw % 16 == 15 {
            return self.text.chars().take(16).collect();
        }
        let segments: Vec<&str> = self
            .segments
            .iter()
            .take(4)
            .map(|&n| pick(&SEGMENTS, n))
            .collect();
        let mut text = format!("/{}", segments.join("/"));
        if self.trailing_slash && !text.ends_with('/') {
            text.push('/');
        }
        text
    }
}

/// The route `n` picks, if there are any.
fn route_of(routes: &[Route], n: u8) -> Option<&Route> {
    (!routes.is_empty()).then(|| &routes[usize::from(n) % routes.len()])
}

impl Path {
    fn text(&self, routes: &[Route]) -> String {
        match self {
            Path::Prefix(prefix) => prefix.text(),
            Path::OfRoute { route, cut, tail } => {
                let Some(route) = route_of(routes, *route) else {
                    return "/".to_owned();
                };
                let mut path = route.prefix.text();
                if *cut % 4 == 0 && !path.is_empty() {
                    let at = usize::from(*cut / 4) % path.len();
                    if path.is_char_boundary(at) {
                        path.truncate(at);
                    }
                }
                for &n in tail.iter().take(3) {
                    if n % 2 == 0 {
                        path.push('/');
                    }
                    path.push_str(pick(&SEGMENTS, n / 2));
                }
                path
            }
        }
    }
}

impl HostText {
    fn text(&self, routes: &[Route]) -> String {
        match self {
            HostText::OfRoute {
                route,
                star,
                upper,
                port,
            } => {
                let Some(pattern) = route_of(routes, *route).and_then(|r| r.host.as_ref()) else {
                    return port_text(port);
                };
                let text = pattern.text();
                let text = match text.strip_prefix('*') {
                    Some(rest) => format!("{}{rest}", cased(star, 0, &[""])),
                    None => text,
                };
                let text = if *upper { text.to_uppercase() } else { text };
                format!("{text}{}", port_text(port))
            }
            HostText::Name {
                labels,
                upper,
                final_dot,
                port,
            } => {
                // Extra labels: an empty one (`a..com`, `.example.com`) and
                // a non-ASCII one.
                let name = cased(labels, *upper, &["", "é", "ÉX"]);
                let dot = if *final_dot { "." } else { "" };
                format!("{name}{dot}{}", port_text(port))
            }
            HostText::V6 {
                inside,
                closed,
                port,
            } => {
                let inside: String = inside.chars().take(40).collect();
                let close = if *closed { "]" } else { "" };
                format!("[{inside}{close}{}", port_text(port))
            }
            HostText::Long {
                labels,
                length,
                final_dot,
                port,
            } => {
                let unit = cased(labels, 0, &[]);
                let unit = if unit.is_empty() {
                    "a".to_owned()
                } else {
                    unit
                };
                // Around MAX_HOST_LEN, sometimes well past it.
                let length = MAX_HOST_LEN - 4 + usize::from(*length % 300);
                let mut name = String::new();
                while name.len() < length {
                    if !name.is_empty() {
                        name.push('.');
                    }
                    name.push_str(&unit);
                }
                name.truncate(length);
                let dot = if *final_dot { "." } else { "" };
                format!("{name}{dot}{}", port_text(port))
            }
            HostText::Raw(text) => text.chars().take(300).collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// The host as routes see it, by the documented rules.
fn model_host(host: &str) -> Option<String> {
    let bytes = host.as_bytes();
    let name_end = if bytes.first() == Some(&b'[') {
        // An IPv6 literal keeps its brackets; what follows `]` is the port.
        bytes.iter().position(|&b| b == b']')? + 1
    } else {
        // The port: after the last colon.
        let mut end = bytes.len();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b':' {
                end = i;
            }
        }
        end
    };
    let mut name = &bytes[..name_end];
    if name.last() == Some(&b'.') {
        name = &name[..name.len() - 1];
    }
    if name.is_empty() || name.len() > MAX_HOST_LEN || name.iter().any(|&b| b >= 0x80) {
        return None;
    }
    Some(
        name.iter()
            .map(|&b| (b as char).to_ascii_lowercase())
            .collect(),
    )
}

/// Whether `text` is a host name an operator may write for a route.
fn model_pattern(text: &str) -> Option<HostPattern> {
    let (wildcard, name) = if text.len() >= 2 && &text.as_bytes()[..2] == b"*." {
        (true, &text[2..])
    } else {
        (false, text)
    };
    let name = match name.as_bytes().last() {
        Some(b'.') => &name[..name.len() - 1],
        _ => name,
    };
    if name.is_empty() || name.len() > MAX_HOST_LEN - 1 {
        return None;
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return None;
        }
    }
    let name = name.to_lowercase();
    Some(if wildcard {
        HostPattern::Suffix(name)
    } else {
        HostPattern::Exact(name)
    })
}

/// How specifically `pattern` matches `host`: `None` not at all; the
/// no-host pattern 0; a suffix 1 + its length; an exact name above any.
fn host_rank(pattern: Option<&HostPattern>, host: Option<&str>) -> Option<usize> {
    match (pattern, host) {
        (None, _) => Some(0),
        (Some(_), None) => None,
        (Some(HostPattern::Exact(name)), Some(host)) => (name == host).then_some(usize::MAX),
        (Some(HostPattern::Suffix(suffix)), Some(host)) => {
            // At least one character, then a dot, then the suffix.
            let n = host.len();
            let m = suffix.len();
            let matches =
                n >= m + 2 && host.ends_with(suffix.as_str()) && host.as_bytes()[n - m - 1] == b'.';
            matches.then_some(1 + m)
        }
    }
}

/// Whether `prefix` takes `path`: `path` starts with it and the match ends
/// on a segment boundary (the prefix ends with `/`, or the path ends or goes
/// on with `/`).
fn model_prefix(prefix: &str, path: &str) -> bool {
    let Some(rest) = path.strip_prefix(prefix) else {
        return false;
    };
    prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')
}

/// The route to take, by brute force; and the rank of the host group
/// searched (0 when no route names the host).
fn model_select<T>(
    specs: &[RouteSpec<T>],
    host: Option<&str>,
    path: &str,
) -> (Option<usize>, usize) {
    let host = host.and_then(model_host);
    let ranks: Vec<Option<usize>> = specs
        .iter()
        .map(|s| host_rank(s.host.as_ref(), host.as_deref()))
        .collect();
    let best = ranks.iter().flatten().copied().max().unwrap_or(0);
    let mut chosen: Option<usize> = None;
    for (i, spec) in specs.iter().enumerate() {
        if ranks[i] != Some(best) || !model_prefix(&spec.path_prefix, path) {
            continue;
        }
        // Within a group a longer prefix wins; two of one length that both
        // match a path are the same prefix, which the table refuses.
        match chosen {
            Some(c) if specs[c].path_prefix.len() >= spec.path_prefix.len() => {
                assert!(
                    specs[c].path_prefix.len() > spec.path_prefix.len(),
                    "model: two routes of one group tie"
                );
            }
            _ => chosen = Some(i),
        }
    }
    (chosen, best)
}

/// The error the table must refuse `specs` with: the first route (in order)
/// whose prefix lacks its `/` or that repeats an earlier route's hosts and
/// prefix.
fn model_error<T>(specs: &[RouteSpec<T>]) -> Option<(usize, bool)> {
    for (i, spec) in specs.iter().enumerate() {
        if !spec.path_prefix.starts_with('/') {
            return Some((i, false));
        }
        if specs[..i]
            .iter()
            .any(|e| e.host == spec.host && e.path_prefix == spec.path_prefix)
        {
            return Some((i, true));
        }
    }
    None
}

fn build(routes: &[Route]) -> Vec<RouteSpec<usize>> {
    routes
        .iter()
        .filter_map(|r| {
            let host = match &r.host {
                None => None,
                Some(p) => Some(HostPattern::parse(&p.text()).ok()?),
            };
            Some((host, r.prefix.text()))
        })
        .enumerate()
        .map(|(target, (host, path_prefix))| RouteSpec {
            host,
            path_prefix,
            target,
        })
        .collect()
}

fn check_table(specs: &[RouteSpec<usize>]) -> Option<RouteTable<usize>> {
    let result = RouteTable::new(specs.to_vec());
    match (model_error(specs), result) {
        (None, Ok(table)) => {
            assert_eq!(table.routes(), specs, "the table changed its routes");
            Some(table)
        }
        (None, Err(e)) => panic!("refused valid routes: {e}"),
        (Some((index, shadowed)), Ok(_)) => panic!(
            "accepted routes where route {index} is {}",
            if shadowed {
                "a duplicate"
            } else {
                "a prefix without /"
            }
        ),
        (Some((index, shadowed)), Err(e)) => {
            let (got, got_shadowed) = match e {
                RouteError::Shadowed { index, by, .. } => {
                    assert!(by < index, "shadowed by a later route: {e}");
                    assert_eq!(specs[by].host, specs[index].host);
                    assert_eq!(specs[by].path_prefix, specs[index].path_prefix);
                    (index, true)
                }
                RouteError::BadPrefix { index, .. } => (index, false),
            };
            assert_eq!((got, got_shadowed), (index, shadowed), "wrong error: {e}");
            None
        }
    }
}

fuzz_target!(|input: Input| {
    for text in input.patterns.iter().take(8) {
        let parsed = HostPattern::parse(text).ok();
        assert_eq!(parsed, model_pattern(text), "HostPattern::parse({text:?})");
    }

    let routes: Vec<Route> = input.routes.into_iter().take(MAX_ROUTES).collect();
    for r in &routes {
        if let Some(p) = &r.host {
            let text = p.text();
            assert_eq!(
                HostPattern::parse(&text).ok(),
                model_pattern(&text),
                "HostPattern::parse({text:?})"
            );
        }
    }
    let specs = build(&routes);
    let table = check_table(&specs);

    let mut reversed: Vec<RouteSpec<usize>> = specs.clone();
    reversed.reverse();
    let reversed_table = table
        .as_ref()
        .map(|_| RouteTable::new(reversed).expect("the same routes in reverse were refused"));

    let mut with_extra = specs.clone();
    with_extra.extend(
        build(std::slice::from_ref(&input.extra))
            .into_iter()
            .map(|spec| RouteSpec {
                target: specs.len(),
                ..spec
            }),
    );
    let extra_table = if with_extra.len() > specs.len() && table.is_some() {
        check_table(&with_extra)
    } else {
        None
    };

    for request in input.requests.iter().take(MAX_REQUESTS) {
        let host = request.host.as_ref().map(|h| h.text(&routes));
        let path = request.path.text(&routes);

        if let Some(host) = &host {
            let mut buffer = [0u8; MAX_HOST_LEN];
            let normalized = normalize_host(host, &mut buffer);
            assert_eq!(
                normalized.map(str::to_owned),
                model_host(host),
                "normalize_host({host:?})"
            );
            if let Some(n) = normalized {
                assert!(
                    n.is_ascii() && !n.bytes().any(|b| b.is_ascii_uppercase()),
                    "normalize_host({host:?}) = {n:?} is not lowercase ASCII"
                );
                assert!(n.len() <= MAX_HOST_LEN);
                assert!(
                    host.to_ascii_lowercase().starts_with(n),
                    "normalize_host({host:?}) = {n:?} is not the host's name"
                );
            }
        }

        let Some(table) = &table else { continue };
        let chosen = table.select(host.as_deref(), &path);
        let (expected, group_rank) = model_select(&specs, host.as_deref(), &path);
        assert_eq!(
            chosen,
            expected,
            "host {host:?} path {path:?}: took {:?}, the rules say {:?}",
            chosen.map(|i| &specs[i]),
            expected.map(|i| &specs[i])
        );
        if let Some(i) = chosen {
            assert_eq!(table.target(i), Some(&specs[i].target));
        }

        // The same routes listed in reverse: the same route.
        if let Some(reversed_table) = &reversed_table {
            let n = specs.len();
            let chosen_reversed = reversed_table.select(host.as_deref(), &path);
            assert_eq!(
                chosen_reversed.map(|i| n - 1 - i),
                chosen,
                "host {host:?} path {path:?}: the order of the routes changed the route taken"
            );
        }

        // A route that cannot match: of a host that does not match, of a
        // less specific host group than the one searched, or of that group
        // with a prefix that does not take the path.
        if let Some(extra_table) = &extra_table {
            let extra = with_extra.last().expect("extra route");
            let normalized = host.as_deref().and_then(model_host);
            let irrelevant = match host_rank(extra.host.as_ref(), normalized.as_deref()) {
                None => true,
                Some(rank) if rank < group_rank => true,
                Some(rank) if rank == group_rank => !model_prefix(&extra.path_prefix, &path),
                Some(_) => false,
            };
            let chosen_extra = extra_table.select(host.as_deref(), &path);
            assert_eq!(
                chosen_extra,
                model_select(&with_extra, host.as_deref(), &path).0,
                "host {host:?} path {path:?}: with {extra:?} added, took {:?}",
                chosen_extra.map(|i| &with_extra[i])
            );
            if irrelevant {
                assert_eq!(
                    chosen_extra, chosen,
                    "host {host:?} path {path:?}: adding {extra:?}, which cannot match, changed the route"
                );
            }
        }
    }
});
