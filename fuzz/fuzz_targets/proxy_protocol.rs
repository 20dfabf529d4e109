//! Feeds arbitrary bytes, as the start of a connection, to the PROXY
//! protocol parser (`listener::proxy_protocol::parse`).
//!
//! Invariants: nothing panics; a header takes no more bytes than it was
//! given, and parsing just those bytes gives the same result; every shorter
//! prefix of them is `Incomplete`; over the growing prefixes of the input the
//! results are `Incomplete`, then one decision that more bytes never change
//! (the same header and length, or `Invalid`); a `Proxy` header encoded again
//! (version 1 when the input starts with `P`, else version 2) parses back to
//! itself.

#![no_main]

use affinity::listener::proxy_protocol::{Header, ParseError, encode_v1, encode_v2, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let result = parse(bytes);
    assert_decided_once(bytes);
    let Ok((header, used)) = result else {
        return;
    };
    assert!(used <= bytes.len(), "{used} of {} bytes", bytes.len());
    assert_eq!(parse(&bytes[..used]), result);
    for end in 0..used {
        assert_eq!(
            parse(&bytes[..end]),
            Err(ParseError::Incomplete),
            "first {end} bytes"
        );
    }
    if let Header::Proxy {
        source,
        destination,
    } = header
    {
        let encoded = match bytes[0] {
            b'P' => encode_v1(source, destination),
            _ => encode_v2(source, destination),
        };
        assert_eq!(parse(&encoded), Ok((header, encoded.len())));
    }
});

/// Over the growing prefixes of `bytes`: `Incomplete`, then one decision
/// (`Ok` with the same header and length, or `Invalid` whatever its
/// message). Prefixes longer than a header cannot change an `Ok`, so only
/// the first `MAX` bytes are walked: the walk stays linear in practice.
fn assert_decided_once(bytes: &[u8]) {
    const MAX: usize = 512;
    let mut decided = None;
    for end in 0..=bytes.len().min(MAX) {
        let result = parse(&bytes[..end]);
        match decided {
            Some(first) => assert_eq!(result.ok(), first, "first {end} bytes"),
            None if result != Err(ParseError::Incomplete) => decided = Some(result.ok()),
            None => {}
        }
    }
    if let Some(first) = decided {
        assert_eq!(parse(bytes).ok(), first, "all {} bytes", bytes.len());
    }
}
