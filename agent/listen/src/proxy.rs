//! The PROXY protocol, versions 1 (text) and 2 (binary), as HAProxy specifies it
//! (`doc/proxy-protocol.txt`): a load balancer puts the client's address in front of the
//! connection. Sans-IO: [`parse`] looks at the bytes received so far and says "need more",
//! "here is the header and its length", or why the connection must be refused.
//!
//! On a listener configured for it, a connection whose first bytes are not a valid header is
//! refused: accepting it would let anyone who reaches the pod directly pick their own address.
//! [`read_header`] reads one from a socket, bounded in size (by the parser) and in time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included.
pub const V1_MAX: usize = 107;
/// Longest v2 header accepted (16-octet prefix plus addresses and TLVs). The format allows
/// 64 KiB; load balancers send a few hundred octets at most.
pub const V2_MAX: usize = 16 + 2048;

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 or 2.
    pub version: u8,
    /// The client's address, when the proxy relayed a TCP connection. None for v2 LOCAL
    /// (the proxy's own health check), v1 UNKNOWN and v2 UNSPEC/UNIX: the connection is then
    /// the proxy's, and the TCP peer's address is the one to use.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when given.
    pub destination: Option<SocketAddr>,
}

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The connection does not start with a PROXY header.
    #[error("connection does not start with a PROXY protocol header")]
    Missing,
    /// It starts like one but breaks the format.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// Longer than accepted.
    #[error("PROXY header too long")]
    TooLong,
}

/// Parses the header at the start of `buf`. `Ok(None)`: a valid beginning, more bytes
/// needed. `Ok(Some((header, n)))`: the header is the first `n` bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::TooLong)
        } else {
            Ok(None)
        };
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(ProxyError::Malformed("v1 line must end with CRLF"));
    }
    let line = std::str::from_utf8(&window[..lf - 1])
        .map_err(|_| ProxyError::Malformed("v1 header is not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => ProxyHeader {
            version: 1,
            source: None,
            destination: None,
        },
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v6 = *family == "TCP6";
            let ip = |s: &str| -> Result<IpAddr, ProxyError> {
                let ip = if v6 {
                    s.parse::<Ipv6Addr>().map(IpAddr::V6)
                } else {
                    s.parse::<Ipv4Addr>().map(IpAddr::V4)
                };
                ip.map_err(|_| ProxyError::Malformed("v1 address does not match its family"))
            };
            let port = |s: &str| -> Result<u16, ProxyError> {
                if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ProxyError::Malformed("v1 port"));
                }
                s.parse().map_err(|_| ProxyError::Malformed("v1 port"))
            };
            ProxyHeader {
                version: 1,
                source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
                destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
            }
        }
        _ => return Err(ProxyError::Malformed("v1 header fields")),
    };
    Ok(Some((header, lf + 1)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    if version != 2 {
        return Err(ProxyError::Malformed("v2 version nibble"));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + len > V2_MAX {
        return Err(ProxyError::TooLong);
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let (source, destination) = match command {
        // LOCAL: the proxy's own connection; addresses (if any) are to be ignored.
        0x0 => (None, None),
        0x1 => match buf[13] {
            // UNSPEC, and UNIX sockets (no IP to speak of).
            0x00 | 0x31 | 0x32 => (None, None),
            0x11 => {
                let a = body
                    .get(..12)
                    .ok_or(ProxyError::Malformed("v2 TCP4 addresses"))?;
                let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
                let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
                (
                    Some(SocketAddr::new(ip(0), port(8))),
                    Some(SocketAddr::new(ip(4), port(10))),
                )
            }
            0x21 => {
                let a = body
                    .get(..36)
                    .ok_or(ProxyError::Malformed("v2 TCP6 addresses"))?;
                let ip = |o: usize| {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(&a[o..o + 16]);
                    IpAddr::V6(Ipv6Addr::from(octets))
                };
                let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
                (
                    Some(SocketAddr::new(ip(0), port(32))),
                    Some(SocketAddr::new(ip(16), port(34))),
                )
            }
            0x12 | 0x22 => return Err(ProxyError::Malformed("v2 UDP on a TCP listener")),
            _ => return Err(ProxyError::Malformed("v2 address family")),
        },
        _ => return Err(ProxyError::Malformed("v2 command")),
    };
    Ok(Some((
        ProxyHeader {
            version: 2,
            source,
            destination,
        },
        16 + len,
    )))
}

/// Why no header could be read from a connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes received are not a valid header.
    #[error(transparent)]
    Invalid(#[from] ProxyError),
    /// The client closed the connection first.
    #[error("connection closed before the PROXY header")]
    Closed,
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// No complete header within the time allowed.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
}

/// Reads the header at the start of `stream` within `limit`. Returns it with whatever
/// bytes came after it in the same reads, which belong to the protocol that follows
/// (wrap the stream in [`crate::Prefixed`] to read them first). At most [`V2_MAX`] plus one
/// read's worth of bytes are ever buffered: the parser refuses anything longer.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Result<(ProxyHeader, Vec<u8>), ReadError> {
    let read = async {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            if let Some((header, used)) = parse(&buf)? {
                return Ok((header, buf.split_off(used)));
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ReadError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| ReadError::Timeout(limit))?
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn read_header_keeps_what_follows_and_refuses_the_rest() {
        let limit = Duration::from_secs(5);
        let (mut a, mut b) = tokio::io::duplex(4096);
        b.write_all(b"PROXY TCP4 10.0.0.1 192.0.2.5 56324 25\r\nEHLO x\r\n")
            .await
            .unwrap();
        let (h, rest) = read_header(&mut a, limit).await.unwrap();
        assert_eq!(h.source, Some("10.0.0.1:56324".parse().unwrap()));
        assert_eq!(rest, b"EHLO x\r\n");

        let (mut a, mut b) = tokio::io::duplex(4096);
        b.write_all(b"EHLO x\r\n").await.unwrap();
        let err = read_header(&mut a, limit).await.unwrap_err();
        assert!(
            matches!(err, ReadError::Invalid(ProxyError::Missing)),
            "{err}"
        );

        let (mut a, mut b) = tokio::io::duplex(4096);
        b.write_all(b"PROXY TCP4 10.0").await.unwrap();
        drop(b);
        assert!(matches!(
            read_header(&mut a, limit).await,
            Err(ReadError::Closed)
        ));
    }

    #[tokio::test]
    async fn read_header_gives_up_on_a_silent_client() {
        let (mut a, _b) = tokio::io::duplex(64);
        let started = std::time::Instant::now();
        let err = read_header(&mut a, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, ReadError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn read_header_refuses_an_oversized_v2_header_before_reading_it() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let mut wire = V2_SIGNATURE.to_vec();
        wire.extend_from_slice(&[0x21, 0x11, 0x10, 0x00]);
        wire.resize(8192, 0);
        b.write_all(&wire).await.unwrap();
        let err = read_header(&mut a, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ReadError::Invalid(ProxyError::TooLong)),
            "{err}"
        );
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let line = b"PROXY TCP4 10.0.0.1 192.0.2.5 56324 25\r\nEHLO x\r\n";
        let (h, n) = parse(line).unwrap().unwrap();
        assert_eq!(n, 40);
        assert_eq!(h.source, Some("10.0.0.1:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("192.0.2.5:25".parse().unwrap()));
        let (h, _) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 587\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
        let (h, n) = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!((h.source, n), (None, 15));
        let (h, _) = parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, None);
    }

    #[test]
    fn v1_partial_and_errors() {
        let full = b"PROXY TCP4 10.0.0.1 192.0.2.5 56324 25\r\n";
        for i in 0..full.len() {
            assert_eq!(parse(&full[..i]), Ok(None), "prefix {i}");
        }
        let err = |b: &[u8]| parse(b).unwrap_err();
        assert_eq!(err(b"EHLO x\r\n"), ProxyError::Missing);
        assert_eq!(err(b"PROXZ"), ProxyError::Missing);
        assert!(matches!(
            err(b"PROXY TCP4 10.0.0.1 192.0.2.5 56324 25\n"),
            ProxyError::Malformed(_)
        ));
        assert!(matches!(
            err(b"PROXY TCP4 ::1 192.0.2.5 1 25\r\n"),
            ProxyError::Malformed(_)
        ));
        assert!(matches!(
            err(b"PROXY TCP4 10.0.0.1 192.0.2.5 65536 25\r\n"),
            ProxyError::Malformed(_)
        ));
        assert!(matches!(
            err(b"PROXY TCP4 10.0.0.1 192.0.2.5 -1 25\r\n"),
            ProxyError::Malformed(_)
        ));
        assert!(matches!(
            err(b"PROXY TCP4 10.0.0.1 192.0.2.5 1\r\n"),
            ProxyError::Malformed(_)
        ));
        assert!(matches!(
            err(b"PROXY UDP4 10.0.0.1 192.0.2.5 1 2\r\n"),
            ProxyError::Malformed(_)
        ));
        assert_eq!(
            err(&[b"PROXY ".as_slice(), &[b'x'; 200]].concat()),
            ProxyError::TooLong
        );
    }

    #[test]
    fn v2_families_commands_and_tlvs() {
        let mut body = vec![10, 0, 0, 1, 192, 0, 2, 5];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&25u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x02, 0xab, 0xcd]); // a TLV, skipped
        let mut wire = v2(1, 0x11, &body);
        let header_len = wire.len();
        wire.extend_from_slice(b"\x16\x03\x01"); // a TLS ClientHello may follow at once
        let (h, n) = parse(&wire).unwrap().unwrap();
        assert_eq!(n, header_len);
        assert_eq!(h.version, 2);
        assert_eq!(h.source, Some("10.0.0.1:56324".parse().unwrap()));
        let mut body6 = vec![0u8; 36];
        body6[15] = 1;
        body6[31] = 2;
        body6[32..34].copy_from_slice(&4242u16.to_be_bytes());
        let (h, _) = parse(&v2(1, 0x21, &body6)).unwrap().unwrap();
        assert_eq!(h.source, Some("[::1]:4242".parse().unwrap()));
        let (h, _) = parse(&v2(0, 0x11, &body)).unwrap().unwrap();
        assert_eq!(h.source, None, "LOCAL keeps the peer address");
        let (h, _) = parse(&v2(1, 0x00, &[])).unwrap().unwrap();
        assert_eq!(h.source, None);
    }

    #[test]
    fn v2_partial_and_errors() {
        let mut body = vec![10, 0, 0, 1, 192, 0, 2, 5, 0, 1, 0, 25];
        let wire = v2(1, 0x11, &body);
        for i in 0..wire.len() {
            assert_eq!(parse(&wire[..i]), Ok(None), "prefix {i}");
        }
        body.truncate(8);
        assert!(matches!(
            parse(&v2(1, 0x11, &body)),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x12, &[0; 12])),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(ProxyError::Malformed(_))
        ));
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        assert!(matches!(parse(&bad_version), Err(ProxyError::Malformed(_))));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(ProxyError::TooLong));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            for prefix in [&b""[..], b"PROXY ", &V2_SIGNATURE] {
                let buf = [prefix, &data].concat();
                if let Ok(Some((_, n))) = parse(&buf) {
                    proptest::prop_assert!(n <= buf.len());
                }
            }
        }
    }
}
