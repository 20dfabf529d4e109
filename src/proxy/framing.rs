//! Request framing followed on the client's raw bytes, beside hyper, to find
//! the request that carries both `Content-Length` and `Transfer-Encoding`.
//!
//! # Why
//! A request with both headers is the classic request-smuggling vector
//! (RFC 9112 §11.2): a front end and a back end that frame it differently
//! disagree on where the next request starts. RFC 9112 §6.3 (item 3) lets a
//! server handle it by `Transfer-Encoding` alone but says it "ought to be
//! handled as an error", and §6.1 requires the connection to be closed after
//! it either way. affinity answers it with `400`, forwards nothing and closes.
//!
//! It cannot see such a request through hyper: hyper 1's HTTP/1 server
//! decodes it as chunked and removes `Content-Length` from the headers it
//! hands to the service (`proto/h1/role.rs`, `Server::parse`). So the bytes
//! are watched before hyper reads them: [`Watched`] wraps the client's
//! connection, feeds every byte hyper reads to a [`FramingWatch`], and
//! publishes the index (0-based, per connection) of the first request whose
//! head has both headers in an [`Ambiguity`] the service holds. Because the
//! watch sees the bytes before hyper does, the index is published before
//! hyper has parsed that head, let alone called the service with it.
//!
//! # What it follows
//! [`FramingWatch`] is a pure state machine (no I/O) that frames requests
//! exactly as hyper 1.12's server does, for every input hyper accepts:
//! * **Heads** are parsed with `httparse` and hyper's default
//!   `ParserConfig`; empty lines before a request line are skipped and bare
//!   LF line endings accepted, as httparse does. A head, with the empty lines
//!   before it, may be at most `max_head_bytes` long: hyper's `max_buf_size`.
//!   hyper checks that limit only after a read, and reads into all the spare
//!   room of its buffer, which can be larger: on its own it takes heads
//!   somewhat longer than the limit. So [`Watched`] caps each read
//!   ([`FramingWatch::read_limit`]) so that hyper never holds more than
//!   `max_head_bytes` of a head: its limit becomes exact, and the same as
//!   the watch's.
//! * **Plain heads** are not parsed: an HTTP/1.0 or 1.1 request line, CRLF
//!   line ends and no line starting with `Content-Length:` or
//!   `Transfer-Encoding:` (almost every request without a body). Such a
//!   head, if httparse takes it, frames no body and ends at its first empty
//!   line, which is all the watch needs of it.
//! * **Bodies** as hyper's `Server::parse` decides for requests: a
//!   `Transfer-Encoding` whose last header's final coding is `chunked` means
//!   a chunked body (HTTP/1.1 only); else a valid `Content-Length` (digits
//!   only, at most `u64::MAX - 2`; several equal ones count as one) means
//!   that many bytes; else there is no body, whatever the method.
//! * **Chunked bodies** byte for byte as hyper's `ChunkedState`
//!   (`proto/h1/decode.rs`): hex size, optional spaces or tabs, extensions up
//!   to a CR, `CRLF` (never a bare LF), data, `CRLF`, and after the last
//!   (`0`) chunk the trailer lines and a final `CRLF`.
//!
//! Body data is skipped by counting, never scanned; a head that arrives
//! whole in one read is parsed where it lies, and only a head split across
//! reads is copied (bounded by `max_head_bytes`, freed once parsed). As hyper
//! does, a split head is parsed again only when the new bytes may end it.
//!
//! # Fail open
//! Once it has found an ambiguous request the watch stops: the proxy closes
//! that connection. Anything it cannot follow (a head over the limit, a head
//! httparse refuses, the HTTP/2 preface, an invalid or conflicting
//! `Content-Length`, a `Transfer-Encoding` not ending in `chunked` or on
//! HTTP/1.0, a bad chunk line) makes it stop following for good and report
//! nothing more. Each of those is an input hyper itself refuses (it answers
//! or drops the connection and reads no further request), so no request
//! that reaches the service goes unwatched. The watch is lenient only where
//! hyper is stricter (hyper's limits on header count, chunk extensions and
//! trailers; the method and URI checks after httparse; the characters of a
//! plain head, which is not parsed): there it keeps
//! following bytes hyper will never turn into requests, which is harmless.
//! A stopped watch costs nothing more per read.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Header slots parsed on the stack: hyper's default `max_headers`. A head
/// with more is parsed again with one slot per line.
const STACK_HEADERS: usize = 100;

/// The largest `Content-Length` hyper accepts: it keeps the two values above
/// as markers for chunked and close-delimited bodies (`DecodedLength`).
const MAX_CONTENT_LENGTH: u64 = u64::MAX - 2;

/// An [`Ambiguity`] with no ambiguous request.
const NONE: u64 = u64::MAX;

/// Follows the framing of the requests on one client connection and finds
/// the first whose head has both `Content-Length` and `Transfer-Encoding`
/// (see the module docs).
///
/// Idle, it holds no allocation: 56 bytes in all on 64-bit targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingWatch {
    state: State,
    /// Request heads followed so far.
    requests: u64,
    max_head_bytes: usize,
    /// The start of a head split across reads; empty otherwise.
    partial: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before or inside a request head.
    Head,
    /// Inside a `Content-Length` body: the bytes left (never 0).
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// The last head followed had both headers: stopped.
    Ambiguous,
    /// Lost track: stopped.
    Lost,
}

/// Where a chunked body is: hyper's `ChunkedState`, with the chunk size
/// carried in the states that need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The first hex digit of a chunk size.
    Start,
    /// More hex digits, spaces, `;` or CR.
    Size(u64),
    /// Spaces or tabs after the size, then `;` or CR.
    SizeLws(u64),
    /// A chunk extension, up to CR.
    Extension(u64),
    /// The LF ending a chunk-size line.
    SizeLf(u64),
    /// Chunk data: the bytes left (never 0).
    Data(u64),
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// After the last chunk or a trailer line: CR, or a trailer's first byte.
    EndCr,
    /// The LF ending the body.
    EndLf,
    /// A trailer line, up to CR.
    Trailer,
    /// The LF ending a trailer line.
    TrailerLf,
}

/// What one byte of chunked framing leads to.
enum Step {
    Next(Chunk),
    /// The body is over.
    Done,
    /// hyper refuses the body.
    Bad,
}

/// How a parsed head frames its body.
enum Framing {
    /// Both `Content-Length` and `Transfer-Encoding`.
    Ambiguous,
    /// That many bytes (0: no body).
    Length(u64),
    Chunked,
    /// hyper refuses the head.
    Invalid,
}

/// The outcome of parsing the bytes that may hold a head.
enum Parsed {
    /// A head of that many bytes (with the empty lines before it).
    Complete(usize, Framing),
    Partial,
    Invalid,
}

/// What a head's `Content-Length` headers say.
#[derive(Clone, Copy)]
enum ContentLength {
    Absent,
    Valid(u64),
    /// Not digits, too large for `u64`, or two different values.
    Invalid,
}

impl FramingWatch {
    /// A watch for a new connection whose heads hyper limits to
    /// `max_head_bytes` (its `max_buf_size`). Allocates nothing.
    pub fn new(max_head_bytes: usize) -> FramingWatch {
        FramingWatch {
            state: State::Head,
            requests: 0,
            max_head_bytes,
            partial: Vec::new(),
        }
    }

    /// Follows the next bytes read from the client, in order; any chunking
    /// gives the same result. Does nothing once the watch has stopped.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = match self.state {
                State::Head => self.head(bytes),
                State::Length(left) => self.length(left, bytes),
                State::Chunked(chunk) => self.chunked(chunk, bytes),
                State::Ambiguous | State::Lost => return,
            };
        }
    }

    /// The index (0-based) of the first request whose head had both
    /// `Content-Length` and `Transfer-Encoding`, once it has been read.
    pub fn ambiguous(&self) -> Option<u64> {
        (self.state == State::Ambiguous).then(|| self.requests - 1)
    }

    /// Whether the watch still follows the stream: false once it has found
    /// an ambiguous request or lost track (see the module docs).
    ///
    /// A head that httparse refuses is noticed, as hyper notices it, when
    /// the bytes that may end it arrive or it outgrows the limit: until then
    /// the watch may still say it follows.
    pub fn is_following(&self) -> bool {
        !matches!(self.state, State::Ambiguous | State::Lost)
    }

    /// The most bytes the next read may bring so that no more than
    /// `max_head_bytes` of a head can arrive before the watch sees whether
    /// it is complete: the rest of a `Content-Length` body or chunk it is
    /// in, plus what is left of the head limit. `None` once it has stopped.
    /// Never 0.
    pub fn read_limit(&self) -> Option<usize> {
        let max = self.max_head_bytes;
        let body = match self.state {
            State::Head => return Some(max.saturating_sub(self.partial.len()).max(1)),
            State::Length(left) | State::Chunked(Chunk::Data(left)) => left,
            State::Chunked(_) => 0,
            State::Ambiguous | State::Lost => return None,
        };
        let body = usize::try_from(body).unwrap_or(usize::MAX);
        Some(body.saturating_add(max).max(1))
    }

    /// How many request heads the watch has followed, the ambiguous one
    /// included: the requests hyper hands to the service when it frames the
    /// stream the same way.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Reads (part of) a head and returns the bytes after it.
    fn head<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let max = self.max_head_bytes;
        if self.partial.is_empty() {
            // The hot path: parsed where it lies. A head is never longer
            // than the limit, so only that much is looked at.
            let window = &bytes[..bytes.len().min(max)];
            return match parse(window) {
                Parsed::Complete(len, framing) => self.start(framing, &bytes[len..]),
                Parsed::Partial if window.len() < max => {
                    self.partial.extend_from_slice(window);
                    &[]
                }
                Parsed::Partial | Parsed::Invalid => self.lose(),
            };
        }
        let before = self.partial.len();
        let taken = bytes.len().min(max - before);
        self.partial.extend_from_slice(&bytes[..taken]);
        let parsed = if may_end_head(&self.partial, before) {
            parse(&self.partial)
        } else {
            Parsed::Partial
        };
        match parsed {
            Parsed::Complete(len, framing) => {
                self.partial = Vec::new();
                self.start(framing, &bytes[len.saturating_sub(before)..])
            }
            // Below the limit, every byte was taken.
            Parsed::Partial if self.partial.len() < max => &[],
            Parsed::Partial | Parsed::Invalid => self.lose(),
        }
    }

    /// Starts the body a complete head announced; `rest` follows the head.
    fn start<'a>(&mut self, framing: Framing, rest: &'a [u8]) -> &'a [u8] {
        let state = match framing {
            Framing::Invalid => return self.lose(),
            Framing::Ambiguous => State::Ambiguous,
            Framing::Length(0) => State::Head,
            Framing::Length(len) => State::Length(len),
            Framing::Chunked => State::Chunked(Chunk::Start),
        };
        self.requests += 1;
        self.state = state;
        if state == State::Ambiguous {
            self.partial = Vec::new();
            return &[];
        }
        rest
    }

    /// Skips (part of) a `Content-Length` body.
    fn length<'a>(&mut self, left: u64, bytes: &'a [u8]) -> &'a [u8] {
        let (skipped, left) = skip(left, bytes.len());
        self.state = if left == 0 {
            State::Head
        } else {
            State::Length(left)
        };
        &bytes[skipped..]
    }

    /// Follows (part of) a chunked body.
    fn chunked<'a>(&mut self, mut chunk: Chunk, mut bytes: &'a [u8]) -> &'a [u8] {
        loop {
            // Data, extensions and trailers may be long: skipped whole.
            let skipped = match chunk {
                Chunk::Data(left) => {
                    let (skipped, left) = skip(left, bytes.len());
                    chunk = if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    };
                    skipped
                }
                Chunk::Extension(_) | Chunk::Trailer => bytes
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(bytes.len()),
                _ => 0,
            };
            bytes = &bytes[skipped..];
            let Some((&byte, rest)) = bytes.split_first() else {
                self.state = State::Chunked(chunk);
                return bytes;
            };
            bytes = rest;
            match chunk.step(byte) {
                Step::Next(next) => chunk = next,
                Step::Done => {
                    self.state = State::Head;
                    return bytes;
                }
                Step::Bad => return self.lose(),
            }
        }
    }

    /// Stops following for good.
    fn lose(&mut self) -> &'static [u8] {
        self.state = State::Lost;
        self.partial = Vec::new();
        &[]
    }
}

impl Chunk {
    /// The state after one byte, as hyper's `ChunkedState::step`.
    fn step(self, byte: u8) -> Step {
        use Chunk::*;
        let next = match (self, byte) {
            (Start, _) => match hex_digit(byte) {
                Some(digit) => Size(digit),
                None => return Step::Bad,
            },
            (Size(size) | SizeLws(size), b' ' | b'\t') => SizeLws(size),
            (Size(size) | SizeLws(size) | Extension(size), b';') => Extension(size),
            (Size(size) | SizeLws(size) | Extension(size), b'\r') => SizeLf(size),
            (Size(size), _) => {
                match hex_digit(byte).and_then(|d| size.checked_mul(16)?.checked_add(d)) {
                    Some(size) => Size(size),
                    None => return Step::Bad,
                }
            }
            // hyper refuses a bare LF in an extension, to protect servers
            // that would end the line there.
            (Extension(_), b'\n') => return Step::Bad,
            (Extension(size), _) => Extension(size),
            (SizeLf(0), b'\n') => EndCr,
            (SizeLf(size), b'\n') => Data(size),
            (Data(left), _) if left > 1 => Data(left - 1),
            (Data(_), _) => DataCr,
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Start,
            (EndCr, b'\r') => EndLf,
            (Trailer, b'\r') => TrailerLf,
            (EndCr | Trailer, _) => Trailer,
            (TrailerLf, b'\n') => EndCr,
            (EndLf, b'\n') => return Step::Done,
            (SizeLws(_) | SizeLf(_) | DataCr | DataLf | TrailerLf | EndLf, _) => return Step::Bad,
        };
        Step::Next(next)
    }
}

/// Parses the bytes that may hold a head, as hyper does.
fn parse(bytes: &[u8]) -> Parsed {
    match plain(bytes) {
        Plain::Head(len) => return Parsed::Complete(len, Framing::Length(0)),
        Plain::Unfinished => return Parsed::Partial,
        Plain::No => {}
    }
    let mut headers = [const { MaybeUninit::uninit() }; STACK_HEADERS];
    match parse_with(bytes, &mut headers) {
        // hyper may be configured for more headers than the stack holds:
        // parse again with room for every line, so as never to give up on a
        // head hyper takes.
        Err(httparse::Error::TooManyHeaders) => {
            let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
            let mut headers = vec![MaybeUninit::uninit(); lines];
            parse_with(bytes, &mut headers).unwrap_or(Parsed::Invalid)
        }
        parsed => parsed.unwrap_or(Parsed::Invalid),
    }
}

/// What [`plain`] saw.
enum Plain {
    /// A plain head of that many bytes.
    Head(usize),
    /// The start of what may be a plain head: nothing ends it yet.
    Unfinished,
    /// Not a plain head: parse it.
    No,
}

/// The usual head, read without parsing it: an HTTP/1.0 or HTTP/1.1
/// request line, every line ending in CRLF, no empty line before it, and no
/// line starting with `Content-Length:` or `Transfer-Encoding:` (in any
/// case). A head httparse takes frames no body then, and ends at the first
/// empty line, as here; one httparse refuses, hyper refuses too (and
/// closes the connection), so following past it is harmless. Whether bytes
/// make a plain head never depends on how they arrived: what is unfinished
/// is kept for the bytes that end it (as a partial parse would be), and a
/// head that is not plain is parsed whole, so the watch decides the same
/// for any chunking. This skips httparse (and its UTF-8 check of the
/// request line) for nearly every request without a body.
fn plain(bytes: &[u8]) -> Plain {
    if matches!(bytes.first(), Some(b'\r' | b'\n')) {
        return Plain::No;
    }
    let Some(end) = memchr::memchr(b'\n', bytes) else {
        return Plain::Unfinished;
    };
    let line = &bytes[..end];
    if !(line.ends_with(b" HTTP/1.1\r") || line.ends_with(b" HTTP/1.0\r")) {
        return Plain::No;
    }
    let mut from = end + 1;
    loop {
        let rest = &bytes[from..];
        match rest {
            [] => return Plain::Unfinished,
            [b'\r'] => return Plain::Unfinished,
            [b'\r', b'\n', ..] => return Plain::Head(from + 2),
            [b'\r', ..] | [b'\n', ..] => return Plain::No,
            _ => {}
        }
        if starts_with_ignoring_case(rest, b"content-length:")
            || starts_with_ignoring_case(rest, b"transfer-encoding:")
        {
            return Plain::No;
        }
        let Some(end) = memchr::memchr(b'\n', rest) else {
            return Plain::Unfinished;
        };
        if rest[..end].last() != Some(&b'\r') {
            return Plain::No;
        }
        from += end + 1;
    }
}

/// Whether `bytes` starts with `prefix` (lowercase), in any case; false
/// while it is shorter.
fn starts_with_ignoring_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}

fn parse_with<'b>(
    bytes: &'b [u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Parsed, httparse::Error> {
    let mut request = httparse::Request::new(&mut []);
    // hyper's server parses with the default `ParserConfig` unless told
    // otherwise, and affinity tells it nothing.
    let status = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        bytes,
        headers,
    )?;
    Ok(match status {
        httparse::Status::Complete(len) => {
            Parsed::Complete(len, framing(request.version == Some(1), request.headers))
        }
        httparse::Status::Partial => Parsed::Partial,
    })
}

/// How hyper's `Server::parse` frames a request's body, except that both
/// headers together are reported whatever their values.
fn framing(http_11: bool, headers: &[httparse::Header<'_>]) -> Framing {
    let mut length = ContentLength::Absent;
    // Whether the last `Transfer-Encoding` header ends in `chunked`: each
    // one overrides the previous in hyper.
    let mut chunked = None;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = Some(ends_in_chunked(header.value));
        } else if header.name.eq_ignore_ascii_case("content-length") {
            length = match (length, digits(header.value)) {
                (ContentLength::Absent, Some(len)) => ContentLength::Valid(len),
                (ContentLength::Valid(prev), Some(len)) if prev == len => length,
                _ => ContentLength::Invalid,
            };
        }
    }
    match (length, chunked) {
        (ContentLength::Absent, None) => Framing::Length(0),
        (ContentLength::Absent, Some(true)) if http_11 => Framing::Chunked,
        (ContentLength::Absent, Some(_)) => Framing::Invalid,
        (ContentLength::Valid(len), None) if len <= MAX_CONTENT_LENGTH => Framing::Length(len),
        (_, None) => Framing::Invalid,
        (_, Some(_)) => Framing::Ambiguous,
    }
}

/// hyper's `is_chunked_`: the value is visible ASCII (`HeaderValue::to_str`)
/// and its last comma-separated coding, trimmed, is `chunked` in any case.
fn ends_in_chunked(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        && value
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// hyper's `from_digits`: one or more ASCII digits, no sign, no spaces,
/// within `u64`.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        let digit = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

fn hex_digit(byte: u8) -> Option<u64> {
    (byte as char).to_digit(16).map(u64::from)
}

/// Skips up to `left` of `available` bytes: (bytes skipped, bytes left).
fn skip(left: u64, available: usize) -> (usize, u64) {
    let skipped = usize::try_from(left).map_or(available, |left| left.min(available));
    (skipped, left - skipped as u64)
}

/// Whether a head that was partial at `before` bytes may end in the bytes
/// after it: an empty line ends there. hyper's `is_complete_fast`: parsing
/// again only then keeps a head sent a byte at a time linear.
fn may_end_head(bytes: &[u8], before: usize) -> bool {
    let tail = &bytes[before.saturating_sub(3)..];
    tail.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && matches!(&tail[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// The mark the server puts in the extensions of a request the watch
/// flagged; the proxy answers such a request with `400` and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousRequest;

/// The index of the ambiguous request of one connection, if any, shared
/// between its [`Watched`] connection (which sets it) and the service (which
/// reads it). Cloning gives another handle on the same value.
#[derive(Debug, Clone)]
pub struct Ambiguity(Arc<AtomicU64>);

impl Ambiguity {
    fn new() -> Ambiguity {
        Ambiguity(Arc::new(AtomicU64::new(NONE)))
    }

    /// The index (0-based) of the connection's first request with both
    /// `Content-Length` and `Transfer-Encoding`, if one has been read.
    pub fn get(&self) -> Option<u64> {
        match self.0.load(Ordering::Acquire) {
            NONE => None,
            index => Some(index),
        }
    }

    /// Whether the connection's request number `index` (0-based) is the one
    /// with both headers. Set before hyper parses that request's head.
    pub fn is(&self, index: u64) -> bool {
        self.get() == Some(index)
    }

    fn set(&self, index: u64) {
        self.0.store(index, Ordering::Release);
    }
}

/// A client connection whose reads are followed by a [`FramingWatch`],
/// and capped by its [`read_limit`](FramingWatch::read_limit) while it
/// follows; writes pass through untouched.
#[derive(Debug)]
pub struct Watched<T> {
    io: T,
    watch: FramingWatch,
    ambiguity: Ambiguity,
}

impl<T> Watched<T> {
    /// Wraps a new client connection. The [`Ambiguity`] is for the service.
    ///
    /// The watch mirrors hyper only if hyper's HTTP/1 server is built with
    /// `max_buf_size(max_head_bytes)` and its default parser settings (no
    /// `ignore_invalid_headers`, no
    /// `allow_multiple_spaces_in_request_line_delimiters`): a hyper that
    /// takes heads the watch refuses would get past it.
    pub fn new(io: T, max_head_bytes: usize) -> (Watched<T>, Ambiguity) {
        let ambiguity = Ambiguity::new();
        let watched = Watched {
            io,
            watch: FramingWatch::new(max_head_bytes),
            ambiguity: ambiguity.clone(),
        };
        (watched, ambiguity)
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T> Watched<T> {
    /// Follows the bytes just read.
    fn watch(&mut self, read: &[u8]) {
        self.watch.feed(read);
        if let Some(index) = self.watch.ambiguous() {
            self.ambiguity.set(index);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(limit) = this.watch.read_limit() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if buf.remaining() <= limit {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            this.watch(&buf.filled()[before..]);
        } else {
            // Read no more than the limit (see the module docs). Without
            // unsafe code, a smaller window on the caller's buffer has to be
            // initialised first: only reads larger than the limit pay that.
            let mut limited = ReadBuf::new(buf.initialize_unfilled_to(limit));
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut limited))?;
            let read = limited.filled().len();
            buf.advance(read);
            let filled = buf.filled();
            this.watch(&filled[filled.len() - read..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The head limit of these tests: hyper's smallest `max_buf_size`.
    const MAX: usize = 8192;

    /// A request that looks like a smuggling attempt, as body text.
    const SMUGGLE: &str = "GET /admin HTTP/1.1\r\nContent-Length: 5\r\n\
                           Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    const GET: &str = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";

    /// An ambiguous request that hyper takes (as chunked).
    const AMBIGUOUS: &str = "POST /s HTTP/1.1\r\nContent-Length: 5\r\n\
                             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    fn post(body: &str) -> String {
        format!(
            "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn chunked_post() -> String {
        format!(
            "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;name=value\r\nhello\r\n\
             00A \t;x=\"y\"\r\n0123456789\r\n\
             {:X}\r\n{SMUGGLE}\r\n\
             0;last\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n",
            SMUGGLE.len()
        )
    }

    fn fed(stream: &[u8], sizes: impl IntoIterator<Item = usize>) -> FramingWatch {
        let mut watch = FramingWatch::new(MAX);
        let mut rest = stream;
        let mut sizes = sizes.into_iter();
        while !rest.is_empty() {
            let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            let (chunk, after) = rest.split_at(size);
            watch.feed(chunk);
            rest = after;
        }
        watch
    }

    fn whole(stream: &[u8]) -> FramingWatch {
        fed(stream, [])
    }

    /// What any chunking must agree on.
    fn outcome(watch: &FramingWatch) -> (Option<u64>, u64) {
        (watch.ambiguous(), watch.requests())
    }

    /// Fed split at every position, byte by byte, and in short runs, the
    /// stream gives the same outcome as fed whole.
    fn assert_any_split_agrees(stream: &[u8]) {
        let want = whole(stream);
        let check = |got: FramingWatch, how: &str| {
            assert_eq!(outcome(&got), outcome(&want), "{how}");
            if want.is_following() {
                assert!(got.is_following(), "{how}");
            }
        };
        for at in 1..stream.len() {
            check(fed(stream, [at]), &format!("split at {at}"));
        }
        check(fed(stream, std::iter::repeat(1)), "byte by byte");
        for run in 2..8 {
            check(
                fed(stream, std::iter::repeat(run)),
                &format!("runs of {run}"),
            );
        }
    }

    /// A stream and what the watch and hyper make of it.
    struct Sample {
        name: &'static str,
        stream: Vec<u8>,
        ambiguous: Option<u64>,
        /// Heads the watch follows.
        requests: u64,
        following: bool,
        /// Requests hyper hands to the service.
        hyper: u64,
    }

    fn sample(
        name: &'static str,
        parts: &[&str],
        ambiguous: Option<u64>,
        requests: u64,
        hyper: u64,
    ) -> Sample {
        Sample {
            name,
            stream: parts.concat().into_bytes(),
            ambiguous,
            requests,
            following: ambiguous.is_none(),
            hyper,
        }
    }

    /// A sample the watch gives up on: whatever follows is not flagged.
    fn lost(name: &'static str, parts: &[&str], requests: u64, hyper: u64) -> Sample {
        let mut parts = parts.to_vec();
        parts.push(AMBIGUOUS);
        Sample {
            following: false,
            ..sample(name, &parts, None, requests, hyper)
        }
    }

    fn samples() -> Vec<Sample> {
        let smuggle_post = post(SMUGGLE);
        let chunked = chunked_post();
        let big_value = "a".repeat(MAX);
        let over = format!("GET /big HTTP/1.1\r\nX-Big: {big_value}\r\n\r\n");
        let at_limit = head_of_len(MAX);
        let under_limit = head_of_len(MAX - 2);
        let many_headers = format!("GET /many HTTP/1.1\r\n{}\r\n", "X-Many: 1\r\n".repeat(150));
        let post3 = post("abc");
        vec![
            sample("gets", &[GET, GET, GET], None, 3, 3),
            sample(
                "bodies that look like heads",
                &[GET, smuggle_post.as_str(), chunked.as_str(), GET],
                None,
                4,
                4,
            ),
            sample(
                "ambiguous after a keep-alive sequence",
                &[GET, smuggle_post.as_str(), chunked.as_str(), AMBIGUOUS, GET],
                Some(3),
                4,
                4,
            ),
            sample(
                "transfer-encoding first",
                &[
                    GET,
                    "POST /s HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\
                        Content-Length: 5\r\n\r\n0\r\n\r\n",
                ],
                Some(1),
                2,
                2,
            ),
            sample(
                "mixed-case names",
                &["POST /s HTTP/1.1\r\ncOnTeNt-LeNgTh: 5\r\n\
                   TRANSFER-encoding: chunked\r\n\r\n0\r\n\r\n"],
                Some(0),
                1,
                1,
            ),
            sample(
                "gzip, chunked",
                &[
                    post3.as_str(),
                    "POST /s HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\
                    Content-Length: 0\r\n\r\n0\r\n\r\n",
                ],
                Some(1),
                2,
                2,
            ),
            sample(
                "two content-lengths and two transfer-encodings",
                &[
                    "POST /s HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: gzip\r\n\
                   Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                ],
                Some(0),
                1,
                1,
            ),
            // Flagged whatever the values: hyper refuses these, so the
            // service never sees them.
            sample(
                "ambiguous with an invalid content-length",
                &[
                    GET,
                    "POST /s HTTP/1.1\r\nContent-Length: abc\r\n\
                        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                ],
                Some(1),
                2,
                1,
            ),
            sample(
                "ambiguous with a transfer-encoding hyper refuses",
                &["POST /s HTTP/1.1\r\nContent-Length: 1\r\n\
                   Transfer-Encoding: identity\r\n\r\nx"],
                Some(0),
                1,
                0,
            ),
            sample(
                "ambiguous on HTTP/1.0",
                &["POST /s HTTP/1.0\r\nContent-Length: 5\r\n\
                   Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
                Some(0),
                1,
                0,
            ),
            sample(
                "leading empty lines and bare LF heads",
                &[
                    "\r\n\r\n",
                    GET,
                    "\n\n",
                    "GET /lf HTTP/1.1\nHost: h\nContent-Length: 3\n\nabc",
                    "\r\n",
                    post3.as_str(),
                    "POST /s HTTP/1.1\nContent-Length: 1\nTransfer-Encoding: chunked\n\n0\r\n\r\n",
                ],
                Some(3),
                4,
                4,
            ),
            sample(
                "identical content-lengths are one",
                &[
                    "POST /p HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc",
                    GET,
                ],
                None,
                2,
                2,
            ),
            sample(
                "the last transfer-encoding decides",
                &[
                    "POST /c HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\
                     Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                    GET,
                ],
                None,
                2,
                2,
            ),
            sample(
                "odd but valid chunk lines",
                &[
                    "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                     0000000000000000000003\r\nabc\r\n\
                     a \t \r\n0123456789\r\n\
                     B;a=\"b;c\";d\r\n0123456789A\r\n\
                     0\r\n\r\n",
                    "POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                     0\r\n\nX-Odd: 1\r\n\r\n",
                    GET,
                ],
                None,
                3,
                3,
            ),
            sample(
                "expect 100-continue",
                &[
                    "POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
                    GET,
                ],
                None,
                2,
                2,
            ),
            sample(
                "more headers than the stack holds",
                &[many_headers.as_str(), AMBIGUOUS],
                Some(1),
                2,
                2,
            ),
            sample(
                "a head of exactly the limit",
                &[at_limit.as_str(), AMBIGUOUS],
                Some(1),
                2,
                2,
            ),
            sample(
                "the limit counts leading empty lines",
                &["\r\n", under_limit.as_str(), AMBIGUOUS],
                Some(1),
                2,
                2,
            ),
            lost("a head over the limit", &[GET, over.as_str()], 1, 1),
            lost(
                "a head one byte over the limit",
                &[&head_of_len(MAX + 1)],
                0,
                0,
            ),
            lost(
                "a head over the limit after a large body",
                &[&post(&"b".repeat(3 * MAX)), over.as_str()],
                1,
                1,
            ),
            lost(
                "leading empty lines over the limit",
                &["\r\n\r\n", under_limit.as_str()],
                0,
                0,
            ),
            lost(
                "garbage",
                &[GET, "\x16\x03\x01\x02\x00\x01\x00\x01\u{fc}\x03\x03"],
                1,
                1,
            ),
            // A plain head (see `plain`) is not parsed: the watch follows
            // past one that hyper refuses, and flags what comes after it,
            // which hyper never reads.
            sample(
                "a space in a header name",
                &["GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", AMBIGUOUS],
                Some(1),
                2,
                0,
            ),
            lost(
                "the HTTP/2 preface",
                &["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
                0,
                0,
            ),
            lost(
                "a chunk size that is not hex",
                &[&chunk_body("zz\r\n")],
                1,
                1,
            ),
            lost(
                "a bare LF after a chunk size",
                &[&chunk_body("3\nabc\r\n0\r\n\r\n")],
                1,
                1,
            ),
            lost(
                "chunk data not followed by CRLF",
                &[&chunk_body("3\r\nabcd\r\n")],
                1,
                1,
            ),
            lost(
                "an overflowing chunk size",
                &[&chunk_body("10000000000000000\r\n")],
                1,
                1,
            ),
            lost(
                "a bare LF in a chunk extension",
                &[&chunk_body("3;a\nb\r\nabc\r\n")],
                1,
                1,
            ),
            lost(
                "a bare LF after the last chunk starts trailers, as in hyper",
                &[&chunk_body("0\r\n\n")],
                1,
                1,
            ),
            lost(
                "a signed content-length",
                &[&length_head("+3"), "abc"],
                0,
                0,
            ),
            lost(
                "a content-length list",
                &[&length_head("3, 3"), "abc"],
                0,
                0,
            ),
            lost("a hex content-length", &[&length_head("0x3"), "abc"], 0, 0),
            lost("an empty content-length", &[&length_head("")], 0, 0),
            lost(
                "a content-length beyond hyper's",
                &[&length_head("18446744073709551614")],
                0,
                0,
            ),
            lost(
                "a content-length beyond u64",
                &[&length_head("18446744073709551616")],
                0,
                0,
            ),
            lost(
                "different content-lengths",
                &["POST /p HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"],
                0,
                0,
            ),
            lost("gzip alone", &[&encoding_head("gzip")], 0, 0),
            lost(
                "chunked, then gzip",
                &[&encoding_head("chunked, gzip")],
                0,
                0,
            ),
            lost(
                "a later transfer-encoding without chunked",
                &["POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\
                   Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n"],
                0,
                0,
            ),
            lost(
                "non-ASCII in transfer-encoding",
                &[&encoding_head("\u{e9}, chunked")],
                0,
                0,
            ),
            lost(
                "transfer-encoding on HTTP/1.0",
                &["POST /c HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
                0,
                0,
            ),
        ]
    }

    /// A GET head of exactly `len` bytes.
    fn head_of_len(len: usize) -> String {
        let frame = "GET /limit HTTP/1.1\r\nX-Pad: \r\n\r\n".len();
        format!(
            "GET /limit HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(len - frame)
        )
    }

    fn chunk_body(body: &str) -> String {
        format!("POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
    }

    fn length_head(value: &str) -> String {
        format!("POST /p HTTP/1.1\r\nContent-Length: {value}\r\n\r\n")
    }

    fn encoding_head(value: &str) -> String {
        format!("POST /c HTTP/1.1\r\nTransfer-Encoding: {value}\r\n\r\n0\r\n\r\n")
    }

    #[test]
    fn each_sample_is_followed_as_expected() {
        for s in samples() {
            let watch = whole(&s.stream);
            assert_eq!(watch.ambiguous(), s.ambiguous, "{}", s.name);
            assert_eq!(watch.requests(), s.requests, "{}", s.name);
            assert_eq!(watch.is_following(), s.following, "{}", s.name);
        }
    }

    #[test]
    fn each_sample_gives_the_same_result_however_it_is_split() {
        for s in samples() {
            if s.stream.len() < 2 * MAX {
                assert_any_split_agrees(&s.stream);
            }
        }
    }

    #[test]
    fn hyper_hands_the_service_the_requests_the_watch_follows_and_flags() {
        for s in samples() {
            for chunks in [&[usize::MAX][..], &[1], &[3, 7, 1]] {
                let seen = hyper_sees(&s.stream, chunks);
                assert_eq!(seen.len() as u64, s.hyper, "{}: {seen:?}", s.name);
                for (index, request) in seen.iter().enumerate() {
                    let index = index as u64;
                    assert_eq!(request.flagged, s.ambiguous == Some(index), "{}", s.name);
                }
            }
        }
    }

    #[test]
    fn a_body_that_looks_like_an_ambiguous_head_is_skipped_not_parsed() {
        let stream = [post(SMUGGLE), chunked_post(), post(SMUGGLE)].concat();
        let watch = whole(stream.as_bytes());
        assert_eq!(outcome(&watch), (None, 3));
        assert!(watch.is_following());
    }

    #[test]
    fn once_stopped_nothing_more_is_followed_nor_flagged() {
        let mut watch = whole(AMBIGUOUS.as_bytes());
        assert_eq!(outcome(&watch), (Some(0), 1));
        watch.feed([GET, AMBIGUOUS].concat().as_bytes());
        assert_eq!(outcome(&watch), (Some(0), 1));

        let mut watch = whole(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(!watch.is_following());
        watch.feed(AMBIGUOUS.as_bytes());
        assert_eq!(outcome(&watch), (None, 0));
    }

    #[test]
    fn a_whole_head_is_parsed_in_place_and_a_split_one_freed_once_parsed() {
        let mut watch = FramingWatch::new(MAX);
        watch.feed(GET.as_bytes());
        watch.feed(post("abc").as_bytes());
        assert_eq!(watch.partial.capacity(), 0);
        watch.feed(&GET.as_bytes()[..5]);
        assert_eq!(watch.partial, b"GET /");
        watch.feed(&GET.as_bytes()[5..]);
        assert_eq!(watch.partial.capacity(), 0);
        assert_eq!(outcome(&watch), (None, 3));
        assert!(std::mem::size_of::<FramingWatch>() <= 56);
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_is_parsed_only_when_it_may_end() {
        let head = head_of_len(MAX);
        assert!(!may_end_head(&head.as_bytes()[..MAX - 1], MAX - 2));
        assert!(may_end_head(head.as_bytes(), MAX - 1));
        assert!(may_end_head(b"GET / HTTP/1.1\n\n", 15));
        assert!(may_end_head(b"\r\n\r\n", 3));
        let watch = fed(head.as_bytes(), std::iter::repeat(1));
        assert_eq!(outcome(&watch), (None, 1));
    }

    #[test]
    fn the_read_limit_leaves_room_for_no_more_than_the_head_limit() {
        let mut watch = FramingWatch::new(MAX);
        assert_eq!(watch.read_limit(), Some(MAX));
        watch.feed(b"GET / HT");
        assert_eq!(watch.read_limit(), Some(MAX - 8));
        watch.feed(b"TP/1.1\r\nContent-Length: 100\r\n\r\n0123456789");
        assert_eq!(watch.read_limit(), Some(90 + MAX));
        watch.feed(&[b'x'; 90]);
        watch.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab");
        assert_eq!(watch.read_limit(), Some(3 + MAX));
        watch.feed(b"cde\r\n");
        assert_eq!(watch.read_limit(), Some(MAX));
        watch.feed(b"0\r\n\r\n");
        assert_eq!(watch.read_limit(), Some(MAX));
        watch.feed(AMBIGUOUS.as_bytes());
        assert_eq!(watch.ambiguous(), Some(2));
        assert_eq!(watch.read_limit(), None);
        assert_eq!(FramingWatch::new(0).read_limit(), Some(1));
    }

    #[tokio::test]
    async fn watched_reads_stop_at_the_head_limit_while_it_follows() {
        let (mut client, server) = tokio::io::duplex(8 * MAX);
        let (mut server, _) = Watched::new(server, MAX);
        let over = format!("GET /big HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX));
        let stream = [GET, &over, GET].concat();
        client.write_all(stream.as_bytes()).await.unwrap();
        drop(client);
        let mut buf = vec![0; 4 * MAX];
        let first = server.read(&mut buf).await.unwrap();
        assert_eq!(first, MAX, "the first head and the limit after it");
        let second = server.read(&mut buf).await.unwrap();
        assert_eq!(second, GET.len(), "the rest of the limit");
        assert!(!server.watch.is_following(), "the second head outgrew it");
        let rest = server.read(&mut buf).await.unwrap();
        assert_eq!(
            first + second + rest,
            stream.len(),
            "then reads are not capped"
        );
    }

    /// What the service saw of one request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Seen {
        method: String,
        target: String,
        /// `None` when hyper failed to read it.
        body: Option<Vec<u8>>,
        /// The service's [`Ambiguity::is`] for this request's index.
        flagged: bool,
    }

    /// Serves `stream` with hyper (HTTP/1 server, head limit [`MAX`], up to
    /// 1000 headers) over a [`Watched`] connection, the client writing it in
    /// runs of `chunks` (cycled): the requests the service saw.
    fn hyper_sees(stream: &[u8], chunks: &[usize]) -> Vec<Seen> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(serve(stream, chunks))
    }

    async fn serve(stream: &[u8], chunks: &[usize]) -> Vec<Seen> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (server, ambiguity) = Watched::new(server, MAX);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let next = AtomicU64::new(0);
        let service = {
            let seen = Arc::clone(&seen);
            service_fn(move |request: Request<Incoming>| {
                let flagged = ambiguity.is(next.fetch_add(1, Ordering::Relaxed));
                let seen = Arc::clone(&seen);
                async move {
                    let method = request.method().to_string();
                    let target = request.uri().to_string();
                    let body = request.into_body().collect().await;
                    let body = body.ok().map(|body| body.to_bytes().to_vec());
                    seen.lock().unwrap().push(Seen {
                        method,
                        target,
                        body,
                        flagged,
                    });
                    // Not 2xx: a CONNECT is not turned into a tunnel.
                    let mut response = Response::new(Empty::<Bytes>::new());
                    *response.status_mut() = StatusCode::NOT_FOUND;
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .max_buf_size(MAX)
            .max_headers(1000)
            .serve_connection(TokioIo::new(server), service);
        let (mut read, mut write) = tokio::io::split(client);
        let writer = async move {
            let mut rest = stream;
            for &size in chunks.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, after) = rest.split_at(size.clamp(1, rest.len()));
                rest = after;
                // hyper may close first (after an ambiguous request).
                if write.write_all(chunk).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            let _ = write.shutdown().await;
        };
        let reader = async move {
            let mut responses = Vec::new();
            let _ = read.read_to_end(&mut responses).await;
        };
        let all = async { tokio::join!(connection, writer, reader) };
        // hyper's own result (an error for a head it refuses) is not the
        // point: what the service saw is.
        let (_served, (), ()) = tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .expect("hyper finished");
        std::mem::take(&mut *seen.lock().unwrap())
    }

    #[tokio::test]
    async fn watched_reads_publish_the_index_and_writes_pass_through() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut server, ambiguity) = Watched::new(server, MAX);
        let stream = [GET, &post(SMUGGLE), &chunked_post(), AMBIGUOUS, GET].concat();
        let to_send = stream.clone();
        let writer = tokio::spawn(async move {
            client.write_all(to_send.as_bytes()).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut read = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = server.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            read.extend_from_slice(&buf[..n]);
        }
        assert_eq!(read, stream.as_bytes());
        assert_eq!(ambiguity.get(), Some(3));
        assert!(ambiguity.is(3) && !ambiguity.is(0) && !ambiguity.is(4));

        let mut client = writer.await.unwrap();
        server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        let parts = [io::IoSlice::new(b"a: b\r\n"), io::IoSlice::new(b"\r\n")];
        let mut written = 0;
        while written < 8 {
            written += server.write_vectored(&parts).await.unwrap();
            if written < 8 {
                server.write_all(&b"a: b\r\n\r\n"[written..]).await.unwrap();
                written = 8;
            }
        }
        assert_eq!(
            server.is_write_vectored(),
            server.get_ref().is_write_vectored()
        );
        server.flush().await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"HTTP/1.1 200 OK\r\na: b\r\n\r\n");
    }

    #[test]
    fn a_connection_without_an_ambiguous_request_publishes_nothing() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (mut client, server) = tokio::io::duplex(1024);
            let (mut server, ambiguity) = Watched::new(server, MAX);
            let stream = [GET, &post(SMUGGLE)].concat();
            client.write_all(stream.as_bytes()).await.unwrap();
            drop(client);
            let mut read = Vec::new();
            server.read_to_end(&mut read).await.unwrap();
            assert_eq!(ambiguity.get(), None);
            assert!(!ambiguity.is(0) && !ambiguity.is(u64::MAX));
        });
    }

    // The model for the property tests: well-formed requests, written out.

    #[derive(Debug, Clone)]
    enum Body {
        None,
        /// `Content-Length: 0` and no body.
        Zero,
        Length(Vec<u8>),
        /// Chunks (data, extension, size digits padding, upper-case hex),
        /// then trailers.
        Chunked(Vec<(Vec<u8>, &'static str, usize, bool)>, Vec<String>),
    }

    #[derive(Debug, Clone)]
    struct Model {
        leading: Vec<&'static str>,
        method: &'static str,
        target: String,
        /// HTTP/1.0 (with `Connection: keep-alive`); never chunked.
        http_10: bool,
        /// Bare LF line endings in the head.
        bare_lf: bool,
        headers: Vec<String>,
        /// Where the framing headers go among the others.
        framing_at: usize,
        /// The `Content-Length` and `Transfer-Encoding` names as written.
        length_name: String,
        encoding_name: String,
        coding: &'static str,
        body: Body,
        /// Both headers, the body chunked.
        ambiguous: bool,
        /// Which of the two comes first.
        length_first: bool,
    }

    impl Model {
        fn write(&self, out: &mut Vec<u8>) {
            let eol = if self.bare_lf { "\n" } else { "\r\n" };
            for line in &self.leading {
                out.extend_from_slice(line.as_bytes());
            }
            let version = if self.http_10 { "1.0" } else { "1.1" };
            let mut head = vec![format!("{} {} HTTP/{version}", self.method, self.target)];
            let mut headers = self.headers.clone();
            if self.http_10 {
                headers.push("Connection: keep-alive".into());
            }
            let length = |len: usize| format!("{}: {len}", self.length_name);
            let encoding = format!("{}: {}", self.encoding_name, self.coding);
            let data = self.data();
            let framing = match &self.body {
                Body::Chunked(..) if self.ambiguous && self.length_first => {
                    vec![length(data.len()), encoding]
                }
                Body::Chunked(..) if self.ambiguous => vec![encoding, length(data.len())],
                Body::Chunked(..) => vec![encoding],
                Body::Zero => vec![length(0)],
                Body::Length(data) => vec![length(data.len())],
                Body::None => vec![],
            };
            let at = self.framing_at % (headers.len() + 1);
            headers.splice(at..at, framing);
            head.extend(headers);
            for line in head {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(eol.as_bytes());
            }
            out.extend_from_slice(eol.as_bytes());
            match &self.body {
                Body::None | Body::Zero => {}
                Body::Length(data) => out.extend_from_slice(data),
                Body::Chunked(chunks, trailers) => {
                    let last = (Vec::new(), ";end", 1, false);
                    for (data, ext, width, upper) in chunks.iter().chain([&last]) {
                        let size = if *upper {
                            format!("{:0width$X}", data.len())
                        } else {
                            format!("{:0width$x}", data.len())
                        };
                        out.extend_from_slice(format!("{size}{ext}\r\n").as_bytes());
                        if !data.is_empty() {
                            out.extend_from_slice(data);
                            out.extend_from_slice(b"\r\n");
                        }
                    }
                    for trailer in trailers {
                        out.extend_from_slice(format!("{trailer}\r\n").as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                }
            }
        }

        /// The body as the service reads it.
        fn data(&self) -> Vec<u8> {
            match &self.body {
                Body::None | Body::Zero => Vec::new(),
                Body::Length(data) => data.clone(),
                Body::Chunked(chunks, _) => {
                    chunks.iter().flat_map(|(data, ..)| data.clone()).collect()
                }
            }
        }
    }

    fn any_case(name: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<bool>(), name.len()).prop_map(move |upper| {
            name.chars()
                .zip(upper)
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect()
        })
    }

    fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(SMUGGLE.as_bytes().to_vec()),
            proptest::collection::vec(any::<u8>(), 1..40),
            "[a-z:\r\n0-9]{1,40}".prop_map(String::into_bytes),
        ]
    }

    fn chunked_body() -> impl Strategy<Value = Body> {
        let chunk = (
            body_bytes(),
            prop_oneof![
                Just(""),
                Just(";a=b"),
                Just(";x"),
                Just(" \t;q=\"v;w\""),
                Just("  ")
            ],
            1usize..5,
            any::<bool>(),
        );
        let trailer = "(X-Sum|Expires|x-t): [a-z0-9 ]{0,10}";
        (
            proptest::collection::vec(chunk, 0..4),
            proptest::collection::vec(trailer, 0..3),
        )
            .prop_map(|(chunks, trailers)| Body::Chunked(chunks, trailers))
    }

    fn model() -> impl Strategy<Value = Model> {
        let leading = proptest::collection::vec(prop_oneof![Just("\r\n"), Just("\n")], 0..3);
        let leading = prop_oneof![4 => Just(Vec::new()), 1 => leading];
        let method = prop_oneof![
            Just("GET"),
            Just("POST"),
            Just("PUT"),
            Just("DELETE"),
            Just("PATCH"),
            Just("OPTIONS"),
            Just("HEAD"),
            Just("X-CUSTOM"),
        ];
        let header = "(Host|Accept|X-Request-Id|User-Agent|Cookie|x-a): [a-zA-Z0-9=;/._-]{0,20}";
        let body = prop_oneof![
            Just(Body::None),
            Just(Body::Zero),
            body_bytes().prop_map(Body::Length),
            chunked_body(),
        ];
        let coding = prop_oneof![
            Just("chunked"),
            Just("gzip, chunked"),
            Just("CHUNKED"),
            Just("deflate,chunked")
        ];
        (
            (
                leading,
                method,
                "/[a-z0-9/?=&]{0,16}",
                any::<bool>(),
                any::<bool>(),
            ),
            (proptest::collection::vec(header, 0..5), any::<usize>()),
            (
                any_case("content-length"),
                any_case("transfer-encoding"),
                coding,
            ),
            (
                body,
                chunked_body(),
                prop::bool::weighted(0.1),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (leading, method, target, http_10, bare_lf),
                    (headers, framing_at),
                    (length_name, encoding_name, coding),
                    (body, chunked, ambiguous, length_first),
                )| {
                    let body = if ambiguous { chunked } else { body };
                    let chunked = matches!(body, Body::Chunked(..));
                    Model {
                        leading,
                        method,
                        target,
                        http_10: http_10 && !chunked,
                        bare_lf,
                        headers,
                        framing_at,
                        length_name,
                        encoding_name,
                        coding,
                        body,
                        ambiguous,
                        length_first,
                    }
                },
            )
    }

    fn stream_of(models: &[Model]) -> Vec<u8> {
        let mut stream = Vec::new();
        for model in models {
            model.write(&mut stream);
        }
        stream
    }

    /// The first ambiguous request's index, and the heads followed.
    fn expected(models: &[Model]) -> (Option<u64>, u64) {
        match models.iter().position(|m| m.ambiguous) {
            Some(index) => (Some(index as u64), index as u64 + 1),
            None => (None, models.len() as u64),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// A head read as plain is one httparse reads the same: as long,
        /// and with no body; one with a `Content-Length` or
        /// `Transfer-Encoding` (any case) is never plain; and a plain
        /// head's start alone is unfinished, never a head.
        #[test]
        fn a_plain_head_is_what_httparse_reads(
            version in prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0"]),
            lines in prop::collection::vec(prop::sample::select(vec![
                "Host: a.example", "host: b", "Accept: */*", "Cookie: a=1",
                "Connection: keep-alive", "content-length: 5", "Content-Length: 0",
                "TRANSFER-ENCODING: chunked", "Content-Type: text/plain",
                "Transfer-Encodings: x", "TE: trailers", "Contentlength: 3",
            ]), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let head = format!("GET /p?q=1 {version}\r\n{}\r\n", lines.iter().map(|l| format!("{l}\r\n")).collect::<String>());
            let bytes = head.as_bytes();
            let framed = lines.iter().any(|l| {
                let l = l.to_ascii_lowercase();
                l.starts_with("content-length:") || l.starts_with("transfer-encoding:")
            });
            match plain(bytes) {
                Plain::Head(len) => {
                    prop_assert!(!framed);
                    let mut slots = [const { MaybeUninit::uninit() }; 16];
                    let parsed = parse_with(bytes, &mut slots);
                    let same = matches!(parsed, Ok(Parsed::Complete(l, Framing::Length(0))) if l == len);
                    prop_assert!(same);
                    prop_assert_eq!(len, bytes.len());
                }
                Plain::Unfinished => prop_assert!(false, "a whole head is finished"),
                Plain::No => prop_assert!(framed || version == "HTTP/2.0"),
            }
            let cut = cut.index(bytes.len());
            prop_assert!(!matches!(plain(&bytes[..cut]), Plain::Head(_)));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn well_formed_streams_fed_in_any_chunks_are_followed_as_modelled(
            models in proptest::collection::vec(model(), 0..8),
            chunks in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let stream = stream_of(&models);
            let want = expected(&models);
            let whole = whole(&stream);
            prop_assert_eq!(outcome(&whole), want);
            prop_assert_eq!(whole.is_following(), want.0.is_none());
            let split = fed(&stream, chunks.iter().copied().cycle());
            prop_assert_eq!(split, whole);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn hyper_frames_well_formed_streams_as_the_model_and_sees_the_flag(
            models in proptest::collection::vec(model(), 0..6),
            chunks in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let stream = stream_of(&models);
            let (ambiguous, requests) = expected(&models);
            let want: Vec<Seen> = models
                .iter()
                .take(requests as usize)
                .enumerate()
                .map(|(index, m)| Seen {
                    method: m.method.to_string(),
                    target: m.target.clone(),
                    body: Some(m.data()),
                    flagged: ambiguous == Some(index as u64),
                })
                .collect();
            prop_assert_eq!(hyper_sees(&stream, &chunks), want);
        }
    }
}
