//! Routes: which of a listener's routes a request takes, from its host and
//! path. Compiled once when the config loads; choosing costs a few hash
//! lookups and string comparisons and allocates nothing.
//!
//! The rules (DESIGN.md, "Wave 2"; the same as nginx's server blocks and
//! Envoy's virtual hosts):
//! 1. **Host group.** The routes whose `host` is exactly the request's host
//!    form the most specific group; failing those, the routes of the
//!    longest `*.suffix` the host ends with (`*.example.com` matches
//!    `a.example.com` and `a.b.example.com`, not `example.com`); failing
//!    those, the routes without a host. Only that group is searched: a
//!    request never falls through to a less specific host's routes.
//! 2. **Path.** Within the group, the longest `path_prefix` that matches on a
//!    segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`; a
//!    prefix ending in `/` (`/api/`) matches what starts with it; `/`
//!    matches every path.
//!
//! Hosts compare case-insensitively, without the port and without a final
//! dot (`Shop.Example.COM.:8443` is `shop.example.com`). No matching route
//! is `None`: the caller answers `404`, or sends the request to a default.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use fnv::FnvHashMap;

/// The longest host name (RFC 1035: 253 characters, and room for a final
/// dot); longer `Host` values match only routes without a host.
pub const MAX_HOST_LEN: usize = 254;

/// Which hosts a route is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this host (lowercase, no port).
    Exact(String),
    /// Any host ending in `.` and this suffix (lowercase), at least one
    /// label before it.
    Suffix(String),
}

impl HostPattern {
    /// The pattern an operator wrote: `shop.example.com` or
    /// `*.example.com`; `None` (with why) for anything else.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() >= MAX_HOST_LEN || !name.split('.').all(valid_label) {
            return Err(format!(
                "{text:?} is not a host name such as \"shop.example.com\" or \"*.example.com\" \
                 (no port, no other wildcard)"
            ));
        }
        Ok(if wildcard {
            HostPattern::Suffix(name)
        } else {
            HostPattern::Exact(name)
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Suffix(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// One route as configured: where it applies, and what it leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec<T> {
    /// The hosts it is for; `None`: any host.
    pub host: Option<HostPattern>,
    /// The path prefix; `/` for every path. Must start with `/`.
    pub path_prefix: String,
    /// What a request that takes it goes to (a pool, say).
    pub target: T,
}

/// Why a route table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A path prefix that does not start with `/`.
    #[error("route {index}: path_prefix {prefix:?} must start with \"/\"")]
    BadPrefix {
        /// The route's place in the list.
        index: usize,
        /// Its prefix.
        prefix: String,
    },
    /// Two routes for the same hosts and prefix: the later one could never
    /// be taken.
    #[error(
        "route {index} is shadowed by route {by}: both are for {hosts} with path_prefix {prefix:?}"
    )]
    Shadowed {
        /// The later route's place in the list.
        index: usize,
        /// The earlier one's.
        by: usize,
        /// Their hosts, as written.
        hosts: String,
        /// Their prefix.
        prefix: String,
    },
}

/// One host group's routes, indexed by the first segment of their prefix.
///
/// A prefix matches only on a segment boundary, so a path can only take a
/// route whose prefix starts with the path's own first segment (`/api` and
/// `/api/v2` for `/api/v2/x`), or the root prefix `/`: choosing compares the
/// path with those alone, however many routes the group has.
#[derive(Debug, Clone, Default)]
struct Group {
    /// (prefix, route index) by the prefix's first segment (`api` for
    /// `/api/v2`), longest prefix first.
    by_segment: FnvHashMap<String, Vec<(String, usize)>>,
    /// The route of the root prefix `/`, if the group has one.
    root: Option<usize>,
}

impl Group {
    fn new(mut routes: Vec<(String, usize)>) -> Group {
        routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut group = Group::default();
        for (prefix, index) in routes {
            if prefix == "/" {
                group.root.get_or_insert(index);
                continue;
            }
            group
                .by_segment
                .entry(first_segment(&prefix).to_owned())
                .or_default()
                .push((prefix, index));
        }
        group
    }

    fn select(&self, path: &str) -> Option<usize> {
        self.by_segment
            .get(first_segment(path))
            .and_then(|routes| {
                routes
                    .iter()
                    .find(|(prefix, _)| prefix_matches(prefix, path))
                    .map(|&(_, index)| index)
            })
            .or_else(|| self.root.filter(|_| path.starts_with('/')))
    }
}

/// The first segment of a path: `api` for `/api/v2/x` and for `/api`, `` for
/// `/` (and for anything that does not start with `/`).
fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or("");
    rest.split('/').next().unwrap_or("")
}

/// A listener's routes, compiled.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    specs: Vec<RouteSpec<T>>,
    /// By host. FNV: short keys hashed on every request; the tables hold only
    /// the operator's hosts, so a client's `Host` cannot make them degrade.
    exact: FnvHashMap<String, Group>,
    suffix: FnvHashMap<String, Group>,
    any: Option<Group>,
}

impl<T> RouteTable<T> {
    /// Compiles `specs` (their order only names them in errors: the most
    /// specific route wins wherever it stands).
    pub fn new(specs: Vec<RouteSpec<T>>) -> Result<RouteTable<T>, RouteError> {
        let mut seen: HashMap<(Option<&HostPattern>, &str), usize> = HashMap::new();
        let mut exact: HashMap<String, Vec<(String, usize)>> = HashMap::new();
        let mut suffix: HashMap<String, Vec<(String, usize)>> = HashMap::new();
        let mut any: Vec<(String, usize)> = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            if !spec.path_prefix.starts_with('/') {
                return Err(RouteError::BadPrefix {
                    index,
                    prefix: spec.path_prefix.clone(),
                });
            }
            if let Some(&by) = seen.get(&(spec.host.as_ref(), spec.path_prefix.as_str())) {
                return Err(RouteError::Shadowed {
                    index,
                    by,
                    hosts: spec
                        .host
                        .as_ref()
                        .map_or_else(|| "any host".to_owned(), ToString::to_string),
                    prefix: spec.path_prefix.clone(),
                });
            }
            seen.insert((spec.host.as_ref(), spec.path_prefix.as_str()), index);
            let entry = (spec.path_prefix.clone(), index);
            match &spec.host {
                Some(HostPattern::Exact(host)) => {
                    exact.entry(host.clone()).or_default().push(entry)
                }
                Some(HostPattern::Suffix(s)) => suffix.entry(s.clone()).or_default().push(entry),
                None => any.push(entry),
            }
        }
        let group = Group::new;
        drop(seen);
        Ok(RouteTable {
            exact: exact.into_iter().map(|(h, r)| (h, group(r))).collect(),
            suffix: suffix.into_iter().map(|(s, r)| (s, group(r))).collect(),
            any: (!any.is_empty()).then(|| group(any)),
            specs,
        })
    }

    /// The routes, in config order.
    pub fn routes(&self) -> &[RouteSpec<T>] {
        &self.specs
    }

    /// Whether any route names a host: when none does, the host need not be
    /// read at all.
    pub fn by_host(&self) -> bool {
        !self.exact.is_empty() || !self.suffix.is_empty()
    }

    /// The route (its index in [`routes`](Self::routes)) a request for
    /// `host` (as the `Host` header or `:authority` gives it, port and all;
    /// `None` when the request has none) and `path` takes, if any.
    pub fn select(&self, host: Option<&str>, path: &str) -> Option<usize> {
        let mut buffer = [0u8; MAX_HOST_LEN];
        match host.and_then(|host| normalize_host(host, &mut buffer)) {
            Some(host) => self.host_group(host),
            None => self.any.as_ref(),
        }
        .and_then(|group| group.select(path))
    }

    /// The most specific group for a normalized host.
    fn host_group(&self, host: &str) -> Option<&Group> {
        if let Some(group) = self.exact.get(host) {
            return Some(group);
        }
        // Suffixes after each dot, longest first; a dot that starts the host
        // has no label before it.
        let suffixes = host
            .char_indices()
            .filter(|&(i, c)| c == '.' && i > 0)
            .map(|(i, _)| &host[i + 1..]);
        for suffix in suffixes {
            if let Some(group) = self.suffix.get(suffix) {
                return Some(group);
            }
        }
        self.any.as_ref()
    }

    /// The route `index` leads to.
    pub fn target(&self, index: usize) -> Option<&T> {
        self.specs.get(index).map(|spec| &spec.target)
    }
}

/// `host` lowercased into `buffer`, without its port and final dot; `None`
/// for an empty or over-long host (or one that is not ASCII, which no route
/// pattern can name).
pub fn normalize_host<'b>(host: &str, buffer: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b str> {
    let name = match host.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        Some(v6) => &host[..v6.find(']')? + 2],
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST_LEN || !name.is_ascii() {
        return None;
    }
    let out = &mut buffer[..name.len()];
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// `path` with its dot segments resolved (RFC 3986 §5.2.4: `.` removed,
/// `..` removing the segment before it; `%2e` counts as a dot), so that a
/// route sees the path a backend that resolves them would; borrowed when
/// there is nothing to resolve (no allocation). `None` when a `..` would
/// climb above the root (`/../etc`), which no client needs to send. A path
/// that does not start with `/` (`*`, say) is returned as it is.
pub fn resolve_dot_segments(path: &str) -> Option<Cow<'_, str>> {
    let Some(rest) = path.strip_prefix('/') else {
        return Some(Cow::Borrowed(path));
    };
    // `Some(true)` for `..`, `Some(false)` for `.`, in any spelling.
    let dotted = |segment: &str| {
        let is = |spellings: &[&str]| spellings.iter().any(|s| segment.eq_ignore_ascii_case(s));
        if is(&[".", "%2e"]) {
            Some(false)
        } else if is(&["..", ".%2e", "%2e.", "%2e%2e"]) {
            Some(true)
        } else {
            None
        }
    };
    // One pass: a segment that starts with `.` or `%2e` is the only kind
    // that can be a dot segment.
    let bytes = path.as_bytes();
    let suspicious = bytes.windows(2).enumerate().any(|(i, w)| {
        w[0] == b'/'
            && (w[1] == b'.'
                || (w[1] == b'%'
                    && bytes
                        .get(i + 2..i + 4)
                        .is_some_and(|e| e.eq_ignore_ascii_case(b"2e"))))
    });
    if !suspicious || rest.split('/').all(|segment| dotted(segment).is_none()) {
        return Some(Cow::Borrowed(path));
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.into_iter().enumerate() {
        match dotted(segment) {
            None => kept.push(segment),
            Some(up) => {
                if up {
                    kept.pop()?;
                }
                if i == last {
                    // `/a/b/..` is the folder `/a/`, `/a/.` the folder `/a/`.
                    kept.push("");
                }
            }
        }
    }
    Some(Cow::Owned(format!("/{}", kept.join("/"))))
}

/// Whether `prefix` matches `path` on a segment boundary.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn route(host: Option<&str>, prefix: &str, target: &'static str) -> RouteSpec<&'static str> {
        RouteSpec {
            host: host.map(|h| HostPattern::parse(h).unwrap()),
            path_prefix: prefix.to_owned(),
            target,
        }
    }

    fn table(routes: Vec<RouteSpec<&'static str>>) -> RouteTable<&'static str> {
        RouteTable::new(routes).unwrap()
    }

    fn target<'a>(table: &'a RouteTable<&'static str>, host: &str, path: &str) -> Option<&'a str> {
        let host = (!host.is_empty()).then_some(host);
        table
            .select(host, path)
            .and_then(|i| table.target(i))
            .copied()
    }

    #[test]
    fn a_wildcard_needs_a_label_before_its_suffix() {
        let t = table(vec![
            route(Some("*.b"), "/", "wild"),
            route(None, "/", "any"),
        ]);
        assert_eq!(target(&t, ".b", "/"), Some("any"));
        assert_eq!(target(&t, "a.b", "/"), Some("wild"));
    }

    #[test]
    fn dot_segments_are_resolved_and_climbing_above_the_root_is_refused() {
        let resolved = |p: &str| resolve_dot_segments(p).map(|r| r.into_owned());
        assert!(matches!(
            resolve_dot_segments("/a/b.c/.d/x"),
            Some(Cow::Borrowed(_))
        ));
        assert!(matches!(
            resolve_dot_segments("/api/v1"),
            Some(Cow::Borrowed(_))
        ));
        assert_eq!(resolved("/api/../ws/x").as_deref(), Some("/ws/x"));
        assert_eq!(resolved("/api/%2e%2E/ws").as_deref(), Some("/ws"));
        assert_eq!(resolved("/a/./b/.").as_deref(), Some("/a/b/"));
        assert_eq!(resolved("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(resolved("/a/..").as_deref(), Some("/"));
        assert_eq!(resolved("/./").as_deref(), Some("/"));
        assert_eq!(resolved("/a//../b").as_deref(), Some("/a/b"));
        assert_eq!(resolved("/.."), None);
        assert_eq!(resolved("/a/../../etc"), None);
        assert_eq!(resolved("*").as_deref(), Some("*"));
        assert_eq!(resolved("").as_deref(), Some(""));
    }

    proptest! {
        /// Resolving leaves no dot segment and changes nothing the second
        /// time.
        #[test]
        fn resolved_paths_have_no_dot_segments(segments in prop::collection::vec(
            prop::sample::select(vec!["a", "b", ".", "..", "%2e", "%2E%2e", "", "c.d"]), 0..8)) {
            let path = format!("/{}", segments.join("/"));
            if let Some(resolved) = resolve_dot_segments(&path) {
                prop_assert!(resolved.starts_with('/'));
                for segment in resolved[1..].split('/') {
                    let lower = segment.to_ascii_lowercase().replace("%2e", ".");
                    prop_assert!(lower != "." && lower != "..", "{} -> {}", path, resolved);
                }
                let again = resolve_dot_segments(&resolved).unwrap();
                prop_assert_eq!(again.as_ref(), resolved.as_ref());
            }
        }
    }

    #[test]
    fn a_prefix_matches_on_segment_boundaries_only() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(prefix_matches("/api", "/api/"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/ap"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/", "/"));
        assert!(prefix_matches("/", "/anything/at/all"));
    }

    #[test]
    fn hosts_are_compared_without_case_port_or_final_dot() {
        let mut buffer = [0u8; MAX_HOST_LEN];
        assert_eq!(
            normalize_host("Shop.Example.COM.:8443", &mut buffer),
            Some("shop.example.com")
        );
        assert_eq!(
            normalize_host("shop.example.com", &mut buffer),
            Some("shop.example.com")
        );
        assert_eq!(normalize_host("[::1]:8080", &mut buffer), Some("[::1]"));
        assert_eq!(normalize_host("[::1]", &mut buffer), Some("[::1]"));
        assert_eq!(normalize_host("", &mut buffer), None);
        assert_eq!(normalize_host(":80", &mut buffer), None);
        assert_eq!(normalize_host("é.example", &mut buffer), None);
        let long = "a".repeat(MAX_HOST_LEN + 1);
        assert_eq!(normalize_host(&long, &mut buffer), None);
    }

    #[test]
    fn host_patterns_parse_lowercase_and_refuse_ports_and_inner_wildcards() {
        assert_eq!(
            HostPattern::parse("Shop.Example.com"),
            Ok(HostPattern::Exact("shop.example.com".into()))
        );
        assert_eq!(
            HostPattern::parse("*.example.com."),
            Ok(HostPattern::Suffix("example.com".into()))
        );
        for bad in [
            "",
            "*",
            "*.",
            "shop.example.com:443",
            "a.*.com",
            "a..b",
            "sp ace.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            HostPattern::parse("*.example.com").unwrap().to_string(),
            "*.example.com"
        );
    }

    #[test]
    fn the_exact_host_wins_then_the_longest_wildcard_then_any_host() {
        let t = table(vec![
            route(None, "/", "any"),
            route(Some("*.example.com"), "/", "wild"),
            route(Some("*.shop.example.com"), "/", "shop-wild"),
            route(Some("www.shop.example.com"), "/", "www"),
        ]);
        assert_eq!(target(&t, "www.shop.example.com", "/x"), Some("www"));
        assert_eq!(target(&t, "a.shop.example.com", "/x"), Some("shop-wild"));
        assert_eq!(target(&t, "shop.example.com", "/x"), Some("wild"));
        assert_eq!(target(&t, "a.b.example.com", "/x"), Some("wild"));
        assert_eq!(target(&t, "example.com", "/x"), Some("any"));
        assert_eq!(target(&t, "other.test", "/x"), Some("any"));
        assert_eq!(target(&t, "", "/x"), Some("any"), "no Host header");
    }

    #[test]
    fn a_host_group_never_falls_through_to_a_less_specific_one() {
        let t = table(vec![
            route(None, "/", "any"),
            route(Some("shop.example.com"), "/api", "shop-api"),
        ]);
        assert_eq!(
            target(&t, "shop.example.com", "/api/cart"),
            Some("shop-api")
        );
        assert_eq!(target(&t, "shop.example.com", "/static"), None);
        assert_eq!(target(&t, "SHOP.example.com:443", "/api"), Some("shop-api"));
    }

    #[test]
    fn within_a_group_the_longest_matching_prefix_wins_wherever_it_stands() {
        let t = table(vec![
            route(None, "/api/v2", "v2"),
            route(None, "/", "root"),
            route(None, "/api", "api"),
            route(None, "/static/", "static"),
        ]);
        assert_eq!(target(&t, "h", "/api/v2/users"), Some("v2"));
        assert_eq!(target(&t, "h", "/api/v2"), Some("v2"));
        assert_eq!(target(&t, "h", "/api/v20"), Some("api"));
        assert_eq!(target(&t, "h", "/apix"), Some("root"));
        assert_eq!(target(&t, "h", "/static"), Some("root"));
        assert_eq!(target(&t, "h", "/static/a.css"), Some("static"));
        assert_eq!(target(&t, "h", "/"), Some("root"));
    }

    #[test]
    fn no_route_at_all_is_none() {
        let t = table(vec![route(Some("a.test"), "/", "a")]);
        assert_eq!(target(&t, "b.test", "/"), None);
        assert_eq!(target(&t, "", "/"), None);
        let empty = table(Vec::new());
        assert_eq!(target(&empty, "a.test", "/"), None);
    }

    #[test]
    fn a_route_for_the_same_hosts_and_prefix_as_an_earlier_one_is_shadowed() {
        let error = RouteTable::new(vec![
            route(Some("a.test"), "/api", "one"),
            route(None, "/api", "two"),
            route(Some("A.test"), "/api", "three"),
        ])
        .unwrap_err();
        assert_eq!(
            error,
            RouteError::Shadowed {
                index: 2,
                by: 0,
                hosts: "a.test".into(),
                prefix: "/api".into()
            }
        );
        assert_eq!(
            error.to_string(),
            "route 2 is shadowed by route 0: both are for a.test with path_prefix \"/api\""
        );
        let bad = RouteTable::new(vec![route(None, "api", "x")]).unwrap_err();
        assert!(
            matches!(bad, RouteError::BadPrefix { index: 0, .. }),
            "{bad}"
        );
    }

    /// The most specific route by brute force: every route scored, the
    /// definition read literally.
    fn model(specs: &[RouteSpec<usize>], host: Option<&str>, path: &str) -> Option<usize> {
        let mut buffer = [0u8; MAX_HOST_LEN];
        let host = host.and_then(|h| normalize_host(h, &mut buffer));
        // Host specificity: exact = MAX, suffix = its length + 1, any = 0.
        let host_rank = |spec: &RouteSpec<usize>| -> Option<usize> {
            match (&spec.host, host) {
                (None, _) => Some(0),
                (Some(HostPattern::Exact(h)), Some(host)) => (h == host).then_some(usize::MAX),
                (Some(HostPattern::Suffix(s)), Some(host)) => {
                    // At least one label before the suffix's dot.
                    (host.len() > s.len() + 1 && host.ends_with(&format!(".{s}")))
                        .then_some(s.len() + 1)
                }
                (Some(_), None) => None,
            }
        };
        let best_host = specs.iter().filter_map(host_rank).max()?;
        specs
            .iter()
            .enumerate()
            .filter(|(_, spec)| host_rank(spec) == Some(best_host))
            .filter(|(_, spec)| prefix_matches(&spec.path_prefix, path))
            .max_by(|(ia, a), (ib, b)| {
                a.path_prefix
                    .len()
                    .cmp(&b.path_prefix.len())
                    .then(ib.cmp(ia))
            })
            .map(|(i, _)| i)
    }

    fn host_strategy() -> impl Strategy<Value = String> {
        let label = prop::sample::select(vec!["a", "b", "shop", "www", "example", "com"]);
        prop::collection::vec(label, 1..4).prop_map(|labels| labels.join("."))
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        let segment = prop::sample::select(vec!["api", "apix", "v1", "static", "a", ""]);
        prop::collection::vec(segment, 0..4).prop_map(|segments| format!("/{}", segments.join("/")))
    }

    fn spec_strategy() -> impl Strategy<Value = (Option<(bool, String)>, String, bool)> {
        (
            prop::option::of((any::<bool>(), host_strategy())),
            path_strategy(),
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_chosen_route_is_the_most_specific_match(
            raw in prop::collection::vec(spec_strategy(), 0..12),
            requests in prop::collection::vec(
                (prop::option::of((host_strategy(), prop::sample::select(vec!["", ":80", ".", ":8443"]))),
                 path_strategy()),
                1..20,
            ),
        ) {
            // Routes as an operator could write them: duplicates dropped
            // (the table refuses those, tested above).
            let mut specs: Vec<RouteSpec<usize>> = Vec::new();
            for (host, prefix, slash) in raw {
                let host = host.map(|(wild, h)| {
                    HostPattern::parse(&if wild { format!("*.{h}") } else { h }).unwrap()
                });
                let path_prefix = if slash && prefix != "/" { format!("{prefix}/") } else { prefix };
                if !specs.iter().any(|s| s.host == host && s.path_prefix == path_prefix) {
                    let target = specs.len();
                    specs.push(RouteSpec { host, path_prefix, target });
                }
            }
            let table = RouteTable::new(specs.clone()).unwrap();
            for (host, path) in requests {
                let host = host.map(|(h, tail)| format!("{}{tail}", h.to_uppercase()));
                let chosen = table.select(host.as_deref(), &path);
                prop_assert_eq!(chosen, model(&specs, host.as_deref(), &path), "{:?} {}", host, path);
            }
        }
    }
}
