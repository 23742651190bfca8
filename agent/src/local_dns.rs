//! A DNS server for local clusters on machines without a network: it answers every query with
//! NXDOMAIN at once.
//!
//! The SMTP listeners' SPF, DKIM and DMARC checks resolve names for every message from the
//! internet; with a resolver that never answers (a sandbox, an air-gapped laptop), each
//! message would wait for the checks' time budget. Pointing `TERN_DNS_SERVERS` at this
//! server makes every lookup a local round trip that finds nothing, so the checks record
//! `none` and mail flows as with a resolver next to the cluster. The tests and the benchmarks
//! use it; `tern-agent dev` does not, since a developer's machine usually has DNS.

/// The answer of a resolver that knows no name: NXDOMAIN, with the query's id, opcode, RD flag
/// and question; `None` for what is no DNS query.
pub fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    if flags & 0x8000 != 0 {
        return None;
    }
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let mut end = 12;
    for _ in 0..questions {
        loop {
            let len = usize::from(*query.get(end)?);
            end += 1;
            if len == 0 {
                break;
            }
            if len & 0xc0 != 0 {
                return None;
            }
            end += len;
        }
        end += 4;
    }
    if end > query.len() {
        return None;
    }
    // QR, the query's opcode and RD, RA, RCODE 3 (NXDOMAIN); no answer, authority or
    // additional records.
    let reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | 3;
    let mut reply = Vec::with_capacity(end);
    reply.extend_from_slice(&header[..2]);
    reply.extend_from_slice(&u16::to_be_bytes(reply_flags));
    reply.extend_from_slice(&header[4..6]);
    reply.extend_from_slice(&[0; 6]);
    reply.extend_from_slice(&query[12..end]);
    Some(reply)
}

/// A DNS server on 127.0.0.1 that answers every query with NXDOMAIN at once, on a thread of
/// its own for the rest of the process: the resolver of Tern's SPF, DKIM and DMARC checks
/// (`TERN_DNS_SERVERS`), so that they cost a local round trip, as with a resolver next to
/// the cluster, rather than the timeouts of a machine without a network.
pub fn start() -> Result<std::net::SocketAddr, String> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("DNS: {e}"))?;
    let addr = socket.local_addr().map_err(|e| format!("DNS: {e}"))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            if let Some(reply) = nxdomain(&buf[..n]) {
                let _ = socket.send_to(&reply, from);
            }
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dns_queries_get_nxdomain() {
        // A query for TXT example.com, id 0xbeef, RD, with an EDNS OPT record.
        let mut query = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        query.extend_from_slice(b"\x07example\x03com\x00\x00\x10\x00\x01");
        let question_end = query.len();
        query.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        let reply = nxdomain(&query).unwrap();
        assert_eq!(&reply[..4], &[0xbe, 0xef, 0x81, 0x83]);
        assert_eq!(&reply[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&reply[12..], &query[12..question_end]);
        // A real one, sent to the responder.
        let server = start().unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.send_to(&query, server).unwrap();
        let mut buf = [0u8; 512];
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &reply[..]);
        // Not queries: too short, a response, a truncated or compressed question.
        assert_eq!(nxdomain(&query[..11]), None);
        let mut response = query.clone();
        response[2] |= 0x80;
        assert_eq!(nxdomain(&response), None);
        assert_eq!(nxdomain(&query[..20]), None);
        let mut compressed = query[..12].to_vec();
        compressed.extend_from_slice(&[0xc0, 0x0c, 0, 16, 0, 1]);
        assert_eq!(nxdomain(&compressed), None);
    }
}
