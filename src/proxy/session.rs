//! A request's key as the proxy hashes it, and the sticky-cookie sessions
//! it issues to clients that have none.

use std::net::IpAddr;

use hyper::http::request::Parts;

use crate::balance::key::{KeyOrigin, split_pin};
use crate::config::StickyCookieConfig;
use crate::pool::Snapshot;

/// A request's key, as the hash algorithms use it.
pub struct Keyed {
    /// The key hash; `None` for the classic policies.
    pub hash: Option<u64>,
    /// The configured header or cookie was missing: the client IP was hashed.
    pub fell_back: bool,
    /// A sticky-cookie session id issued to this request (its key).
    pub new_session: Option<String>,
    /// With pinned sticky cookies: the session id the client sent, to pin
    /// again where its request lands.
    pub session: Option<String>,
    /// The pin the client's cookie carried (not yet checked against the
    /// pool).
    pub pin: Option<u64>,
}

impl Keyed {
    /// The key of a request from `peer`, read from `parts` under `snapshot`'s
    /// key source; with a sticky cookie and none on the request, a new session.
    pub fn new(snapshot: &Snapshot, parts: &Parts, peer: IpAddr) -> Keyed {
        let Some(hasher) = snapshot.selector().hasher() else {
            return Keyed {
                hash: None,
                fell_back: false,
                new_session: None,
                session: None,
                pin: None,
            };
        };
        let key = snapshot.request_key(&parts.uri, &parts.headers, peer);
        let fell_back = key.origin() == KeyOrigin::ClientIpFallback;
        let sticky = snapshot.config().balancer.sticky_cookie.as_ref();
        if fell_back && sticky.is_some() {
            // A new client: its key is the session id it is about to get.
            let id = session_id();
            return Keyed {
                hash: Some(hasher.hash(id.as_bytes())),
                fell_back: false,
                new_session: Some(id),
                session: None,
                pin: None,
            };
        }
        if sticky.is_some_and(|s| s.pin) && !fell_back {
            // The key is the session id; the pin rides beside it.
            let (id, pin) = split_pin(key.as_bytes());
            return Keyed {
                hash: Some(hasher.hash(id)),
                fell_back: false,
                new_session: None,
                session: Some(String::from_utf8_lossy(id).into_owned()),
                pin,
            };
        }
        Keyed {
            hash: Some(hasher.hash(key.as_bytes())),
            fell_back,
            new_session: None,
            session: None,
            pin: None,
        }
    }
}

/// A new session id: 128 random bits as 32 lowercase hex characters, from
/// `fastrand` (seeded per thread from the OS). It only chooses a backend, so
/// it need not be secret: a client can send any cookie it likes anyway.
fn session_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// The `Set-Cookie` value that hands a new client its session id.
pub fn set_cookie(sticky: &StickyCookieConfig, id: &str) -> String {
    format!(
        "{}={id}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
        sticky.name,
        sticky.max_age.as_secs().max(1)
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_session_cookie_is_32_hex_characters_with_max_age_path_and_flags() {
        let id = session_id();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(id, session_id());
        let sticky = StickyCookieConfig {
            name: "sid".into(),
            max_age: Duration::from_secs(90),
            pin: false,
        };
        assert_eq!(
            set_cookie(&sticky, "00ff"),
            "sid=00ff; Max-Age=90; Path=/; HttpOnly; SameSite=Lax"
        );
        let short = StickyCookieConfig {
            name: "sid".into(),
            max_age: Duration::from_millis(10),
            pin: false,
        };
        assert!(set_cookie(&short, "1").contains("Max-Age=1;"));
    }
}
