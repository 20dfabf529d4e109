//! Feeds arbitrary bytes, as what a backend sends on an HTTP/1.1 connection,
//! to the client codec (`proxy::upstream::codec`): `parse_response` reads
//! heads off a buffer (skipping informational ones), and when the final head
//! frames its body as chunked, a `ChunkedDecoder` follows the bytes after it.
//!
//! Input: the first byte's low two bits pick the request's method (`HEAD`,
//! `GET`, `CONNECT`, `POST`), its next four bits how many of the following
//! bytes are run lengths (each byte `b` a run of `b + 1` bytes, cycled); the
//! rest is the backend's stream.
//!
//! Invariants: nothing panics; `parse_response` takes exactly the bytes it
//! reports (never more than the buffer holds), takes nothing when the head
//! is partial, and finds every shorter prefix of a head it takes partial;
//! a head's framing and keep-alive follow from its status, method and
//! version as documented; the decoder's ranges lie within the bytes it
//! reports used, which lie within the buffer given; and the body fed whole,
//! in the input's runs, or a byte at a time gives the same data, the same
//! end and trailers, or the same error. `parse_forwarded_response` (what
//! the proxy reads) takes the same bytes as `parse_response` with the same
//! status, framing and keep-alive, or fails alike, and its headers, stripped
//! of the hop-by-hop ones, are the whole head's stripped.

#![no_main]

use std::ops::Range;

use affinity::proxy::headers::strip_hop_by_hop;
use affinity::proxy::upstream::codec::{
    ChunkError, ChunkedDecoder, Decoded, Framing, HeadError, MAX_HEAD_BYTES, Parsed, ResponseHead,
    parse_forwarded_response, parse_response, parse_trailers,
};
use bytes::BytesMut;
use http::{HeaderMap, Method, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let method = match control & 3 {
        0 => Method::HEAD,
        1 => Method::GET,
        2 => Method::CONNECT,
        _ => Method::POST,
    };
    let runs = usize::from((control >> 2) & 15).min(rest.len());
    let (runs, stream) = rest.split_at(runs);
    let runs: Vec<usize> = runs.iter().map(|&b| usize::from(b) + 1).collect();

    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.len();
        let unparsed = buf.clone();
        let parsed = parse_response(&mut buf, &method);
        assert_forwarded_alike(&unparsed, &method, &parsed);
        match parsed {
            Ok(Parsed::Partial) => {
                assert_eq!(buf, unparsed, "a partial head takes nothing");
                assert!(before < MAX_HEAD_BYTES);
                return;
            }
            Ok(Parsed::Informational(len)) => {
                assert!(len > 0 && len <= before, "{len} of {before} bytes");
                assert_eq!(buf[..], unparsed[len..]);
                assert_prefixes_partial(&unparsed[..len], &method);
            }
            Ok(Parsed::Head(head, len)) => {
                assert!(len > 0 && len <= before, "{len} of {before} bytes");
                assert_eq!(buf[..], unparsed[len..]);
                assert_prefixes_partial(&unparsed[..len], &method);
                let status = head.parts.status.as_u16();
                assert!(!(100..200).contains(&status) || status == 101);
                let expected = match status {
                    101 => Some(Framing::Switch),
                    204 | 304 => Some(Framing::Empty),
                    _ if method == Method::HEAD => Some(Framing::Empty),
                    200..=299 if method == Method::CONNECT => Some(Framing::Switch),
                    _ => None,
                };
                if let Some(expected) = expected {
                    assert_eq!(head.framing, expected);
                }
                if head.parts.version == Version::HTTP_10 {
                    assert_ne!(head.framing, Framing::Chunked);
                }
                if matches!(head.framing, Framing::Close | Framing::Switch) {
                    assert!(!head.keep_alive, "{:?} is never kept alive", head.framing);
                }
                if head.framing == Framing::Chunked {
                    assert_same_however_fed(&buf, &runs);
                }
                return;
            }
            Err(error) => {
                if let HeadError::TooLarge = error {
                    assert!(before >= MAX_HEAD_BYTES);
                }
                return;
            }
        }
    }
});

/// `parse_forwarded_response` reads `bytes` as `parse_response` did
/// (`whole`): the same length and outcome, and the same headers once both
/// are stripped of the hop-by-hop ones (a `101` keeps them all).
fn assert_forwarded_alike(bytes: &BytesMut, method: &Method, whole: &Result<Parsed, HeadError>) {
    let mut buf = bytes.clone();
    let forwarded = parse_forwarded_response(&mut buf, method);
    let (whole, forwarded) = match (whole, forwarded) {
        (Ok(Parsed::Head(whole, len)), Ok(Parsed::Head(forwarded, flen))) => {
            assert_eq!(flen, *len);
            (whole, forwarded)
        }
        (Ok(Parsed::Partial), Ok(Parsed::Partial)) | (Err(_), Err(_)) => return,
        (Ok(Parsed::Informational(len)), Ok(Parsed::Informational(flen))) => {
            assert_eq!(flen, *len);
            return;
        }
        (whole, forwarded) => panic!("whole {whole:?}, forwarded {forwarded:?}"),
    };
    let outline = |head: &ResponseHead| (head.parts.status, head.framing, head.keep_alive);
    assert_eq!(outline(&forwarded), outline(whole));
    let (mut a, mut b) = (whole.parts.headers.clone(), forwarded.parts.headers);
    if whole.parts.status.as_u16() != 101 {
        strip_hop_by_hop(&mut a);
        strip_hop_by_hop(&mut b);
    }
    assert_eq!(a.len(), b.len());
    for name in a.keys() {
        assert!(a.get_all(name).iter().eq(b.get_all(name).iter()), "{name}");
    }
}

/// Every proper prefix of a head that `parse_response` took is partial, and
/// leaves the buffer as it was. Only the first bytes and a few cut points
/// are tried: the walk stays linear in the head's length.
fn assert_prefixes_partial(head: &[u8], method: &Method) {
    let cuts = (0..head.len().min(64)).chain([head.len() / 2, head.len() - 1]);
    for end in cuts.filter(|&end| end < head.len()) {
        let mut prefix = BytesMut::from(&head[..end]);
        let parsed = parse_response(&mut prefix, method);
        assert!(
            matches!(parsed, Ok(Parsed::Partial)),
            "{end} bytes: {parsed:?}"
        );
        assert_eq!(prefix[..], head[..end]);
    }
}

/// The body after a chunked head, fed whole, in `runs` (cycled) and a byte
/// at a time, gives the same result.
fn assert_same_however_fed(body: &[u8], runs: &[usize]) {
    let whole = follow(body, &[]);
    let in_runs = follow(body, runs);
    assert_eq!(in_runs, whole, "in runs of {runs:?}");
    let bytewise = follow(body, &[1]);
    assert_eq!(bytewise, whole, "a byte at a time");
    if let Ok(Followed {
        end: Some((used, _, _)),
        ..
    }) = whole
    {
        assert!(used <= body.len());
    }
}

/// What a decoder made of a body.
#[derive(Debug, PartialEq, Eq)]
struct Followed {
    /// Its data, put together.
    data: Vec<u8>,
    /// Where it ended (the bytes used), its trailer section's range, and the
    /// trailers parsed (or why not), if it did.
    end: Option<(usize, Option<Range<usize>>, Result<HeaderMap, ChunkError>)>,
}

/// Feeds `body` to a new decoder as it would arrive in runs of `runs`
/// (cycled; an empty list means whole), keeping the bytes a call does not use
/// for the next, as the client does. Checks the decoder's ranges on the way.
fn follow(body: &[u8], runs: &[usize]) -> Result<Followed, ChunkError> {
    let mut decoder = ChunkedDecoder::new();
    let mut followed = Followed {
        data: Vec::new(),
        end: None,
    };
    // `body[start..arrived]` is what has arrived and is not used yet.
    let mut start = 0;
    let mut arrived = 0;
    let whole = [body.len().max(1)];
    let runs = if runs.is_empty() { &whole[..] } else { runs };
    for &run in runs.iter().cycle() {
        if arrived == body.len() {
            break;
        }
        arrived = (arrived + run.max(1)).min(body.len());
        loop {
            let buf = &body[start..arrived];
            if buf.is_empty() {
                break;
            }
            let (used, found) = decoder.decode(buf)?;
            assert!(used <= buf.len(), "used {used} of {}", buf.len());
            match found {
                Decoded::Data(range) => {
                    assert!(
                        range.start < range.end && range.end <= used,
                        "{range:?}, {used}"
                    );
                    followed.data.extend_from_slice(&buf[range]);
                    start += used;
                }
                Decoded::End(trailers) => {
                    assert!(decoder.is_done());
                    let trailers = trailers.map(|range| {
                        assert!(range.start < range.end && range.end <= used, "{range:?}");
                        start + range.start..start + range.end
                    });
                    let parsed = trailers
                        .clone()
                        .map_or(Ok(HeaderMap::new()), |range| parse_trailers(&body[range]));
                    followed.end = Some((start + used, trailers, parsed));
                    // Once ended, it uses nothing more.
                    if used < buf.len() {
                        assert_eq!(decoder.decode(&buf[used..]), Ok((0, Decoded::End(None))));
                    }
                    return Ok(followed);
                }
                Decoded::More => {
                    start += used;
                    break;
                }
            }
        }
    }
    Ok(followed)
}
