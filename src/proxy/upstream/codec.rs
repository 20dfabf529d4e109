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
//!   data, `CRLF`, and after the last (`0`) chunk the trailer section, with
//!   hyper's limits ([`MAX_EXTENSION_BYTES`], [`MAX_TRAILER_BYTES`]). The
//!   tests compare it with hyper's own client over an in-memory pipe.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use hyper::ext::ReasonPhrase;
use hyper::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    Entry, HOST, HeaderMap, HeaderName, HeaderValue, MAX_FORWARDS, SET_COOKIE, TE, TRAILER,
    TRANSFER_ENCODING,
};
use hyper::http::response::Parts;
use hyper::{Method, Response, StatusCode, Version};

use crate::proxy::headers::hop_by_hop_index;

/// The most headers a response head may have: hyper's default.
pub const MAX_HEADERS: usize = 100;

/// The longest response head: hyper's default read buffer limit
/// (`8192 + 4096 * 100`).
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// The trailer section of a chunked response (its fields and the empty line
/// after them) must be shorter than this: hyper's `TRAILER_LIMIT`, which
/// refuses the section once it has buffered that many bytes.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// The chunk extensions of a whole chunked response (the bytes after each
/// `;`) must be fewer than this: hyper's `CHUNKED_EXTENSIONS_LIMIT`.
pub const MAX_EXTENSION_BYTES: u64 = 16 * 1024;

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
    /// `Connection: keep-alive`, a body not read to the close, and no switch
    /// to another protocol (hyper's `keep_alive && !is_upgrade`).
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
    parse_response_with(buf, method, false)
}

/// [`parse_response`] for a response the proxy passes on: except in a
/// `101`, the hop-by-hop headers that
/// [`strip_hop_by_hop`](crate::proxy::headers::strip_hop_by_hop) removes from it
/// anyway are left out of its header map (a `Connection` that names other
/// headers stays, for `strip_hop_by_hop` to remove those too). So the
/// usual `Connection: keep-alive` is neither stored nor looked up again
/// and removed.
pub fn parse_forwarded_response(buf: &mut BytesMut, method: &Method) -> Result<Parsed, HeadError> {
    parse_response_with(buf, method, true)
}

fn parse_response_with(
    buf: &mut BytesMut,
    method: &Method,
    forwarded: bool,
) -> Result<Parsed, HeadError> {
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
    let leave_out_hop_by_hop = forwarded && status != StatusCode::SWITCHING_PROTOCOLS;
    let (mut headers, framing_headers) = header_map(&head, fields, leave_out_hop_by_hop)?;
    let (mut parts, ()) = Response::new(()).into_parts();
    if let Some(phrase) = phrase {
        parts.extensions.insert(phrase);
    }
    let framing = framing_headers.framing(status, version, method)?;
    if framing_headers.transfer_encoding && framing_headers.content_length {
        // RFC 9112 §6.3: `Transfer-Encoding` overrides `Content-Length`, and
        // an intermediary removes the latter before passing the message on.
        // Kept, it would frame the decoded body wrongly for the client.
        headers.remove(CONTENT_LENGTH);
    }
    // A body read to the close, or a switch, leaves nothing to reuse.
    let keep_alive = framing_headers.keeps_alive(version)
        && !matches!(framing, Framing::Close | Framing::Switch);
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

/// The headers at `fields` of `head`, their values sharing its bytes, and
/// what the framing headers among them say; with `leave_out_hop_by_hop`,
/// without the hop-by-hop headers (see [`parse_forwarded_response`]).
fn header_map(
    head: &Bytes,
    fields: Vec<(Range<usize>, Range<usize>)>,
    leave_out_hop_by_hop: bool,
) -> Result<(HeaderMap, FramingHeaders), HeadError> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut framing_headers = FramingHeaders::default();
    for (name, value) in fields {
        let name = &head[name];
        let value_bytes = &head[value.clone()];
        framing_headers.note(name, value_bytes);
        let name = HeaderName::from_bytes(name)
            .map_err(|_| HeadError::Invalid(httparse::Error::HeaderName))?;
        if leave_out_hop_by_hop
            && let Some(i) = hop_by_hop_index(&name)
            // `HOP_BY_HOP[0]` is `Connection`.
            && (i != 0 || !names_other_headers(value_bytes))
        {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(value))
            .map_err(|_| HeadError::HeaderValue)?;
        headers.append(name, value);
    }
    Ok((headers, framing_headers))
}

/// Whether a `Connection` value has a token other than `keep-alive`, which
/// may name a header to remove with it.
fn names_other_headers(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|token| !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive"))
}

/// What a response's `Transfer-Encoding`, `Content-Length` and
/// `Connection` headers say, noted while its headers are read (no lookup in
/// the header map afterwards).
#[derive(Debug, Default)]
struct FramingHeaders {
    /// There is a `Transfer-Encoding`; the last one's final coding is
    /// `chunked`.
    transfer_encoding: bool,
    chunked: bool,
    /// There is a `Content-Length`; every value (and list item) is one and
    /// the same valid number.
    content_length: bool,
    length: Option<u64>,
    length_invalid: bool,
    /// `Connection` tokens seen.
    close: bool,
    keep_alive: bool,
}

impl FramingHeaders {
    /// Notes the header `name: value` if it is one of the three.
    fn note(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
            self.chunked = last_coding_is_chunked(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            self.content_length = true;
            for item in value.split(|&b| b == b',') {
                match parse_digits(item.trim_ascii()) {
                    Some(len) if self.length.is_none_or(|seen| seen == len) => {
                        self.length = Some(len);
                    }
                    _ => self.length_invalid = true,
                }
            }
        } else if name.eq_ignore_ascii_case(b"connection") && is_visible_ascii(value) {
            // A value that is not visible ASCII names no option, as in
            // hyper (`to_str`).
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }

    /// How the body of a final response is delimited (RFC 9112 §6.3, as
    /// hyper's `Client::decoder`).
    fn framing(
        &self,
        status: StatusCode,
        version: Version,
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
        if self.transfer_encoding {
            if version == Version::HTTP_10 {
                return Err(HeadError::TransferEncodingOn10);
            }
            return Ok(if self.chunked {
                Framing::Chunked
            } else {
                Framing::Close
            });
        }
        if self.content_length {
            return match self.length {
                _ if self.length_invalid => Err(HeadError::ContentLength),
                Some(0) => Ok(Framing::Empty),
                Some(len) => Ok(Framing::Length(len)),
                None => Err(HeadError::ContentLength),
            };
        }
        Ok(Framing::Close)
    }

    /// Whether a response of `version` leaves its connection open for
    /// another request: HTTP/1.1 without `close`, HTTP/1.0 with
    /// `keep-alive`.
    fn keeps_alive(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
}

/// Whether a `Transfer-Encoding` value's final coding is `chunked`. A
/// value that is not visible ASCII has no coding, as in hyper (`to_str`).
fn last_coding_is_chunked(value: &[u8]) -> bool {
    is_visible_ascii(value)
        && value
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether the last `Transfer-Encoding`'s final coding is `chunked`. A
/// value that is not visible ASCII has no coding, as in hyper (`to_str`).
pub fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .is_some_and(|value| last_coding_is_chunked(value.as_bytes()))
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

/// Whether `value` is what `HeaderValue::to_str` accepts: tab and visible
/// ASCII.
fn is_visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
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

/// Adds `chunked` as the final coding of the last `Transfer-Encoding`, in
/// place (hyper's `headers::add_chunked`): removing and adding it again
/// would move it, and another header into its slot.
fn append_chunked(headers: &mut HeaderMap) {
    if let Entry::Occupied(mut entry) = headers.entry(TRANSFER_ENCODING)
        && let Some(last) = entry.iter_mut().next_back()
    {
        let joined = [last.as_bytes(), b", chunked"].concat();
        if let Ok(value) = HeaderValue::from_bytes(&joined) {
            *last = value;
        }
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
/// `trailers` among `allowed` that may be trailers, and the final empty line.
pub fn encode_last_chunk(trailers: Option<&HeaderMap>, allowed: &[HeaderName], out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(trailers) = trailers {
        for (name, value) in trailers.iter() {
            if allowed.contains(name) && may_be_trailer(name) {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a field may be sent as a trailer: not one that frames, routes,
/// authenticates or describes the message (hyper's `is_valid_trailer_field`;
/// RFC 9110 §6.5.1).
fn may_be_trailer(name: &HeaderName) -> bool {
    !matches!(
        *name,
        AUTHORIZATION
            | CACHE_CONTROL
            | CONTENT_ENCODING
            | CONTENT_LENGTH
            | CONTENT_RANGE
            | CONTENT_TYPE
            | HOST
            | MAX_FORWARDS
            | SET_COOKIE
            | TRAILER
            | TRANSFER_ENCODING
            | TE
    )
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
    /// A trailer section of [`MAX_TRAILER_BYTES`] or more.
    #[error("the trailer section reaches {MAX_TRAILER_BYTES} bytes")]
    TrailersTooLarge,
    /// Chunk extensions of [`MAX_EXTENSION_BYTES`] or more in all.
    #[error("the chunk extensions reach {MAX_EXTENSION_BYTES} bytes")]
    ExtensionsTooLarge,
}

/// Follows a chunked body and finds its data, its trailers and its end.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: Chunk,
    /// Chunk extension bytes so far, over the whole body.
    extensions: u64,
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
            extensions: 0,
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
                state => {
                    let next = step(state, byte)?;
                    if let (Chunk::Extension(_), Chunk::Extension(_)) = (state, next) {
                        self.extensions += 1;
                        if self.extensions >= MAX_EXTENSION_BYTES {
                            return Err(ChunkError::ExtensionsTooLarge);
                        }
                    }
                    next
                }
            };
            at += 1;
            if self.state == Chunk::Trailers {
                return self.trailers(buf, at);
            }
        }
        Ok((at, Decoded::More))
    }

    /// The trailer section from `at`: complete, or nothing used. A section
    /// (or what has come of it) of [`MAX_TRAILER_BYTES`] is refused, so the
    /// verdict does not depend on how the bytes arrive; so is one with a CR
    /// not followed by LF (hyper's `TrailerLf` and `EndLf` states), which
    /// would otherwise hide where the section ends.
    fn trailers(&mut self, buf: &[u8], at: usize) -> Result<(usize, Decoded), ChunkError> {
        let rest = &buf[at..];
        if rest.starts_with(b"\r\n") {
            self.state = Chunk::Done;
            return Ok((at + 2, Decoded::End(None)));
        }
        let window = &rest[..rest.len().min(MAX_TRAILER_BYTES)];
        match find(window, b"\r\n\r\n") {
            Some(end) if end + 4 < MAX_TRAILER_BYTES => {
                let section = &window[..end + 4];
                if section
                    .windows(2)
                    .any(|pair| pair[0] == b'\r' && pair[1] != b'\n')
                {
                    return Err(ChunkError::Invalid);
                }
                self.state = Chunk::Done;
                Ok((at + end + 4, Decoded::End(Some(at..at + end + 2))))
            }
            Some(_) => Err(ChunkError::TrailersTooLarge),
            None if rest.len() >= MAX_TRAILER_BYTES => Err(ChunkError::TrailersTooLarge),
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
/// headers; lines that do not parse are an error. As in hyper, which counts
/// the CRLF-ended lines (at most [`MAX_HEADERS`]) and gives httparse that
/// many slots, a section with more fields than CRLFs (fields ended by a bare
/// LF) is refused.
pub fn parse_trailers(block: &[u8]) -> Result<HeaderMap, ChunkError> {
    let lines = block.windows(2).filter(|pair| pair == b"\r\n").count();
    if lines > MAX_HEADERS {
        return Err(ChunkError::Invalid);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let slots = &mut slots[..lines];
    let mut terminated = Vec::with_capacity(block.len() + 2);
    terminated.extend_from_slice(block);
    terminated.extend_from_slice(b"\r\n");
    let parsed = match httparse::parse_headers(&terminated, slots) {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    // -----------------------------------------------------------------
    // Helpers: each returns what it found; the tests say what is expected.
    // -----------------------------------------------------------------

    /// A response head: status line, `headers`, and the empty line.
    fn response(status_line: &str, headers: &[(&str, &str)]) -> String {
        let mut head = format!("{status_line}\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head
    }

    /// The framing and keep-alive of a whole final head `head`, the answer
    /// to `method`; `None` when `head` is not one.
    fn read(head: &str, method: &Method) -> Result<Option<(Framing, bool)>, HeadError> {
        let mut buf = BytesMut::from(head.as_bytes());
        Ok(match parse_response(&mut buf, method)? {
            Parsed::Head(head, _) => Some((head.framing, head.keep_alive)),
            Parsed::Partial | Parsed::Informational(_) => None,
        })
    }

    /// The framing of the answer `head` to a `GET`.
    fn framing_of(head: &str) -> Result<Option<Framing>, HeadError> {
        read(head, &Method::GET).map(|read| read.map(|(framing, _)| framing))
    }

    /// Whether the connection stays open after the answer `head` to a `GET`.
    fn keep_alive_of(head: &str) -> Result<Option<bool>, HeadError> {
        read(head, &Method::GET).map(|read| read.map(|(_, keep_alive)| keep_alive))
    }

    /// A header map of `pairs`, in their order; pairs that are not a valid
    /// header are left out (the tests only write valid ones).
    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                map.append(name, value);
            }
        }
        map
    }

    /// The request head `encode_request` writes, as text, and its framing.
    fn encoded(
        method: Method,
        pairs: &[(&str, &str)],
        body_len: Option<u64>,
        body_empty: bool,
    ) -> (String, RequestFraming) {
        let mut map = headers(pairs);
        let mut out = Vec::new();
        let framing = encode_request(&method, "/p?q=1", &mut map, body_len, body_empty, &mut out);
        (String::from_utf8_lossy(&out).into_owned(), framing)
    }

    /// The last chunk `encode_last_chunk` writes, as text.
    fn last_chunk(trailers: Option<&HeaderMap>, allowed: &[HeaderName]) -> String {
        let mut out = Vec::new();
        encode_last_chunk(trailers, allowed, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// What a decoder made of a body.
    #[derive(Debug, PartialEq, Eq)]
    struct Followed {
        /// Its data, put together.
        data: Vec<u8>,
        /// How many `Data` ranges it gave.
        pieces: usize,
        /// Where it ended (the bytes it used of the body) and its trailer
        /// section's range in the body, if it did end.
        end: Option<(usize, Option<Range<usize>>)>,
    }

    /// Feeds `body` to a new decoder as it would arrive: up to each of
    /// `cuts` (in order), then whole. The bytes a call does not use are given
    /// again with the next ones, as the client does.
    fn follow(body: &[u8], cuts: &[usize]) -> Result<Followed, ChunkError> {
        let mut decoder = ChunkedDecoder::new();
        let mut followed = Followed {
            data: Vec::new(),
            pieces: 0,
            end: None,
        };
        let mut start = 0;
        let arrivals = cuts.iter().map(|&cut| cut.min(body.len()));
        for arrived in arrivals.chain([body.len()]) {
            while start < arrived {
                let buf = &body[start..arrived];
                let (used, found) = decoder.decode(buf)?;
                match found {
                    Decoded::Data(range) => {
                        followed.data.extend_from_slice(&buf[range]);
                        followed.pieces += 1;
                        start += used;
                    }
                    Decoded::End(trailers) => {
                        let trailers = trailers.map(|r| start + r.start..start + r.end);
                        followed.end = Some((start + used, trailers));
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

    /// `body` fed whole.
    fn whole(body: &[u8]) -> Result<Followed, ChunkError> {
        follow(body, &[])
    }

    /// `body` fed a byte at a time.
    fn bytewise(body: &[u8]) -> Result<Followed, ChunkError> {
        let cuts: Vec<usize> = (1..body.len()).collect();
        follow(body, &cuts)
    }

    /// A body that ends, with `data` and the trailer section at `trailers`.
    fn ended(data: &[u8], pieces: usize, end: usize, trailers: Option<Range<usize>>) -> Followed {
        Followed {
            data: data.to_vec(),
            pieces,
            end: Some((end, trailers)),
        }
    }

    /// The first error `body` meets, fed whole and fed a byte at a time (the
    /// same for both, or the pair shows which differs).
    fn errors(body: &[u8]) -> (Option<ChunkError>, Option<ChunkError>) {
        (whole(body).err(), bytewise(body).err())
    }

    // -----------------------------------------------------------------
    // parse_response: how much of the buffer it takes.
    // -----------------------------------------------------------------

    const CHUNKED_HEAD: &str = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                                X-Long: a value, with commas\r\n\r\n";

    #[test]
    fn a_head_cut_anywhere_is_partial_and_nothing_is_taken() {
        let heads = [
            CHUNKED_HEAD,
            "HTTP/1.1 100 Continue\r\n\r\n",
            "HTTP/1.0 200 OK\nX: y\n\n",
        ];
        for text in heads {
            for end in 0..text.len() {
                let mut buf = BytesMut::from(&text.as_bytes()[..end]);
                let before = buf.clone();
                let parsed = parse_response(&mut buf, &Method::GET);
                assert!(matches!(parsed, Ok(Parsed::Partial)), "{end}: {parsed:?}");
                assert_eq!(buf, before, "{end} bytes");
            }
        }
    }

    #[test]
    fn a_whole_head_is_taken_off_the_buffer_and_the_bytes_after_it_stay() {
        let body = "5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n";
        let mut buf = BytesMut::from(format!("{CHUNKED_HEAD}{body}").as_bytes());
        let Ok(Parsed::Head(head, len)) = parse_response(&mut buf, &Method::GET) else {
            panic!("a whole head");
        };
        assert_eq!(len, CHUNKED_HEAD.len());
        assert_eq!(&buf[..], body.as_bytes());
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.keep_alive);
        assert_eq!(head.parts.status, StatusCode::OK);
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["x-long"], "a value, with commas");
    }

    #[test]
    fn a_head_of_bare_line_feeds_is_taken_as_httparse_and_hyper_take_it() {
        let head = b"HTTP/1.1 200 OK\nContent-Length: 2\n\n";
        let mut buf = BytesMut::from(&[&head[..], b"hi"].concat()[..]);
        let Ok(Parsed::Head(parsed, len)) = parse_response(&mut buf, &Method::GET) else {
            panic!("a whole head");
        };
        assert_eq!((len, &buf[..]), (head.len(), &b"hi"[..]));
        let head = parsed;
        assert_eq!(head.framing, Framing::Length(2));
    }

    #[test]
    fn informational_answers_are_skipped_and_taken_off_the_buffer() {
        for status in [
            "100 Continue",
            "102 Processing",
            "103 Early Hints",
            "199 Whatever",
        ] {
            let informational = response(&format!("HTTP/1.1 {status}"), &[("Link", "</s>")]);
            let last = response("HTTP/1.1 204 No Content", &[]);
            let mut buf = BytesMut::from(format!("{informational}{last}").as_bytes());
            let parsed = parse_response(&mut buf, &Method::GET);
            let Ok(Parsed::Informational(len)) = parsed else {
                panic!("{status}: {parsed:?}");
            };
            assert_eq!(len, informational.len(), "{status}");
            assert_eq!(&buf[..], last.as_bytes(), "{status}");
            let parsed = parse_response(&mut buf, &Method::GET);
            let Ok(Parsed::Head(head, len)) = parsed else {
                panic!("{status}: {parsed:?}");
            };
            assert_eq!((head.parts.status.as_u16(), len), (204, last.len()));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_101_is_not_skipped_it_switches_and_its_connection_is_not_reused() {
        let head = response(
            "HTTP/1.1 101 Switching Protocols",
            &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
        );
        let mut buf = BytesMut::from(&[head.as_bytes(), b"\x81\x00"].concat()[..]);
        let Ok(Parsed::Head(parsed, len)) = parse_response(&mut buf, &Method::GET) else {
            panic!("a final head");
        };
        assert_eq!((parsed.parts.status.as_u16(), len), (101, head.len()));
        assert_eq!(parsed.framing, Framing::Switch);
        // hyper's client: `keep_alive && !is_upgrade`.
        assert!(!parsed.keep_alive);
        assert_eq!(&buf[..], b"\x81\x00", "the other protocol's bytes stay");
    }

    // -----------------------------------------------------------------
    // parse_response: keep-alive.
    // -----------------------------------------------------------------

    const LENGTH_2: (&str, &str) = ("Content-Length", "2");

    #[test]
    fn http11_keeps_alive_unless_a_connection_header_says_close() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], true),
            (&[("Connection", "keep-alive")], true),
            (&[("Connection", "Upgrade")], true),
            (&[("Connection", "close")], false),
            (&[("Connection", "CLOSE")], false),
            (&[("Connection", "Keep-Alive, close")], false),
            (&[("Connection", " upgrade ,\tClose ")], false),
            (&[("Connection", "closed")], true),
            (
                &[("Connection", "keep-alive"), ("Connection", "close")],
                false,
            ),
            (
                &[("Connection", "close"), ("Connection", "keep-alive")],
                false,
            ),
        ];
        for (pairs, expected) in cases {
            let mut pairs = pairs.to_vec();
            pairs.push(LENGTH_2);
            let head = response("HTTP/1.1 200 OK", &pairs);
            assert_eq!(keep_alive_of(&head), Ok(Some(*expected)), "{head:?}");
        }
    }

    #[test]
    fn http10_keeps_alive_only_when_a_connection_header_says_keep_alive() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], false),
            (&[("Connection", "keep-alive")], true),
            (&[("Connection", "Keep-Alive")], true),
            (&[("Connection", "Keep-Alive, Upgrade")], true),
            (&[("Connection", "Upgrade,keep-alive")], true),
            (&[("Connection", "keep-alive, close")], false),
            (&[("Connection", "keep-alives")], false),
            (&[("Connection", "foo"), ("Connection", "keep-alive")], true),
            (
                &[("Connection", "keep-alive"), ("Connection", "close")],
                false,
            ),
        ];
        for (pairs, expected) in cases {
            let mut pairs = pairs.to_vec();
            pairs.push(LENGTH_2);
            let head = response("HTTP/1.0 200 OK", &pairs);
            assert_eq!(keep_alive_of(&head), Ok(Some(*expected)), "{head:?}");
        }
    }

    #[test]
    fn a_connection_value_with_obs_text_names_no_token_as_in_hyper() {
        // hyper reads the tokens of a value with `to_str`, which refuses
        // bytes over 0x7F: such a value says neither `close` nor
        // `keep-alive`.
        let cases = [
            ("HTTP/1.1 200 OK", "close, \u{e9}", true),
            ("HTTP/1.0 200 OK", "keep-alive, \u{e9}", false),
        ];
        for (status_line, value, expected) in cases {
            let head = response(status_line, &[("Connection", value), LENGTH_2]);
            assert_eq!(keep_alive_of(&head), Ok(Some(expected)), "{head:?}");
        }
    }

    #[test]
    fn a_body_read_to_the_close_never_keeps_the_connection() {
        for status_line in ["HTTP/1.1 200 OK", "HTTP/1.0 200 OK"] {
            let head = response(status_line, &[("Connection", "keep-alive")]);
            assert_eq!(read(&head, &Method::GET), Ok(Some((Framing::Close, false))));
        }
        let head = response("HTTP/1.1 200 OK", &[("Transfer-Encoding", "gzip")]);
        assert_eq!(read(&head, &Method::GET), Ok(Some((Framing::Close, false))));
    }

    // -----------------------------------------------------------------
    // parse_response: framing (RFC 9112 §6.3, hyper's Client::decoder).
    // -----------------------------------------------------------------

    #[test]
    fn answers_to_head_and_204_and_304_have_no_body_whatever_they_say() {
        let says = [("Content-Length", "10"), ("Transfer-Encoding", "chunked")];
        for (status_line, method) in [
            ("HTTP/1.1 200 OK", Method::HEAD),
            ("HTTP/1.1 404 Not Found", Method::HEAD),
            ("HTTP/1.1 204 No Content", Method::GET),
            ("HTTP/1.1 304 Not Modified", Method::GET),
            ("HTTP/1.1 204 No Content", Method::CONNECT),
        ] {
            for pair in says {
                let head = response(status_line, &[pair]);
                assert_eq!(
                    read(&head, &method),
                    Ok(Some((Framing::Empty, true))),
                    "{head:?}"
                );
            }
        }
        // Even with a Transfer-Encoding on HTTP/1.0 (hyper looks no further).
        let head = response("HTTP/1.0 304 Not Modified", &[says[1]]);
        assert_eq!(framing_of(&head), Ok(Some(Framing::Empty)));
    }

    #[test]
    fn a_2xx_to_connect_switches_and_other_answers_to_connect_have_bodies() {
        let tunnel = response("HTTP/1.1 200 Connection Established", &[]);
        assert_eq!(
            read(&tunnel, &Method::CONNECT),
            Ok(Some((Framing::Switch, false)))
        );
        let accepted = response("HTTP/1.1 299 Whatever", &[LENGTH_2]);
        assert_eq!(
            read(&accepted, &Method::CONNECT),
            Ok(Some((Framing::Switch, false)))
        );
        let refused = response("HTTP/1.1 407 Proxy Authentication Required", &[LENGTH_2]);
        assert_eq!(
            read(&refused, &Method::CONNECT),
            Ok(Some((Framing::Length(2), true)))
        );
        assert_eq!(
            read(&tunnel, &Method::GET),
            Ok(Some((Framing::Close, false)))
        );
        let switch = response("HTTP/1.1 101 Switching Protocols", &[LENGTH_2]);
        assert_eq!(
            read(&switch, &Method::HEAD),
            Ok(Some((Framing::Switch, false)))
        );
    }

    #[test]
    fn chunked_is_read_from_the_last_coding_of_the_last_transfer_encoding_in_any_case() {
        let cases: &[(&[&str], Framing)] = &[
            (&["chunked"], Framing::Chunked),
            (&["Chunked"], Framing::Chunked),
            (&["CHUNKED"], Framing::Chunked),
            (&["gzip, chunked"], Framing::Chunked),
            (&["gzip,chunked"], Framing::Chunked),
            (&["gzip ,\tchunked"], Framing::Chunked),
            (&["gzip", "chunked"], Framing::Chunked),
            (&["chunked, gzip"], Framing::Close),
            (&["chunked", "gzip"], Framing::Close),
            (&["gzip"], Framing::Close),
            (&["chunkedx"], Framing::Close),
            (&["x-chunked"], Framing::Close),
            (&["chunked;q=1"], Framing::Close),
        ];
        for (values, expected) in cases {
            let pairs: Vec<_> = values.iter().map(|v| ("Transfer-Encoding", *v)).collect();
            let head = response("HTTP/1.1 200 OK", &pairs);
            assert_eq!(framing_of(&head), Ok(Some(*expected)), "{values:?}");
        }
    }

    #[test]
    fn a_transfer_encoding_with_obs_text_is_not_chunked_as_in_hyper() {
        let head = response(
            "HTTP/1.1 200 OK",
            &[("Transfer-Encoding", "\u{e9}, chunked")],
        );
        assert_eq!(framing_of(&head), Ok(Some(Framing::Close)));
    }

    #[test]
    fn transfer_encoding_wins_over_content_length_valid_or_not() {
        for length in ["5", "abc", "5, 6"] {
            let pairs = [("Content-Length", length), ("Transfer-Encoding", "chunked")];
            let head = response("HTTP/1.1 200 OK", &pairs);
            assert_eq!(framing_of(&head), Ok(Some(Framing::Chunked)), "{length}");
        }
    }

    #[test]
    fn transfer_encoding_on_http10_is_an_error() {
        for pairs in [
            &[("Transfer-Encoding", "chunked")][..],
            &[("Transfer-Encoding", "gzip")],
            &[("Transfer-Encoding", "chunked"), ("Content-Length", "5")],
        ] {
            let head = response("HTTP/1.0 200 OK", pairs);
            assert_eq!(framing_of(&head), Err(HeadError::TransferEncodingOn10));
        }
    }

    #[test]
    fn valid_content_lengths_frame_the_body() {
        let max = MAX_CONTENT_LENGTH.to_string();
        let cases: &[(&[&str], Framing)] = &[
            (&["5"], Framing::Length(5)),
            (&["005"], Framing::Length(5)),
            (&["5, 5"], Framing::Length(5)),
            (&["5,5,5"], Framing::Length(5)),
            (&["5", "5"], Framing::Length(5)),
            (&["5", "5, 5"], Framing::Length(5)),
            (&["5 "], Framing::Length(5)),
            (&["0"], Framing::Empty),
            (&["0", "0"], Framing::Empty),
            (&[&max], Framing::Length(u64::MAX - 2)),
        ];
        for (values, expected) in cases {
            let pairs: Vec<_> = values.iter().map(|v| ("Content-Length", *v)).collect();
            let head = response("HTTP/1.1 200 OK", &pairs);
            assert_eq!(
                read(&head, &Method::GET),
                Ok(Some((*expected, true))),
                "{values:?}"
            );
        }
    }

    #[test]
    fn invalid_or_conflicting_content_lengths_are_errors() {
        let over = (u64::MAX - 1).to_string();
        let cases: &[&[&str]] = &[
            &["+5"],
            &["-1"],
            &[" "],
            &[""],
            &["abc"],
            &["0x5"],
            &["5 5"],
            &["5,"],
            &[",5"],
            &["5, 6"],
            &["5", "6"],
            &["5", "abc"],
            &["5.0"],
            &["\u{e9}"],
            &[&over],
            &["18446744073709551615"],
            &["18446744073709551616"],
            &["99999999999999999999999"],
        ];
        for values in cases {
            let pairs: Vec<_> = values.iter().map(|v| ("Content-Length", *v)).collect();
            let head = response("HTTP/1.1 200 OK", &pairs);
            assert_eq!(
                framing_of(&head),
                Err(HeadError::ContentLength),
                "{values:?}"
            );
        }
    }

    #[test]
    fn neither_length_nor_chunked_reads_to_the_close() {
        for status_line in [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.0 200 OK",
        ] {
            let head = response(status_line, &[("Content-Type", "text/plain")]);
            assert_eq!(read(&head, &Method::GET), Ok(Some((Framing::Close, false))));
            assert_eq!(
                read(&head, &Method::POST),
                Ok(Some((Framing::Close, false)))
            );
        }
    }

    // -----------------------------------------------------------------
    // parse_response: what the head carries.
    // -----------------------------------------------------------------

    #[test]
    fn a_non_canonical_reason_phrase_is_kept_in_the_extensions_and_a_canonical_one_is_not() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"HTTP/1.1 200 OK", None),
            (b"HTTP/1.1 404 Not Found", None),
            (b"HTTP/1.1 200 Fine", Some(b"Fine")),
            (b"HTTP/1.1 200 ok", Some(b"ok")),
            (b"HTTP/1.1 200 ", Some(b"")),
            (b"HTTP/1.1 599 Custom\tReason ~", Some(b"Custom\tReason ~")),
            (b"HTTP/1.1 599 ", Some(b"")),
            // With obs-text httparse gives an empty reason, and hyper keeps that.
            (b"HTTP/1.1 200 Fine \xc3\xa9", Some(b"")),
            (b"HTTP/1.1 200 Fine \xff", Some(b"")),
        ];
        for (status_line, expected) in cases {
            let bytes = [status_line, &b"\r\nContent-Length: 0\r\n\r\n"[..]].concat();
            let mut buf = BytesMut::from(&bytes[..]);
            let Ok(Parsed::Head(head, _)) = parse_response(&mut buf, &Method::GET) else {
                panic!("{status_line:?}");
            };
            let phrase = head.parts.extensions.get::<ReasonPhrase>();
            assert_eq!(phrase.map(|p| p.as_bytes()), *expected, "{status_line:?}");
        }
    }

    #[test]
    fn header_values_share_the_head_bytes_and_repeated_names_keep_their_order() {
        let head = response(
            "HTTP/1.1 200 OK",
            &[
                ("Set-Cookie", "a=1"),
                ("X-One", "1"),
                ("set-cookie", "b=2"),
                ("SET-COOKIE", "c=3"),
                ("Content-Length", "0"),
            ],
        );
        let mut buf = BytesMut::from(head.as_bytes());
        let start = buf.as_ptr() as usize;
        let Ok(Parsed::Head(parsed, len)) = parse_response(&mut buf, &Method::GET) else {
            panic!("a whole head");
        };
        let cookies: Vec<_> = parsed.parts.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2", "c=3"]);
        for value in parsed.parts.headers.values() {
            let at = value.as_bytes().as_ptr() as usize;
            assert!((start..start + len).contains(&at), "{value:?} is a copy");
        }
    }

    #[test]
    fn a_hundred_headers_are_taken_and_a_hundred_and_one_are_an_error() {
        let names: Vec<String> = (0..=MAX_HEADERS).map(|i| format!("X-H{i}")).collect();
        let pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let hundred = response("HTTP/1.1 204 No Content", &pairs[..MAX_HEADERS]);
        assert_eq!(framing_of(&hundred), Ok(Some(Framing::Empty)));
        let more = response("HTTP/1.1 204 No Content", &pairs);
        let expected = HeadError::Invalid(httparse::Error::TooManyHeaders);
        assert_eq!(framing_of(&more), Err(expected));
    }

    /// A `204` head of exactly `len` bytes: one long header fills it.
    fn head_of_length(len: usize) -> String {
        let bare = response("HTTP/1.1 204 No Content", &[("X-Pad", "")]).len();
        let pad = "p".repeat(len - bare);
        response("HTTP/1.1 204 No Content", &[("X-Pad", &pad)])
    }

    #[test]
    fn a_head_of_max_head_bytes_is_taken_and_one_byte_more_is_too_large() {
        let most = head_of_length(MAX_HEAD_BYTES);
        assert_eq!(most.len(), MAX_HEAD_BYTES);
        assert_eq!(framing_of(&most), Ok(Some(Framing::Empty)));
        let over = head_of_length(MAX_HEAD_BYTES + 1);
        assert_eq!(framing_of(&over), Err(HeadError::TooLarge));
        // Cut before its end: partial until the buffer holds MAX_HEAD_BYTES.
        let partial = &over[..MAX_HEAD_BYTES - 1];
        assert_eq!(framing_of(partial), Ok(None));
        let partial = &over[..MAX_HEAD_BYTES];
        assert_eq!(framing_of(partial), Err(HeadError::TooLarge));
    }

    #[test]
    fn a_long_head_without_an_end_is_too_large_once_the_buffer_holds_the_limit() {
        let endless = format!("HTTP/1.1 200 OK\r\nX: {}", "v".repeat(MAX_HEAD_BYTES));
        assert_eq!(framing_of(&endless), Err(HeadError::TooLarge));
    }

    #[test]
    fn garbage_is_invalid() {
        let cases: &[(&[u8], httparse::Error)] = &[
            (b"FOO\r\n\r\n", httparse::Error::Version),
            (b"HTTP/2 200 OK\r\n\r\n", httparse::Error::Version),
            (b"HTTP/1.2 200 OK\r\n\r\n", httparse::Error::Version),
            (b"HTTP/1.1 20 OK\r\n\r\n", httparse::Error::Status),
            (b"HTTP/1.1 2000 OK\r\n\r\n", httparse::Error::Status),
            (b"HTTP/1.1 abc OK\r\n\r\n", httparse::Error::Status),
            (b"HTTP/1.1 000 OK\r\n\r\n", httparse::Error::Status),
            (b"HTTP/1.1 099 OK\r\n\r\n", httparse::Error::Status),
            (b"\0\r\n\r\n", httparse::Error::Version),
            (
                b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
                httparse::Error::HeaderName,
            ),
            (
                b"HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n",
                httparse::Error::HeaderName,
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
                httparse::Error::HeaderValue,
            ),
            (
                b"HTTP/1.1 200 OK\r\n folded: v\r\n\r\n",
                httparse::Error::HeaderName,
            ),
        ];
        for (bytes, error) in cases {
            let mut buf = BytesMut::from(*bytes);
            let parsed = parse_response(&mut buf, &Method::GET);
            let Err(found) = parsed else {
                panic!("{:?}: {parsed:?}", String::from_utf8_lossy(bytes));
            };
            assert_eq!(found, HeadError::Invalid(*error), "{bytes:?}");
        }
    }

    // -----------------------------------------------------------------
    // encode_request (hyper's Client::encode and Client::set_length).
    // -----------------------------------------------------------------

    #[test]
    fn a_get_without_a_body_is_written_exactly() {
        let (head, framing) = encoded(
            Method::GET,
            &[
                ("Host", "h"),
                ("Accept", "*/*"),
                ("X-Two", "1"),
                ("x-two", "2"),
            ],
            Some(0),
            true,
        );
        let expected =
            "GET /p?q=1 HTTP/1.1\r\nhost: h\r\naccept: */*\r\nx-two: 1\r\nx-two: 2\r\n\r\n";
        assert_eq!(
            (head.as_str(), framing),
            (expected, RequestFraming::Length(0))
        );
    }

    #[test]
    fn a_body_of_known_size_gets_a_content_length() {
        let (head, framing) = encoded(Method::POST, &[("Host", "h")], Some(11), false);
        let expected = "POST /p?q=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 11\r\n\r\n";
        assert_eq!(
            (head.as_str(), framing),
            (expected, RequestFraming::Length(11))
        );
    }

    #[test]
    fn a_valid_content_length_is_kept_whatever_the_body_says() {
        for body_len in [Some(5), None] {
            let pairs = [("Content-Length", "10"), ("Host", "h")];
            let (head, framing) = encoded(Method::PUT, &pairs, body_len, false);
            let expected = "PUT /p?q=1 HTTP/1.1\r\ncontent-length: 10\r\nhost: h\r\n\r\n";
            assert_eq!(
                (head.as_str(), framing),
                (expected, RequestFraming::Length(10))
            );
        }
    }

    #[test]
    fn an_invalid_content_length_gives_way_to_the_known_size() {
        let pairs = [("Content-Length", "abc"), ("Host", "h")];
        let (head, framing) = encoded(Method::POST, &pairs, Some(3), false);
        let expected = "POST /p?q=1 HTTP/1.1\r\ncontent-length: 3\r\nhost: h\r\n\r\n";
        assert_eq!(
            (head.as_str(), framing),
            (expected, RequestFraming::Length(3))
        );
    }

    #[test]
    fn a_body_of_unknown_size_is_chunked_and_loses_an_invalid_content_length() {
        let pairs = [("Host", "h"), ("Content-Length", "1, 2")];
        let (head, framing) = encoded(Method::POST, &pairs, None, false);
        let expected = "POST /p?q=1 HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            (head.as_str(), framing),
            (expected, RequestFraming::Chunked)
        );
    }

    #[test]
    fn get_head_and_connect_of_unknown_size_are_sent_without_a_body() {
        for method in [Method::GET, Method::HEAD, Method::CONNECT] {
            let (head, framing) = encoded(method.clone(), &[("Host", "h")], None, false);
            let expected = format!("{method} /p?q=1 HTTP/1.1\r\nhost: h\r\n\r\n");
            assert_eq!((head, framing), (expected, RequestFraming::Length(0)));
        }
        let (head, _) = encoded(Method::DELETE, &[("Host", "h")], None, false);
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head:?}");
    }

    #[test]
    fn an_empty_body_drops_transfer_encoding_and_keeps_content_length() {
        let pairs = [
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "0"),
            ("Host", "h"),
        ];
        let (head, framing) = encoded(Method::POST, &pairs, Some(0), true);
        // `remove` moves the last header into the hole, as in hyper.
        let expected = "POST /p?q=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            (head.as_str(), framing),
            (expected, RequestFraming::Length(0))
        );
    }

    #[test]
    fn a_transfer_encoding_ending_in_chunked_is_kept_and_content_length_dropped() {
        let pairs = [
            ("Host", "h"),
            ("Transfer-Encoding", "gzip, Chunked"),
            ("Content-Length", "5"),
        ];
        let (head, framing) = encoded(Method::POST, &pairs, Some(5), false);
        let expected =
            "POST /p?q=1 HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip, Chunked\r\n\r\n";
        assert_eq!(
            (head.as_str(), framing),
            (expected, RequestFraming::Chunked)
        );
    }

    #[test]
    fn a_transfer_encoding_not_ending_in_chunked_gets_chunked_appended_in_place() {
        // hyper (`headers::add_chunked`) changes the last value where it is.
        let pairs = [
            ("Transfer-Encoding", "gzip"),
            ("Host", "h"),
            ("Accept", "*/*"),
        ];
        let (head, framing) = encoded(Method::POST, &pairs, Some(5), false);
        let expected = "POST /p?q=1 HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\
                        host: h\r\naccept: */*\r\n\r\n";
        assert_eq!(
            (head.as_str(), framing),
            (expected, RequestFraming::Chunked)
        );

        let pairs = [
            ("Transfer-Encoding", "gzip"),
            ("Host", "h"),
            ("transfer-encoding", "deflate"),
            ("Content-Length", "5"),
        ];
        let (head, framing) = encoded(Method::POST, &pairs, None, false);
        let expected = "POST /p?q=1 HTTP/1.1\r\ntransfer-encoding: gzip\r\n\
                        transfer-encoding: deflate, chunked\r\nhost: h\r\n\r\n";
        assert_eq!(
            (head.as_str(), framing),
            (expected, RequestFraming::Chunked)
        );
    }

    // -----------------------------------------------------------------
    // Chunked request bodies: sizes, the last chunk, trailers.
    // -----------------------------------------------------------------

    #[test]
    fn chunk_sizes_are_written_in_uppercase_hex() {
        let cases = [
            (0, "0\r\n"),
            (1, "1\r\n"),
            (10, "A\r\n"),
            (31, "1F\r\n"),
            (255, "FF\r\n"),
            (4096, "1000\r\n"),
            (0xABCDEF, "ABCDEF\r\n"),
        ];
        for (len, expected) in cases {
            let mut out = Vec::new();
            encode_chunk_size(len, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), expected);
        }
        let mut out = b"before ".to_vec();
        encode_chunk_size(usize::MAX, &mut out);
        assert_eq!(out, format!("before {:X}\r\n", usize::MAX).as_bytes());
    }

    #[test]
    fn the_last_chunk_without_trailers_is_a_zero_and_an_empty_line() {
        assert_eq!(last_chunk(None, &[]), "0\r\n\r\n");
        let trailers = headers(&[("x-sum", "1")]);
        assert_eq!(last_chunk(Some(&trailers), &[]), "0\r\n\r\n");
        assert_eq!(
            last_chunk(None, &[HeaderName::from_static("x-sum")]),
            "0\r\n\r\n"
        );
    }

    #[test]
    fn the_last_chunk_carries_only_the_trailers_named_in_allowed() {
        let trailers = headers(&[
            ("x-sum", "1"),
            ("x-other", "2"),
            ("x-sum", "3"),
            ("x-time", "4"),
        ]);
        let allowed = [
            HeaderName::from_static("x-time"),
            HeaderName::from_static("x-sum"),
        ];
        let expected = "0\r\nx-sum: 1\r\nx-sum: 3\r\nx-time: 4\r\n\r\n";
        assert_eq!(last_chunk(Some(&trailers), &allowed), expected);
    }

    #[test]
    fn the_last_chunk_never_carries_fields_forbidden_in_trailers_as_in_hyper() {
        // hyper's `is_valid_trailer_field` (proto/h1/encode.rs).
        let forbidden = [
            "authorization",
            "cache-control",
            "content-encoding",
            "content-length",
            "content-range",
            "content-type",
            "host",
            "max-forwards",
            "set-cookie",
            "trailer",
            "transfer-encoding",
            "te",
        ];
        let mut pairs: Vec<(&str, &str)> = forbidden.iter().map(|name| (*name, "v")).collect();
        pairs.push(("x-sum", "1"));
        let trailers = headers(&pairs);
        let allowed: Vec<HeaderName> = trailers.keys().cloned().collect();
        assert_eq!(allowed.len(), forbidden.len() + 1);
        assert_eq!(
            last_chunk(Some(&trailers), &allowed),
            "0\r\nx-sum: 1\r\n\r\n"
        );
    }

    #[test]
    fn allowed_trailers_are_the_names_of_every_trailer_header_in_any_case() {
        let request = headers(&[
            ("Trailer", "X-Sum, Expires"),
            ("Host", "h"),
            ("trailer", " x-time ,,bad name"),
        ]);
        let names: Vec<String> = allowed_trailers(&request)
            .iter()
            .map(|name| name.to_string())
            .collect();
        assert_eq!(names, ["x-sum", "expires", "x-time"]);
        assert!(allowed_trailers(&headers(&[("Host", "h")])).is_empty());
    }

    #[test]
    fn trailers_written_by_encode_last_chunk_are_read_back_by_the_decoder() {
        let trailers = headers(&[("x-sum", "abc"), ("x-time", "1 2"), ("x-sum", "")]);
        let allowed: Vec<HeaderName> = trailers.keys().cloned().collect();
        let mut body = b"3\r\nabc\r\n".to_vec();
        encode_last_chunk(Some(&trailers), &allowed, &mut body);
        let Ok(Followed {
            data,
            end: Some((end, Some(range))),
            ..
        }) = whole(&body)
        else {
            panic!("a whole body with trailers");
        };
        assert_eq!((data.as_slice(), end), (&b"abc"[..], body.len()));
        assert_eq!(parse_trailers(&body[range]), Ok(trailers));
    }

    #[test]
    fn parse_trailers_reads_fields_and_refuses_what_is_not_one() {
        let parsed = parse_trailers(b"X-Sum: 1\r\nx-sum:2\r\nExpires:  x \r\n");
        let expected = headers(&[("x-sum", "1"), ("x-sum", "2"), ("expires", "x")]);
        assert_eq!(parsed, Ok(expected));
        for bad in [
            &b"no colon\r\n"[..],
            b"Bad Name: v\r\n",
            b"X: a\rb\r\n",
            b"X: a\0\r\n",
            b": v\r\n",
        ] {
            assert_eq!(parse_trailers(bad), Err(ChunkError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn a_hundred_trailer_fields_are_read_and_a_hundred_and_one_lines_are_not() {
        let section = |count: usize| -> Vec<u8> {
            (0..count)
                .flat_map(|i| format!("x-t{i}: v\r\n").into_bytes())
                .collect()
        };
        assert_eq!(
            parse_trailers(&section(MAX_HEADERS)).map(|t| t.len()),
            Ok(100)
        );
        let invalid = Err(ChunkError::Invalid);
        assert_eq!(parse_trailers(&section(MAX_HEADERS + 1)), invalid);
        // hyper counts CRLF-ended lines, even past an empty line that ends
        // httparse's reading.
        let past_the_end = [section(MAX_HEADERS), b"\nx-late: v\r\n".to_vec()].concat();
        assert_eq!(parse_trailers(&past_the_end), invalid);
    }

    #[test]
    fn trailer_fields_ended_by_a_bare_lf_are_refused_as_in_hyper() {
        // Found against hyper's client: it gives httparse one slot per
        // CRLF-ended line, so two fields and one CRLF fail there.
        let body = b"0\r\nx-00: 0AA;\nx-a: 0\r\n\r\n";
        let Ok(Followed {
            end: Some((end, Some(range))),
            ..
        }) = whole(body)
        else {
            panic!("the section ends at its empty line");
        };
        assert_eq!(end, body.len());
        assert_eq!(parse_trailers(&body[range]), Err(ChunkError::Invalid));
        // As many fields as CRLFs: read, up to httparse's empty line.
        let parsed = parse_trailers(b"x-a: 1\n\r\n");
        assert_eq!(parsed, Ok(headers(&[("x-a", "1")])));
    }

    #[test]
    fn a_cr_not_followed_by_lf_in_the_trailer_section_is_invalid_as_in_hyper() {
        // Found against hyper's client: the first input, whose bare LF line
        // made httparse stop before the bare CR, was taken as one trailer.
        let invalid = Some(ChunkError::Invalid);
        for body in [
            &b"0\r\nx-0a: \n\r\n\r-aaa00a0: \r\n\r\n"[..],
            b"0\r\nX: a\r\r\n\r\n",
            b"0\r\n\rX: a\r\n\r\n",
            b"0\r\nX: a\rb\r\n\r\n",
        ] {
            assert_eq!(
                errors(body),
                (invalid, invalid),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    // -----------------------------------------------------------------
    // ChunkedDecoder (hyper's ChunkedState, proto/h1/decode.rs).
    // -----------------------------------------------------------------

    /// A body with an extension, spaces after a size, data holding CRLF,
    /// and a trailer section; then the next response's first bytes.
    const BODY: &[u8] = b"5;name=\"v\"\r\nhello\r\n\
                          B \t ; a ; b\r\n wor\r\nld!!!\r\n\
                          0;last\r\nX-Sum: 7\r\nX-More: a, b\r\n\r\nHTTP/1.1";

    /// BODY's trailer fields.
    const SECTION: &[u8] = b"X-Sum: 7\r\nX-More: a, b\r\n";

    /// Where BODY ends and where its trailer section lies.
    const BODY_END: usize = BODY.len() - b"HTTP/1.1".len();
    const BODY_TRAILERS: Range<usize> = BODY_END - 2 - SECTION.len()..BODY_END - 2;

    #[test]
    fn a_body_fed_whole_gives_its_data_then_its_end_and_trailers() {
        let expected = ended(b"hello wor\r\nld!!!", 2, BODY_END, Some(BODY_TRAILERS));
        assert_eq!(whole(BODY), Ok(expected));
        assert_eq!(&BODY[BODY_TRAILERS], SECTION);
        let trailers = headers(&[("x-sum", "7"), ("x-more", "a, b")]);
        assert_eq!(parse_trailers(&BODY[BODY_TRAILERS]), Ok(trailers));
    }

    #[test]
    fn a_body_split_at_any_point_or_two_gives_the_same_data_and_end() {
        let Ok(expected) = whole(BODY) else {
            panic!("BODY is valid");
        };
        for first in 0..=BODY.len() {
            for second in first..=BODY.len() {
                let Ok(found) = follow(BODY, &[first, second]) else {
                    panic!("cut at {first} and {second}");
                };
                assert_eq!(found.data, expected.data, "cut at {first} and {second}");
                assert_eq!(found.end, expected.end, "cut at {first} and {second}");
            }
        }
        let Ok(found) = bytewise(BODY) else {
            panic!("fed a byte at a time");
        };
        assert_eq!((found.data, found.end), (expected.data, expected.end));
    }

    #[test]
    fn a_body_without_trailers_ends_at_its_empty_line() {
        let body = b"1\r\nx\r\n0\r\n\r\n";
        assert_eq!(whole(body), Ok(ended(b"x", 1, body.len(), None)));
        assert_eq!(bytewise(body), Ok(ended(b"x", 1, body.len(), None)));
        assert_eq!(whole(b"0\r\n\r\n"), Ok(ended(b"", 0, 5, None)));
    }

    #[test]
    fn sizes_are_hex_in_either_case_with_leading_zeros() {
        let data = [b'd'; 0xAB];
        for size in ["ab", "AB", "aB", "00ab", "0000000000000000000000AB"] {
            let mut body = format!("{size}\r\n").into_bytes();
            body.extend_from_slice(&data);
            body.extend_from_slice(b"\r\n0\r\n\r\n");
            assert_eq!(
                whole(&body),
                Ok(ended(&data, 1, body.len(), None)),
                "{size}"
            );
        }
    }

    #[test]
    fn the_largest_size_is_sixteen_hex_digits_of_f() {
        let body = b"ffffffffffffffff\r\nabc";
        let expected = Followed {
            data: b"abc".to_vec(),
            pieces: 1,
            end: None,
        };
        assert_eq!(whole(body), Ok(expected));
    }

    #[test]
    fn a_size_over_u64_overflows() {
        let body = b"1ffffffffffffffff\r\n";
        assert_eq!(
            errors(body),
            (Some(ChunkError::Overflow), Some(ChunkError::Overflow))
        );
        let body = b"10000000000000000\r\n";
        assert_eq!(
            errors(body),
            (Some(ChunkError::Overflow), Some(ChunkError::Overflow))
        );
    }

    #[test]
    fn a_size_line_that_is_not_hex_digits_spaces_and_extensions_is_invalid() {
        let invalid = Some(ChunkError::Invalid);
        for body in [
            &b"g\r\n"[..],
            b"\r\n",
            b" 5\r\nhello\r\n",
            b"0x5\r\nhello\r\n",
            b"5 5\r\nhello\r\n",
            b"5\t6\r\nhello\r\n",
            b"-5\r\n",
            b"+5\r\n",
            b"5\xff\r\n",
            b";ext\r\n",
        ] {
            assert_eq!(
                errors(body),
                (invalid, invalid),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_bare_lf_after_the_size_or_in_an_extension_is_invalid() {
        let invalid = Some(ChunkError::Invalid);
        for body in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5 \nhello\r\n",
            b"5;ext\nhello\r\n",
            b"5;ext\r\r\n",
            b"5\r\r\n",
            b"5\rhello",
            b"0\n\r\n",
        ] {
            assert_eq!(
                errors(body),
                (invalid, invalid),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn data_not_followed_by_crlf_is_invalid() {
        let invalid = Some(ChunkError::Invalid);
        for body in [
            &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\rX",
            b"5\r\nhello0\r\n\r\n",
            b"5\r\nhello\r\n\r\n",
        ] {
            assert_eq!(
                errors(body),
                (invalid, invalid),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_body_cut_short_asks_for_more_and_has_no_end() {
        let Ok(expected) = whole(BODY) else {
            panic!("BODY is valid");
        };
        for end in 0..BODY_END {
            let Ok(found) = whole(&BODY[..end]) else {
                panic!("{end} bytes");
            };
            assert_eq!(found.end, None, "{end} bytes");
            assert!(expected.data.starts_with(&found.data), "{end} bytes");
        }
    }

    #[test]
    fn after_its_end_the_decoder_uses_nothing_more() {
        let mut decoder = ChunkedDecoder::new();
        assert!(!decoder.is_done());
        assert_eq!(
            decoder.decode(b"0\r\n\r\nrest"),
            Ok((5, Decoded::End(None)))
        );
        assert!(decoder.is_done());
        assert_eq!(decoder.decode(b"rest"), Ok((0, Decoded::End(None))));
    }

    #[test]
    fn the_trailer_section_is_given_whole_or_not_at_all() {
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(decoder.decode(b"0\r\nX-Sum: 7\r\n"), Ok((3, Decoded::More)));
        assert_eq!(decoder.decode(b"X-Sum: 7\r\n"), Ok((0, Decoded::More)));
        let section = b"X-Sum: 7\r\n\r\nnext";
        assert_eq!(decoder.decode(section), Ok((12, Decoded::End(Some(0..10)))));
    }

    /// A body whose trailer section (fields and the final empty line) is
    /// `len` bytes long: one long field.
    fn body_with_trailer_section(len: usize) -> Vec<u8> {
        let pad = "t".repeat(len - b"x: \r\n\r\n".len());
        format!("0\r\nx: {pad}\r\n\r\n").into_bytes()
    }

    #[test]
    fn a_trailer_section_reaching_the_limit_is_refused_whole_or_in_pieces() {
        // hyper refuses the section once its buffer reaches TRAILER_LIMIT
        // bytes, final CRLF included, however the bytes arrive.
        let longest = body_with_trailer_section(MAX_TRAILER_BYTES - 1);
        let expected = ended(b"", 0, longest.len(), Some(3..longest.len() - 2));
        assert_eq!(whole(&longest), Ok(expected));
        let Ok(found) = bytewise(&longest) else {
            panic!("fed a byte at a time");
        };
        assert_eq!(found.end, Some((longest.len(), Some(3..longest.len() - 2))));
        let too_large = Some(ChunkError::TrailersTooLarge);
        for len in [
            MAX_TRAILER_BYTES,
            MAX_TRAILER_BYTES + 1,
            2 * MAX_TRAILER_BYTES,
        ] {
            let body = body_with_trailer_section(len);
            assert_eq!(
                errors(&body),
                (too_large, too_large),
                "a section of {len} bytes"
            );
            let half = body.len() / 2;
            assert_eq!(
                follow(&body, &[half]).err(),
                too_large,
                "{len} bytes in halves"
            );
        }
    }

    #[test]
    fn a_trailer_section_without_an_end_is_refused_at_the_limit() {
        let mut body = b"0\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', MAX_TRAILER_BYTES - 1));
        assert_eq!(whole(&body).map(|f| f.end), Ok(None));
        body.push(b'x');
        let too_large = Some(ChunkError::TrailersTooLarge);
        assert_eq!(errors(&body), (too_large, too_large));
    }

    #[test]
    fn chunk_extensions_reaching_the_limit_over_the_whole_body_are_refused() {
        // hyper counts the bytes after each `;` over the whole body and
        // refuses the body when the count reaches CHUNKED_EXTENSIONS_LIMIT.
        let half = "e".repeat(MAX_EXTENSION_BYTES as usize / 2);
        let last = "e".repeat(MAX_EXTENSION_BYTES as usize / 2 - 1);
        let fits = format!("1;{half}\r\nx\r\n0;{last}\r\n\r\n").into_bytes();
        assert_eq!(whole(&fits), Ok(ended(b"x", 1, fits.len(), None)));
        let over = format!("1;{half}\r\nx\r\n0;{last}e\r\n\r\n").into_bytes();
        let too_large = Some(ChunkError::ExtensionsTooLarge);
        assert_eq!(errors(&over), (too_large, too_large));
    }

    // -----------------------------------------------------------------
    // Properties.
    // -----------------------------------------------------------------

    /// Text for a chunk extension (after its `;`): anything but CR and LF.
    fn extension() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z]{1,6}(=[a-z0-9]{0,6})?",
            "[ \t;=\"a-zA-Z0-9!-~]{0,16}",
        ]
    }

    /// One chunk's size line pieces: leading zeros, upper or lower hex,
    /// spaces after the size, an extension.
    fn size_line() -> impl Strategy<Value = (usize, bool, String, Option<String>)> {
        (
            0usize..3,
            any::<bool>(),
            "[ \t]{0,2}",
            prop::option::of(extension()),
        )
    }

    /// A trailer field: a name and a value httparse reads back as it is.
    fn trailer() -> impl Strategy<Value = (String, String)> {
        ("x-[a-z0-9]{1,8}", "([!-~]([ -~]{0,12}[!-~])?)?")
    }

    /// A chunked body on the wire, the data it carries, and its trailer
    /// fields.
    #[derive(Debug, Clone)]
    struct Chunked {
        wire: Vec<u8>,
        data: Vec<u8>,
        trailers: Vec<(String, String)>,
    }

    /// Writes a size line: `size` with its leading zeros, case, spaces and
    /// extension.
    fn write_size(wire: &mut Vec<u8>, size: usize, line: &(usize, bool, String, Option<String>)) {
        let (zeros, upper, spaces, extension) = line;
        wire.extend(std::iter::repeat_n(b'0', *zeros));
        let hex = if *upper {
            format!("{size:X}")
        } else {
            format!("{size:x}")
        };
        wire.extend_from_slice(hex.as_bytes());
        wire.extend_from_slice(spaces.as_bytes());
        if let Some(extension) = extension {
            wire.push(b';');
            wire.extend_from_slice(extension.as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
    }

    fn chunked() -> impl Strategy<Value = Chunked> {
        let chunk = (prop::collection::vec(any::<u8>(), 1..48), size_line());
        (
            prop::collection::vec(chunk, 0..6),
            size_line(),
            prop::collection::vec(trailer(), 0..4),
        )
            .prop_map(|(chunks, last, trailers)| {
                let mut wire = Vec::new();
                let mut data = Vec::new();
                for (bytes, line) in chunks {
                    write_size(&mut wire, bytes.len(), &line);
                    wire.extend_from_slice(&bytes);
                    wire.extend_from_slice(b"\r\n");
                    data.extend_from_slice(&bytes);
                }
                write_size(&mut wire, 0, &last);
                for (name, value) in &trailers {
                    wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
                Chunked {
                    wire,
                    data,
                    trailers,
                }
            })
    }

    /// The trailer fields as a header map.
    fn trailer_map(trailers: &[(String, String)]) -> HeaderMap {
        let pairs: Vec<(&str, &str)> = trailers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        headers(&pairs)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_chunked_body_cut_anywhere_gives_its_data_and_ends_exactly_at_its_end(
            body in chunked(),
            after in prop::collection::vec(any::<u8>(), 0..16),
            cuts in prop::collection::vec(any::<Index>(), 0..8),
        ) {
            let stream = [&body.wire[..], &after[..]].concat();
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            let found = follow(&stream, &cuts);
            let Ok(found) = found else {
                return Err(TestCaseError::fail(format!("{found:?}")));
            };
            prop_assert_eq!(&found.data, &body.data);
            let Some((end, section)) = found.end.clone() else {
                return Err(TestCaseError::fail("no end"));
            };
            prop_assert_eq!(end, body.wire.len());
            match section {
                None => prop_assert!(body.trailers.is_empty()),
                Some(range) => {
                    prop_assert_eq!(range.end, body.wire.len() - 2);
                    prop_assert_eq!(parse_trailers(&stream[range]), Ok(trailer_map(&body.trailers)));
                }
            }
            prop_assert_eq!(whole(&stream).map(|f| (f.data, f.end)), Ok((found.data, found.end)));
        }

        #[test]
        fn a_chunked_body_cut_short_anywhere_never_ends_nor_fails(
            body in chunked(),
            end in any::<Index>(),
            cuts in prop::collection::vec(any::<Index>(), 0..4),
        ) {
            let short = &body.wire[..end.index(body.wire.len())];
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(short.len() + 1)).collect();
            cuts.sort_unstable();
            let found = follow(short, &cuts);
            let Ok(found) = found else {
                return Err(TestCaseError::fail(format!("{found:?}")));
            };
            prop_assert_eq!(found.end, None);
            prop_assert!(body.data.starts_with(&found.data));
        }

        #[test]
        fn any_bytes_give_the_same_result_whole_and_in_pieces(
            stream in prop::collection::vec(
                prop_oneof![
                    4 => prop::sample::select(b"0123456789abcdefABCDEF\r\n; \t:x".to_vec()),
                    1 => any::<u8>(),
                ],
                0..64,
            ),
            cuts in prop::collection::vec(any::<Index>(), 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            let whole = whole(&stream).map(|f| (f.data, f.end));
            prop_assert_eq!(follow(&stream, &cuts).map(|f| (f.data, f.end)), whole.clone());
            prop_assert_eq!(bytewise(&stream).map(|f| (f.data, f.end)), whole);
        }
    }

    /// A response head from a small safe alphabet, and what parsing it
    /// should find.
    #[derive(Debug, Clone)]
    struct HeadCase {
        text: String,
        method: Method,
        status: u16,
        reason: String,
        http10: bool,
        fields: Vec<(String, String)>,
        expected: Result<(Framing, bool), HeadError>,
    }

    /// How the case's body is announced.
    #[derive(Debug, Clone)]
    enum Announced {
        Length(u64),
        Chunked,
        Nothing,
    }

    fn head_case() -> impl Strategy<Value = HeadCase> {
        let status = prop_oneof![
            Just(200u16),
            Just(204),
            Just(304),
            Just(101),
            Just(404),
            200u16..600,
        ];
        let announced = prop_oneof![
            (0u64..100_000).prop_map(Announced::Length),
            (0..=MAX_CONTENT_LENGTH).prop_map(Announced::Length),
            Just(Announced::Chunked),
            Just(Announced::Nothing),
        ];
        let connection = prop::option::of(prop::sample::select(vec!["close", "keep-alive"]));
        (
            prop::sample::select(vec![
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::CONNECT,
            ]),
            status,
            "[A-Za-z][A-Za-z ]{0,12}",
            any::<bool>(),
            announced,
            connection,
            prop::collection::vec(("x-[a-z]{1,6}", "[!-~]([ -~]{0,10}[!-~])?"), 0..8),
            any::<Index>(),
        )
            .prop_map(
                |(method, status, reason, http10, announced, connection, mut fields, at)| {
                    let framing_field = match announced {
                        Announced::Length(len) => Some(("Content-Length".into(), len.to_string())),
                        Announced::Chunked => Some(("Transfer-Encoding".into(), "chunked".into())),
                        Announced::Nothing => None,
                    };
                    let special = framing_field
                        .into_iter()
                        .chain(connection.map(|c| ("Connection".to_string(), c.to_string())));
                    for field in special {
                        fields.insert(at.index(fields.len() + 1), field);
                    }
                    let expected =
                        expected_framing(status, &method, http10, &announced).map(|framing| {
                            let keep_alive = match connection {
                                Some("close") => false,
                                Some(_) => true,
                                None => !http10,
                            };
                            let reusable = !matches!(framing, Framing::Close | Framing::Switch);
                            (framing, keep_alive && reusable)
                        });
                    let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
                    let pairs: Vec<(&str, &str)> = fields
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.as_str()))
                        .collect();
                    let text = response(&format!("{version} {status} {reason}"), &pairs);
                    HeadCase {
                        text,
                        method,
                        status,
                        reason,
                        http10,
                        fields,
                        expected,
                    }
                },
            )
    }

    /// RFC 9112 §6.3, written from the RFC and hyper's comments.
    fn expected_framing(
        status: u16,
        method: &Method,
        http10: bool,
        announced: &Announced,
    ) -> Result<Framing, HeadError> {
        Ok(match (status, announced) {
            (101, _) => Framing::Switch,
            (204 | 304, _) => Framing::Empty,
            _ if *method == Method::HEAD => Framing::Empty,
            (200..=299, _) if *method == Method::CONNECT => Framing::Switch,
            (_, Announced::Chunked) if http10 => return Err(HeadError::TransferEncodingOn10),
            (_, Announced::Chunked) => Framing::Chunked,
            (_, Announced::Length(0)) => Framing::Empty,
            (_, Announced::Length(len)) => Framing::Length(*len),
            (_, Announced::Nothing) => Framing::Close,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_formatted_head_is_taken_to_its_end_with_the_framing_the_rfc_gives(
            case in head_case(),
            after in prop::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut buf = BytesMut::from([case.text.as_bytes(), &after[..]].concat().as_slice());
            let parsed = parse_response(&mut buf, &case.method);
            let head = match (parsed, &case.expected) {
                (Ok(Parsed::Head(head, len)), Ok(expected)) => {
                    prop_assert_eq!(len, case.text.len());
                    prop_assert_eq!(&buf[..], &after[..]);
                    prop_assert_eq!((head.framing, head.keep_alive), *expected);
                    head
                }
                (Err(error), Err(expected)) => {
                    prop_assert_eq!(&error, expected);
                    return Ok(());
                }
                (parsed, expected) => {
                    return Err(TestCaseError::fail(format!("{parsed:?}, expected {expected:?}")));
                }
            };
            prop_assert_eq!(head.parts.status.as_u16(), case.status);
            let version = if case.http10 { Version::HTTP_10 } else { Version::HTTP_11 };
            prop_assert_eq!(head.parts.version, version);
            let canonical = head.parts.status.canonical_reason() == Some(case.reason.as_str());
            let phrase = head.parts.extensions.get::<ReasonPhrase>().map(|p| p.as_bytes().to_vec());
            prop_assert_eq!(phrase, (!canonical).then(|| case.reason.clone().into_bytes()));
            let names: Vec<&str> = case.fields.iter().map(|(n, _)| n.as_str()).collect();
            for name in names {
                let found: Vec<&[u8]> =
                    head.parts.headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
                let written: Vec<&[u8]> = case.fields.iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_bytes())
                    .collect();
                prop_assert_eq!(found, written);
            }
            prop_assert_eq!(head.parts.headers.len(), case.fields.len());
        }

        #[test]
        fn any_formatted_head_cut_short_is_partial_and_takes_nothing(
            case in head_case(),
            end in any::<Index>(),
        ) {
            let short = &case.text.as_bytes()[..end.index(case.text.len())];
            let mut buf = BytesMut::from(short);
            let parsed = parse_response(&mut buf, &case.method);
            prop_assert!(matches!(parsed, Ok(Parsed::Partial)), "{:?}", parsed);
            prop_assert_eq!(&buf[..], short);
        }
    }

    // -----------------------------------------------------------------
    // Against hyper's own client, over an in-memory pipe.
    // -----------------------------------------------------------------

    /// What a client makes of a response: its head (status, version,
    /// headers, reason phrase), then its body's data and trailers, or
    /// `None` for the body when it failed.
    type Seen = (
        (StatusCode, Version, HeaderMap, Option<Vec<u8>>),
        Option<(Vec<u8>, HeaderMap)>,
    );

    /// `response` (the answer to a `GET`) read by hyper's HTTP/1 client;
    /// `None` when hyper refused the head or took too long.
    fn hyper_reads(response: &[u8]) -> Option<Seen> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let response = response.to_vec();
        runtime.block_on(async move {
            let (client, mut server) = tokio::io::duplex(1 << 20);
            let backend = async move {
                // hyper's client refuses an answer that comes before its
                // request: the whole request head is read first.
                let mut request = Vec::new();
                while !request.ends_with(b"\r\n\r\n") {
                    match server.read_buf(&mut request).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = server.write_all(&response).await;
                let _ = server.shutdown().await;
                server
            };
            let client = async move {
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(client))
                        .await
                        .ok()?;
                tokio::spawn(connection);
                let request = hyper::Request::get("/").body(Empty::<Bytes>::new()).ok()?;
                let (parts, body) = sender.send_request(request).await.ok()?.into_parts();
                let phrase = parts
                    .extensions
                    .get::<ReasonPhrase>()
                    .map(|p| p.as_bytes().to_vec());
                let body = body.collect().await.ok().map(|collected| {
                    let trailers = collected.trailers().cloned().unwrap_or_default();
                    (collected.to_bytes().to_vec(), trailers)
                });
                Some(((parts.status, parts.version, parts.headers, phrase), body))
            };
            let timed = tokio::time::timeout(Duration::from_secs(10), client);
            let (seen, _server) = tokio::join!(timed, backend);
            seen.ok().flatten()
        })
    }

    /// `response` (the answer to a `GET`) read with this module; `None`
    /// when the head is refused.
    fn codec_reads(response: &[u8]) -> Option<Seen> {
        let mut buf = BytesMut::from(response);
        let Ok(Parsed::Head(head, _)) = parse_response(&mut buf, &Method::GET) else {
            return None;
        };
        let parts = head.parts;
        let phrase = parts
            .extensions
            .get::<ReasonPhrase>()
            .map(|p| p.as_bytes().to_vec());
        let body = match whole(&buf) {
            Ok(Followed {
                data,
                end: Some((_, section)),
                ..
            }) => match section.map(|range| parse_trailers(&buf[range])) {
                None => Some((data, HeaderMap::new())),
                Some(Ok(trailers)) => Some((data, trailers)),
                Some(Err(_)) => None,
            },
            _ => None,
        };
        Some(((parts.status, parts.version, parts.headers, phrase), body))
    }

    /// Bytes that matter to chunked framing, to put in a body.
    const FRAMING_BYTES: &[u8] = b"\r\n;: \t0aFgx\xff";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn hyper_s_client_reads_any_chunked_response_as_this_module_does(
            body in chunked(),
            reason in "[ -~\t\u{80}-\u{ff}]{0,8}",
            fields in prop::collection::vec(("x-[a-z]{1,6}", "[ -~]{0,10}"), 0..4),
            changes in prop::collection::vec((any::<Index>(), prop::sample::select(FRAMING_BYTES)), 0..6),
            cut in prop::option::of(any::<Index>()),
        ) {
            let mut wire = body.wire.clone();
            // Every other change puts a byte in, the others replace one.
            for (n, (at, byte)) in changes.into_iter().enumerate() {
                let at = at.index(wire.len());
                if n % 2 == 0 {
                    wire[at] = byte;
                } else {
                    wire.insert(at, byte);
                }
            }
            if let Some(cut) = cut {
                wire.truncate(cut.index(wire.len()));
            }
            let mut response: Vec<u8> = b"HTTP/1.1 200 ".to_vec();
            // The reason's chars stand for bytes: `\u{ff}` is 0xff on the wire.
            response.extend(reason.chars().map(|c| c as u32 as u8));
            response.extend_from_slice(b"\r\nTransfer-Encoding: chunked\r\n");
            for (name, value) in &fields {
                response.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            response.extend_from_slice(b"\r\n");
            response.extend_from_slice(&wire);
            prop_assert_eq!(codec_reads(&response), hyper_reads(&response));
        }
    }
}

/// `parse_forwarded_response` leaves out only what the proxy strips anyway.
#[cfg(test)]
mod forwarded_tests {
    use proptest::prelude::*;

    use super::*;
    use crate::proxy::headers::strip_hop_by_hop;

    type Fields = std::collections::BTreeMap<String, Vec<Vec<u8>>>;

    /// Header lines a response may carry: hop-by-hop ones, `Connection`
    /// values that name other headers or only keep-alive, and headers they
    /// may name.
    fn field() -> impl Strategy<Value = (&'static str, &'static str)> {
        prop::sample::select(vec![
            ("Connection", "keep-alive"),
            ("connection", "Keep-Alive, keep-alive"),
            ("Connection", "close"),
            ("Connection", "x-private, keep-alive"),
            ("Connection", "x-other"),
            ("Connection", ""),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "x-checksum"),
            ("Upgrade", "websocket"),
            ("Proxy-Authenticate", "Basic"),
            ("X-Private", "1"),
            ("x-other", "2"),
            ("Close", "3"),
            ("Content-Type", "text/plain"),
            ("Set-Cookie", "a=1"),
            ("Server", "nginx"),
        ])
    }

    /// Status, headers (each name's values in order: the order of
    /// different names carries no meaning, RFC 9110 §5.3), framing and
    /// keep-alive of the head `bytes`, stripped as the proxy strips it.
    fn parsed(bytes: &[u8], forwarded: bool) -> (StatusCode, Fields, Framing, bool) {
        let mut buf = BytesMut::from(bytes);
        let parsed = if forwarded {
            parse_forwarded_response(&mut buf, &Method::GET)
        } else {
            parse_response(&mut buf, &Method::GET)
        };
        let Ok(Parsed::Head(head, _)) = parsed else {
            panic!("not a head: {:?}", String::from_utf8_lossy(bytes));
        };
        let mut headers = head.parts.headers;
        if head.parts.status != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(&mut headers);
        }
        let mut fields = Fields::new();
        for (name, value) in &headers {
            fields
                .entry(name.as_str().to_owned())
                .or_default()
                .push(value.as_bytes().to_vec());
        }
        (head.parts.status, fields, head.framing, head.keep_alive)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Stripped as the proxy strips it, a response parsed for
        /// forwarding has the same headers (each name's values in the same
        /// order), the same
        /// framing and keep-alive as one parsed whole; a `101` keeps all.
        #[test]
        fn a_forwarded_response_stripped_is_the_whole_response_stripped(
            fields in prop::collection::vec(field(), 0..8),
            switching in any::<bool>(),
        ) {
            let status = if switching { "101 Switching Protocols" } else { "200 OK" };
            let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n");
            for (name, value) in &fields {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let whole = parsed(head.as_bytes(), false);
            let forwarded = parsed(head.as_bytes(), true);
            prop_assert_eq!(forwarded, whole);
        }
    }
}
