//! Config files on disk: every file in `tests/configs/bad/` is rejected with
//! exactly the errors its leading `# expect:` comments list, in their order,
//! each naming the file, the line and the field; every file in
//! `tests/configs/good/` and the shipped `config.toml` load.

use std::path::{Path, PathBuf};

use affinity::config::{
    AdminConfig, Algorithm, BalancerConfig, Config, HealthCheckConfig, KeySource, LimitsConfig,
    ListenerConfig, StickyCookieConfig, UpstreamConfig,
};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `.toml` files in `tests/configs/<dir>`, sorted.
fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = manifest_dir().join("tests/configs").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// What a bad file's leading comments promise, one error each:
/// `# expect: FIELD at line N`.
struct Expectation {
    field: String,
    line: usize,
}

fn expectations(path: &Path) -> Vec<Expectation> {
    let text = std::fs::read_to_string(path).unwrap();
    let expected: Vec<Expectation> = text
        .lines()
        .map_while(|line| line.strip_prefix("# expect: "))
        .map(|spec| {
            let (field, line) = spec
                .split_once(" at line ")
                .unwrap_or_else(|| panic!("{}: write `# expect: FIELD at line N`", path.display()));
            Expectation {
                field: field.trim().to_owned(),
                line: line.trim().parse().unwrap(),
            }
        })
        .collect();
    assert!(
        !expected.is_empty(),
        "{}: the first line must be `# expect: FIELD at line N`",
        path.display()
    );
    expected
}

#[test]
fn every_bad_config_fails_with_the_errors_it_expects_naming_file_line_and_field() {
    let files = toml_files("bad");
    assert!(files.len() >= 12, "only {} bad configs", files.len());
    for path in files {
        let expected = expectations(&path);
        let file_name = path.file_name().unwrap().to_str().unwrap();
        let errors = match Config::load(&path) {
            Ok(_) => panic!("{file_name} loaded, but should have been rejected"),
            Err(errors) => errors,
        };
        let all = errors.to_string();
        assert_eq!(
            errors.count(),
            expected.len(),
            "{file_name}: expected {} errors: {all}",
            expected.len()
        );
        for (error, expected) in errors.iter().zip(&expected) {
            let message = error.to_string();
            let prefix = format!("{file_name}:{}:", expected.line);
            assert!(
                message.contains(&prefix),
                "{file_name}: message should contain {prefix:?}: {all}"
            );
            assert!(
                message.contains(&format!(": {}: ", expected.field)),
                "{file_name}: message should name field {:?}: {all}",
                expected.field
            );
        }
    }
}

#[test]
fn every_good_config_loads() {
    let files = toml_files("good");
    assert!(files.len() >= 3, "only {} good configs", files.len());
    for path in files {
        if let Err(e) = Config::load(&path) {
            panic!("{e}");
        }
    }
}

#[test]
fn the_full_config_example_sets_every_key_away_from_its_default() {
    let config = Config::load(&manifest_dir().join("tests/configs/good/full.toml")).unwrap();

    let listener = ListenerConfig::default();
    assert_ne!(config.listeners[0].address, listener.address);
    assert_ne!(
        config.drain_timeout,
        affinity::config::DEFAULT_DRAIN_TIMEOUT
    );

    let admin = config.admin.as_ref().expect("[admin] is set");
    assert_ne!(admin.address, AdminConfig::default().address);

    let b = &config.pools[0].balancer;
    let defaults = BalancerConfig::default();
    // maglev is the default, but it is the only algorithm that reads table_size.
    assert_eq!(b.algorithm, Algorithm::Maglev);
    assert!(matches!(b.key, KeySource::Header(_)));
    assert_ne!(b.table_size, defaults.table_size);
    assert_eq!(b.trusted_proxies.len(), 3);
    assert!(b.hash_key.is_some());
    assert_ne!(b.bounded_load, defaults.bounded_load);
    assert_ne!(b.panic_threshold, defaults.panic_threshold);
    let sticky = b
        .sticky_cookie
        .as_ref()
        .expect("[balancer.sticky_cookie] is set");
    assert_ne!(sticky.name, StickyCookieConfig::default().name);
    assert_ne!(sticky.max_age, StickyCookieConfig::default().max_age);

    let h = &config.pools[0].health_check;
    let defaults = HealthCheckConfig::default();
    assert_ne!(h.path, defaults.path);
    assert_ne!(h.interval, defaults.interval);
    assert_ne!(h.timeout, defaults.timeout);
    assert_ne!(h.healthy_threshold, defaults.healthy_threshold);
    assert_ne!(h.unhealthy_threshold, defaults.unhealthy_threshold);

    let u = &config.pools[0].upstream;
    let defaults = UpstreamConfig::default();
    assert_ne!(u.connect_timeout, defaults.connect_timeout);
    assert_ne!(u.request_timeout, defaults.request_timeout);
    assert_ne!(u.retries, defaults.retries);

    let l = &config.limits;
    let defaults = LimitsConfig::default();
    assert_ne!(l.header_timeout, defaults.header_timeout);
    assert_ne!(l.max_header_bytes, defaults.max_header_bytes);
    assert_ne!(l.max_headers, defaults.max_headers);
    assert_ne!(l.max_body_bytes, defaults.max_body_bytes);
    assert_ne!(l.max_connections, defaults.max_connections);
    assert_ne!(
        l.max_in_flight_per_backend,
        defaults.max_in_flight_per_backend
    );

    assert!(config.pools[0].backends.iter().any(|b| b.weight != 1));
}

#[test]
fn the_shipped_config_toml_loads_with_five_local_backends() {
    let config = match Config::load(&manifest_dir().join("config.toml")) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(config.listeners[0].address.to_string(), "127.0.0.1:8080");
    assert_eq!(
        config.admin.map(|a| a.address.to_string()).as_deref(),
        Some("127.0.0.1:9900")
    );
    assert_eq!(config.pools[0].balancer.algorithm, Algorithm::Maglev);
    assert_eq!(config.pools[0].balancer.key, KeySource::ClientIp);
    let backends: Vec<(String, String, u32)> = config.pools[0]
        .backends
        .iter()
        .map(|b| {
            (
                b.name.clone(),
                b.url.authority().unwrap().to_string(),
                b.weight,
            )
        })
        .collect();
    let expected: Vec<(String, String, u32)> = (1..=5)
        .map(|i| (format!("server-{i}"), format!("127.0.0.1:900{i}"), 1))
        .collect();
    assert_eq!(backends, expected);
}

/// The config inside `examples/kubernetes/affinity.yaml`'s ConfigMap loads,
/// and discovers its pool from the headless Service's SRV records.
#[test]
fn the_kubernetes_example_config_loads_and_discovers_its_backends() {
    let yaml =
        std::fs::read_to_string(manifest_dir().join("examples/kubernetes/affinity.yaml")).unwrap();
    let block: Vec<&str> = yaml
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("config.toml: |"))
        .skip(1)
        .take_while(|line| line.is_empty() || line.starts_with("    "))
        .collect();
    let text: String = block
        .iter()
        .map(|line| line.get(4..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let config = Config::from_toml(&text, Path::new("affinity.yaml")).unwrap();
    let pool = config.pool("api").unwrap();
    assert!(pool.backends.is_empty());
    assert_eq!(
        pool.discover[0].target,
        affinity::config::DiscoverTarget::Srv("_http._tcp.api.default.svc.cluster.local".into())
    );
}
