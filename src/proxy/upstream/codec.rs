//! HTTP/1.1 toward backends, without I/O: the request head written from a
//! parsed request, and the response head and body framing read back, as
//! hyper 1's client does them (`proto/h1/role.rs`, `Client`), so that moving
//! off hyper's client changes nothing a backend or a client can see.
//!
//! * [`encode_request`] writes `METHOD target HTTP/1.1`, the headers, and
//!   decides how the body is framed (hyper's `Client::set_length`): a
//!   `Transfer-Encoding` ending in `chunked` (added when missing) wins and
//!   drops `Content-Length`; else a valid `Content-Length`; else the body's
//!   exact size, written as `Content-Length`; else `chunked`, except for
//!   `GET`, `HEAD` and `CONNECT`, which are sent without a body.
//! * [`parse_response`] reads a response head with `httparse` (at most
//!   [`MAX_HEADERS`] headers and [`MAX_HEAD_BYTES`]), skips informational
//!   answers (`100`, `102`–`199`), and frames the body by RFC 9112 §6.3:
//!   none after `HEAD`, `204` and `304`; a switch after `101` (and a `2xx`
//!   to `CONNECT`); `chunked` when `Transfer-Encoding` ends in it, else read
//!   to the close (and an error on HTTP/1.0); a valid `Content-Length`;
//!   an invalid one is an error; neither reads to the close. A
//!   `Content-Length` beside `Transfer-Encoding` is removed, as RFC 9112
//!   §6.3 has an intermediary do (hyper's client kept it).
//! * [`ChunkedDecoder`] follows a chunked body byte for byte as hyper's
//!   `ChunkedState`: hex size, spaces or tabs, extensions up to a CR, `CRLF`,
//!   data, `CRLF`, and after the last (`0`) chunk the trailer section.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use hyper::ext::ReasonPhrase;
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue, TRAILER, TRANSFER_ENCODING,
};
use hyper::http::response::Parts;
use hyper::{Method, Response, StatusCode, Version};

/// The most headers a response head may have: hyper's default.
pub const MAX_HEADERS: usize = 100;

/// The longest response head: hyper's default read buffer limit
/// (`8192 + 4096 * 100`).
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// The longest trailer section of a chunked response.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// The largest `Content-Length` hyper accepts (it keeps the two values above
/// as markers).
const MAX_CONTENT_LENGTH: u64 = u64::MAX - 2;

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// Exactly this many bytes (0: no body is sent at all).
    Length(u64),
    /// Chunked, with the trailers the request's `Trailer` header names.
    Chunked,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes (never 0: that is [`Framing::Empty`]).
    Length(u64),
    /// Chunked.
    Chunked,
    /// Everything until the backend closes the connection.
    Close,
    /// A `101` (or a `2xx` to `CONNECT`): the connection now carries another
    /// protocol.
    Switch,
}

/// A response head, parsed.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status, version, headers, and the reason phrase when it is not the
    /// status's canonical one ([`ReasonPhrase`] in the extensions).
    pub parts: Parts,
    /// How its body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this
    /// response: HTTP/1.1 without `Connection: close`, HTTP/1.0 with
    /// `Connection: keep-alive`, and a body not read to the close.
    pub keep_alive: bool,
}

/// What [`parse_response`] found at the start of a buffer.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An informational answer (`100`, `102`–`199`) this many bytes long, to
    /// skip: the final answer follows.
    Informational(usize),
    /// The final answer's head, this many bytes long.
    Head(ResponseHead, usize),
}

/// Why a response head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// httparse refused it.
    #[error("invalid response head: {0}")]
    Invalid(httparse::Error),
    /// Longer than [`MAX_HEAD_BYTES`].
    #[error("the response head is larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    /// A `Content-Length` that is not one valid number.
    #[error("invalid Content-Length in the response")]
    ContentLength,
    /// `Transfer-Encoding` on an HTTP/1.0 response.
    #[error("Transfer-Encoding on an HTTP/1.0 response")]
    TransferEncodingOn10,
    /// A header value that is not a valid header value.
    #[error("invalid response header value")]
    HeaderValue,
}

/// Parses the response head at the start of `buf`, the answer to a request
/// with `method`, and takes it (or an informational answer) off `buf`. The
/// header values share the head's bytes.
pub fn parse_response(buf: &mut BytesMut, method: &Method) -> Result<Parsed, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(error) => return Err(HeadError::Invalid(error)),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let code = response.code.unwrap_or_default();
    let status =
        StatusCode::from_u16(code).map_err(|_| HeadError::Invalid(httparse::Error::Status))?;
    if status.is_informational() && code != 101 {
        let _ = buf.split_to(len);
        return Ok(Parsed::Informational(len));
    }
    let version = if response.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Where each name and value lies in the head, to share its bytes.
    let base = buf.as_ptr() as usize;
    let at = |slice: &[u8]| slice.as_ptr() as usize - base;
    let fields: Vec<(Range<usize>, Range<usize>)> = response
        .headers
        .iter()
        .map(|h| {
            let name = at(h.name.as_bytes());
            let value = at(h.value);
            (name..name + h.name.len(), value..value + h.value.len())
        })
        .collect();
    let reason = response.reason.unwrap_or_default();
    let phrase = (Some(reason) != status.canonical_reason())
        .then(|| ReasonPhrase::try_from(Bytes::copy_from_slice(reason.as_bytes())).ok())
        .flatten();
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len());
    for (name, value) in fields {
        let name = HeaderName::from_bytes(&head[name])
            .map_err(|_| HeadError::Invalid(httparse::Error::HeaderName))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value))
            .map_err(|_| HeadError::HeaderValue)?;
        headers.append(name, value);
    }
    let (mut parts, ()) = Response::new(()).into_parts();
    if let Some(phrase) = phrase {
        parts.extensions.insert(phrase);
    }
    let framing = framing(status, version, &headers, method)?;
    if headers.contains_key(TRANSFER_ENCODING) {
        // RFC 9112 §6.3: `Transfer-Encoding` overrides `Content-Length`, and
        // an intermediary removes the latter before passing the message on.
        // Kept, it would frame the decoded body wrongly for the client.
        headers.remove(CONTENT_LENGTH);
    }
    let keep_alive = keeps_alive(version, &headers) && framing != Framing::Close;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    let head = ResponseHead {
        parts,
        framing,
        keep_alive,
    };
    Ok(Parsed::Head(head, len))
}

/// How the body of a final response is delimited (RFC 9112 §6.3, as
/// hyper's `Client::decoder`).
fn framing(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Framing, HeadError> {
    match status.as_u16() {
        101 => return Ok(Framing::Switch),
        204 | 304 => return Ok(Framing::Empty),
        _ => {}
    }
    if *method == Method::HEAD {
        return Ok(Framing::Empty);
    }
    if *method == Method::CONNECT && status.is_success() {
        return Ok(Framing::Switch);
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(HeadError::TransferEncodingOn10);
        }
        return Ok(if is_chunked(headers) {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    if headers.contains_key(CONTENT_LENGTH) {
        return match content_length(headers) {
            Some(0) => Ok(Framing::Empty),
            Some(len) => Ok(Framing::Length(len)),
            None => Err(HeadError::ContentLength),
        };
    }
    Ok(Framing::Close)
}

/// Whether the last `Transfer-Encoding`'s final coding is `chunked`.
pub fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|value| value.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The `Content-Length` of `headers`: every value (each possibly a
/// comma-separated list) one and the same number of digits; `None` if
/// there is none or they are invalid or differ (hyper's
/// `content_length_parse_all`).
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut found = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let len = parse_digits(item.trim_ascii())?;
            if found.is_some_and(|seen| seen != len) {
                return None;
            }
            found = Some(len);
        }
    }
    found
}

/// A decimal number of digits only, at most [`MAX_CONTENT_LENGTH`].
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (value <= MAX_CONTENT_LENGTH).then_some(value)
}

/// Whether a response of `version` with `headers` leaves its connection
/// open for another request.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for value in headers.get_all(CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (version == Version::HTTP_11 || keep_alive)
}

/// Writes the head of a request (`method`, origin-form `target`, `headers`)
/// into `out`, with `Content-Length` or `Transfer-Encoding` set as the body
/// will be framed: `body_len` is the body's exact size if known, and
/// `body_empty` whether it is known to have nothing in it.
pub fn encode_request(
    method: &Method,
    target: &str,
    headers: &mut HeaderMap,
    body_len: Option<u64>,
    body_empty: bool,
    out: &mut Vec<u8>,
) -> RequestFraming {
    let framing = request_framing(method, headers, body_len, body_empty);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// How a request body is framed, adjusting `headers` to it (hyper's
/// `Client::set_length` for HTTP/1.1).
fn request_framing(
    method: &Method,
    headers: &mut HeaderMap,
    body_len: Option<u64>,
    body_empty: bool,
) -> RequestFraming {
    if body_empty {
        headers.remove(TRANSFER_ENCODING);
        return RequestFraming::Length(0);
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        if !is_chunked(headers) {
            append_chunked(headers);
        }
        headers.remove(CONTENT_LENGTH);
        return RequestFraming::Chunked;
    }
    if let Some(len) = content_length(headers) {
        return RequestFraming::Length(len);
    }
    if let Some(len) = body_len {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        return RequestFraming::Length(len);
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::CONNECT) {
        return RequestFraming::Length(0);
    }
    headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    headers.remove(CONTENT_LENGTH);
    RequestFraming::Chunked
}

/// Adds `chunked` as the final coding of the last `Transfer-Encoding`.
fn append_chunked(headers: &mut HeaderMap) {
    let last = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .map(|value| value.as_bytes().to_vec())
        .unwrap_or_default();
    let mut joined = last;
    if !joined.is_empty() {
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(b"chunked");
    let values: Vec<HeaderValue> = headers.get_all(TRANSFER_ENCODING).iter().cloned().collect();
    headers.remove(TRANSFER_ENCODING);
    let keep = values.len().saturating_sub(1);
    for value in values.into_iter().take(keep) {
        headers.append(TRANSFER_ENCODING, value);
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.append(TRANSFER_ENCODING, value);
    }
}

/// The trailer fields a chunked request may carry: those its `Trailer`
/// headers name (as hyper's client; others are not sent).
pub fn allowed_trailers(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(TRAILER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Writes the trailer section ending a chunked body: the last chunk, the
/// `trailers` among `allowed`, and the final empty line.
pub fn encode_last_chunk(trailers: Option<&HeaderMap>, allowed: &[HeaderName], out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(trailers) = trailers {
        for (name, value) in trailers.iter() {
            if allowed.contains(name) {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the line that starts a chunk of `len` bytes.
pub fn encode_chunk_size(len: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{len:X}\r\n");
}

/// Where a chunked body is (hyper's `ChunkedState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The first hex digit of a size.
    Start,
    /// More hex digits, spaces, `;` or CR.
    Size(u64),
    /// Spaces or tabs after the size.
    SizeLws(u64),
    /// An extension, up to its CR.
    Extension(u64),
    /// The LF after the size line's CR.
    SizeLf(u64),
    /// Data: this many bytes left.
    Data(u64),
    /// The CR after a chunk's data.
    DataCr,
    /// The LF after it.
    DataLf,
    /// After the last chunk: the trailer section, up to its empty line.
    Trailers,
    /// The whole body has been read.
    Done,
}

/// What [`ChunkedDecoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Body data: this range of the buffer.
    Data(Range<usize>),
    /// The end of the body, with the trailer fields (`name: value` lines)
    /// in this range of the buffer, if there are any.
    End(Option<Range<usize>>),
    /// Everything given was framing: more bytes are needed.
    More,
}

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A byte where the framing allows none of its kind.
    #[error("invalid chunked body framing")]
    Invalid,
    /// A chunk size over `u64`.
    #[error("chunk size overflows")]
    Overflow,
    /// A trailer section longer than [`MAX_TRAILER_BYTES`].
    #[error("the trailer section is larger than {MAX_TRAILER_BYTES} bytes")]
    TrailersTooLarge,
}

/// Follows a chunked body and finds its data, its trailers and its end.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: Chunk,
}

impl Default for ChunkedDecoder {
    fn default() -> ChunkedDecoder {
        ChunkedDecoder::new()
    }
}

impl ChunkedDecoder {
    /// At the start of a body.
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: Chunk::Start,
        }
    }

    /// Whether the body has been read to its end.
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Reads framing from the start of `buf` up to the next data, trailers
    /// or end. Returns how many bytes of `buf` it used (data and trailers
    /// included: the ranges lie within them) and what it found. With
    /// [`Decoded::More`], all the bytes used were framing: give the rest
    /// and more.
    pub fn decode(&mut self, buf: &[u8]) -> Result<(usize, Decoded), ChunkError> {
        let mut at = 0;
        while at < buf.len() {
            let byte = buf[at];
            self.state = match self.state {
                Chunk::Data(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(buf.len() - at);
                    let rest = left - take as u64;
                    self.state = if rest == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(rest)
                    };
                    return Ok((at + take, Decoded::Data(at..at + take)));
                }
                Chunk::Trailers => return self.trailers(buf, at),
                Chunk::Done => return Ok((at, Decoded::End(None))),
                state => step(state, byte)?,
            };
            at += 1;
            if self.state == Chunk::Trailers {
                return self.trailers(buf, at);
            }
        }
        Ok((at, Decoded::More))
    }

    /// The trailer section from `at`: complete, or nothing used.
    fn trailers(&mut self, buf: &[u8], at: usize) -> Result<(usize, Decoded), ChunkError> {
        let rest = &buf[at..];
        if rest.starts_with(b"\r\n") {
            self.state = Chunk::Done;
            return Ok((at + 2, Decoded::End(None)));
        }
        match find(rest, b"\r\n\r\n") {
            Some(end) => {
                self.state = Chunk::Done;
                Ok((at + end + 4, Decoded::End(Some(at..at + end + 2))))
            }
            None if rest.len() > MAX_TRAILER_BYTES => Err(ChunkError::TrailersTooLarge),
            None => Ok((at, Decoded::More)),
        }
    }
}

/// The state after `byte` in `state` (a framing state, not data).
fn step(state: Chunk, byte: u8) -> Result<Chunk, ChunkError> {
    Ok(match state {
        Chunk::Start => Chunk::Size(hex(byte).ok_or(ChunkError::Invalid)?),
        Chunk::Size(size) => match byte {
            b'\t' | b' ' => Chunk::SizeLws(size),
            b';' => Chunk::Extension(size),
            b'\r' => Chunk::SizeLf(size),
            _ => {
                let digit = hex(byte).ok_or(ChunkError::Invalid)?;
                let size = size
                    .checked_mul(16)
                    .and_then(|size| size.checked_add(digit))
                    .ok_or(ChunkError::Overflow)?;
                Chunk::Size(size)
            }
        },
        Chunk::SizeLws(size) => match byte {
            b'\t' | b' ' => Chunk::SizeLws(size),
            b';' => Chunk::Extension(size),
            b'\r' => Chunk::SizeLf(size),
            _ => return Err(ChunkError::Invalid),
        },
        Chunk::Extension(size) => match byte {
            b'\r' => Chunk::SizeLf(size),
            // A bare LF in an extension is refused, as hyper does.
            b'\n' => return Err(ChunkError::Invalid),
            _ => Chunk::Extension(size),
        },
        Chunk::SizeLf(size) => match (byte, size) {
            (b'\n', 0) => Chunk::Trailers,
            (b'\n', size) => Chunk::Data(size),
            _ => return Err(ChunkError::Invalid),
        },
        Chunk::DataCr => match byte {
            b'\r' => Chunk::DataLf,
            _ => return Err(ChunkError::Invalid),
        },
        Chunk::DataLf => match byte {
            b'\n' => Chunk::Start,
            _ => return Err(ChunkError::Invalid),
        },
        Chunk::Data(_) | Chunk::Trailers | Chunk::Done => state,
    })
}

fn hex(byte: u8) -> Option<u64> {
    (byte as char).to_digit(16).map(u64::from)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Parses a trailer section (`name: value` lines, each ending in CRLF) into
/// headers; lines that do not parse are an error.
pub fn parse_trailers(block: &[u8]) -> Result<HeaderMap, ChunkError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut terminated = Vec::with_capacity(block.len() + 2);
    terminated.extend_from_slice(block);
    terminated.extend_from_slice(b"\r\n");
    let parsed = match httparse::parse_headers(&terminated, &mut slots) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err(ChunkError::Invalid),
    };
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for header in parsed {
        let name =
            HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| ChunkError::Invalid)?;
        let value = HeaderValue::from_bytes(header.value).map_err(|_| ChunkError::Invalid)?;
        trailers.append(name, value);
    }
    Ok(trailers)
}
