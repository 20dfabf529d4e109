//! The PROXY protocol, versions 1 and 2: the header a proxy in front of
//! affinity (HAProxy, an AWS or GCP load balancer, another affinity) sends
//! before anything else on a connection, to say which client it relays, and
//! the header affinity sends to a backend for the same purpose.
//!
//! Source: HAProxy's "The PROXY protocol, Versions 1 & 2"
//! (`doc/proxy-protocol.txt`, revision 2020/03/05): §2.1 for version 1 (one
//! line of text), §2.2 for version 2 (binary, with TLVs after the
//! addresses), §2.2.3 for the CRC32C TLV.
//!
//! | item | does |
//! |---|---|
//! | [`parse`] | bytes → a [`Header`] and how many bytes it took, or [`ParseError`]; pure, no I/O |
//! | [`encode_v1`], [`encode_v2`], [`encode_v2_local`] | the header to send to a backend |
//! | [`read_header`] | reads a header from a stream, with one overall timeout; returns the bytes that came after it |
//! | [`Prefixed`](crate::proxy::prefixed::Prefixed) | a stream that yields those bytes first, then the rest of the stream |
//!
//! # Guarantees
//! * **Decided as early as possible.** [`parse`] answers
//!   [`ParseError::Incomplete`] only while more bytes could still make a
//!   valid header, and [`ParseError::Invalid`] as soon as none could: a
//!   first byte other than `P` or `\r`, a wrong signature byte, a version 2
//!   length too short for its addresses, a TLV that runs past the header, a
//!   version 1 line without CRLF in its first 107 bytes, a finished version 1
//!   field that is wrong, or a field still arriving that can no longer
//!   become right (an IPv4 octet over 255, a sixth digit in a port). So
//!   results over growing prefixes of any input run `Incomplete`, then one
//!   final answer that more bytes never change; the fuzz target
//!   `proxy_protocol` checks exactly that.
//! * **Bounded.** No header is longer than [`MAX_HEADER_LEN`] (16 + 65535
//!   bytes, the most a version 2 length field can say); [`read_header`]
//!   never reads more than that plus one read.
//! * **Strict**, as §2.1 asks ("any sequence which does not exactly match the
//!   protocol must be discarded"): `PROXY` in capitals and single spaces;
//!   IPv4 as four decimal numbers without leading zeros; IPv6 as
//!   [`Ipv6Addr`]'s parser reads it (hex groups with at most one `::`, an
//!   embedded IPv4 last, no zone); ports as decimal numbers 0–65535 without
//!   sign or leading zeros; `TCP4` with IPv4 addresses only and `TCP6` with
//!   IPv6 ones; a CR must be followed by LF and no lone LF may end the line.
//!   In version 2 the version must be 2, the command LOCAL or PROXY, and the
//!   family and transport byte one of the seven combinations §2.2 lists.
//!
//! # Where the spec leaves a choice
//! * **LOCAL** (version 2): the connection is the proxy's own (a health
//!   check). Its block is skipped unread, as §2.2 says ("discard the protocol
//!   block including the family which is ignored"), though the family byte
//!   must still be a listed one. The result, [`Header::Local`], means "use
//!   the connection's own peer address".
//! * **UNSPEC, UDP and UNIX** (version 2 PROXY): §2.2 lets a receiver fall
//!   back to UNSPEC for families it does not support: [`Header::Unknown`],
//!   "use the peer address", as for version 1 `UNKNOWN`. An UNSPEC block is
//!   skipped unread (the spec gives it no layout).
//! * **TLVs** after the addresses (TCP, UDP and UNIX) must tile the rest of
//!   the header exactly (type, 2-byte length, value); a CRC32C TLV, when
//!   present, must be 4 bytes, only one, and match (§2.2.3: a receiver that
//!   supports it must check it); every other TLV is skipped.
//! * **Mixed families** when encoding (an IPv4 source, an IPv6 destination,
//!   or the reverse): the IPv4 address is sent as its IPv4-mapped IPv6
//!   address (`::ffff:a.b.c.d`) with `TCP6` or INET6, as HAProxy does
//!   (`make_proxy_line_v1` and `make_proxy_line_v2` in its
//!   `src/connection.c`): the client's address still arrives, where `UNKNOWN`
//!   would lose it. IPv6 scope ids and flow labels are not carried.
//!
//! ```
//! use std::net::SocketAddr;
//! use affinity::listener::proxy_protocol::{self, Header, ParseError};
//!
//! let client: SocketAddr = "192.0.2.7:51000".parse().unwrap();
//! let listener: SocketAddr = "198.51.100.1:443".parse().unwrap();
//! let mut bytes = proxy_protocol::encode_v2(client, listener);
//! bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
//!
//! let (header, used) = proxy_protocol::parse(&bytes).unwrap();
//! assert_eq!(header, Header::Proxy { source: client, destination: listener });
//! assert_eq!(&bytes[used..], b"GET / HTTP/1.1\r\n");
//! assert_eq!(proxy_protocol::parse(&bytes[..10]), Err(ParseError::Incomplete));
//! assert!(matches!(proxy_protocol::parse(b"GET /"), Err(ParseError::Invalid(_))));
//! ```

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

use crate::config::SendProxyProtocol;

/// The longest version 1 header, CRLF included (§2.1).
pub const V1_MAX_LEN: usize = 107;

/// The 12 bytes that begin every version 2 header (§2.2).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest header of either version: a version 2 header whose length
/// field says 65535.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;

/// How a version 1 line begins.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The most text a version 1 line may hold before its CRLF.
const V1_MAX_TEXT: usize = V1_MAX_LEN - 2;

/// The longest IPv6 address text: six groups of four and a dotted IPv4.
const IPV6_MAX_TEXT: usize = 45;

/// The fixed part of a version 2 header: signature, version and command,
/// family and transport, length.
const V2_FIXED_LEN: usize = 16;

/// A TLV's type and length.
const TLV_HEADER_LEN: usize = 3;

/// The type of the TLV holding the header's CRC32C (§2.2.3).
const PP2_TYPE_CRC32C: u8 = 0x03;

/// The most bytes each read of [`read_header`] asks for.
const READ_CHUNK: usize = 4096;

/// What a PROXY header says about the connection it begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection is relayed for a client: its address and the address
    /// it connected to, as the proxy saw them.
    Proxy {
        /// The client's address.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// Version 2 LOCAL: the connection is the proxy's own (a health check);
    /// the connection's peer address stands.
    Local,
    /// Version 1 `UNKNOWN`, or version 2 PROXY for a family or transport
    /// other than TCP over IPv4 or IPv6 (UNSPEC, UDP, UNIX): no client
    /// address is given; the connection's peer address stands.
    Unknown,
}

impl Header {
    /// The client address the header gives; `None` when the connection's
    /// own peer address stands ([`Header::Local`], [`Header::Unknown`]).
    pub fn source(&self) -> Option<SocketAddr> {
        match self {
            Header::Proxy { source, .. } => Some(*source),
            Header::Local | Header::Unknown => None,
        }
    }
}

/// Why [`parse`] returned no header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The bytes so far begin a valid header: more are needed.
    #[error("incomplete PROXY header")]
    Incomplete,
    /// No more bytes can make these a valid header: what is wrong.
    #[error("invalid PROXY header: {0}")]
    Invalid(&'static str),
}

/// Why [`read_header`] returned no header.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The header was not complete within the timeout.
    #[error("no complete PROXY header in time")]
    Timeout,
    /// The peer closed the connection before its header was complete.
    #[error("the connection closed before its PROXY header was complete")]
    Closed,
    /// The bytes read are not a PROXY header: what is wrong.
    #[error("invalid PROXY header: {0}")]
    Invalid(&'static str),
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// Parses the PROXY header (version 1 or 2) at the start of `bytes`: the
/// header and how many bytes of `bytes` it takes (what follows belongs to
/// the application), [`ParseError::Incomplete`] when `bytes` are the start
/// of a valid header, or [`ParseError::Invalid`] as soon as they cannot be.
pub fn parse(bytes: &[u8]) -> Result<(Header, usize), ParseError> {
    match bytes.first() {
        None => Err(ParseError::Incomplete),
        Some(b'P') => parse_v1(bytes),
        Some(b'\r') => parse_v2(bytes),
        Some(_) => Err(ParseError::Invalid(
            "neither a PROXY v1 line nor the v2 signature",
        )),
    }
}

/// Version 1: one line of text, CRLF at most 107 bytes in.
fn parse_v1(bytes: &[u8]) -> Result<(Header, usize), ParseError> {
    // Room for the longest text and its CR, not for its LF: a line whose CR
    // is not in there is too long however it goes on.
    let scanned = &bytes[..bytes.len().min(V1_MAX_TEXT + 1)];
    let Some(end) = scanned.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if scanned.len() > V1_MAX_TEXT {
            return Err(ParseError::Invalid("v1: no CRLF within 107 bytes"));
        }
        return check_v1_start(scanned).and(Err(ParseError::Incomplete));
    };
    if scanned[end] == b'\n' {
        return Err(ParseError::Invalid("v1: a LF without CR"));
    }
    let header = parse_v1_line(&bytes[..end])?;
    match bytes.get(end + 1) {
        None => Err(ParseError::Incomplete),
        Some(b'\n') => Ok((header, end + 2)),
        Some(_) => Err(ParseError::Invalid("v1: a CR without LF")),
    }
}

/// The header a whole version 1 line (without its CRLF) gives.
fn parse_v1_line(line: &[u8]) -> Result<Header, ParseError> {
    let rest = line.strip_prefix(V1_PREFIX).ok_or(ParseError::Invalid(
        "v1: the line does not start with \"PROXY \"",
    ))?;
    let mut fields = rest.split(|&b| b == b' ');
    let v6 = match v1_protocol(fields.next().unwrap_or_default())? {
        None => return Ok(Header::Unknown),
        Some(v6) => v6,
    };
    let (Some(source), Some(destination), Some(source_port), Some(destination_port), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ParseError::Invalid(
            "v1: TCP4 and TCP6 take four fields, each after a single space",
        ));
    };
    let address = |index, field| v1_address(field, v6).ok_or(invalid_v1_field(index));
    let port = |index, field| v1_port(field).ok_or(invalid_v1_field(index));
    Ok(Header::Proxy {
        source: SocketAddr::new(address(1, source)?, port(3, source_port)?),
        destination: SocketAddr::new(address(2, destination)?, port(4, destination_port)?),
    })
}

/// The protocol field: `None` for `UNKNOWN`, else whether it is `TCP6`.
fn v1_protocol(field: &[u8]) -> Result<Option<bool>, ParseError> {
    match field {
        b"UNKNOWN" => Ok(None),
        b"TCP4" => Ok(Some(false)),
        b"TCP6" => Ok(Some(true)),
        _ => Err(ParseError::Invalid(
            "v1: the protocol is not TCP4, TCP6 nor UNKNOWN",
        )),
    }
}

/// The error for the version 1 field at `index` (1: source address, 2:
/// destination address, 3: source port, 4: destination port; 5 and more:
/// one field too many).
fn invalid_v1_field(index: usize) -> ParseError {
    ParseError::Invalid(match index {
        1 => "v1: bad source address (or not of the protocol's family)",
        2 => "v1: bad destination address (or not of the protocol's family)",
        3 => "v1: bad source port (decimal 0-65535, no sign nor leading zero)",
        4 => "v1: bad destination port (decimal 0-65535, no sign nor leading zero)",
        _ => "v1: more than four fields after TCP4 or TCP6",
    })
}

/// An address field: IPv4 dotted quad (no leading zeros) or IPv6 text.
fn v1_address(field: &[u8], v6: bool) -> Option<IpAddr> {
    let text = std::str::from_utf8(field).ok()?;
    if v6 {
        text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// A port field: 1 to 5 decimal digits, no leading zero, at most 65535.
fn v1_port(field: &[u8]) -> Option<u16> {
    let digits = !field.is_empty() && field.len() <= 5 && field.iter().all(u8::is_ascii_digit);
    if !digits || (field[0] == b'0' && field.len() > 1) {
        return None;
    }
    u16::try_from(decimal(field)).ok()
}

/// Checks the start of a version 1 line that has no CR yet: every finished
/// field must be right, and the one still arriving must be able to become
/// right.
fn check_v1_start(text: &[u8]) -> Result<(), ParseError> {
    let seen = text.len().min(V1_PREFIX.len());
    if text[..seen] != V1_PREFIX[..seen] {
        return Err(ParseError::Invalid(
            "v1: the line does not start with \"PROXY \"",
        ));
    }
    let Some(rest) = text.strip_prefix(V1_PREFIX) else {
        return Ok(());
    };
    let Some(last_space) = rest.iter().rposition(|&b| b == b' ') else {
        let protocols: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];
        if protocols.iter().any(|p| p.starts_with(rest)) {
            return Ok(());
        }
        return Err(ParseError::Invalid(
            "v1: the protocol is not TCP4, TCP6 nor UNKNOWN",
        ));
    };
    let (finished, arriving) = (&rest[..last_space], &rest[last_space + 1..]);
    let mut fields = finished.split(|&b| b == b' ');
    let v6 = match v1_protocol(fields.next().unwrap_or_default())? {
        None => return Ok(()),
        Some(v6) => v6,
    };
    let mut index = 1;
    for field in fields {
        let right = match index {
            1 | 2 => v1_address(field, v6).is_some(),
            3 | 4 => v1_port(field).is_some(),
            _ => false,
        };
        if !right {
            return Err(invalid_v1_field(index));
        }
        index += 1;
    }
    let may_become_right = match index {
        1 | 2 if v6 => ipv6_prefix(arriving),
        1 | 2 => ipv4_prefix(arriving),
        3 | 4 => arriving.is_empty() || v1_port(arriving).is_some(),
        _ => false,
    };
    if may_become_right {
        Ok(())
    } else {
        Err(invalid_v1_field(index))
    }
}

/// Whether `text` can begin an IPv4 dotted quad: at most four parts, all but
/// the last a whole octet, the last empty or an octet.
fn ipv4_prefix(text: &[u8]) -> bool {
    if !text.iter().all(|&b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    let parts: Vec<&[u8]> = text.split(|&b| b == b'.').collect();
    let Some((last, whole)) = parts.split_last() else {
        return true;
    };
    parts.len() <= 4
        && whole.iter().all(|part| is_octet(part))
        && (last.is_empty() || is_octet(last))
}

/// Whether `part` is a decimal octet without leading zeros.
fn is_octet(part: &[u8]) -> bool {
    let short = !part.is_empty() && part.len() <= 3 && part.iter().all(u8::is_ascii_digit);
    short && (part == b"0" || part[0] != b'0') && decimal(part) <= 255
}

/// The value of `digits` (at most 9 ASCII digits).
fn decimal(digits: &[u8]) -> u32 {
    digits
        .iter()
        .fold(0, |value, &digit| value * 10 + u32::from(digit - b'0'))
}

/// Whether `text` can begin an IPv6 address as [`Ipv6Addr`] parses it. Not
/// exact (it never refuses a prefix of a valid address, but lets through
/// some that no address begins with, such as a tenth group); exact enough to
/// refuse at once what is plainly something else.
fn ipv6_prefix(text: &[u8]) -> bool {
    let allowed = |b: &u8| b.is_ascii_hexdigit() || *b == b':' || *b == b'.';
    if text.len() > IPV6_MAX_TEXT || !text.iter().all(allowed) {
        return false;
    }
    let double_colons = text.windows(2).filter(|w| w == b"::").count();
    if text.windows(3).any(|w| w == b":::") || double_colons > 1 {
        return false;
    }
    let groups: Vec<&[u8]> = text.split(|&b| b == b':').collect();
    let Some((last, whole)) = groups.split_last() else {
        return true;
    };
    let hex_group = |group: &[u8]| group.len() <= 4 && !group.contains(&b'.');
    whole.iter().all(|group| hex_group(group))
        && (hex_group(last) || (last.contains(&b'.') && ipv4_prefix(last)))
}

/// Version 2's command (the low four bits of the 13th byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// The proxy's own connection.
    Local,
    /// A relayed connection.
    Proxy,
}

/// Version 2's family and transport (the 14th byte), one of the seven
/// combinations §2.2 lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// `\x00`: no addresses of a known layout.
    Unspec,
    /// `\x11`: TCP over IPv4.
    Tcp4,
    /// `\x12`: UDP over IPv4.
    Udp4,
    /// `\x21`: TCP over IPv6.
    Tcp6,
    /// `\x22`: UDP over IPv6.
    Udp6,
    /// `\x31` and `\x32`: UNIX stream or datagram.
    Unix,
}

impl Block {
    /// The block the 14th byte announces.
    fn of(byte: u8) -> Result<Block, ParseError> {
        let (family, transport) = (byte >> 4, byte & 0x0F);
        if family > 3 {
            return Err(ParseError::Invalid(
                "v2: the address family is not UNSPEC, INET, INET6 nor UNIX",
            ));
        }
        if transport > 2 {
            return Err(ParseError::Invalid(
                "v2: the transport is not UNSPEC, STREAM nor DGRAM",
            ));
        }
        match byte {
            0x00 => Ok(Block::Unspec),
            0x11 => Ok(Block::Tcp4),
            0x12 => Ok(Block::Udp4),
            0x21 => Ok(Block::Tcp6),
            0x22 => Ok(Block::Udp6),
            0x31 | 0x32 => Ok(Block::Unix),
            _ => Err(ParseError::Invalid(
                "v2: UNSPEC mixed with another family or transport",
            )),
        }
    }

    /// How many bytes its addresses take; `None` for UNSPEC, whose block is
    /// skipped unread.
    fn addresses_len(self) -> Option<usize> {
        match self {
            Block::Unspec => None,
            Block::Tcp4 | Block::Udp4 => Some(2 * 4 + 2 * 2),
            Block::Tcp6 | Block::Udp6 => Some(2 * 16 + 2 * 2),
            Block::Unix => Some(2 * 108),
        }
    }

    /// The header for a whole block of this kind.
    fn header(self, block: &[u8]) -> Header {
        match self {
            Block::Tcp4 => Header::Proxy {
                source: SocketAddr::new(Ipv4Addr::from(array(block, 0)).into(), port(block, 8)),
                destination: SocketAddr::new(
                    Ipv4Addr::from(array(block, 4)).into(),
                    port(block, 10),
                ),
            },
            Block::Tcp6 => Header::Proxy {
                source: SocketAddr::new(Ipv6Addr::from(array(block, 0)).into(), port(block, 32)),
                destination: SocketAddr::new(
                    Ipv6Addr::from(array(block, 16)).into(),
                    port(block, 34),
                ),
            },
            Block::Unspec | Block::Udp4 | Block::Udp6 | Block::Unix => Header::Unknown,
        }
    }
}

/// The `N` bytes of `bytes` at `at` (which the caller has checked are
/// there).
fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// The big-endian `u16` at `at` of `bytes`.
fn port(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(array(bytes, at))
}

/// Version 2: the fixed 16 bytes, then as many as their length says.
fn parse_v2(bytes: &[u8]) -> Result<(Header, usize), ParseError> {
    let (command, block, len) = parse_v2_fixed(bytes)?;
    let total = V2_FIXED_LEN + len;
    let body = &bytes[V2_FIXED_LEN..bytes.len().min(total)];
    let addresses_len = match command {
        Command::Local => None,
        Command::Proxy => block.addresses_len(),
    };
    let Some(addresses_len) = addresses_len else {
        if body.len() < len {
            return Err(ParseError::Incomplete);
        }
        let header = match command {
            Command::Local => Header::Local,
            Command::Proxy => Header::Unknown,
        };
        return Ok((header, total));
    };
    if len < addresses_len {
        return Err(ParseError::Invalid(
            "v2: the length is too short for the family's addresses",
        ));
    }
    let tlvs = body.get(addresses_len..).unwrap_or_default();
    let crc = check_tlvs(tlvs, len - addresses_len)?;
    if body.len() < len {
        return Err(ParseError::Incomplete);
    }
    if let Some(at) = crc {
        check_crc32c(&bytes[..total], V2_FIXED_LEN + addresses_len + at)?;
    }
    Ok((block.header(body), total))
}

/// The fixed part of a version 2 header: command, block and length.
fn parse_v2_fixed(bytes: &[u8]) -> Result<(Command, Block, usize), ParseError> {
    let seen = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..seen] != V2_SIGNATURE[..seen] {
        return Err(ParseError::Invalid("v2: not the PROXY v2 signature"));
    }
    let Some(&version_command) = bytes.get(12) else {
        return Err(ParseError::Incomplete);
    };
    if version_command >> 4 != 2 {
        return Err(ParseError::Invalid("v2: the version is not 2"));
    }
    let command = match version_command & 0x0F {
        0 => Command::Local,
        1 => Command::Proxy,
        _ => {
            return Err(ParseError::Invalid(
                "v2: the command is neither LOCAL nor PROXY",
            ));
        }
    };
    let Some(&family_transport) = bytes.get(13) else {
        return Err(ParseError::Incomplete);
    };
    let block = Block::of(family_transport)?;
    let Some(&[high, low]) = bytes.get(14..16) else {
        return Err(ParseError::Incomplete);
    };
    Ok((command, block, usize::from(u16::from_be_bytes([high, low]))))
}

/// Checks the TLVs in `area`, the part received so far of an area of
/// `area_len` bytes: each must fit in the area, and they must fill it
/// exactly. Where the value of its CRC32C TLV starts, if it has one (and it
/// has arrived).
fn check_tlvs(area: &[u8], area_len: usize) -> Result<Option<usize>, ParseError> {
    let mut offset = 0;
    let mut crc = None;
    while offset < area_len {
        if area_len - offset < TLV_HEADER_LEN {
            return Err(ParseError::Invalid(
                "v2: a TLV is cut off by the end of the header",
            ));
        }
        let Some(&[kind, high, low]) = area.get(offset..offset + TLV_HEADER_LEN) else {
            break;
        };
        let value_len = usize::from(u16::from_be_bytes([high, low]));
        let end = offset + TLV_HEADER_LEN + value_len;
        if end > area_len {
            return Err(ParseError::Invalid(
                "v2: a TLV runs past the end of the header",
            ));
        }
        if kind == PP2_TYPE_CRC32C {
            if value_len != 4 {
                return Err(ParseError::Invalid("v2: a CRC32C TLV that is not 4 bytes"));
            }
            if crc.is_some() {
                return Err(ParseError::Invalid("v2: two CRC32C TLVs"));
            }
            crc = Some(offset + TLV_HEADER_LEN);
        }
        offset = end;
    }
    Ok(crc)
}

/// Checks the CRC32C of a whole version 2 `header`, whose checksum is the
/// 4 bytes at `at` (§2.2.3: computed over the header with those bytes 0).
fn check_crc32c(header: &[u8], at: usize) -> Result<(), ParseError> {
    let sent = u32::from_be_bytes(array(header, at));
    let computed = crc32c(&[&header[..at], &[0; 4], &header[at + 4..]]);
    if sent != computed {
        return Err(ParseError::Invalid("v2: the CRC32C does not match"));
    }
    Ok(())
}

/// CRC32C (Castagnoli, RFC 4960 appendix B) of `parts` one after the other.
fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for &byte in parts.iter().copied().flatten() {
        crc = CRC32C_TABLE[usize::from((crc as u8) ^ byte)] ^ (crc >> 8);
    }
    !crc
}

/// The byte-at-a-time table of CRC32C's reflected polynomial.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut index = 0;
    while index < 256 {
        let mut crc = index as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[index] = crc;
        index += 1;
    }
    table
};

/// The header `version` asks for (`None` for [`SendProxyProtocol::Off`]),
/// naming a connection from `source` to `destination`.
pub fn encode(
    version: SendProxyProtocol,
    source: SocketAddr,
    destination: SocketAddr,
) -> Option<Vec<u8>> {
    match version {
        SendProxyProtocol::Off => None,
        SendProxyProtocol::V1 => Some(encode_v1(source, destination)),
        SendProxyProtocol::V2 => Some(encode_v2(source, destination)),
    }
}

/// The version 1 header for a connection from `source` to `destination`:
/// `TCP4` when both are IPv4, else `TCP6` (an IPv4 address of a mixed pair
/// sent IPv4-mapped, as HAProxy does).
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let line = match (source.ip(), destination.ip()) {
        (IpAddr::V4(from), IpAddr::V4(to)) => format!("PROXY TCP4 {from} {to}"),
        (from, to) => format!("PROXY TCP6 {} {}", as_ipv6(from), as_ipv6(to)),
    };
    format!("{line} {} {}\r\n", source.port(), destination.port()).into_bytes()
}

/// The version 2 header for a connection from `source` to `destination`:
/// PROXY, TCP over IPv4 when both are IPv4, else over IPv6 (an IPv4 address
/// of a mixed pair sent IPv4-mapped, as HAProxy does); no TLVs.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut header = Vec::with_capacity(V2_FIXED_LEN + 36);
    header.extend_from_slice(&V2_SIGNATURE);
    header.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            header.extend_from_slice(&[0x11, 0, 12]);
            header.extend_from_slice(&from.octets());
            header.extend_from_slice(&to.octets());
        }
        (from, to) => {
            header.extend_from_slice(&[0x21, 0, 36]);
            header.extend_from_slice(&as_ipv6(from).octets());
            header.extend_from_slice(&as_ipv6(to).octets());
        }
    }
    header.extend_from_slice(&source.port().to_be_bytes());
    header.extend_from_slice(&destination.port().to_be_bytes());
    header
}

/// The version 2 LOCAL header (UNSPEC, no addresses): for a connection that
/// is affinity's own, such as a health check, which the backend should take
/// as coming from its peer.
pub fn encode_v2_local() -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x20, 0x00, 0, 0]);
    header
}

/// `ip` as IPv6: itself, or IPv4-mapped.
fn as_ipv6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Reads the PROXY header that begins `stream`: the header, and the bytes
/// read after it (they belong to the application: hand them on with
/// [`Prefixed`](crate::proxy::prefixed::Prefixed)).
///
/// Reads at most 4 KiB at a time until [`parse`] decides, so never more
/// than [`MAX_HEADER_LEN`] plus one read; bytes that cannot begin a header
/// are [`ReadError::Invalid`] at once. The whole header must arrive within
/// `timeout` ([`ReadError::Timeout`]); a peer that closes first gets
/// [`ReadError::Closed`].
pub async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
    timeout: Duration,
) -> Result<(Header, Vec<u8>), ReadError> {
    tokio::time::timeout(timeout, read_until_decided(stream))
        .await
        .unwrap_or(Err(ReadError::Timeout))
}

/// Reads `stream` until [`parse`] decides.
async fn read_until_decided<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<(Header, Vec<u8>), ReadError> {
    let mut buffer = Vec::new();
    loop {
        let start = buffer.len();
        buffer.resize(start + READ_CHUNK, 0);
        let read = stream.read(&mut buffer[start..]).await?;
        buffer.truncate(start + read);
        if read == 0 {
            return Err(ReadError::Closed);
        }
        match parse(&buffer) {
            Ok((header, used)) => {
                buffer.drain(..used);
                return Ok((header, buffer));
            }
            Err(ParseError::Incomplete) => {}
            Err(ParseError::Invalid(why)) => return Err(ReadError::Invalid(why)),
        }
    }
}

/// How much [`take_header`] peeks at once: a version 1 header and the
/// usual version 2 ones fit in one peek.
const PEEK_CHUNK: usize = 256;

/// Reads a header off `stream`, taking exactly its bytes and none after
/// (it peeks first, and reads only what is header), so that the stream can
/// go on as it is to a TLS handshake, hyper or a relay; one overall
/// `timeout`. Bytes that [`parse`] calls incomplete are all header bytes
/// (a header is longer than them), so they are read off and the peek goes
/// on after them.
pub async fn take_header(stream: &mut TcpStream, timeout: Duration) -> Result<Header, ReadError> {
    tokio::time::timeout(timeout, take_until_decided(stream))
        .await
        .unwrap_or(Err(ReadError::Timeout))
}

/// Peeks at `stream` until [`parse`] decides, reading off what is header.
async fn take_until_decided(stream: &mut TcpStream) -> Result<Header, ReadError> {
    let mut header = Vec::new();
    let mut peeked = vec![0; PEEK_CHUNK];
    loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        let taken = header.len();
        header.extend_from_slice(&peeked[..n]);
        match parse(&header) {
            Ok((parsed, used)) => {
                stream.read_exact(&mut peeked[..used - taken]).await?;
                return Ok(parsed);
            }
            Err(ParseError::Incomplete) => {
                stream.read_exact(&mut peeked[..n]).await?;
            }
            Err(ParseError::Invalid(why)) => return Err(ReadError::Invalid(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use crate::proxy::prefixed::Prefixed;
    use std::time::Instant;

    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn socket(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn proxy(source: &str, destination: &str) -> Header {
        Header::Proxy {
            source: socket(source),
            destination: socket(destination),
        }
    }

    fn is_invalid(bytes: &[u8]) -> bool {
        matches!(parse(bytes), Err(ParseError::Invalid(_)))
    }

    /// A version 2 header from its 13th and 14th bytes and its body.
    fn v2(version_command: u8, family_transport: u8, body: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[version_command, family_transport]);
        header.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        header.extend_from_slice(body);
        header
    }

    /// A TLV.
    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut tlv = vec![kind];
        tlv.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        tlv.extend_from_slice(value);
        tlv
    }

    /// The TCP over IPv4 block of 192.0.2.1:56324 → 198.51.100.11:443.
    fn tcp4_block() -> Vec<u8> {
        let mut block = vec![192, 0, 2, 1, 198, 51, 100, 11];
        block.extend_from_slice(&56324u16.to_be_bytes());
        block.extend_from_slice(&443u16.to_be_bytes());
        block
    }

    fn tcp4_header() -> Header {
        proxy("192.0.2.1:56324", "198.51.100.11:443")
    }

    /// A TCP over IPv4 header with `tlvs` after its addresses, and a CRC32C
    /// TLV last, right or `wrong`.
    fn v2_with_crc(tlvs: &[u8], wrong: bool) -> Vec<u8> {
        let mut body = tcp4_block();
        body.extend_from_slice(tlvs);
        body.extend_from_slice(&tlv(PP2_TYPE_CRC32C, &[0; 4]));
        let mut header = v2(0x21, 0x11, &body);
        let at = header.len() - 4;
        let crc = crc32c(&[&header]) ^ u32::from(wrong);
        header[at..].copy_from_slice(&crc.to_be_bytes());
        header
    }

    /// Valid headers of every kind, each with what it parses as.
    fn valid_headers() -> Vec<(&'static str, Vec<u8>, Header)> {
        let longest_unknown = {
            let mut line = b"PROXY UNKNOWN ".to_vec();
            line.resize(V1_MAX_TEXT, b'x');
            line.extend_from_slice(b"\r\n");
            line
        };
        let big_tlv = {
            let mut body = tcp4_block();
            body.extend_from_slice(&tlv(0xE0, &vec![7; usize::from(u16::MAX) - 12 - 3]));
            v2(0x21, 0x11, &body)
        };
        let tcp6 = |source: &str, destination: &str, line: &str| {
            (line.to_owned(), proxy(source, destination))
        };
        let v1_lines = [
            (
                "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_owned(),
                proxy("192.168.0.1:56324", "192.168.0.11:443"),
            ),
            (
                "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n".to_owned(),
                proxy("255.255.255.255:65535", "255.255.255.255:65535"),
            ),
            (
                "PROXY TCP4 0.0.0.0 10.0.0.1 0 8\r\n".to_owned(),
                proxy("0.0.0.0:0", "10.0.0.1:8"),
            ),
            tcp6(
                "[2001:db8::1]:1",
                "[::1]:65535",
                "PROXY TCP6 2001:db8::1 ::1 1 65535\r\n",
            ),
            tcp6(
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                "PROXY TCP6 FFFF:ffff:FFFF:ffff:FFFF:ffff:FFFF:ffff \
                 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
            ),
            tcp6(
                "[::ffff:192.0.2.1]:80",
                "[::]:0",
                "PROXY TCP6 ::ffff:192.0.2.1 :: 80 0\r\n",
            ),
            tcp6(
                "[1:2:3:4:5:6:102:304]:9",
                "[1:2:3:4:5:6:7:0]:10",
                "PROXY TCP6 0001:0002:0003:0004:0005:0006:1.2.3.4 1:2:3:4:5:6:7:: 9 10\r\n",
            ),
            ("PROXY UNKNOWN\r\n".to_owned(), Header::Unknown),
            (
                "PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n".to_owned(),
                Header::Unknown,
            ),
            (
                "PROXY UNKNOWN anything \u{e9} at  all\r\n".to_owned(),
                Header::Unknown,
            ),
        ];
        let mut headers: Vec<(&'static str, Vec<u8>, Header)> = v1_lines
            .into_iter()
            .map(|(line, header)| ("v1", line.into_bytes(), header))
            .collect();
        let mut tlvs = tlv(0x04, &[]);
        tlvs.extend_from_slice(&tlv(0x02, b"example.com"));
        tlvs.extend_from_slice(&tlv(0x20, &[1, 0, 0, 0, 0]));
        let mut tcp4_tlvs = tcp4_block();
        tcp4_tlvs.extend_from_slice(&tlvs);
        let mut unix = vec![b'/'; 216];
        unix.extend_from_slice(&tlv(0x05, b"id"));
        headers.extend([
            ("v1 107 bytes", longest_unknown, Header::Unknown),
            ("v2 tcp4", v2(0x21, 0x11, &tcp4_block()), tcp4_header()),
            (
                "v2 tcp4 with TLVs",
                v2(0x21, 0x11, &tcp4_tlvs),
                tcp4_header(),
            ),
            (
                "v2 tcp4 with a CRC32C",
                v2_with_crc(&tlvs, false),
                tcp4_header(),
            ),
            ("v2 tcp4 with the largest TLV", big_tlv, tcp4_header()),
            (
                "v2 tcp6",
                encode_v2(socket("[2001:db8::7]:1"), socket("[2001:db8::8]:2")),
                proxy("[2001:db8::7]:1", "[2001:db8::8]:2"),
            ),
            ("v2 local", encode_v2_local(), Header::Local),
            (
                "v2 local with a block",
                v2(0x20, 0x11, &[9; 40]),
                Header::Local,
            ),
            ("v2 unspec", v2(0x21, 0x00, &[1, 2, 3]), Header::Unknown),
            ("v2 udp4", v2(0x21, 0x12, &tcp4_block()), Header::Unknown),
            ("v2 udp6", v2(0x21, 0x22, &[0; 36]), Header::Unknown),
            ("v2 unix with a TLV", v2(0x21, 0x31, &unix), Header::Unknown),
            (
                "v2 unix datagram",
                v2(0x21, 0x32, &[0; 216]),
                Header::Unknown,
            ),
        ]);
        headers
    }

    #[test]
    fn every_valid_header_parses_whole_and_leaves_what_follows() {
        for (name, header, expected) in valid_headers() {
            assert_eq!(parse(&header), Ok((expected, header.len())), "{name}");
            let mut followed = header.clone();
            followed.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(parse(&followed), Ok((expected, header.len())), "{name}");
        }
    }

    #[test]
    fn every_proper_prefix_of_a_valid_header_is_incomplete() {
        for (name, header, _) in valid_headers() {
            for end in 0..header.len() {
                assert_eq!(
                    parse(&header[..end]),
                    Err(ParseError::Incomplete),
                    "{name}, first {end} bytes"
                );
            }
        }
    }

    #[test]
    fn the_spec_example_encodes_to_the_spec_line() {
        let (source, destination) = (socket("192.168.0.1:56324"), socket("192.168.0.11:443"));
        assert_eq!(
            encode_v1(source, destination),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        let mut v2_bytes = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        v2_bytes.extend_from_slice(&[192, 168, 0, 1, 192, 168, 0, 11, 0xDC, 0x04, 0x01, 0xBB]);
        assert_eq!(encode_v2(source, destination), v2_bytes);
        assert_eq!(
            encode_v1(socket("[2001:db8::1]:1"), socket("[::1]:2")),
            b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
        );
    }

    #[test]
    fn mixed_families_are_sent_as_ipv4_mapped_ipv6() {
        let (v4, v6) = (socket("192.0.2.1:1000"), socket("[2001:db8::2]:443"));
        assert_eq!(
            encode_v1(v4, v6),
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1000 443\r\n"
        );
        let mapped = proxy("[::ffff:192.0.2.1]:1000", "[2001:db8::2]:443");
        assert_eq!(parse(&encode_v2(v4, v6)), Ok((mapped, 52)));
        let reversed = proxy("[2001:db8::2]:443", "[::ffff:192.0.2.1]:1000");
        assert_eq!(parse(&encode_v1(v6, v4)).unwrap().0, reversed);
    }

    #[test]
    fn the_local_header_parses_as_local_and_header_source_says_whose_address_stands() {
        assert_eq!(parse(&encode_v2_local()), Ok((Header::Local, 16)));
        assert_eq!(Header::Local.source(), None);
        assert_eq!(Header::Unknown.source(), None);
        assert_eq!(tcp4_header().source(), Some(socket("192.0.2.1:56324")));
    }

    #[test]
    fn crc32c_matches_the_rfc_3720_test_vectors() {
        assert_eq!(crc32c(&[b"123456789"]), 0xE306_9283);
        assert_eq!(crc32c(&[&[0; 32]]), 0x8A91_36AA);
        assert_eq!(crc32c(&[&[0xFF; 32]]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&[&ascending[..10], &ascending[10..]]), 0x46DD_794E);
    }

    /// Malformed inputs, whole or cut short where they already cannot be a
    /// header, each with what it shows.
    fn malformed() -> Vec<(String, Vec<u8>)> {
        let v1 = [
            ("lowercase proxy", "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            ("not a header", "GET / HTTP/1.1\r\n"),
            ("a first byte that is neither P nor CR", "X"),
            ("PROXY misspelt", "PROXZ"),
            ("PROXY without a space", "PROXY\r\n"),
            ("PROXY and a space only", "PROXY \r\n"),
            (
                "a double space after PROXY",
                "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            ),
            (
                "a double space between fields",
                "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            ),
            ("a tab for a space", "PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n"),
            ("a trailing space", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"),
            (
                "a trailing space, still arriving",
                "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
            ),
            ("a missing port", "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
            ("a missing address", "PROXY TCP4 1.2.3.4 1 2\r\n"),
            ("a fifth field", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
            ("an unknown protocol", "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"),
            ("an unknown protocol, still arriving", "PROXY TCP5"),
            ("a lowercase protocol", "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n"),
            ("UNKNOWN run on", "PROXY UNKNOWNX\r\n"),
            ("UNKNOWN run on, still arriving", "PROXY UNKNOWNX"),
            (
                "an IPv4 address of three parts",
                "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            ),
            (
                "an IPv4 address of five parts",
                "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
            ),
            ("an octet over 255", "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"),
            (
                "an octet with a leading zero",
                "PROXY TCP4 1.2.3.4 5.6.7.08 1 2\r\n",
            ),
            ("an empty octet", "PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n"),
            (
                "letters for an IPv4 address",
                "PROXY TCP4 a.b.c.d 5.6.7.8 1 2\r\n",
            ),
            ("TCP4 with IPv6 addresses", "PROXY TCP4 ::1 ::2 1 2\r\n"),
            ("TCP4 with an IPv6 address, still arriving", "PROXY TCP4 ::"),
            (
                "TCP6 with IPv4 addresses",
                "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            ),
            (
                "an IPv6 address with two ::",
                "PROXY TCP6 1::2::3 ::1 1 2\r\n",
            ),
            ("an IPv6 address with :::", "PROXY TCP6 1:::2"),
            ("an IPv6 group of five digits", "PROXY TCP6 12345::"),
            (
                "an IPv6 address of nine groups",
                "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
            ),
            ("an IPv6 zone", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"),
            (
                "an IPv6 address in brackets",
                "PROXY TCP6 [::1] ::1 1 2\r\n",
            ),
            (
                "an embedded IPv4 with a bad octet",
                "PROXY TCP6 ::ffff:1.2.3.300",
            ),
            ("port 65536", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"),
            (
                "port 65536, still arriving",
                "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536",
            ),
            (
                "a port of six digits",
                "PROXY TCP4 1.2.3.4 5.6.7.8 1 100000",
            ),
            (
                "a port with a leading zero",
                "PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
            ),
            ("a port with a sign", "PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n"),
            ("a negative port", "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"),
            ("a hex port", "PROXY TCP4 1.2.3.4 5.6.7.8 0x50 2\r\n"),
            (
                "a missing CRLF (bare LF)",
                "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            ),
            ("a CR without LF", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"),
            ("a CR CR LF", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n"),
            ("a LF inside UNKNOWN", "PROXY UNKNOWN a\nb\r\n"),
        ];
        let mut cases: Vec<(String, Vec<u8>)> = v1
            .into_iter()
            .map(|(name, bytes)| (name.to_owned(), bytes.as_bytes().to_vec()))
            .collect();
        let mut too_long = b"PROXY UNKNOWN ".to_vec();
        too_long.resize(V1_MAX_TEXT + 1, b'x');
        cases.push((
            "a line of 108 bytes".into(),
            [&too_long[..], b"\r\n"].concat(),
        ));
        cases.push(("106 bytes without CR".into(), too_long.clone()));
        too_long.resize(4000, b'x');
        cases.push(("an endless line".into(), too_long));
        cases.push((
            "non-UTF-8 in an address".into(),
            b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n".to_vec(),
        ));
        cases.extend(malformed_v2());
        cases
    }

    fn malformed_v2() -> Vec<(String, Vec<u8>)> {
        let mut cases = Vec::new();
        for at in 0..V2_SIGNATURE.len() {
            let mut wrong = V2_SIGNATURE[..=at].to_vec();
            wrong[at] ^= 0x20;
            if at == 0 {
                wrong[0] = b'\n';
            }
            cases.push((format!("signature byte {at} wrong"), wrong));
        }
        let mut body = tcp4_block();
        let fixed = |byte_13, byte_14| v2(byte_13, byte_14, &tcp4_block())[..14].to_vec();
        cases.extend([
            ("version 1".into(), fixed(0x11, 0x11)[..13].to_vec()),
            ("version 3".into(), fixed(0x31, 0x11)[..13].to_vec()),
            ("command 2".into(), fixed(0x22, 0x11)[..13].to_vec()),
            ("command 15".into(), fixed(0x2F, 0x11)[..13].to_vec()),
            ("family 4".into(), fixed(0x21, 0x41)),
            ("family 15 on LOCAL".into(), fixed(0x20, 0xF0)),
            ("transport 3".into(), fixed(0x21, 0x13)),
            ("INET with UNSPEC transport".into(), fixed(0x21, 0x10)),
            ("UNSPEC with STREAM transport".into(), fixed(0x21, 0x01)),
            ("UNIX with UNSPEC transport".into(), fixed(0x21, 0x30)),
            (
                "INET too short".into(),
                v2(0x21, 0x11, &body[..11])[..16].to_vec(),
            ),
            (
                "INET6 too short".into(),
                v2(0x21, 0x21, &[0; 35])[..16].to_vec(),
            ),
            (
                "UNIX too short".into(),
                v2(0x21, 0x31, &[0; 215])[..16].to_vec(),
            ),
        ]);
        for cut in 1..TLV_HEADER_LEN {
            let mut truncated = tcp4_block();
            truncated.extend_from_slice(&tlv(0x04, b"")[..cut]);
            let name = format!("a TLV cut to {cut} bytes");
            cases.push((name, v2(0x21, 0x11, &truncated)));
        }
        let mut overrun = tcp4_block();
        overrun.extend_from_slice(&[0x04, 0, 5, 1, 2, 3, 4]);
        cases.push((
            "a TLV longer than the header".into(),
            v2(0x21, 0x11, &overrun),
        ));
        let first_tlv_only = v2(0x21, 0x11, &overrun)[..16 + 12 + 3].to_vec();
        cases.push((
            "a TLV longer than the header, value to come".into(),
            first_tlv_only,
        ));
        body.extend_from_slice(&tlv(PP2_TYPE_CRC32C, &[0; 3]));
        cases.push(("a CRC32C TLV of 3 bytes".into(), v2(0x21, 0x11, &body)));
        cases.push(("a wrong CRC32C".into(), v2_with_crc(&[], true)));
        let twice = tlv(PP2_TYPE_CRC32C, &[0; 4]);
        cases.push(("two CRC32C TLVs".into(), v2_with_crc(&twice, false)));
        cases
    }

    #[test]
    fn every_malformed_input_is_invalid() {
        for (name, bytes) in malformed() {
            let result = parse(&bytes);
            assert!(
                matches!(result, Err(ParseError::Invalid(_))),
                "{name}: {result:?} for {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn malformed_input_stays_invalid_whatever_follows() {
        for (name, bytes) in malformed() {
            for more in [&b""[..], b"\r\n", b" 1 2\r\n", b"\0\0\0\0"] {
                let followed = [&bytes[..], more].concat();
                assert!(is_invalid(&followed), "{name} then {more:?}");
            }
        }
    }

    #[test]
    fn a_bad_field_is_refused_before_the_line_ends() {
        for arriving in [
            "PROXY TCP4 1.2.3.4.",
            "PROXY TCP4 1.2.3.4 5.6.7.8 65536",
            "PROXY TCP4 256",
            "PROXY TCP4 1.2.3.4 5.6.7.8 01",
            "PROXY TCP6 ::1 1.2.3.4 ",
            "PROXY TCP6 g",
            "PROXY UNKNOWN\n",
            "PROXY X",
        ] {
            assert!(is_invalid(arriving.as_bytes()), "{arriving}");
        }
    }

    #[test]
    fn an_error_says_what_is_wrong() {
        let error = parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid PROXY header: v1: bad source port (decimal 0-65535, no sign nor leading zero)"
        );
        assert_eq!(
            parse(&v2(0x31, 0x11, &[])),
            Err(ParseError::Invalid("v2: the version is not 2"))
        );
    }

    fn v4_socket() -> impl Strategy<Value = SocketAddr> {
        (any::<[u8; 4]>(), any::<u16>()).prop_map(SocketAddr::from)
    }

    /// IPv6 addresses, many with runs of zero groups (so compressed with
    /// `::`) or IPv4-mapped.
    fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
        let group = prop_oneof![Just(0u16), Just(1), Just(0xFFFF), any::<u16>()];
        prop_oneof![
            any::<[u8; 16]>().prop_map(Ipv6Addr::from),
            prop::array::uniform8(group).prop_map(Ipv6Addr::from),
            any::<[u8; 4]>().prop_map(|ip| Ipv4Addr::from(ip).to_ipv6_mapped()),
        ]
    }

    fn v6_socket() -> impl Strategy<Value = SocketAddr> {
        (ipv6(), any::<u16>()).prop_map(SocketAddr::from)
    }

    fn same_family_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![(v4_socket(), v4_socket()), (v6_socket(), v6_socket())]
    }

    /// `ip` written out in full: eight groups of four digits, in capitals,
    /// or with its last 32 bits as dotted IPv4.
    fn ipv6_spelt_out(ip: Ipv6Addr, dotted: bool) -> String {
        let groups: Vec<String> = ip.segments().iter().map(|g| format!("{g:04X}")).collect();
        if !dotted {
            return groups.join(":");
        }
        let [.., a, b, c, d] = ip.octets();
        format!("{}:{a}.{b}.{c}.{d}", groups[..6].join(":"))
    }

    /// The decision of a result: the header and its length, or `None` for
    /// `Invalid` (whose message may grow more precise as bytes arrive).
    fn decision(result: Result<(Header, usize), ParseError>) -> Option<(Header, usize)> {
        result.ok()
    }

    /// Every result over the growing prefixes of `bytes`: `Incomplete`,
    /// then one decision that more bytes never change.
    fn assert_decided_once(bytes: &[u8]) -> Result<(), TestCaseError> {
        let whole = parse(bytes);
        let mut decided = None;
        for end in 0..=bytes.len() {
            let result = parse(&bytes[..end]);
            match decided {
                Some(first) => prop_assert_eq!(decision(result), first, "prefix of {} bytes", end),
                None if result != Err(ParseError::Incomplete) => decided = Some(decision(result)),
                None => {}
            }
        }
        if let Ok((_, used)) = whole {
            prop_assert!(used <= bytes.len());
            prop_assert_eq!(parse(&bytes[..used]), whole);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_address_pair_round_trips_through_v1_and_v2(
            (source, destination) in same_family_pair(),
            after in prop::collection::vec(any::<u8>(), 0..32),
        ) {
            let expected = Header::Proxy { source, destination };
            for encoded in [encode_v1(source, destination), encode_v2(source, destination)] {
                prop_assert!(encoded.len() <= V1_MAX_LEN);
                let followed = [&encoded[..], &after[..]].concat();
                prop_assert_eq!(parse(&followed), Ok((expected, encoded.len())));
                for end in 0..encoded.len() {
                    prop_assert_eq!(parse(&encoded[..end]), Err(ParseError::Incomplete));
                }
            }
        }

        #[test]
        fn mixed_pairs_round_trip_as_ipv4_mapped(v4 in v4_socket(), v6 in v6_socket()) {
            let mapped = |address: SocketAddr| SocketAddr::new(as_ipv6(address.ip()).into(), address.port());
            let expected = Header::Proxy { source: mapped(v4), destination: mapped(v6) };
            prop_assert_eq!(parse(&encode_v1(v4, v6)).map(|(h, _)| h), Ok(expected));
            prop_assert_eq!(parse(&encode_v2(v4, v6)).map(|(h, _)| h), Ok(expected));
        }

        #[test]
        fn ipv6_in_any_spelling_parses_and_its_prefixes_are_incomplete(
            (source, destination) in (v6_socket(), v6_socket()),
            source_dotted in any::<bool>(),
            destination_dotted in any::<bool>(),
        ) {
            let (IpAddr::V6(from), IpAddr::V6(to)) = (source.ip(), destination.ip()) else {
                unreachable!("v6_socket makes IPv6 addresses");
            };
            let line = format!(
                "PROXY TCP6 {} {} {} {}\r\n",
                ipv6_spelt_out(from, source_dotted),
                ipv6_spelt_out(to, destination_dotted),
                source.port(),
                destination.port(),
            );
            let bytes = line.as_bytes();
            if bytes.len() > V1_MAX_LEN {
                prop_assert!(is_invalid(bytes));
            } else {
                let expected = Header::Proxy { source, destination };
                prop_assert_eq!(parse(bytes), Ok((expected, bytes.len())));
                for end in 0..bytes.len() {
                    prop_assert_eq!(parse(&bytes[..end]), Err(ParseError::Incomplete));
                }
            }
        }

        #[test]
        fn arbitrary_bytes_are_decided_once_and_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            assert_decided_once(&bytes)?;
        }

        #[test]
        fn damaged_headers_are_decided_once_and_never_panic(
            index in 0..valid_headers().len(),
            damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let (_, mut bytes, _) = valid_headers().swap_remove(index);
            for (at, byte) in damage {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            let end = cut.index(bytes.len() + 1).min(400);
            assert_decided_once(&bytes[..end])?;
        }
    }

    /// A reader that hands out `bytes` in reads of at most `step` bytes and
    /// counts what it handed out.
    struct Counting<'a> {
        bytes: &'a [u8],
        step: usize,
        handed: usize,
    }

    impl AsyncRead for Counting<'_> {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = this
                .step
                .min(buf.remaining())
                .min(this.bytes.len() - this.handed);
            buf.put_slice(&this.bytes[this.handed..this.handed + n]);
            this.handed += n;
            Poll::Ready(Ok(()))
        }
    }

    /// A reader whose reads fail.
    struct Failing;

    impl AsyncRead for Failing {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::Error::other("reset")))
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn a_header_and_data_sent_a_byte_at_a_time_come_back_intact() {
        for header in [
            encode_v1(socket("192.0.2.1:1"), socket("192.0.2.2:2")),
            v2_with_crc(b"", false),
        ] {
            let (mut client, mut server) = tokio::io::duplex(64);
            let expected = parse(&header).unwrap().0;
            let data: Vec<u8> = (0..=255).collect();
            let sent = [&header[..], &data].concat();
            // The writer closes its end once done, so reading to the end
            // ends.
            let writer = tokio::spawn(async move {
                for byte in sent {
                    client.write_all(&[byte]).await.unwrap();
                    tokio::task::yield_now().await;
                }
            });
            let (header, leftover) = read_header(&mut server, LONG).await.unwrap();
            assert_eq!(header, expected);
            assert!(data.starts_with(&leftover));
            let mut rest = Vec::new();
            Prefixed::new(leftover, server)
                .read_to_end(&mut rest)
                .await
                .unwrap();
            assert_eq!(rest, data);
            writer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn data_that_arrives_with_the_header_is_returned_whole() {
        let (mut client, mut server) = tokio::io::duplex(8192);
        let header = encode_v1(socket("[2001:db8::1]:4000"), socket("[2001:db8::2]:443"));
        client.write_all(&header).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (header, leftover) = read_header(&mut server, LONG).await.unwrap();
        assert_eq!(header, proxy("[2001:db8::1]:4000", "[2001:db8::2]:443"));
        assert_eq!(leftover, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[tokio::test]
    async fn a_header_split_in_uneven_reads_is_read_and_the_rest_left_in_the_stream() {
        let header = v2(
            0x21,
            0x11,
            &[&tcp4_block()[..], &tlv(0x04, &[0; 5000])].concat(),
        );
        let data = vec![b'd'; 10_000];
        let stream = [&header[..], &data].concat();
        for step in [1, 2, 3, 7, 100, 4096, 100_000] {
            let mut reader = Counting {
                bytes: &stream,
                step,
                handed: 0,
            };
            let (read, leftover) = read_header(&mut reader, LONG).await.unwrap();
            assert_eq!(read, tcp4_header(), "step {step}");
            assert_eq!(reader.handed, header.len() + leftover.len(), "step {step}");
            let mut rest = Vec::new();
            Prefixed::new(leftover, reader)
                .read_to_end(&mut rest)
                .await
                .unwrap();
            assert_eq!(rest, data, "step {step}");
        }
    }

    #[tokio::test]
    async fn no_more_than_the_longest_header_and_one_read_is_read() {
        let mut longest = tcp4_block();
        longest.extend_from_slice(&tlv(0x04, &vec![0; usize::from(u16::MAX) - 12 - 3]));
        let longest = v2(0x21, 0x11, &longest);
        let mut endless_line = b"PROXY UNKNOWN ".to_vec();
        endless_line.resize(1 << 20, b'x');
        let cases = [(longest, true), (endless_line, false)];
        for (mut bytes, valid) in cases {
            bytes.resize(1 << 20, b'y');
            let mut reader = Counting {
                bytes: &bytes,
                step: usize::MAX,
                handed: 0,
            };
            let read = read_header(&mut reader, LONG).await;
            assert_eq!(read.is_ok(), valid, "{read:?}");
            assert!(
                reader.handed < MAX_HEADER_LEN + READ_CHUNK,
                "{}",
                reader.handed
            );
        }
    }

    #[tokio::test]
    async fn a_silent_or_slow_client_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let started = Instant::now();
        let read = read_header(&mut server, Duration::from_millis(100)).await;
        assert!(matches!(read, Err(ReadError::Timeout)), "{read:?}");
        client.write_all(b"PROXY TCP4 1.2.3.4 ").await.unwrap();
        let read = read_header(&mut server, Duration::from_millis(100)).await;
        assert!(matches!(read, Err(ReadError::Timeout)), "{read:?}");
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn the_timeout_covers_the_whole_header_not_each_read() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let dribble = tokio::spawn(async move {
            for byte in b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if client.write_all(&[*byte]).await.is_err() {
                    return;
                }
            }
        });
        let read = read_header(&mut server, Duration::from_millis(200)).await;
        assert!(matches!(read, Err(ReadError::Timeout)), "{read:?}");
        drop(server);
        dribble.await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_closes_before_the_header_ends_is_reported_closed() {
        for sent in [&b""[..], b"PROXY TCP4 1.2", &V2_SIGNATURE[..5]] {
            let (mut client, mut server) = tokio::io::duplex(64);
            client.write_all(sent).await.unwrap();
            drop(client);
            let read = read_header(&mut server, LONG).await;
            assert!(matches!(read, Err(ReadError::Closed)), "{sent:?}: {read:?}");
        }
    }

    #[tokio::test]
    async fn bytes_that_are_no_header_are_refused_without_waiting() {
        let started = Instant::now();
        for sent in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4.",
            b"\r\n\r\n\0\r\nQUIT\n\x22",
        ] {
            let (mut client, mut server) = tokio::io::duplex(64);
            client.write_all(sent).await.unwrap();
            let read =
                tokio::time::timeout(Duration::from_secs(10), read_header(&mut server, LONG))
                    .await
                    .expect("decided without waiting");
            assert!(
                matches!(read, Err(ReadError::Invalid(_))),
                "{sent:?}: {read:?}"
            );
            drop(client);
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_failing_read_is_an_io_error() {
        let read = read_header(&mut Failing, LONG).await;
        assert!(matches!(read, Err(ReadError::Io(_))), "{read:?}");
    }

    #[tokio::test]
    async fn read_header_over_a_real_tcp_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
            let header = encode_v2(socket("203.0.113.9:40000"), address);
            client
                .write_all(&[&header[..], b"ping"].concat())
                .await
                .unwrap();
            let mut reply = [0; 4];
            client.read_exact(&mut reply).await.unwrap();
            reply
        });
        let (connection, _) = listener.accept().await.unwrap();
        let mut connection = connection;
        let (header, leftover) = read_header(&mut connection, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(header.source(), Some(socket("203.0.113.9:40000")));
        let mut stream = Prefixed::new(leftover, connection);
        let mut ping = [0; 4];
        stream.read_exact(&mut ping).await.unwrap();
        assert_eq!(&ping, b"ping");
        stream.write_all(b"pong").await.unwrap();
        assert_eq!(&client.await.unwrap(), b"pong");
    }

    /// `bytes` sent in `pieces` of at most `piece` bytes each, with a pause
    /// between them; what [`take_header`] took, and every byte left on the
    /// connection after it.
    async fn taken_over_tcp(bytes: Vec<u8>, piece: usize) -> (Result<Header, String>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let sender = tokio::spawn(async move {
            let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
            client.set_nodelay(true).unwrap();
            for chunk in bytes.chunks(piece) {
                client.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let (mut connection, _) = listener.accept().await.unwrap();
        let taken = take_header(&mut connection, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string());
        sender.await.unwrap();
        let mut rest = Vec::new();
        connection.read_to_end(&mut rest).await.unwrap();
        (taken, rest)
    }

    #[tokio::test]
    async fn take_header_takes_exactly_the_header_whatever_the_reads() {
        let client = socket("203.0.113.9:40000");
        let listener = socket("198.51.100.1:443");
        let big_tlvs: Vec<u8> = (0..40).flat_map(|i| tlv(0xE0, &[i; 20])).collect();
        let mut big = tcp4_block();
        big.extend_from_slice(&big_tlvs);
        let headers = [
            encode_v1(client, listener),
            encode_v2(client, listener),
            v2(0x21, 0x11, &big),
        ];
        for header in headers {
            // One byte at a time (a big header in pieces of 50: fewer pauses).
            let smallest = if header.len() > 200 { 50 } else { 1 };
            for piece in [smallest, 5 * smallest, 1000] {
                let mut bytes = header.clone();
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
                let (taken, rest) = taken_over_tcp(bytes, piece).await;
                assert_eq!(taken.map(|h| h.source().is_some()), Ok(true));
                assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n", "piece {piece}");
            }
        }
        let (taken, _) = taken_over_tcp(b"GET / HTTP/1.1\r\n\r\n".to_vec(), 3).await;
        assert!(taken.unwrap_err().contains("invalid PROXY header"));
        let (taken, _) = taken_over_tcp(b"PROXY TCP4 1.2.3.4".to_vec(), 3).await;
        assert!(taken.unwrap_err().contains("closed"));
    }

    #[tokio::test]
    async fn take_header_gives_up_on_a_slow_header_at_its_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
        client.write_all(b"PROXY TCP4 ").await.unwrap();
        let (mut connection, _) = listener.accept().await.unwrap();
        let started = Instant::now();
        let taken = take_header(&mut connection, Duration::from_millis(200)).await;
        assert!(matches!(taken, Err(ReadError::Timeout)), "{taken:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// Against a real implementation: HAProxy reads the headers we write,
    /// and we read the ones it writes (with TLVs and a CRC32C). Skipped,
    /// with SKIP printed, when `haproxy` is not installed (`apt-get install
    /// haproxy`).
    mod haproxy {
        use std::process::{Child, Command, Stdio};
        use std::sync::atomic::{AtomicUsize, Ordering};

        use tokio::net::{TcpListener, TcpStream};
        use tokio::sync::mpsc;

        use super::*;

        /// The haproxy binary, if one is installed.
        fn binary() -> Option<&'static str> {
            let found = ["haproxy", "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
                .into_iter()
                .find(|path| {
                    Command::new(path)
                        .arg("-v")
                        .output()
                        .is_ok_and(|out| out.status.success())
                });
            if found.is_none() {
                println!("SKIP: haproxy is not installed (apt-get install haproxy)");
            }
            found
        }

        /// A free port on `ip`.
        fn free_port(ip: &str) -> u16 {
            let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
            listener.local_addr().unwrap().port()
        }

        fn ipv6_loopback() -> bool {
            std::net::TcpListener::bind("[::1]:0").is_ok()
        }

        /// A running haproxy; stopped when dropped.
        struct Haproxy {
            child: Child,
            config: std::path::PathBuf,
        }

        impl Haproxy {
            /// Starts `binary` with `sections` after a global part, once it
            /// listens.
            async fn start(binary: &str, sections: &str) -> Haproxy {
                static STARTED: AtomicUsize = AtomicUsize::new(0);
                let ready = free_port("127.0.0.1");
                let config = std::env::temp_dir().join(format!(
                    "affinity-proxy-protocol-{}-{}.cfg",
                    std::process::id(),
                    STARTED.fetch_add(1, Ordering::Relaxed)
                ));
                let text = format!(
                    "global\n    maxconn 100\n\
                     defaults\n    timeout connect 5s\n    timeout client 5s\n    timeout server 5s\n\
                     frontend ready\n    mode tcp\n    bind 127.0.0.1:{ready}\n    \
                     tcp-request connection reject\n{sections}"
                );
                std::fs::write(&config, text).unwrap();
                let child = Command::new(binary)
                    .arg("-db")
                    .arg("-f")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut haproxy = Haproxy { child, config };
                for _ in 0..200 {
                    if TcpStream::connect(("127.0.0.1", ready)).await.is_ok() {
                        return haproxy;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                let _ = haproxy.child.kill();
                panic!("haproxy did not start: {}", stderr_of(&mut haproxy.child));
            }
        }

        /// Waits for `child` to end (once killed): what it wrote on stderr.
        fn stderr_of(child: &mut Child) -> String {
            let _ = child.wait();
            let mut text = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            }
            text
        }

        impl Drop for Haproxy {
            fn drop(&mut self) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let _ = std::fs::remove_file(&self.config);
            }
        }

        /// What HAProxy says a request came from and went to, having read
        /// `header` before it.
        async fn seen_by_haproxy(port: u16, header: &[u8]) -> (SocketAddr, SocketAddr, SocketAddr) {
            let mut client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let local = client.local_addr().unwrap();
            let request = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
            client.write_all(&[header, request].concat()).await.unwrap();
            let mut response = String::new();
            client.read_to_string(&mut response).await.unwrap();
            let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
            let fields: Vec<&str> = body.split_whitespace().collect();
            assert_eq!(fields.len(), 4, "{response}");
            let address =
                |ip: &str, port: &str| SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap());
            (
                address(fields[0], fields[1]),
                address(fields[2], fields[3]),
                local,
            )
        }

        #[tokio::test]
        async fn haproxy_reads_the_v1_and_v2_headers_we_write() {
            let Some(binary) = binary() else { return };
            let port = free_port("127.0.0.1");
            let haproxy = Haproxy::start(
                binary,
                &format!(
                    "frontend reads_proxy\n    mode http\n    bind 127.0.0.1:{port} accept-proxy\n    \
                     http-request return status 200 content-type text/plain \
                     lf-string \"%[src] %[src_port] %[dst] %[dst_port]\"\n"
                ),
            )
            .await;
            let mapped =
                |address: SocketAddr| SocketAddr::new(as_ipv6(address.ip()).into(), address.port());
            let pairs = [
                (socket("192.0.2.1:56324"), socket("198.51.100.11:443")),
                (
                    socket("[2001:db8::1]:1"),
                    socket("[2001:db8:ffff::2]:65535"),
                ),
                (socket("[::ffff:192.0.2.9]:1"), socket("[::]:80")),
                (socket("192.0.2.1:4000"), socket("[2001:db8::2]:443")),
            ];
            for (source, destination) in pairs {
                let expected = match (source, destination) {
                    (SocketAddr::V4(_), SocketAddr::V4(_)) => (source, destination),
                    _ => (mapped(source), mapped(destination)),
                };
                for header in [
                    encode_v1(source, destination),
                    encode_v2(source, destination),
                ] {
                    let (from, to, _) = seen_by_haproxy(port, &header).await;
                    assert_eq!(
                        (from, to),
                        expected,
                        "{:?}",
                        String::from_utf8_lossy(&header)
                    );
                }
            }
            let (from, to, local) = seen_by_haproxy(port, &encode_v2_local()).await;
            assert_eq!((from, to), (local, socket(&format!("127.0.0.1:{port}"))));
            drop(haproxy);
        }

        /// A stream that keeps a copy of every byte read from it.
        struct Recording<S> {
            inner: S,
            read: Vec<u8>,
        }

        impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let this = self.get_mut();
                let before = buf.filled().len();
                let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
                this.read.extend_from_slice(&buf.filled()[before..]);
                polled
            }
        }

        /// What the backend read from one connection: the header, its raw
        /// bytes, and the line the client sent after it.
        struct Received {
            header: Header,
            raw: Vec<u8>,
            line: Vec<u8>,
        }

        /// A backend that reads each connection's header, then one line,
        /// which it sends back.
        async fn backend(listener: TcpListener, received: mpsc::UnboundedSender<Received>) {
            while let Ok((connection, _)) = listener.accept().await {
                let mut recording = Recording {
                    inner: connection,
                    read: Vec::new(),
                };
                let Ok((header, leftover)) =
                    read_header(&mut recording, Duration::from_secs(5)).await
                else {
                    continue;
                };
                let raw = recording.read[..recording.read.len() - leftover.len()].to_vec();
                let mut stream = Prefixed::new(leftover, recording.inner);
                let mut line = Vec::new();
                let mut byte = [0];
                while stream.read_exact(&mut byte).await.is_ok() {
                    line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break;
                    }
                }
                let _ = stream.write_all(&line).await;
                let _ = received.send(Received { header, raw, line });
            }
        }

        #[tokio::test]
        async fn we_read_the_v1_and_v2_headers_haproxy_writes_tlvs_and_crc32c_included() {
            let Some(binary) = binary() else { return };
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let backend_port = listener.local_addr().unwrap().port();
            let (sent, mut received) = mpsc::unbounded_channel();
            tokio::spawn(backend(listener, sent));
            let mut frontends = vec![("127.0.0.1", free_port("127.0.0.1"), "send-proxy")];
            let v2 = "send-proxy-v2 proxy-v2-options crc32c,unique-id";
            frontends.push(("127.0.0.1", free_port("127.0.0.1"), v2));
            if ipv6_loopback() {
                frontends.push(("::1", free_port("::1"), "send-proxy"));
                frontends.push(("::1", free_port("::1"), v2));
            } else {
                println!("SKIP the IPv6 part: no IPv6 loopback");
            }
            let sections: String = frontends
                .iter()
                .enumerate()
                .map(|(n, (ip, port, send))| {
                    format!(
                        "listen sends_{n}\n    mode tcp\n    bind {}:{port}\n    \
                         unique-id-format %ci:%cp_%fi:%fp_%Ts\n    \
                         server backend 127.0.0.1:{backend_port} {send}\n",
                        if ip.contains(':') {
                            format!("[{ip}]")
                        } else {
                            ip.to_string()
                        }
                    )
                })
                .collect();
            let haproxy = Haproxy::start(binary, &sections).await;
            for (ip, port, send) in &frontends {
                let mut client = TcpStream::connect((*ip, *port)).await.unwrap();
                client.write_all(b"hello\n").await.unwrap();
                let mut echo = [0; 6];
                client.read_exact(&mut echo).await.unwrap();
                assert_eq!(&echo, b"hello\n");
                let got = received.recv().await.unwrap();
                let expected = Header::Proxy {
                    source: client.local_addr().unwrap(),
                    destination: client.peer_addr().unwrap(),
                };
                assert_eq!(got.header, expected, "{send} on {ip}");
                assert_eq!(got.line, b"hello\n");
                if send.starts_with("send-proxy-v2") {
                    let addresses = if ip.contains(':') { 36 } else { 12 };
                    assert!(got.raw.len() > 16 + addresses, "no TLVs: {:?}", got.raw);
                    let mut damaged = got.raw.clone();
                    let last = damaged.len() - 1;
                    damaged[last] ^= 1;
                    assert_eq!(
                        parse(&damaged),
                        Err(ParseError::Invalid("v2: the CRC32C does not match"))
                    );
                } else {
                    assert!(got.raw.starts_with(b"PROXY TCP"), "{:?}", got.raw);
                }
            }
            drop(haproxy);
        }
    }
}
