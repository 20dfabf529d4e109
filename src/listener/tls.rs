//! TLS termination: a listener's certificates, read from their PEM files
//! and chosen by the client's SNI, and the handshake of each connection.
//!
//! * **Certificates** ([`Certificates::load`]): each `{ cert, key }` pair of
//!   the listener's `tls.certificates` is read (the chain leaf first; the key
//!   as PKCS#8, PKCS#1 or SEC1), the key must match the leaf's public key,
//!   and the leaf's DNS names (subject alternative names, else the common
//!   name) and expiry are read from it. A leaf that has expired is an error;
//!   one that expires within [`EXPIRY_WARNING`] a warning.
//! * **SNI** ([`Resolver`]): the certificate with exactly the client's server
//!   name; failing that, one with the wildcard `*.rest` where the name is one
//!   label followed by `.rest` (as TLS wildcards match, RFC 6125 §6.4.3);
//!   failing that (or without SNI), the first certificate.
//! * **Protocols**: TLS 1.2 and 1.3 only (rustls has nothing older), ALPN
//!   as configured (`h2` and `http/1.1` by default, so HTTP/2 clients get
//!   HTTP/2); sessions resume by ticket (TLS 1.3 and 1.2) or by session id,
//!   across reloads too: the ticket key and the session cache belong to the
//!   listener, not to a config.
//! * **Reload** ([`TlsListener::reload`]): the new certificates are all
//!   read first; only if every one is good do new handshakes use them.
//!   Connections already open keep the certificate they were made with.
//! * **Handshake** ([`TlsListener::handshake`]): bounded by
//!   `tls.handshake_timeout`; a client that stalls, or sends something that
//!   is not a ClientHello, loses its own connection and nothing else.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ProtocolVersion, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{CertificateFiles, TlsConfig};
use crate::pool::stats::{CertificateRecord, Stats};
use crate::pool::target::provider;

/// A certificate that expires sooner than this is a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// TLS sessions a listener remembers for resumption by session id.
const SESSION_CACHE: usize = 4096;

/// Why a listener's certificates cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct TlsError {
    /// Where the certificate is in the config (`listeners[0].tls.certificates[1]`).
    pub field: String,
    /// What is wrong, with the file it is about.
    pub problem: String,
}

/// One certificate as it was read: its key, names and expiry.
#[derive(Clone)]
pub struct Certificate {
    key: Arc<CertifiedKey>,
    /// The leaf's DNS names, lowercase: `shop.example.com`, `*.example.com`.
    pub names: Vec<String>,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// The files it came from.
    pub files: CertificateFiles,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("cert", &self.files.cert)
            .finish_non_exhaustive()
    }
}

/// A listener's certificates, and the names that pick them.
#[derive(Debug, Clone)]
pub struct Certificates {
    certificates: Vec<Certificate>,
    exact: HashMap<String, usize>,
    /// By what follows `*.`.
    wildcard: HashMap<String, usize>,
}

impl Certificates {
    /// Reads every certificate of `tls`; the first problem is the error.
    pub fn load(tls: &TlsConfig) -> Result<Certificates, TlsError> {
        let mut certificates = Vec::with_capacity(tls.certificates.len());
        for files in &tls.certificates {
            certificates.push(read_certificate(files)?);
        }
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, certificate) in certificates.iter().enumerate() {
            for name in &certificate.names {
                match name.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_owned()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        Ok(Certificates {
            certificates,
            exact,
            wildcard,
        })
    }

    /// The certificates, in config order.
    pub fn certificates(&self) -> &[Certificate] {
        &self.certificates
    }

    /// The certificate for a client that asked for `server_name` (SNI).
    pub fn choose(&self, server_name: Option<&str>) -> Option<&Certificate> {
        let by_name = server_name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).copied().or_else(|| {
                let (_, rest) = name.split_once('.')?;
                self.wildcard.get(rest).copied()
            })
        });
        self.certificates.get(by_name.unwrap_or(0))
    }

    /// What is about to go wrong at `now`: each certificate that expires
    /// within [`EXPIRY_WARNING`], as a sentence.
    pub fn warnings(&self, now: SystemTime) -> Vec<String> {
        self.certificates
            .iter()
            .filter(|c| c.not_after < now + EXPIRY_WARNING)
            .map(|c| {
                format!(
                    "{}: {} ({}) expires {}, within {}",
                    c.files.field,
                    c.files.cert.display(),
                    c.names.join(", "),
                    humantime::format_rfc3339_seconds(c.not_after),
                    humantime::format_duration(EXPIRY_WARNING),
                )
            })
            .collect()
    }

    /// The records `/status` and the expiry gauge show, for listener
    /// `listener`.
    pub fn records(&self, listener: &str) -> Vec<CertificateRecord> {
        self.certificates
            .iter()
            .map(|c| CertificateRecord {
                listener: listener.to_owned(),
                names: c.names.clone(),
                not_after: c.not_after,
                cert: c.files.cert.display().to_string(),
            })
            .collect()
    }
}

/// Reads one certificate chain and its key.
fn read_certificate(files: &CertificateFiles) -> Result<Certificate, TlsError> {
    let problem = |problem: String| TlsError {
        field: files.field.clone(),
        problem,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            problem(format!(
                "cannot read certificates from {}: {e}",
                files.cert.display()
            ))
        })?;
    let Some(leaf) = chain.first() else {
        return Err(problem(format!(
            "{}: no certificate (a PEM \"BEGIN CERTIFICATE\" block) in it",
            files.cert.display()
        )));
    };
    let (names, not_after) = leaf_facts(leaf).map_err(|e| {
        problem(format!(
            "{}: the certificate cannot be parsed: {e}",
            files.cert.display()
        ))
    })?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        problem(format!(
            "cannot read a private key from {}: {e}",
            files.key.display()
        ))
    })?;
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        problem(format!(
            "{} and {} do not go together: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    if not_after < SystemTime::now() {
        return Err(problem(format!(
            "{} ({}) expired {}",
            files.cert.display(),
            names.join(", "),
            humantime::format_rfc3339_seconds(not_after)
        )));
    }
    Ok(Certificate {
        key: Arc::new(key),
        names,
        not_after,
        files: files.clone(),
    })
}

/// The leaf's DNS names (lowercase) and its expiry.
fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime), String> {
    use x509_parser::extensions::GeneralName;

    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let seconds = cert.validity().not_after.timestamp();
    let not_after = if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        UNIX_EPOCH
    };
    Ok((names, not_after))
}

/// Picks a listener's certificate by SNI for each handshake; swapped whole
/// on reload.
#[derive(Debug)]
pub struct Resolver {
    current: ArcSwap<Certificates>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certificates = self.current.load();
        certificates
            .choose(hello.server_name())
            .map(|c| c.key.clone())
    }
}

/// What a handshake needs, replaced whole on reload.
#[derive(Debug)]
struct Settings {
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

/// A listener's TLS: its certificates, settings and session state.
#[derive(Debug)]
pub struct TlsListener {
    name: Arc<str>,
    resolver: Arc<Resolver>,
    settings: ArcSwap<Settings>,
    /// Kept across reloads, so that sessions resume across them.
    sessions: Arc<ServerSessionMemoryCache>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
}

impl TlsListener {
    /// The TLS of listener `name` with `certificates` (already read) as
    /// `tls` configures it.
    pub fn new(
        name: &str,
        tls: &TlsConfig,
        certificates: Certificates,
    ) -> Result<TlsListener, TlsError> {
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError {
            field: format!("listener {name:?}"),
            problem: format!("cannot make a session ticket key: {e}"),
        })?;
        let resolver = Arc::new(Resolver {
            current: ArcSwap::from_pointee(certificates),
        });
        let sessions = ServerSessionMemoryCache::new(SESSION_CACHE);
        let settings = settings(tls, &resolver, &sessions, &ticketer).map_err(|e| TlsError {
            field: format!("listener {name:?}"),
            problem: e,
        })?;
        Ok(TlsListener {
            name: Arc::from(name),
            resolver,
            settings: ArcSwap::from_pointee(settings),
            sessions,
            ticketer,
        })
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The certificates new handshakes use.
    pub fn certificates(&self) -> Arc<Certificates> {
        self.resolver.current.load_full()
    }

    /// Makes new handshakes use `certificates` (read already, so all good)
    /// and `tls`'s settings; connections already open keep theirs.
    pub fn reload(&self, tls: &TlsConfig, certificates: Certificates) -> Result<(), TlsError> {
        let settings =
            settings(tls, &self.resolver, &self.sessions, &self.ticketer).map_err(|e| {
                TlsError {
                    field: format!("listener {:?}", self.name),
                    problem: e,
                }
            })?;
        self.resolver.current.store(Arc::new(certificates));
        self.settings.store(Arc::new(settings));
        Ok(())
    }

    /// The TLS handshake of a client connection, within the handshake
    /// timeout, counted in `stats`; `None` (logged) when it failed.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        stats: &Stats,
    ) -> Option<TlsStream<TcpStream>> {
        let settings = self.settings.load_full();
        let peer = stream.peer_addr().ok();
        let started = Instant::now();
        let acceptor = TlsAcceptor::from(settings.config.clone());
        let accepted =
            tokio::time::timeout(settings.handshake_timeout, acceptor.accept(stream)).await;
        let elapsed = started.elapsed();
        match accepted {
            Ok(Ok(stream)) => {
                let version = version_label(stream.get_ref().1.protocol_version());
                stats.tls_handshake(&self.name, "success", version, elapsed);
                Some(stream)
            }
            Ok(Err(error)) => {
                tracing::debug!(listener = %self.name, peer = ?peer, %error, "TLS handshake failed");
                stats.tls_handshake(&self.name, "failure", "", elapsed);
                None
            }
            Err(_) => {
                tracing::debug!(listener = %self.name, peer = ?peer, "TLS handshake timed out");
                stats.tls_handshake(&self.name, "timeout", "", elapsed);
                None
            }
        }
    }
}

/// The rustls settings of `tls` around the listener's lasting state.
fn settings(
    tls: &TlsConfig,
    resolver: &Arc<Resolver>,
    sessions: &Arc<ServerSessionMemoryCache>,
    ticketer: &Arc<dyn rustls::server::ProducesTickets>,
) -> Result<Settings, String> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = tls
        .alpn
        .iter()
        .map(|p| p.as_str().as_bytes().to_vec())
        .collect();
    config.session_storage = sessions.clone();
    config.ticketer = ticketer.clone();
    Ok(Settings {
        config: Arc::new(config),
        handshake_timeout: tls.handshake_timeout,
    })
}

/// The `version` label of a handshake.
fn version_label(version: Option<ProtocolVersion>) -> &'static str {
    match version {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "other",
    }
}
