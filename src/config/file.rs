//! The file structs: the TOML layout, as serde reads it. Every table
//! denies unknown keys; values that need checking keep their span.

use std::fmt;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a config table")]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) listener: FileListener,
    pub(super) admin: Option<FileAdmin>,
    pub(super) balancer: Option<Spanned<FileBalancer>>,
    pub(super) health_check: Option<Spanned<FileHealthCheck>>,
    pub(super) upstream: Option<Spanned<FileUpstream>>,
    #[serde(default)]
    pub(super) limits: FileLimits,
    pub(super) backends: Option<Spanned<Vec<FileBackend>>>,
    pub(super) discover: Option<Spanned<Vec<FileDiscover>>>,
    pub(super) listeners: Option<Spanned<Vec<FileListenerEntry>>>,
    pub(super) pools: Option<Spanned<Vec<FilePool>>>,
    pub(super) routes: Option<Vec<FileRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [listener] table")]
pub(super) struct FileListener {
    pub(super) address: Option<Spanned<String>>,
    pub(super) drain_timeout: Option<Spanned<DurationText>>,
    pub(super) tls: Option<Spanned<FileTls>>,
    pub(super) proxy_protocol: Option<Spanned<bool>>,
    pub(super) trusted: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a tls table")]
pub(super) struct FileTls {
    pub(super) certificates: Spanned<Vec<FileCertificate>>,
    pub(super) alpn: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) handshake_timeout: Option<Spanned<DurationText>>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a certificate table with cert and key"
)]
pub(super) struct FileCertificate {
    pub(super) cert: Spanned<String>,
    pub(super) key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[listeners]] table")]
pub(super) struct FileListenerEntry {
    pub(super) name: Spanned<String>,
    pub(super) address: Spanned<String>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) pool: Option<Spanned<String>>,
    pub(super) tls: Option<Spanned<FileTls>>,
    pub(super) idle_timeout: Option<Spanned<DurationText>>,
    pub(super) proxy_protocol: Option<Spanned<bool>>,
    pub(super) trusted: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[routes]] table")]
pub(super) struct FileRoute {
    pub(super) listener: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) path_prefix: Option<Spanned<String>>,
    pub(super) strip_prefix: Option<bool>,
    pub(super) pool: Spanned<String>,
}

/// A `[[pools]]` entry: the `[balancer]` keys at its top, the other tables
/// inside it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[pools]] table")]
pub(super) struct FilePool {
    pub(super) name: Spanned<String>,
    pub(super) algorithm: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) table_size: Option<Spanned<i64>>,
    pub(super) trusted_proxies: Option<Vec<Spanned<String>>>,
    pub(super) hash_key: Option<Spanned<String>>,
    pub(super) bounded_load: Option<Spanned<f64>>,
    pub(super) panic_threshold: Option<Spanned<f64>>,
    pub(super) sticky_cookie: Option<FileStickyCookie>,
    pub(super) slow_start: Option<Spanned<DurationText>>,
    pub(super) max_in_flight_per_backend: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) health_check: FileHealthCheck,
    #[serde(default)]
    pub(super) upstream: FileUpstream,
    pub(super) backends: Option<Spanned<Vec<FileBackend>>>,
    pub(super) discover: Option<Spanned<Vec<FileDiscover>>>,
}

impl FilePool {
    /// Its `[balancer]` keys, as the single-pool form has them.
    pub(super) fn balancer(&self) -> FileBalancer {
        FileBalancer {
            algorithm: self.algorithm.clone(),
            key: self.key.clone(),
            table_size: self.table_size.clone(),
            trusted_proxies: self.trusted_proxies.clone(),
            hash_key: self.hash_key.clone(),
            bounded_load: self.bounded_load.clone(),
            panic_threshold: self.panic_threshold.clone(),
            sticky_cookie: self.sticky_cookie.clone(),
            slow_start: self.slow_start.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [admin] table")]
pub(super) struct FileAdmin {
    pub(super) address: Option<Spanned<String>>,
    pub(super) token_file: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [balancer] table")]
pub(super) struct FileBalancer {
    pub(super) algorithm: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) table_size: Option<Spanned<i64>>,
    pub(super) trusted_proxies: Option<Vec<Spanned<String>>>,
    pub(super) hash_key: Option<Spanned<String>>,
    pub(super) bounded_load: Option<Spanned<f64>>,
    pub(super) panic_threshold: Option<Spanned<f64>>,
    pub(super) sticky_cookie: Option<FileStickyCookie>,
    pub(super) slow_start: Option<Spanned<DurationText>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a sticky_cookie table")]
pub(super) struct FileStickyCookie {
    pub(super) name: Option<Spanned<String>>,
    pub(super) max_age: Option<Spanned<DurationText>>,
    pub(super) pin: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [health_check] table")]
pub(super) struct FileHealthCheck {
    #[serde(rename = "type")]
    pub(super) kind: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<DurationText>>,
    pub(super) timeout: Option<Spanned<DurationText>>,
    pub(super) healthy_threshold: Option<Spanned<i64>>,
    pub(super) unhealthy_threshold: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "an [upstream] table")]
pub(super) struct FileUpstream {
    pub(super) connect_timeout: Option<Spanned<DurationText>>,
    pub(super) request_timeout: Option<Spanned<DurationText>>,
    pub(super) retries: Option<Spanned<i64>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) client_cert: Option<Spanned<String>>,
    pub(super) client_key: Option<Spanned<String>>,
    pub(super) protocol: Option<Spanned<String>>,
    pub(super) send_proxy_protocol: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [limits] table")]
pub(super) struct FileLimits {
    pub(super) header_timeout: Option<Spanned<DurationText>>,
    pub(super) max_header_bytes: Option<Spanned<i64>>,
    pub(super) max_headers: Option<Spanned<i64>>,
    pub(super) max_body_bytes: Option<Spanned<i64>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) max_in_flight_per_backend: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[backends]] table")]
pub(super) struct FileBackend {
    pub(super) name: Spanned<String>,
    pub(super) url: Spanned<String>,
    pub(super) weight: Option<Spanned<i64>>,
    pub(super) state: Option<Spanned<String>>,
}

/// A `discover = [...]` entry: backends from DNS.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a discover table such as { dns = \"_http._tcp.api.internal\" }"
)]
pub(super) struct FileDiscover {
    pub(super) dns: Spanned<String>,
    pub(super) interval: Option<Spanned<DurationText>>,
    pub(super) min_interval: Option<Spanned<DurationText>>,
    pub(super) max_interval: Option<Spanned<DurationText>>,
    pub(super) resolvers: Option<Vec<Spanned<String>>>,
    pub(super) empty_grace: Option<Spanned<DurationText>>,
    pub(super) probe_first: Option<bool>,
    pub(super) scheme: Option<Spanned<String>>,
    pub(super) weight: Option<Spanned<i64>>,
}

/// A duration as written (`"500ms"`), parsed in the validation pass. Its own
/// type only so that `timeout = 5` is reported as "expected a duration string
/// such as ..." instead of "expected a string".
#[derive(Debug, Clone)]
pub(super) struct DurationText(pub(super) String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"5s\" or \"500ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<DurationText, E> {
                Ok(DurationText(text.to_owned()))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}
