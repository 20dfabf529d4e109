//! The admin write API's parsing of what a client sends: the request path,
//! the `Authorization` header and a weight body. Checked against the rules
//! `src/admin/write.rs` documents, written here from those rules:
//!
//! * a path parses only as `/pools/P/backends/B/ACTION` with non-empty
//!   percent-decoded UTF-8 names and ACTION one of `drain`, `undrain`,
//!   `weight`; re-encoding the names and parsing again gives the same
//!   target;
//! * a header is authorized only when it is `Bearer ` (any case) and then
//!   exactly the token, surrounding whitespace aside;
//! * a weight body is accepted only as an integer from 1 to 1000,
//!   surrounding whitespace aside.
//!
//! Nothing may panic.

#![no_main]

use affinity::admin::write::{authorized, parse_path, parse_weight};
use arbitrary::Arbitrary;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

#[derive(Debug, Arbitrary)]
struct Input {
    path: String,
    header: Vec<u8>,
    token: Vec<u8>,
    body: Vec<u8>,
}

fuzz_target!(|input: Input| {
    if let Some(target) = parse_path(&input.path) {
        assert!(input.path.starts_with("/pools/"));
        assert!(!target.pool.is_empty() && !target.backend.is_empty());
        assert!(input.path.ends_with(&format!("/{}", target.action.as_str())));
        let again = format!(
            "/pools/{}/backends/{}/{}",
            utf8_percent_encode(&target.pool, NON_ALPHANUMERIC),
            utf8_percent_encode(&target.backend, NON_ALPHANUMERIC),
            target.action.as_str()
        );
        assert_eq!(parse_path(&again), Some(target));
    }

    if let Ok(header) = HeaderValue::from_bytes(&input.header) {
        let ok = authorized(Some(&header), &input.token);
        let bytes = header.as_bytes();
        let model = bytes.len() >= 7
            && bytes[..7].eq_ignore_ascii_case(b"bearer ")
            && bytes[7..].trim_ascii() == &input.token[..];
        assert_eq!(ok, model, "{header:?} vs {:?}", input.token);
    }

    match parse_weight(&input.body) {
        Ok(weight) => {
            assert!((1..=1000).contains(&weight));
            let text = std::str::from_utf8(&input.body).unwrap().trim();
            assert_eq!(text.parse::<u32>().ok(), Some(weight));
        }
        Err(message) => assert!(!message.is_empty()),
    }
});
