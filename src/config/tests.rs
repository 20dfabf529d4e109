//! The config module's tests: defaults, every rule, every error message.

use http::header::HeaderName;

use super::error::location;
use super::*;
use crate::balance::member::MAX_WEIGHT;

const ONE_BACKEND: &str = "[[backends]]\nname = \"server-1\"\nurl = \"http://127.0.0.1:9001\"\n";

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml(text, Path::new("config.toml"))
}

/// `section` followed by one valid backend.
fn with_backend(section: &str) -> String {
    format!("{section}\n{ONE_BACKEND}")
}

/// Every error `text` gets, in the order reported.
fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(config) => panic!("expected an error, got {config:#?}"),
        Err(e) => e.iter().cloned().collect(),
    }
}

/// The one error `text` gets: a second one would be a consequence of the
/// first or a mistake in the test.
fn error(text: &str) -> ConfigError {
    match errors(text).as_slice() {
        [one] => one.clone(),
        many => panic!("expected one error, got {}: {many:#?}", many.len()),
    }
}

fn line(e: &ConfigError) -> usize {
    e.location()
        .map(|l| l.line)
        .unwrap_or_else(|| panic!("no line in: {e}"))
}

fn assert_rejected(text: &str, field: &str, line_no: usize, needle: &str) {
    let e = error(text);
    let shown = e.to_string();
    assert_eq!(e.field(), Some(field), "{shown}");
    assert_eq!(line(&e), line_no, "{shown}");
    assert!(
        shown.contains(needle),
        "{shown:?} should mention {needle:?}"
    );
    assert!(
        shown.starts_with(&format!("config.toml:{line_no}:")),
        "{shown}"
    );
}

fn backends(list: &[(&str, &str, &str)]) -> String {
    list.iter()
        .map(|(name, url, weight)| format!("[[backends]]\nname = {name}\nurl = {url}\n{weight}\n"))
        .collect()
}

// --- defaults --------------------------------------------------------

#[test]
fn a_file_with_one_backend_gets_every_default() {
    let config = parse(ONE_BACKEND).unwrap();
    assert_eq!(config.listeners, [ListenerConfig::default()]);
    assert_eq!(config.listeners[0].name, "default");
    assert_eq!(config.listeners[0].address.to_string(), "127.0.0.1:8080");
    assert_eq!(config.drain_timeout, Duration::from_secs(30));
    assert_eq!(config.pools.len(), 1);
    assert_eq!(config.pools[0].name, "default");
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.routes[0].pattern(), "*/");
    assert_eq!(config.routes[0].pool, "default");
    assert_eq!(config.admin, None);
    assert_eq!(config.pools[0].balancer, BalancerConfig::default());
    assert_eq!(config.pools[0].balancer.algorithm, Algorithm::Maglev);
    assert_eq!(config.pools[0].balancer.key, KeySource::ClientIp);
    assert_eq!(
        config.pools[0].balancer.table_size,
        crate::balance::maglev::DEFAULT_TABLE_SIZE
    );
    assert!(config.pools[0].balancer.trusted_proxies.is_empty());
    assert_eq!(config.pools[0].balancer.hash_key, None);
    assert_eq!(config.pools[0].balancer.bounded_load, 0.0);
    assert_eq!(config.pools[0].balancer.sticky_cookie, None);
    assert_eq!(config.pools[0].health_check, HealthCheckConfig::default());
    assert_eq!(config.pools[0].health_check.path, "/health");
    assert_eq!(
        config.pools[0].health_check.interval,
        Duration::from_secs(5)
    );
    assert_eq!(config.pools[0].health_check.timeout, Duration::from_secs(2));
    assert_eq!(config.pools[0].health_check.healthy_threshold, 2);
    assert_eq!(config.pools[0].health_check.unhealthy_threshold, 2);
    assert_eq!(config.pools[0].upstream, UpstreamConfig::default());
    assert_eq!(
        config.pools[0].upstream.connect_timeout,
        Duration::from_secs(1)
    );
    assert_eq!(
        config.pools[0].upstream.request_timeout,
        Duration::from_secs(30)
    );
    assert_eq!(config.pools[0].upstream.retries, 1);
    assert_eq!(
        config.pools[0].backends,
        vec![BackendConfig {
            name: "server-1".into(),
            url: Uri::from_static("http://127.0.0.1:9001"),
            weight: 1,
            drain: false,
        }]
    );
}

#[test]
fn a_file_that_sets_every_key_gets_every_value() {
    let text = r#"
            [listener]
            address = "0.0.0.0:80"
            drain_timeout = "10s"

            [admin]
            address = "[::1]:9901"
            token_file = "secrets/admin.token"

            [balancer]
            algorithm = "ring_hash"
            key = "header:X-Session"
            table_size = 131
            trusted_proxies = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
            hash_key = "000102030405060708090a0b0c0d0E0F"
            bounded_load = 1.25
            panic_threshold = 40
            slow_start = "45s"

            [balancer.sticky_cookie]
            name = "sid"
            max_age = "30m"

            [health_check]
            path = "/ready?full=1"
            interval = "10s"
            timeout = "500ms"
            healthy_threshold = 3
            unhealthy_threshold = 4

            [upstream]
            connect_timeout = "250ms"
            request_timeout = "1m"
            retries = 0

            [limits]
            header_timeout = "3s"
            max_header_bytes = 16384
            max_headers = 50
            max_body_bytes = 1048576
            max_connections = 500
            max_in_flight_per_backend = 64

            [[backends]]
            name = "a"
            url = "http://10.0.0.1:8080/"
            weight = 3

            [[backends]]
            name = "b"
            url = "http://backend.internal"
        "#;
    let config = parse(text).unwrap();
    assert_eq!(
        config.listeners,
        [ListenerConfig {
            address: "0.0.0.0:80".parse().unwrap(),
            ..ListenerConfig::default()
        }]
    );
    assert_eq!(config.drain_timeout, Duration::from_secs(10));
    assert_eq!(
        config.admin,
        Some(AdminConfig {
            address: "[::1]:9901".parse().unwrap(),
            token_file: Some(PathBuf::from("secrets/admin.token")),
        })
    );
    assert_eq!(
        config.pools[0].balancer,
        BalancerConfig {
            algorithm: Algorithm::RingHash,
            key: KeySource::Header(HeaderName::from_static("x-session")),
            table_size: 131,
            trusted_proxies: vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.0.2.7/32".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            hash_key: Some([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
            bounded_load: 1.25,
            panic_threshold: 40.0,
            sticky_cookie: Some(StickyCookieConfig {
                name: "sid".into(),
                max_age: Duration::from_secs(30 * 60),
                pin: false,
            }),
            slow_start: Duration::from_secs(45),
        }
    );
    assert_eq!(
        config.pools[0].health_check,
        HealthCheckConfig {
            kind: ProbeKind::Http,
            path: "/ready?full=1".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_millis(500),
            healthy_threshold: 3,
            unhealthy_threshold: 4,
        }
    );
    assert_eq!(
        config.pools[0].upstream,
        UpstreamConfig {
            connect_timeout: Duration::from_millis(250),
            request_timeout: Duration::from_secs(60),
            retries: 0,
            ..UpstreamConfig::default()
        }
    );
    assert_eq!(
        config.limits,
        LimitsConfig {
            header_timeout: Duration::from_secs(3),
            max_header_bytes: 16384,
            max_headers: 50,
            max_body_bytes: 1 << 20,
            max_connections: 500,
            max_in_flight_per_backend: 64,
        }
    );
    assert_eq!(
        config.pools[0].members(),
        vec![Member::new("a", 3), Member::new("b", 1)]
    );
    assert_eq!(
        config.pools[0].backends[1].url.host(),
        Some("backend.internal")
    );
}

#[test]
fn an_empty_admin_section_uses_the_default_admin_address() {
    let config = parse(&with_backend("[admin]")).unwrap();
    assert_eq!(config.admin, Some(AdminConfig::default()));
    assert_eq!(DEFAULT_ADMIN_ADDRESS.to_string(), "127.0.0.1:9900");
}

#[test]
fn an_empty_sticky_cookie_section_uses_the_default_name_and_max_age() {
    let config = parse(&with_backend("[balancer.sticky_cookie]")).unwrap();
    let sticky = config.pools[0].balancer.sticky_cookie.clone().unwrap();
    assert_eq!(sticky, StickyCookieConfig::default());
    assert_eq!(sticky.name, "affinity");
    assert_eq!(sticky.max_age, Duration::from_secs(3600));
}

#[test]
fn a_missing_weight_defaults_to_one() {
    assert_eq!(
        parse(ONE_BACKEND).unwrap().pools[0].backends[0].weight,
        DEFAULT_WEIGHT
    );
}

// --- errors from the toml crate: syntax, unknown keys, types ----------

#[test]
fn an_unknown_key_is_rejected_with_its_name_and_line() {
    let text = with_backend("[listener]\naddress = \"127.0.0.1:8080\"\ndrain_timout = \"5s\"");
    let e = error(&text);
    assert_eq!(e.kind(), ConfigErrorKind::Invalid);
    assert_eq!(
        e.to_string(),
        "config.toml:3:1: listener.drain_timout: unknown key `drain_timout`, expected one of `address`, `drain_timeout`, `tls`, `proxy_protocol`, `trusted`"
    );
}

#[test]
fn an_unknown_key_in_a_backend_names_the_backend() {
    let text = format!(
        "{ONE_BACKEND}[[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:2\"\nwieght = 2\n"
    );
    assert_rejected(&text, "backends[1].wieght", 7, "unknown key `wieght`");
}

#[test]
fn an_unknown_table_is_rejected() {
    assert_rejected(
        &with_backend("[healthcheck]\npath = \"/\""),
        "healthcheck",
        1,
        "unknown key `healthcheck`",
    );
}

#[test]
fn an_unknown_key_in_the_sticky_cookie_table_is_rejected() {
    assert_rejected(
        &with_backend("[balancer.sticky_cookie]\nmaxage = \"1h\""),
        "balancer.sticky_cookie.maxage",
        2,
        "unknown key `maxage`",
    );
}

#[test]
fn a_toml_syntax_error_reports_line_column_and_the_key_it_is_in() {
    let text = "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:9001\n";
    let e = error(text);
    assert_eq!(e.kind(), ConfigErrorKind::Syntax);
    assert_eq!(e.field(), Some("backends[0].url"));
    assert_eq!(
        e.location(),
        Some(Location {
            line: 3,
            column: 29
        })
    );
    assert!(
        e.to_string()
            .starts_with("config.toml:3:29: backends[0].url: invalid TOML: "),
        "{e}"
    );
}

#[test]
fn a_syntax_error_outside_any_key_has_a_line_but_no_field() {
    let e = error("[listener\naddress = \"127.0.0.1:1\"\n");
    assert_eq!(e.kind(), ConfigErrorKind::Syntax);
    assert_eq!(e.field(), None);
    assert_eq!(line(&e), 1);
    assert!(
        e.to_string()
            .starts_with("config.toml:1:10: invalid TOML: "),
        "{e}"
    );
}

#[test]
fn a_value_of_the_wrong_type_names_the_field_and_line() {
    let text = "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:9001\"\nweight = \"2\"\n";
    assert_rejected(text, "backends[0].weight", 4, "expected an integer");
}

#[test]
fn a_fractional_weight_is_a_type_error() {
    let text = "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:9001\"\nweight = 1.5\n";
    assert_rejected(text, "backends[0].weight", 4, "expected an integer");
}

#[test]
fn a_duration_given_as_a_number_asks_for_a_duration_string() {
    assert_rejected(
        &with_backend("[health_check]\ninterval = 5"),
        "health_check.interval",
        2,
        "expected a duration string such as \"5s\"",
    );
}

#[test]
fn a_section_that_is_not_a_table_is_rejected() {
    assert_rejected(
        &with_backend("listener = \"127.0.0.1:80\""),
        "listener",
        1,
        "expected a [listener] table",
    );
}

#[test]
fn a_trusted_proxy_that_is_not_a_string_names_its_index() {
    assert_rejected(
        &with_backend("[balancer]\ntrusted_proxies = [\"10.0.0.0/8\", 5]"),
        "balancer.trusted_proxies[1]",
        2,
        "invalid type",
    );
}

#[test]
fn a_backend_without_a_url_names_the_backend_and_the_missing_key() {
    let text = format!("{ONE_BACKEND}\n[[backends]]\nname = \"b\"\n");
    assert_rejected(&text, "backends[1].url", 5, "required key `url` is missing");
}

// --- backends ----------------------------------------------------------

#[test]
fn a_file_without_backends_is_rejected() {
    let e = error("[listener]\naddress = \"127.0.0.1:8080\"\n");
    assert_eq!(e.field(), Some("backends"));
    assert_eq!(e.location(), None);
    assert_eq!(
        e.to_string(),
        "config.toml: backends: no backends: add at least one backend with a name and a url, or discover them from DNS (discover = [{ dns = ... }])"
    );
}

#[test]
fn an_empty_backends_array_is_rejected_with_its_line() {
    assert_rejected(
        "backends = []\n\n[upstream]\nretries = 1\n",
        "backends",
        1,
        "no backends",
    );
}

#[test]
fn an_empty_backend_name_is_rejected() {
    let text = format!(
        "{ONE_BACKEND}{}",
        backends(&[("\"\"", "\"http://127.0.0.1:2\"", "")])
    );
    assert_rejected(&text, "backends[1].name", 5, "the name is empty");
}

#[test]
fn a_blank_backend_name_is_rejected_saying_what_a_name_may_be() {
    for blank in ["\" \"", "\"   \"", "\"\\t \""] {
        let text = format!(
            "{ONE_BACKEND}{}",
            backends(&[(blank, "\"http://127.0.0.1:2\"", "")])
        );
        assert_rejected(&text, "backends[1].name", 5, "is blank");
        assert!(
            error(&text).message().ends_with(
                "a name may contain any characters except control characters (such as tab or newline), and must not start or end with whitespace"
            ),
            "{}",
            error(&text)
        );
    }
}

#[test]
fn a_backend_name_with_a_control_character_is_rejected_naming_it() {
    for (name, shown) in [
        ("\"a\\tb\"", "'\\t'"),
        ("\"server-1\\n\"", "'\\n'"),
        ("\"bell\\u0007\"", "'\\u{7}'"),
        ("\"del\\u007f\"", "'\\u{7f}'"),
    ] {
        let text = format!(
            "{ONE_BACKEND}{}",
            backends(&[(name, "\"http://127.0.0.1:2\"", "")])
        );
        assert_rejected(
            &text,
            "backends[1].name",
            5,
            &format!("contains the control character {shown}"),
        );
    }
}

#[test]
fn a_backend_name_with_whitespace_at_either_end_is_rejected() {
    for (name, needle) in [
        ("\" server-2\"", "starts with whitespace"),
        ("\"server-2 \"", "ends with whitespace"),
        ("\"\\u00a0server-2\"", "starts with whitespace"),
    ] {
        let text = format!(
            "{ONE_BACKEND}{}",
            backends(&[(name, "\"http://127.0.0.1:2\"", "")])
        );
        assert_rejected(&text, "backends[1].name", 5, needle);
    }
}

#[test]
fn backend_names_with_inner_spaces_and_any_printable_characters_are_accepted() {
    let text = backends(&[
        ("\"eu west 1\"", "\"http://127.0.0.1:1\"", ""),
        ("\"sérveur-ü/2:α\"", "\"http://127.0.0.1:2\"", ""),
    ]);
    let config = parse(&text).unwrap();
    assert_eq!(config.pools[0].backends[0].name, "eu west 1");
    assert_eq!(config.pools[0].backends[1].name, "sérveur-ü/2:α");
}

#[test]
fn an_invalid_name_is_not_also_reported_as_a_duplicate() {
    let text = backends(&[
        ("\" \"", "\"http://127.0.0.1:1\"", ""),
        ("\" \"", "\"http://127.0.0.1:2\"", ""),
    ]);
    let found = errors(&text);
    let fields: Vec<_> = found.iter().map(|e| e.field()).collect();
    assert_eq!(
        fields,
        [Some("backends[0].name"), Some("backends[1].name")],
        "{found:#?}"
    );
    assert!(found.iter().all(|e| e.message().contains("is blank")));
}

#[test]
fn a_duplicate_backend_name_points_at_the_second_use_and_names_the_first() {
    let text = backends(&[
        ("\"a\"", "\"http://127.0.0.1:1\"", ""),
        ("\"b\"", "\"http://127.0.0.1:2\"", ""),
        ("\"a\"", "\"http://127.0.0.1:3\"", ""),
    ]);
    let e = error(&text);
    assert_eq!(
        e.to_string(),
        "config.toml:10:8: backends[2].name: name \"a\" is already used by backends[0] (line 2); names must be unique"
    );
}

#[test]
fn a_weight_of_zero_is_rejected_with_its_line() {
    let text = backends(&[
        ("\"a\"", "\"http://127.0.0.1:1\"", "weight = 2"),
        ("\"b\"", "\"http://127.0.0.1:2\"", "weight = 0"),
    ]);
    assert_eq!(
        error(&text).to_string(),
        "config.toml:8:10: backends[1].weight: weight 0 is out of range; weights must be between 1 and 1000"
    );
}

#[test]
fn a_weight_above_the_maximum_is_rejected() {
    let text = backends(&[("\"a\"", "\"http://127.0.0.1:1\"", "weight = 1001")]);
    assert_rejected(
        &text,
        "backends[0].weight",
        4,
        "weight 1001 is out of range",
    );
    let text = backends(&[(
        "\"a\"",
        "\"http://127.0.0.1:1\"",
        &format!("weight = {MAX_WEIGHT}"),
    )]);
    assert_eq!(
        parse(&text).unwrap().pools[0].backends[0].weight,
        MAX_WEIGHT
    );
}

#[test]
fn a_negative_or_huge_weight_is_rejected_as_out_of_range() {
    for weight in ["-1", "4294967296"] {
        let text = backends(&[(
            "\"a\"",
            "\"http://127.0.0.1:1\"",
            &format!("weight = {weight}"),
        )]);
        assert_rejected(
            &text,
            "backends[0].weight",
            4,
            &format!("weight {weight} is out of range"),
        );
    }
}

fn url_error(url: &str) -> ConfigError {
    let text = backends(&[("\"a\"", &format!("{url:?}"), "")]);
    let e = error(&text);
    assert_eq!(e.field(), Some("backends[0].url"), "{e}");
    assert_eq!(line(&e), 3, "{e}");
    e
}

#[test]
fn a_url_that_does_not_parse_is_rejected() {
    assert!(
        url_error("http://a b")
            .message()
            .contains("is not a valid URL")
    );
    assert!(
        url_error("http://127.0.0.1:notaport")
            .message()
            .contains("not a port number")
    );
    assert!(
        url_error("http://127.0.0.1:70000")
            .message()
            .contains("not a port number")
    );
    assert!(
        url_error("/just/a/path")
            .message()
            .contains("not an absolute URL")
    );
}

#[test]
fn a_url_without_a_scheme_is_rejected_with_a_suggestion() {
    let e = url_error("127.0.0.1:9001");
    assert!(
        e.message()
            .contains("has no scheme; write it as \"http://127.0.0.1:9001\""),
        "{e}"
    );
}

#[test]
fn an_https_url_is_taken_with_its_port_or_443() {
    let url = |u: &str| {
        let text = format!("[[backends]]\nname = \"b\"\nurl = \"{u}\"\n");
        parse(&text).unwrap().pools[0].backends[0].url.to_string()
    };
    assert_eq!(url("https://127.0.0.1:9001"), "https://127.0.0.1:9001/");
    assert_eq!(url("https://api.internal"), "https://api.internal:443/");
    assert_eq!(url("https://[::1]"), "https://[::1]:443/");
}

#[test]
fn client_certificates_come_in_pairs() {
    let pool = |upstream: &str| {
        format!(
            "[[pools]]\nname = \"p\"\nupstream = {{ {upstream} }}\nbackends = [{{ name = \"b\", url = \"https://127.0.0.1:1\" }}]\n"
        )
    };
    let config = parse(&pool(
        "ca_file = \"ca.pem\", client_cert = \"c.pem\", client_key = \"c.key\"",
    ))
    .unwrap();
    let upstream = &config.pools[0].upstream;
    assert_eq!(upstream.ca_file.as_deref(), Some(Path::new("ca.pem")));
    assert_eq!(upstream.client_cert.as_deref(), Some(Path::new("c.pem")));
    assert_eq!(
        error(&pool("client_cert = \"c.pem\"")).field(),
        Some("pools[0].upstream.client_cert")
    );
    assert_eq!(
        error(&pool("client_key = \"c.key\"")).field(),
        Some("pools[0].upstream.client_key")
    );
}

#[test]
fn a_url_with_another_scheme_is_rejected() {
    assert!(
        url_error("ftp://127.0.0.1")
            .message()
            .contains("unsupported scheme \"ftp\"")
    );
}

#[test]
fn a_url_with_a_path_or_query_is_rejected() {
    for url in [
        "http://127.0.0.1:9001/api",
        "http://127.0.0.1:9001/?x=1",
        "http://127.0.0.1:9001?x=1",
    ] {
        let e = url_error(url);
        assert!(e.message().contains("cannot have one"), "{e}");
    }
}

#[test]
fn a_url_with_credentials_is_rejected() {
    assert!(
        url_error("http://user:pw@127.0.0.1:1")
            .message()
            .contains("credentials")
    );
}

#[test]
fn urls_with_a_trailing_slash_ipv6_or_no_port_are_accepted() {
    for url in [
        "http://127.0.0.1:9001/",
        "http://[::1]:9001",
        "http://example.com",
    ] {
        let text = backends(&[("\"a\"", &format!("{url:?}"), "")]);
        assert!(parse(&text).is_ok(), "{url}");
    }
}

#[test]
fn members_are_the_backends_names_and_weights_in_config_order() {
    let text = backends(&[
        ("\"z\"", "\"http://127.0.0.1:1\"", "weight = 5"),
        ("\"a\"", "\"http://127.0.0.1:2\"", ""),
    ]);
    assert_eq!(
        parse(&text).unwrap().pools[0].members(),
        vec![Member::new("z", 5), Member::new("a", 1)]
    );
}

// --- balancer ------------------------------------------------------------

#[test]
fn every_algorithm_spelling_round_trips() {
    for algorithm in Algorithm::ALL {
        let config = parse(&with_backend(&format!(
            "[balancer]\nalgorithm = \"{algorithm}\""
        )))
        .unwrap();
        assert_eq!(config.pools[0].balancer.algorithm, algorithm);
        assert_eq!(algorithm.to_string(), algorithm.as_str());
    }
    let spellings: Vec<&str> = Algorithm::ALL.iter().map(Algorithm::as_str).collect();
    assert_eq!(
        spellings,
        [
            "maglev",
            "ring_hash",
            "round_robin",
            "weighted_round_robin",
            "least_connections",
            "least_response_time",
            "random"
        ]
    );
}

#[test]
fn only_maglev_and_ring_hash_are_hash_algorithms() {
    let hashing: Vec<Algorithm> = Algorithm::ALL
        .into_iter()
        .filter(Algorithm::is_hash)
        .collect();
    assert_eq!(hashing, [Algorithm::Maglev, Algorithm::RingHash]);
}

#[test]
fn an_unknown_algorithm_is_rejected_with_the_valid_ones() {
    assert_rejected(
        &with_backend("[balancer]\nalgorithm = \"consistent\""),
        "balancer.algorithm",
        2,
        "unknown algorithm \"consistent\"; expected one of maglev, ring_hash, round_robin",
    );
}

#[test]
fn every_key_spelling_round_trips_through_display() {
    for key in [
        "client_ip",
        "url",
        "path",
        "header:x-user",
        "cookie:session",
    ] {
        let config = parse(&with_backend(&format!("[balancer]\nkey = \"{key}\""))).unwrap();
        assert_eq!(config.pools[0].balancer.key.to_string(), key);
    }
}

#[test]
fn a_header_key_is_stored_lowercased() {
    let config = parse(&with_backend("[balancer]\nkey = \"header:X-Tenant-ID\"")).unwrap();
    assert_eq!(
        config.pools[0].balancer.key,
        KeySource::Header(HeaderName::from_static("x-tenant-id"))
    );
    assert_eq!(
        config.pools[0].balancer.key.to_string(),
        "header:x-tenant-id"
    );
}

#[test]
fn a_header_key_with_an_invalid_name_is_rejected() {
    for key in ["header:", "header:X Tenant", "header:é"] {
        let text = with_backend(&format!("[balancer]\nkey = \"{key}\""));
        assert_rejected(&text, "balancer.key", 2, "is not a valid HTTP header name");
    }
}

#[test]
fn a_cookie_key_needs_a_non_empty_token() {
    for key in ["cookie:", "cookie:a b", "cookie:a;b", "cookie:a=b"] {
        let text = with_backend(&format!("[balancer]\nkey = \"{key}\""));
        assert_rejected(&text, "balancer.key", 2, "is not a valid cookie name");
    }
}

#[test]
fn an_unknown_key_source_is_rejected() {
    assert_rejected(
        &with_backend("[balancer]\nkey = \"ip\""),
        "balancer.key",
        2,
        "unknown key \"ip\"; expected client_ip",
    );
}

#[test]
fn a_non_default_key_with_a_non_hash_algorithm_is_accepted_and_ignored() {
    let config = parse(&with_backend(
        "[balancer]\nalgorithm = \"round_robin\"\nkey = \"url\"",
    ))
    .unwrap();
    assert_eq!(config.pools[0].balancer.key, KeySource::Url);
    assert!(
        config
            .summary()
            .contains("key url is ignored by round_robin")
    );
}

#[test]
fn a_non_prime_table_size_is_rejected_for_maglev() {
    assert_rejected(
        &with_backend("[balancer]\ntable_size = 65536"),
        "balancer.table_size",
        2,
        "table_size 65536 is not a prime number",
    );
}

#[test]
fn a_table_size_smaller_than_the_total_weight_is_rejected() {
    let text = format!(
        "[balancer]\ntable_size = 7\n{}",
        backends(&[("\"a\"", "\"http://127.0.0.1:1\"", "weight = 10")])
    );
    assert_rejected(
        &text,
        "balancer.table_size",
        2,
        "smaller than the total backend weight 10",
    );
}

#[test]
fn a_negative_table_size_is_rejected() {
    assert_rejected(
        &with_backend("[balancer]\ntable_size = -7"),
        "balancer.table_size",
        2,
        "must be a positive prime",
    );
}

#[test]
fn table_size_is_only_checked_for_maglev() {
    let text = with_backend("[balancer]\nalgorithm = \"ring_hash\"\ntable_size = 100");
    assert_eq!(parse(&text).unwrap().pools[0].balancer.table_size, 100);
}

#[test]
fn trusted_proxies_accept_cidrs_and_bare_addresses() {
    let text = with_backend(
        "[balancer]\ntrusted_proxies = [\"10.1.2.3/8\", \"192.0.2.7\", \"::1\", \"fd00::/8\"]",
    );
    let nets: Vec<String> = parse(&text).unwrap().pools[0]
        .balancer
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "::1/128", "fd00::/8"]);
}

#[test]
fn a_bad_cidr_is_rejected_with_its_index_and_line() {
    for bad in ["10.0.0.0/33", "10.0.0", "proxy.internal"] {
        let text = with_backend(&format!(
            "[balancer]\ntrusted_proxies = [\n  \"10.0.0.0/8\",\n  \"{bad}\",\n]"
        ));
        assert_rejected(&text, "balancer.trusted_proxies[1]", 4, "is not a CIDR");
    }
}

#[test]
fn an_empty_hash_key_means_none() {
    let config = parse(&with_backend("[balancer]\nhash_key = \"\"")).unwrap();
    assert_eq!(config.pools[0].balancer.hash_key, None);
}

#[test]
fn a_hash_key_of_32_hex_characters_becomes_16_bytes() {
    let config = parse(&with_backend(
        "[balancer]\nhash_key = \"ffeeddccbbaa99887766554433221100\"",
    ))
    .unwrap();
    assert_eq!(
        config.pools[0].balancer.hash_key,
        Some([
            0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22,
            0x11, 0x00
        ])
    );
}

#[test]
fn a_hash_key_of_the_wrong_length_or_with_non_hex_characters_is_rejected() {
    for key in [
        "abc",
        "ffeeddccbbaa9988776655443322110",
        "ffeeddccbbaa998877665544332211000",
        "ffeeddccbbaa998877665544332211zz",
        "+feeddccbbaa99887766554433221100",
        "ffeeddccbbaa998877665544332211éé",
    ] {
        let text = with_backend(&format!("[balancer]\nhash_key = \"{key}\""));
        assert_rejected(&text, "balancer.hash_key", 2, "exactly 32 hex characters");
    }
}

#[test]
fn bounded_load_accepts_zero_and_factors_above_one() {
    for (text, c) in [("0", 0.0), ("0.0", 0.0), ("1.01", 1.01), ("2", 2.0)] {
        let config = parse(&with_backend(&format!("[balancer]\nbounded_load = {text}"))).unwrap();
        assert_eq!(config.pools[0].balancer.bounded_load, c);
    }
}

#[test]
fn limits_have_defaults_and_reject_out_of_range_values() {
    assert_eq!(
        parse(&with_backend("")).unwrap().limits,
        LimitsConfig::default()
    );
    for (field, bad, message) in [
        ("max_header_bytes", "8191", "between 8192 and 16777216"),
        ("max_header_bytes", "16777217", "between 8192 and 16777216"),
        ("max_headers", "0", "between 1 and"),
        ("max_connections", "0", "between 1 and"),
        ("max_connections", "-5", "between 1 and"),
        ("max_in_flight_per_backend", "-1", "between 0 and"),
        (
            "max_body_bytes",
            "-1",
            "use 0 (no limit) or a size in bytes",
        ),
        ("header_timeout", "\"0s\"", "must be greater than zero"),
        ("header_timeout", "\"soon\"", "is not a duration"),
    ] {
        let text = with_backend(&format!("[limits]\n{field} = {bad}"));
        assert_rejected(&text, &format!("limits.{field}"), 2, message);
    }
}

#[test]
fn panic_threshold_is_a_percentage_off_by_default() {
    let config = parse(&with_backend("")).unwrap();
    assert_eq!(config.pools[0].balancer.panic_threshold, 0.0);
    for (text, percent) in [("0", 0.0), ("50", 50.0), ("33.3", 33.3), ("100", 100.0)] {
        let config = parse(&with_backend(&format!(
            "[balancer]\npanic_threshold = {text}"
        )))
        .unwrap();
        assert_eq!(config.pools[0].balancer.panic_threshold, percent);
        assert_eq!(
            config
                .summary()
                .contains(&format!("panic below {percent}% healthy")),
            percent > 0.0
        );
    }
    for bad in ["-1", "100.5", "nan", "inf"] {
        let text = with_backend(&format!("[balancer]\npanic_threshold = {bad}"));
        assert_rejected(
            &text,
            "balancer.panic_threshold",
            2,
            "a percentage from 0 (off) to 100",
        );
    }
}

#[test]
fn bounded_load_up_to_one_negative_or_not_finite_is_rejected() {
    for c in ["0.5", "1.0", "1", "-2", "nan", "inf"] {
        let text = with_backend(&format!("[balancer]\nbounded_load = {c}"));
        assert_rejected(
            &text,
            "balancer.bounded_load",
            2,
            "out of range; use 0 (off) or a factor above 1.0",
        );
    }
}

#[test]
fn bounded_load_with_a_non_hash_algorithm_is_rejected() {
    let text = with_backend("[balancer]\nalgorithm = \"least_connections\"\nbounded_load = 1.25");
    assert_rejected(
        &text,
        "balancer.bounded_load",
        3,
        "only applies to the hash algorithms",
    );
    let off = with_backend("[balancer]\nalgorithm = \"least_connections\"\nbounded_load = 0");
    assert!(parse(&off).is_ok());
}

#[test]
fn a_sticky_cookie_with_a_non_hash_algorithm_is_rejected() {
    let text = with_backend(
        "[balancer]\nalgorithm = \"round_robin\"\n[balancer.sticky_cookie]\nname = \"s\"",
    );
    assert_rejected(
        &text,
        "balancer.sticky_cookie",
        2,
        "needs maglev or ring_hash",
    );
}

#[test]
fn a_sticky_cookie_name_must_be_a_cookie_token() {
    for name in ["", "my cookie", "a;b", "a,b", "é"] {
        let text = with_backend(&format!("[balancer.sticky_cookie]\nname = \"{name}\""));
        assert_rejected(
            &text,
            "balancer.sticky_cookie.name",
            2,
            "is not a valid cookie name",
        );
    }
}

#[test]
fn a_zero_sticky_cookie_max_age_is_rejected() {
    let text = with_backend("[balancer.sticky_cookie]\nmax_age = \"0s\"");
    assert_rejected(
        &text,
        "balancer.sticky_cookie.max_age",
        2,
        "must be greater than zero",
    );
}

// --- health check, upstream, listener, admin -------------------------------

#[test]
fn a_health_path_must_start_with_a_slash() {
    assert_rejected(
        &with_backend("[health_check]\npath = \"health\""),
        "health_check.path",
        2,
        "must start with \"/\"",
    );
}

#[test]
fn a_health_path_must_be_a_valid_url_path() {
    assert_rejected(
        &with_backend("[health_check]\npath = \"/health check\""),
        "health_check.path",
        2,
        "not a valid URL path",
    );
}

#[test]
fn a_health_timeout_equal_to_the_interval_is_rejected() {
    let text = with_backend("[health_check]\ninterval = \"3s\"\ntimeout = \"3s\"");
    assert_rejected(
        &text,
        "health_check.timeout",
        3,
        "timeout 3s must be below interval 3s",
    );
}

#[test]
fn an_interval_below_the_default_timeout_points_at_the_interval() {
    let text = with_backend("[health_check]\ninterval = \"1s\"");
    assert_rejected(
        &text,
        "health_check.interval",
        2,
        "interval 1s must be above timeout 2s (the default)",
    );
}

#[test]
fn zero_intervals_and_timeouts_are_rejected() {
    for (section, key) in [
        ("health_check", "interval"),
        ("health_check", "timeout"),
        ("upstream", "connect_timeout"),
        ("upstream", "request_timeout"),
    ] {
        let text = with_backend(&format!("[{section}]\n{key} = \"0ms\""));
        assert_rejected(&text, &format!("{section}.{key}"), 2, "\"0ms\" is zero");
    }
}

#[test]
fn a_zero_drain_timeout_is_allowed() {
    let config = parse(&with_backend("[listener]\ndrain_timeout = \"0s\"")).unwrap();
    assert_eq!(config.drain_timeout, Duration::ZERO);
}

#[test]
fn a_bad_duration_is_rejected_with_its_field_and_line() {
    for bad in ["30", "fast", ""] {
        let text = with_backend(&format!(
            "[upstream]\nretries = 2\nrequest_timeout = \"{bad}\""
        ));
        assert_rejected(&text, "upstream.request_timeout", 3, "is not a duration");
    }
}

#[test]
fn thresholds_of_zero_are_rejected() {
    for key in ["healthy_threshold", "unhealthy_threshold"] {
        let text = with_backend(&format!("[health_check]\n{key} = 0"));
        assert_rejected(
            &text,
            &format!("health_check.{key}"),
            2,
            "0 is out of range; it must be between 1 and",
        );
    }
}

#[test]
fn negative_retries_are_rejected_and_zero_retries_are_allowed() {
    assert_rejected(
        &with_backend("[upstream]\nretries = -1"),
        "upstream.retries",
        2,
        "-1 is out of range",
    );
    assert_eq!(
        parse(&with_backend("[upstream]\nretries = 0"))
            .unwrap()
            .pools[0]
            .upstream
            .retries,
        0
    );
}

#[test]
fn a_listener_address_must_be_an_ip_and_port() {
    for bad in ["localhost:8080", "127.0.0.1", "127.0.0.1:99999"] {
        let text = with_backend(&format!("[listener]\naddress = \"{bad}\""));
        assert_rejected(&text, "listener.address", 2, "is not an IP:PORT address");
    }
}

#[test]
fn an_admin_address_must_be_an_ip_and_port() {
    assert_rejected(
        &with_backend("[admin]\naddress = \":9900\""),
        "admin.address",
        2,
        "is not an IP:PORT address",
    );
}

#[test]
fn admin_and_listener_on_the_same_address_are_rejected() {
    let text = with_backend(
        "[listener]\naddress = \"127.0.0.1:8080\"\n[admin]\naddress = \"127.0.0.1:8080\"",
    );
    assert_rejected(
        &text,
        "admin.address",
        4,
        "is also the address of listener \"default\"",
    );
    let both_port_zero =
        with_backend("[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"");
    assert!(parse(&both_port_zero).is_ok());
}

// --- error rendering and the summary -----------------------------------------

#[test]
fn load_names_the_file_when_it_cannot_be_read() {
    let errors = Config::load(Path::new("/nonexistent/affinity.toml")).unwrap_err();
    assert_eq!(errors.count(), 1, "{errors}");
    let e = errors.first();
    assert_eq!(e.kind(), ConfigErrorKind::Io);
    assert_eq!(e.file(), Path::new("/nonexistent/affinity.toml"));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/affinity.toml: cannot read the config file: "),
        "{e}"
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let text = "# ééé\n[[backends]]\nname = \"é\" ; url = \"http://127.0.0.1:1\"\n";
    let e = error(text);
    assert_eq!(
        e.location(),
        Some(Location {
            line: 3,
            column: 12
        }),
        "{e}"
    );
    assert_eq!(location("aé\nb", 3), Location { line: 1, column: 3 });
    assert_eq!(location("aé\nb", 2), Location { line: 1, column: 2 });
    assert_eq!(location("a", 99), Location { line: 1, column: 2 });
}

#[test]
fn the_summary_lists_the_pool_with_each_backends_share() {
    let text = format!(
        "[admin]\n{}",
        backends(&[
            ("\"server-1\"", "\"http://127.0.0.1:9001\"", "weight = 1"),
            ("\"server-22\"", "\"http://127.0.0.1:9002\"", "weight = 3"),
        ])
    );
    let summary = parse(&text).unwrap().summary();
    let expected = "\
listener      default 127.0.0.1:8080 (http)
drain timeout 30s
admin         127.0.0.1:9900
limits        header timeout 10s, head 65536 bytes / 100 headers, body unlimited, 10000 connections
routes        on default, in match order:
  */          -> default
  (no match)  -> 404
pool          default
  balancer      maglev on client_ip, table size 65537
  health check  GET /health every 5s, timeout 2s, restore after 2 successes, remove after 2 failures
  upstream      connect timeout 1s, request timeout 30s, 1 retry, unlimited in flight per backend
  backends      2, total weight 4
    server-1   http://127.0.0.1:9001  weight    1   25.0%
    server-22  http://127.0.0.1:9002  weight    3   75.0%
";
    assert_eq!(summary, expected);
}

// --- every error in one run, and warnings --------------------------------

#[test]
fn three_mistakes_on_lines_2_3_and_8_are_three_errors_in_file_order() {
    let text = "\
[listener]
address = \"localhost:8080\"
drain_timeout = \"soon\"
[[backends]]
name = \"server-1\"
url = \"http://127.0.0.1:9001\"
[[backends]]
name = \"\"
url = \"http://127.0.0.1:9002\"
";
    let found = match parse(text) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(errors) => errors,
    };
    assert_eq!(found.count(), 3, "{found}");
    let lines: Vec<usize> = found.iter().map(line).collect();
    assert_eq!(lines, [2, 3, 8], "{found}");
    let fields: Vec<_> = found.iter().map(ConfigError::field).collect();
    assert_eq!(
        fields,
        [
            Some("listener.address"),
            Some("listener.drain_timeout"),
            Some("backends[1].name")
        ]
    );
    assert_eq!(found.first().field(), Some("listener.address"));
    // One line each, exactly as each error shows itself alone.
    let shown: Vec<String> = found.iter().map(ConfigError::to_string).collect();
    assert_eq!(found.to_string(), shown.join("\n"));
    assert_eq!(
        shown[2],
        "config.toml:8:8: backends[1].name: the name is empty; every backend needs a unique, non-empty name"
    );
}

#[test]
fn errors_are_sorted_by_file_position_whatever_order_the_rules_run_in() {
    // The backends are checked after [upstream], but come first in the file;
    // two errors on one line keep their column order.
    let text = "\
[[backends]]
name = \"a\"
url = \"ftp://127.0.0.1:1\"
weight = 0
[upstream]
retries = -1
[balancer]
trusted_proxies = [\"x\", \"y\"]
";
    let found = errors(text);
    let at: Vec<(usize, usize, Option<&str>)> = found
        .iter()
        .map(|e| {
            let l = e.location().unwrap();
            (l.line, l.column, e.field())
        })
        .collect();
    assert_eq!(
        at,
        [
            (3, 7, Some("backends[0].url")),
            (4, 10, Some("backends[0].weight")),
            (6, 11, Some("upstream.retries")),
            (8, 20, Some("balancer.trusted_proxies[0]")),
            (8, 25, Some("balancer.trusted_proxies[1]")),
        ],
        "{found:#?}"
    );
}

#[test]
fn an_error_without_a_line_comes_after_those_with_one() {
    // No [[backends]] at all: that error has no location.
    let text = "[listener]\naddress = \"nowhere\"\n[upstream]\nretries = -1\n";
    let found = errors(text);
    let fields: Vec<_> = found.iter().map(ConfigError::field).collect();
    assert_eq!(
        fields,
        [
            Some("listener.address"),
            Some("upstream.retries"),
            Some("backends")
        ]
    );
    assert_eq!(found[2].location(), None);
}

#[test]
fn a_syntax_error_is_the_only_error_reported() {
    // Line 2 would break a rule, but after the unclosed string on line 5
    // nothing can be trusted.
    let text = "[listener]\naddress = \"nowhere\"\n[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\nweight = 0\n";
    let e = error(text);
    assert_eq!(e.kind(), ConfigErrorKind::Syntax);
    assert_eq!(line(&e), 5, "{e}");
}

#[test]
fn a_type_error_or_unknown_key_is_the_only_error_reported() {
    for text in [
        "[listener]\naddress = \"nowhere\"\n[upstream]\nretries = \"1\"\n",
        "[listener]\naddress = \"nowhere\"\n[upstream]\nretrys = 1\n",
    ] {
        let e = error(&with_backend(text));
        assert_eq!(
            e.field().map(|f| f.starts_with("upstream.")),
            Some(true),
            "{e}"
        );
        assert_eq!(line(&e), 4, "{e}");
    }
}

#[test]
fn a_rule_that_weighs_an_invalid_value_does_not_run() {
    // An invalid interval is not also compared with the timeout.
    let text = with_backend("[health_check]\ninterval = \"fast\"\ntimeout = \"10s\"");
    assert_rejected(&text, "health_check.interval", 2, "is not a duration");
    // An invalid timeout is not compared with the interval.
    let text = with_backend("[health_check]\ninterval = \"1s\"\ntimeout = \"0s\"");
    assert_rejected(&text, "health_check.timeout", 3, "is zero");
    // An invalid algorithm is not also blamed for bounded_load or the sticky cookie.
    let text = with_backend(
        "[balancer]\nalgorithm = \"fastest\"\nbounded_load = 1.5\n[balancer.sticky_cookie]\nname = \"s\"",
    );
    assert_rejected(&text, "balancer.algorithm", 2, "unknown algorithm");
    // A listener address that does not parse is not compared with the admin's.
    let text = with_backend("[listener]\naddress = \"x\"\n[admin]\naddress = \"127.0.0.1:8080\"");
    assert_rejected(&text, "listener.address", 2, "is not an IP:PORT address");
}

#[test]
fn a_table_size_is_weighed_against_the_weights_only_when_every_weight_is_valid() {
    // 3 is prime and at least 1 + 1, but not 1 + 5: with the weight of 5000
    // invalid, only the weight is reported, not a table too small for it.
    let text = format!(
        "[balancer]\ntable_size = 3\n{}",
        backends(&[
            ("\"a\"", "\"http://127.0.0.1:1\"", ""),
            ("\"b\"", "\"http://127.0.0.1:2\"", "weight = 5000"),
        ])
    );
    assert_rejected(
        &text,
        "backends[1].weight",
        10,
        "weight 5000 is out of range",
    );
    // A table size that is not a prime is reported whatever the weights.
    let text = text.replace("table_size = 3", "table_size = 4");
    let fields: Vec<_> = errors(&text)
        .iter()
        .map(|e| e.field().map(str::to_owned))
        .collect();
    assert_eq!(
        fields,
        [
            Some("balancer.table_size".to_owned()),
            Some("backends[1].weight".to_owned())
        ]
    );
    // Ring points are only counted over a valid pool.
    let text = format!(
        "[balancer]\nalgorithm = \"ring_hash\"\n{}",
        backends(&[("\"a\"", "\"http://127.0.0.1:1\"", "weight = 0")])
    );
    assert_rejected(&text, "backends[0].weight", 6, "weight 0 is out of range");
}

#[test]
fn every_error_of_every_backend_is_reported() {
    let text = backends(&[
        ("\"a\"", "\"127.0.0.1:1\"", "weight = 0"),
        ("\"a\"", "\"http://127.0.0.1:2/x\"", ""),
    ]);
    let found = errors(&text);
    let shown: Vec<String> = found.iter().map(ConfigError::to_string).collect();
    assert_eq!(shown.len(), 4, "{shown:#?}");
    assert!(
        shown[0].starts_with("config.toml:3:7: backends[0].url: "),
        "{shown:#?}"
    );
    assert!(
        shown[1].starts_with("config.toml:4:10: backends[0].weight: "),
        "{shown:#?}"
    );
    assert!(
        shown[2].starts_with(
            "config.toml:6:8: backends[1].name: name \"a\" is already used by backends[0] (line 2)"
        ),
        "{shown:#?}"
    );
    assert!(
        shown[3].starts_with("config.toml:7:7: backends[1].url: "),
        "{shown:#?}"
    );
}

#[test]
fn two_backends_on_one_url_are_a_warning_naming_both_not_an_error() {
    let text = backends(&[
        ("\"server-1\"", "\"http://127.0.0.1:9001\"", ""),
        ("\"server-2\"", "\"http://127.0.0.1:9002\"", ""),
        ("\"server-3\"", "\"http://127.0.0.1:9001\"", ""),
    ]);
    let config = parse(&text).unwrap();
    assert_eq!(config.pools[0].backends.len(), 3);
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let w = &warnings[0];
    assert_eq!(w.field(), "backends[2].url");
    assert_eq!(
        w.location(),
        Some(Location {
            line: 11,
            column: 7
        })
    );
    assert_eq!(w.file(), Path::new("config.toml"));
    let shown = w.to_string();
    assert!(
        shown.starts_with(
            "config.toml:11:7: backends[2].url: same URL as backends[0] (\"server-1\", line 3): http://127.0.0.1:9001 gets the keys of both names"
        ),
        "{shown}"
    );
}

#[test]
fn urls_that_reach_one_server_are_the_same_url() {
    // Port 80 is the default, and host names ignore case.
    let text = backends(&[
        ("\"a\"", "\"http://Backend.internal\"", ""),
        ("\"b\"", "\"http://backend.internal:80/\"", ""),
        ("\"c\"", "\"http://backend.internal:8080\"", ""),
    ]);
    let config = parse(&text).unwrap();
    let fields: Vec<&str> = config.warnings().iter().map(ConfigWarning::field).collect();
    assert_eq!(fields, ["backends[1].url"]);
}

#[test]
fn a_pool_on_distinct_urls_has_no_warnings() {
    let text = backends(&[
        ("\"a\"", "\"http://127.0.0.1:1\"", ""),
        ("\"b\"", "\"http://127.0.0.2:1\"", ""),
        ("\"c\"", "\"http://127.0.0.1:2\"", ""),
    ]);
    assert!(parse(&text).unwrap().warnings().is_empty());
}

// --- listeners, pools and routes ------------------------------------------

/// Two pools and two listeners: the shape the tests below vary.
const SEVERAL: &str = r#"
[[listeners]]
name = "web"
address = "127.0.0.1:8080"
[[listeners]]
name = "internal"
address = "127.0.0.1:8081"
pool = "static"

[[routes]]
host = "shop.example.com"
path_prefix = "/api"
strip_prefix = true
pool = "api"
[[routes]]
listener = "web"
pool = "static"

[[pools]]
name = "api"
algorithm = "ring_hash"
key = "cookie:sid"
health_check = { path = "/ready", interval = "3s" }
upstream = { retries = 2 }
max_in_flight_per_backend = 50
backends = [{ name = "api-1", url = "http://127.0.0.1:9001", weight = 2 }]
[[pools]]
name = "static"
algorithm = "round_robin"
backends = [{ name = "api-1", url = "http://127.0.0.1:9001" }]
"#;

#[test]
fn several_listeners_pools_and_routes_are_read_with_each_pools_own_settings() {
    let config = parse(SEVERAL).unwrap();
    let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["web", "internal"]);
    assert_eq!(config.listeners[1].pool.as_deref(), Some("static"));
    assert_eq!(config.listeners[0].protocol, Protocol::Http);
    let api = config.pool("api").unwrap();
    assert_eq!(api.balancer.algorithm, Algorithm::RingHash);
    assert_eq!(api.balancer.key.to_string(), "cookie:sid");
    assert_eq!(api.health_check.path, "/ready");
    assert_eq!(api.health_check.interval, Duration::from_secs(3));
    assert_eq!(api.upstream.retries, 2);
    assert_eq!(api.max_in_flight_per_backend, 50);
    assert_eq!(api.backends[0].weight, 2);
    let static_pool = config.pool("static").unwrap();
    assert_eq!(static_pool.balancer.algorithm, Algorithm::RoundRobin);
    assert_eq!(static_pool.health_check, HealthCheckConfig::default());
    // The same name and address in two pools: two members, no conflict.
    assert_eq!(static_pool.backends[0].name, "api-1");
    assert_eq!(config.routes.len(), 2);
    assert_eq!(config.routes[0].pattern(), "shop.example.com/api");
    assert!(config.routes[0].strip_prefix);
    assert_eq!(config.routes[1].listener.as_deref(), Some("web"));
    // Route specs per listener: "internal" has only the route for every listener.
    let targets =
        |l: &str| -> Vec<usize> { config.route_specs(l).iter().map(|r| r.target).collect() };
    assert_eq!(targets("web"), [0, 1]);
    assert_eq!(targets("internal"), [0]);
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

#[test]
fn a_pools_mistakes_are_named_where_they_are_in_the_pool() {
    let text = SEVERAL.replace("upstream = { retries = 2 }", "upstream = { retries = -1 }");
    let e = error(&text);
    assert_eq!(e.field(), Some("pools[0].upstream.retries"), "{e}");
    let text = SEVERAL.replace("algorithm = \"ring_hash\"", "algorithm = \"maglevv\"");
    assert_eq!(error(&text).field(), Some("pools[0].algorithm"));
    let text = SEVERAL.replace("weight = 2", "weight = 0");
    assert_eq!(error(&text).field(), Some("pools[0].backends[0].weight"));
    let text = SEVERAL.replace(
        "max_in_flight_per_backend = 50",
        "max_in_flight_per_backend = -5",
    );
    assert_eq!(
        error(&text).field(),
        Some("pools[0].max_in_flight_per_backend")
    );
}

#[test]
fn one_pool_without_routes_gets_everything_and_several_need_routes() {
    let one = "[[pools]]\nname = \"only\"\nbackends = [{ name = \"b\", url = \"http://127.0.0.1:9001\" }]\n";
    let config = parse(one).unwrap();
    assert_eq!(config.listeners[0].name, "default");
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.routes[0].pool, "only");
    assert_eq!(config.routes[0].pattern(), "*/");
    let two = format!(
        "{one}[[pools]]\nname = \"other\"\nbackends = [{{ name = \"b\", url = \"http://127.0.0.1:9002\" }}]\n"
    );
    assert_eq!(error(&two).field(), Some("routes"));
    // ... unless every listener has a pool of its own.
    let with_default = format!(
        "[[listeners]]\nname = \"a\"\naddress = \"127.0.0.1:8080\"\npool = \"other\"\n{two}"
    );
    let config = parse(&with_default).unwrap();
    assert!(config.routes.is_empty());
    // `other` is reached; `only` is not: a warning names it.
    let warnings: Vec<String> = config.warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("pool \"only\""), "{warnings:?}");
}

#[test]
fn routes_must_name_known_pools_and_listeners_and_never_repeat_one_another() {
    let text = SEVERAL.replace("pool = \"api\"\n[[routes]]", "pool = \"apii\"\n[[routes]]");
    let e = error(&text);
    assert_eq!(e.field(), Some("routes[0].pool"));
    assert!(e.to_string().contains("the pools are api, static"), "{e}");
    let text = SEVERAL.replace("listener = \"web\"", "listener = \"webb\"");
    assert_eq!(error(&text).field(), Some("routes[1].listener"));
    let text = format!("{SEVERAL}[[routes]]\npool = \"api\"\n");
    let e = error(&text);
    assert_eq!(e.field(), Some("routes[2]"));
    assert!(e.to_string().contains("shadowed by routes[1]"), "{e}");
    // For different listeners, the same host and prefix are two routes.
    let text = format!("{SEVERAL}[[routes]]\nlistener = \"internal\"\npool = \"api\"\n");
    assert!(parse(&text).is_ok());
    for (host, ok) in [
        ("*.example.com", true),
        ("a.b-c.example", true),
        ("*", false),
        ("a.*.com", false),
        ("x:80", false),
        ("", false),
    ] {
        let text = format!("{SEVERAL}[[routes]]\nhost = \"{host}\"\npool = \"api\"\n");
        assert_eq!(parse(&text).is_ok(), ok, "{host}");
    }
    for prefix in ["api", "/a?b", "/a b", "/a#b"] {
        let text = format!(
            "{SEVERAL}[[routes]]\npath_prefix = \"{prefix}\"\nlistener = \"internal\"\npool = \"api\"\n"
        );
        assert_eq!(
            error(&text).field(),
            Some("routes[2].path_prefix"),
            "{prefix}"
        );
    }
}

#[test]
fn listeners_need_unique_names_and_addresses_and_the_admin_its_own_port() {
    let text = SEVERAL.replace("name = \"internal\"", "name = \"web\"");
    assert_eq!(error(&text).field(), Some("listeners[1].name"));
    let text = SEVERAL.replace("127.0.0.1:8081", "127.0.0.1:8080");
    assert_eq!(error(&text).field(), Some("listeners[1].address"));
    let text = format!("[admin]\naddress = \"127.0.0.1:8081\"\n{SEVERAL}");
    let e = error(&text);
    assert_eq!(e.field(), Some("admin.address"));
    assert!(e.to_string().contains("listener \"internal\""), "{e}");
    let text = SEVERAL.replace(
        "pool = \"static\"\n\n[[routes]]",
        "pool = \"nope\"\n\n[[routes]]",
    );
    assert_eq!(error(&text).field(), Some("listeners[1].pool"));
}

#[test]
fn the_listener_table_keeps_only_the_drain_timeout_beside_listeners() {
    let config = parse(&format!("[listener]\ndrain_timeout = \"5s\"\n{SEVERAL}")).unwrap();
    assert_eq!(config.drain_timeout, Duration::from_secs(5));
    let e = error(&format!(
        "[listener]\naddress = \"127.0.0.1:7000\"\n{SEVERAL}"
    ));
    assert_eq!(e.field(), Some("listener.address"));
}

#[test]
fn the_summary_prints_each_listeners_routes_in_match_order_and_each_pool() {
    let text = format!(
        "{SEVERAL}[[routes]]\nhost = \"*.example.com\"\npath_prefix = \"/x\"\npool = \"api\"\n\
         [[routes]]\nhost = \"shop.example.com\"\npool = \"static\"\n"
    );
    let summary = parse(&text).unwrap().summary();
    let web: Vec<&str> = summary
        .lines()
        .skip_while(|l| !l.starts_with("routes        on web"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(
        web,
        [
            "  shop.example.com/api  -> api (prefix stripped)",
            "  shop.example.com/     -> static",
            "  *.example.com/x       -> api",
            "  */                    -> static",
            "  (no match)            -> 404",
        ]
    );
    assert!(
        summary.contains("routes        on internal, in match order:\n"),
        "{summary}"
    );
    assert!(
        summary.contains("  (no match)            -> static\n"),
        "{summary}"
    );
    assert!(
        summary.contains("pool          api\n  balancer      ring_hash on cookie:sid\n"),
        "{summary}"
    );
    assert!(
        summary.contains("pool          static\n  balancer      round_robin\n"),
        "{summary}"
    );
}

#[test]
fn a_backend_state_is_active_or_drain() {
    let config =
        parse("[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\nstate = \"drain\"\n")
            .unwrap();
    assert!(config.pools[0].backends[0].drain);
    let config =
        parse("[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\nstate = \"active\"\n")
            .unwrap();
    assert!(!config.pools[0].backends[0].drain);
    assert_rejected(
        "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\nstate = \"paused\"\n",
        "backends[0].state",
        4,
        "expected \"active\" or \"drain\"",
    );
}

#[test]
fn discover_entries_take_defaults_and_interval_sets_both_bounds() {
    let config = parse(
        r#"
        [[pools]]
        name = "api"
        discover = [
          { dns = "_http._tcp.api.internal" },
          { dns = "api.internal:8080", interval = "5s", resolvers = ["10.0.0.2", "127.0.0.1:5353"], empty_grace = "0s", probe_first = true, scheme = "https", weight = 3 },
        ]
        "#,
    )
    .unwrap();
    let pool = &config.pools[0];
    assert!(pool.backends.is_empty());
    assert_eq!(
        pool.discover[0],
        DiscoverConfig {
            target: DiscoverTarget::Srv("_http._tcp.api.internal".into()),
            min_interval: DEFAULT_DISCOVER_MIN_INTERVAL,
            max_interval: DEFAULT_DISCOVER_MAX_INTERVAL,
            resolvers: Vec::new(),
            empty_grace: DEFAULT_EMPTY_GRACE,
            probe_first: false,
            https: false,
            weight: 1,
        }
    );
    assert_eq!(
        pool.discover[1],
        DiscoverConfig {
            target: DiscoverTarget::Host {
                host: "api.internal".into(),
                port: 8080
            },
            min_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(5),
            resolvers: vec![
                "10.0.0.2:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ],
            empty_grace: Duration::ZERO,
            probe_first: true,
            https: true,
            weight: 3,
        }
    );
    // Without discover, backends are still required.
    assert!(parse("[[pools]]\nname = \"api\"\n").is_err());
}

#[test]
fn tcp_listeners_take_a_pool_an_idle_timeout_and_tcp_backends_serve_only_them() {
    let config = parse(
        r#"
        [[listeners]]
        name = "redis"
        address = "127.0.0.1:6379"
        protocol = "tcp"
        pool = "cache"
        idle_timeout = "90s"
        [[pools]]
        name = "cache"
        health_check = { type = "tcp" }
        backends = [{ name = "r1", url = "tcp://127.0.0.1:7001" }]
        "#,
    )
    .unwrap();
    assert_eq!(config.listeners[0].protocol, Protocol::Tcp);
    assert_eq!(config.listeners[0].idle_timeout, Duration::from_secs(90));
    assert_eq!(config.pools[0].health_check.kind, ProbeKind::Tcp);
    let behind_http = parse(
        r#"
        [[listeners]]
        name = "web"
        address = "127.0.0.1:8080"
        pool = "cache"
        [[pools]]
        name = "cache"
        backends = [{ name = "r1", url = "tcp://127.0.0.1:7001" }]
        "#,
    )
    .unwrap_err();
    assert!(
        behind_http
            .to_string()
            .contains("tcp:// backends serve tcp listeners only"),
        "{behind_http}"
    );
    let no_port = parse("[[backends]]\nname = \"a\"\nurl = \"tcp://127.0.0.1\"\n").unwrap_err();
    assert!(no_port.to_string().contains("has no port"), "{no_port}");
    let bad_type = parse("[health_check]\ntype = \"udp\"\n[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n").unwrap_err();
    assert!(
        bad_type.to_string().contains("health_check.type"),
        "{bad_type}"
    );
}

#[test]
fn listeners_read_proxy_protocol_headers_from_trusted_peers_and_tcp_pools_send_them() {
    let config = parse(
        r#"
        [[listeners]]
        name = "web"
        address = "127.0.0.1:8080"
        pool = "web"
        proxy_protocol = true
        trusted = ["10.0.0.0/8", "192.0.2.7", "::1"]
        max_connections = 2000
        [[listeners]]
        name = "redis"
        address = "127.0.0.1:6379"
        protocol = "tcp"
        pool = "cache"
        [[pools]]
        name = "web"
        backends = [{ name = "w1", url = "http://127.0.0.1:7000" }]
        [[pools]]
        name = "cache"
        upstream = { send_proxy_protocol = "v2" }
        backends = [{ name = "r1", url = "tcp://127.0.0.1:7001" }]
        "#,
    )
    .unwrap();
    let web = &config.listeners[0];
    assert!(web.proxy_protocol);
    let trusted: Vec<String> = web.trusted.iter().map(|n| n.to_string()).collect();
    assert_eq!(trusted, ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]);
    assert_eq!(web.max_connections, Some(2000));
    let redis = &config.listeners[1];
    assert!(!redis.proxy_protocol && redis.trusted.is_empty());
    assert_eq!(redis.max_connections, None);
    assert_eq!(
        config.pools[0].upstream.send_proxy_protocol,
        SendProxyProtocol::Off
    );
    assert_eq!(
        config.pools[1].upstream.send_proxy_protocol,
        SendProxyProtocol::V2
    );
    let summary = config.summary();
    assert!(
        summary.contains("PROXY protocol header required from 10.0.0.0/8 192.0.2.7/32 ::1/128, at most 2000 connections"),
        "{summary}"
    );
    assert!(summary.contains("PROXY protocol v2 header"), "{summary}");

    // The single-listener form takes them in [listener].
    let single = parse(
        "[listener]\nproxy_protocol = true\ntrusted = [\"127.0.0.1\"]\n[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    assert!(single.listeners[0].proxy_protocol);
    assert_eq!(single.listeners[0].trusted.len(), 1);
}

#[test]
fn a_proxy_header_goes_only_to_tcp_backends_of_tcp_listeners() {
    let behind_http = parse(
        "[upstream]\nsend_proxy_protocol = \"v1\"\n[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n",
    )
    .unwrap_err();
    assert!(
        behind_http
            .to_string()
            .contains("sent by tcp listeners only"),
        "{behind_http}"
    );
    let to_tls = parse(
        r#"
        [[listeners]]
        name = "tls"
        address = "127.0.0.1:8443"
        protocol = "tcp"
        pool = "secure"
        [[pools]]
        name = "secure"
        upstream = { send_proxy_protocol = "v1" }
        backends = [{ name = "s1", url = "https://127.0.0.1:9443" }]
        "#,
    )
    .unwrap_err();
    assert!(
        to_tls.to_string().contains("goes before any TLS"),
        "{to_tls}"
    );
}

#[test]
fn a_tcp_listener_terminating_tls_offers_no_alpn() {
    let config = parse(
        r#"
        [[listeners]]
        name = "redis"
        address = "127.0.0.1:6380"
        protocol = "tcp"
        pool = "cache"
        tls = { certificates = [{ cert = "site.pem", key = "site.key" }] }
        [[pools]]
        name = "cache"
        backends = [{ name = "r1", url = "tcp://127.0.0.1:7001" }]
        "#,
    )
    .unwrap();
    assert!(config.listeners[0].tls.as_ref().unwrap().alpn.is_empty());
    assert!(config.summary().contains("no ALPN"), "{}", config.summary());
}
