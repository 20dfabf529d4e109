//! One HTTP/1.1 exchange with a backend, in the request's own task: the
//! request head and body written, the response head read
//! ([`exchange`]), then the response body read as the client's connection
//! asks for it ([`ResponseBody`]). No task of its own per backend
//! connection, no channel between the request and its connection: the
//! bytes go from the backend's socket to hyper's server as frames that
//! share the buffer they were read into.
//!
//! * **Writing** goes on while the response head is awaited: a backend may
//!   answer (`413`, `401`, an early error) before it has read the whole
//!   body. The request body then stops being sent and the connection is not
//!   used again. A failed write is kept while the response is read: a
//!   backend that answered and closed gets its answer through.
//! * **Informational answers** (`100 Continue`, `103`) are read and skipped.
//!   A `101` hands the connection over ([`Upgraded`], with the bytes already
//!   read after the head).
//! * **Reuse**: a connection goes back to its thread's idle list only when
//!   the request was written whole, the response read to its end with no
//!   byte more, and neither side said `close`. A body cut off, dropped
//!   early or failing takes its connection with it.
//! * **Errors** ([`Error`]) keep what [`crate::proxy::failure`] needs: the
//!   backend closing before its head ([`Error::ClosedBeforeHead`]), an I/O
//!   error with its kind, the client's own request body failing
//!   ([`Error::RequestBody`], never the backend's fault).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::HeaderName;
use hyper::{HeaderMap, Method};
use tokio::io::AsyncWrite;

use crate::pool::target::BackendStream;
use crate::proxy::prefixed::Prefixed;
use crate::proxy::request_body::{BoxError, RecoverableBody};
use crate::proxy::upstream::codec::{
    self, ChunkError, ChunkedDecoder, Decoded, Framing, HeadError, Parsed, RequestFraming,
    ResponseHead,
};
use crate::proxy::upstream::idle::{self, Conn};

/// The first read of a response reserves this much.
const FIRST_READ: usize = 8 * 1024;

/// Reads grow, while they fill what they were given, up to this much.
const MAX_READ: usize = 64 * 1024;

/// Body data frames up to this size are copied next to their framing, to
/// go out in one write.
const COPY_BELOW: usize = 4 * 1024;

/// Why an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend closed the connection before a whole response head.
    #[error("the backend closed the connection before answering")]
    ClosedBeforeHead,
    /// Reading or writing failed.
    #[error("connection error")]
    Io(#[source] io::Error),
    /// The response head is invalid.
    #[error("invalid response")]
    Head(#[source] HeadError),
    /// The chunked response body is invalid.
    #[error("invalid chunked response body")]
    Chunked(#[source] ChunkError),
    /// The response body ended before its `Content-Length`, or before its
    /// last chunk.
    #[error("the backend closed the connection before the end of the response body")]
    BodyCutOff,
    /// The client's request body failed (or went over its limit): the
    /// client's doing, not the backend's.
    #[error("the request body failed")]
    RequestBody(#[source] BoxError),
}

impl Error {
    /// Whether this is the client's request body failing.
    pub fn is_request_body(&self) -> bool {
        matches!(self, Error::RequestBody(_))
    }

    /// Whether the backend closed the connection before its answer.
    pub fn is_closed_before_head(&self) -> bool {
        matches!(self, Error::ClosedBeforeHead)
    }
}

/// The request's body on its way, with its framing.
struct Upload {
    body: Option<RecoverableBody>,
    framing: RequestFraming,
    /// Body bytes still owed under `Content-Length`.
    owed: u64,
    allowed_trailers: Vec<HeaderName>,
}

/// The request as it is being written.
struct Outgoing {
    /// Framing (and small data) to write, from `written` on.
    out: Vec<u8>,
    written: usize,
    /// Data to write after `out`.
    data: Bytes,
    upload: Upload,
    /// Everything has been written and flushed.
    done: bool,
}

/// What a failed write was.
enum SendError {
    Io(io::Error),
    Body(BoxError),
}

/// A request ready to go: its head (written by [`codec::encode_request`])
/// and body.
pub struct Request {
    /// The request head, as bytes.
    pub head: Vec<u8>,
    /// The method (the response's framing depends on it).
    pub method: Method,
    /// The body.
    pub body: RecoverableBody,
    /// How the head says the body is framed.
    pub framing: RequestFraming,
    /// The trailers a chunked body may carry.
    pub allowed_trailers: Vec<HeaderName>,
}

/// A response head, and what comes after it on the connection.
pub struct Answered {
    /// The head.
    pub head: ResponseHead,
    /// The bytes already read after the head.
    pub buf: BytesMut,
    /// Whether the connection may carry another request after the body.
    pub reusable: bool,
}

/// Writes `request` on `conn` and reads the response head (skipping
/// informational ones). The body is sent while the head is awaited; if the
/// head comes first, the rest of the body is not sent and the connection
/// is not reused.
pub async fn exchange(conn: &mut Conn, request: Request) -> Result<Answered, Error> {
    let owed = match request.framing {
        RequestFraming::Length(len) => len,
        RequestFraming::Chunked => 0,
    };
    // A body framed as empty is not read at all (nor given up: it can be
    // sent again elsewhere).
    let body = (request.framing != RequestFraming::Length(0)).then_some(request.body);
    let mut outgoing = Outgoing {
        out: request.head,
        written: 0,
        data: Bytes::new(),
        upload: Upload {
            body,
            framing: request.framing,
            owed,
            allowed_trailers: request.allowed_trailers,
        },
        done: false,
    };
    let mut buf = BytesMut::new();
    let mut write_error = None;
    let method = request.method;
    let head = std::future::poll_fn(|cx| {
        if !outgoing.done && write_error.is_none() {
            match outgoing.poll_send(conn.stream_mut(), cx) {
                Poll::Ready(Ok(())) => outgoing.done = true,
                Poll::Ready(Err(SendError::Body(error))) => {
                    return Poll::Ready(Err(Error::RequestBody(error)));
                }
                Poll::Ready(Err(SendError::Io(error))) => write_error = Some(error),
                Poll::Pending => {}
            }
        }
        match ready!(poll_head(conn.stream_mut(), cx, &mut buf, &method)) {
            Ok(head) => Poll::Ready(Ok(head)),
            Err(Error::ClosedBeforeHead) if write_error.is_some() => Poll::Ready(Err(Error::Io(
                write_error
                    .take()
                    .unwrap_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe)),
            ))),
            Err(error) => Poll::Ready(Err(error)),
        }
    })
    .await?;
    let reusable = head.keep_alive && outgoing.done && write_error.is_none();
    Ok(Answered {
        head,
        buf,
        reusable,
    })
}

impl Outgoing {
    /// Writes what is pending and the body's frames as they come, until the
    /// whole request is written and flushed.
    fn poll_send(
        &mut self,
        io: &mut BackendStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        loop {
            // Small frames ready now go out with what precedes them.
            while self.data.is_empty() && self.out.len() - self.written < COPY_BELOW {
                match self.upload.poll_next(cx, &mut self.out) {
                    Poll::Ready(Ok(Some(data))) => self.data = data,
                    Poll::Ready(Ok(None)) => break,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(SendError::Body(error))),
                    Poll::Pending => break,
                }
            }
            if self.written == self.out.len() && self.data.is_empty() {
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(SendError::Io)?;
                if self.upload.body.is_none() {
                    return Poll::Ready(Ok(()));
                }
                // Waiting on the body, everything before it flushed.
                match ready!(self.upload.poll_next(cx, &mut self.out)) {
                    Ok(Some(data)) => self.data = data,
                    Ok(None) => {}
                    Err(error) => return Poll::Ready(Err(SendError::Body(error))),
                }
                continue;
            }
            ready!(self.poll_write(io, cx)).map_err(SendError::Io)?;
        }
    }

    /// Writes `out` (from `written`) and then `data`, as far as the socket
    /// takes them; ready once both are written.
    fn poll_write(&mut self, io: &mut BackendStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() || !self.data.is_empty() {
            let head = &self.out[self.written..];
            let n = if head.is_empty() {
                ready!(Pin::new(&mut *io).poll_write(cx, &self.data))?
            } else if self.data.is_empty() {
                ready!(Pin::new(&mut *io).poll_write(cx, head))?
            } else {
                let slices = [IoSlice::new(head), IoSlice::new(&self.data)];
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_out = n.min(head.len());
            self.written += from_out;
            self.data.advance(n - from_out);
        }
        self.out.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl Upload {
    /// The body's next frame: its framing (and small data) appended to
    /// `out`, larger data returned to be written after `out`. `None` once
    /// the body has ended (its end written to `out`).
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Poll<Result<Option<Bytes>, BoxError>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        let frame = match ready!(Pin::new(body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Poll::Ready(Err(error)),
            None => {
                self.body = None;
                return Poll::Ready(self.end(None, out).map(|()| None));
            }
        };
        let frame = match frame.into_data() {
            Ok(data) => return Poll::Ready(self.data(data, out)),
            Err(frame) => frame,
        };
        self.body = None;
        let trailers = frame.into_trailers().ok();
        Poll::Ready(self.end(trailers.as_ref(), out).map(|()| None))
    }

    /// One data frame: framed into `out`, and returned if too large to copy.
    fn data(&mut self, data: Bytes, out: &mut Vec<u8>) -> Result<Option<Bytes>, BoxError> {
        if data.is_empty() {
            return Ok(Some(Bytes::new()));
        }
        match self.framing {
            RequestFraming::Length(_) => {
                let len = data.len() as u64;
                if len > self.owed {
                    return Err("the request body is longer than its Content-Length".into());
                }
                self.owed -= len;
            }
            RequestFraming::Chunked => codec::encode_chunk_size(data.len(), out),
        }
        let chunked = self.framing == RequestFraming::Chunked;
        if data.len() < COPY_BELOW {
            out.extend_from_slice(&data);
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
            return Ok(Some(Bytes::new()));
        }
        if chunked {
            // The CRLF after the data goes before whatever comes next.
            let mut with_end = Vec::with_capacity(data.len() + 2);
            with_end.extend_from_slice(&data);
            with_end.extend_from_slice(b"\r\n");
            return Ok(Some(Bytes::from(with_end)));
        }
        Ok(Some(data))
    }

    /// The end of the body: the last chunk and trailers, or a check that
    /// `Content-Length` bytes were sent.
    fn end(&mut self, trailers: Option<&HeaderMap>, out: &mut Vec<u8>) -> Result<(), BoxError> {
        match self.framing {
            RequestFraming::Chunked => {
                codec::encode_last_chunk(trailers, &self.allowed_trailers, out);
                Ok(())
            }
            RequestFraming::Length(_) if self.owed > 0 => {
                Err("the request body ended before its Content-Length".into())
            }
            RequestFraming::Length(_) => Ok(()),
        }
    }
}

/// Reads until `buf` starts with a final response head, and takes it off.
fn poll_head(
    io: &mut BackendStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    method: &Method,
) -> Poll<Result<ResponseHead, Error>> {
    loop {
        while !buf.is_empty() {
            match codec::parse_forwarded_response(buf, method).map_err(Error::Head)? {
                Parsed::Head(head, _) => return Poll::Ready(Ok(head)),
                Parsed::Informational(_) => continue,
                Parsed::Partial => break,
            }
        }
        let mut next = FIRST_READ;
        if ready!(poll_read(io, cx, buf, &mut next)).map_err(Error::Io)? == 0 {
            return Poll::Ready(Err(Error::ClosedBeforeHead));
        }
    }
}

/// Reads into `buf`'s spare room (at least `next` bytes of it), growing
/// `next` when a read fills it. Returns the bytes read (0: the end).
fn poll_read(
    io: &mut BackendStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    next: &mut usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < *next / 2 {
        buf.reserve(*next);
    }
    let room = buf.capacity() - buf.len();
    let read = ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, buf))?;
    if read == room {
        *next = (*next * 2).min(MAX_READ);
    }
    Poll::Ready(Ok(read))
}

/// Where a response body is.
#[derive(Debug)]
enum Reading {
    /// This many bytes left (never 0).
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the backend closes.
    Close,
    /// Read to its end.
    Done,
}

/// A backend's response body, read from its connection as it is polled.
/// Read to its end, it gives the connection back to the idle list (when
/// reusable); dropped before, or failing, it closes it.
#[derive(Debug)]
pub struct ResponseBody {
    conn: Option<Conn>,
    buf: BytesMut,
    reading: Reading,
    reusable: bool,
    next_read: usize,
    /// A failure found, reported at the next poll (see [`ResponseBody::fail`]).
    failed: Option<Error>,
}

impl ResponseBody {
    /// The body of `answered`'s response, coming on `conn`. A body with
    /// nothing in it is whole at once: its connection goes back now.
    pub fn new(conn: Conn, framing: Framing, buf: BytesMut, reusable: bool) -> ResponseBody {
        let reading = match framing {
            Framing::Empty | Framing::Switch => Reading::Done,
            Framing::Length(len) => Reading::Length(len),
            Framing::Chunked => Reading::Chunked(ChunkedDecoder::new()),
            Framing::Close => Reading::Close,
        };
        let mut body = ResponseBody {
            conn: Some(conn),
            buf,
            reading,
            reusable,
            next_read: FIRST_READ,
            failed: None,
        };
        if matches!(body.reading, Reading::Done) {
            body.finish();
        }
        body
    }

    /// A body with nothing in it and no connection (after a `101`).
    pub fn empty() -> ResponseBody {
        ResponseBody {
            conn: None,
            buf: BytesMut::new(),
            reading: Reading::Done,
            reusable: false,
            next_read: FIRST_READ,
            failed: None,
        }
    }

    /// The body has been read to its end: its connection goes back, if it
    /// may carry another request and nothing more came on it.
    fn finish(&mut self) {
        self.reading = Reading::Done;
        let conn = self.conn.take();
        if let Some(conn) = conn
            && self.reusable
            && self.buf.is_empty()
        {
            idle::release(conn);
        }
        self.buf = BytesMut::new();
    }

    /// Fails the body: the connection closes, and the error is reported at
    /// the next poll, which comes at once. In between, hyper's server writes
    /// out what it has: the response head and the data that did arrive reach
    /// the client before the cut-off does (as they would from nginx), instead
    /// of a connection closed with the head still in its buffer.
    fn fail(
        &mut self,
        error: Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.reading = Reading::Done;
        self.conn = None;
        self.buf = BytesMut::new();
        self.failed = Some(error);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The next frame out of what is buffered, if there is one.
    fn buffered(&mut self) -> Result<Option<Frame<Bytes>>, Error> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        match &mut self.reading {
            Reading::Length(left) => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                let data = self.buf.split_to(take).freeze();
                *left -= take as u64;
                if *left == 0 {
                    self.finish();
                }
                Ok(Some(Frame::data(data)))
            }
            Reading::Close => Ok(Some(Frame::data(self.buf.split().freeze()))),
            Reading::Chunked(decoder) => {
                let (used, found) = decoder.decode(&self.buf).map_err(Error::Chunked)?;
                match found {
                    Decoded::Data(range) => {
                        let chunk = self.buf.split_to(used).freeze();
                        Ok(Some(Frame::data(chunk.slice(range))))
                    }
                    Decoded::End(trailers) => {
                        let section = self.buf.split_to(used);
                        self.finish();
                        match trailers {
                            Some(range) => codec::parse_trailers(&section[range])
                                .map(|trailers| Some(Frame::trailers(trailers)))
                                .map_err(Error::Chunked),
                            // No frame: the end comes with the next poll.
                            None => Ok(None),
                        }
                    }
                    Decoded::More => {
                        self.buf.advance(used);
                        Ok(None)
                    }
                }
            }
            Reading::Done => Ok(None),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(error) = this.failed.take() {
            return Poll::Ready(Some(Err(Box::new(error))));
        }
        loop {
            match this.buffered() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(error) => return this.fail(error, cx),
            }
            if matches!(this.reading, Reading::Done) {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let read = match ready!(poll_read(
                conn.stream_mut(),
                cx,
                &mut this.buf,
                &mut this.next_read
            )) {
                Ok(read) => read,
                Err(error) => return this.fail(Error::Io(error), cx),
            };
            if read == 0 {
                if matches!(this.reading, Reading::Close) {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                return this.fail(Error::BodyCutOff, cx);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.reading, Reading::Done) && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading {
            Reading::Length(left) => SizeHint::with_exact(left),
            Reading::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A backend connection after a `101`: the bytes already read after the
/// head come first.
pub type Upgraded = Prefixed<BackendStream>;

/// `conn`'s stream after a `101`, with `read` (the bytes read past the head)
/// first.
pub fn upgraded(conn: Conn, read: BytesMut) -> Upgraded {
    Prefixed::new(read.freeze(), conn.into_stream())
}
