//! PROXY protocol (v1 text and v2 binary, via the `ppp` crate): learn a client's original
//! address from the load balancer in front of the server.
//!
//! Only peers in `trusted_proxies` may send a header, and from them one is required: a
//! header from anyone else would let any client choose its own address. The header is read
//! on the connection's task before TLS, under the handshake timeout, and never over-read:
//! bytes after it (a TLS ClientHello, the first request) are kept and served first.
//! Unix-socket peers have no IP: they are trusted only with `trust_unix_peers` (a proxy on
//! the same host, such as HAProxy's `server ... /run/app.sock send-proxy-v2`).

use std::net::{IpAddr, SocketAddr};

use futures_io::AsyncRead;
use futures_lite::AsyncReadExt;
use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult};
use serde::{Deserialize, Serialize};

/// PROXY protocol settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    /// Networks of the proxies allowed (and required) to send a PROXY header.
    pub trusted_proxies: Vec<IpNet>,
    /// Also trust every peer of a Unix domain socket server (a proxy on the same host):
    /// they too must send a header. File permissions decide who may connect, so only set
    /// this when only the proxy can. Default `false`.
    #[serde(default)]
    pub trust_unix_peers: bool,
}

impl ProxyProtocol {
    /// Trusted proxies on these networks; Unix-socket peers not trusted.
    pub fn new(trusted_proxies: Vec<IpNet>) -> Self {
        ProxyProtocol {
            trusted_proxies,
            trust_unix_peers: false,
        }
    }

    /// Whether `peer` must (and may) send a PROXY header.
    pub(crate) fn trusts(&self, peer: &crate::addr::Addr) -> bool {
        let Some(ip) = peer.ip() else {
            return self.trust_unix_peers;
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// The longest header accepted: a v1 header is at most 107 bytes; v2 headers carry TLVs,
/// and 4 KiB is far more than load balancers send.
pub(crate) const MAX_HEADER: usize = 4096;

/// The longest v1 header, CRLF included (the specification's limit).
const V1_MAX: usize = 107;

/// What the header said.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The original client, or `None` for a header that carries no address (v1 UNKNOWN,
    /// v2 LOCAL such as health checks): the connection then stands for itself.
    pub(crate) source: Option<SocketAddr>,
    /// Bytes read after the header.
    pub(crate) rest: Vec<u8>,
}

/// Reads one PROXY header from `stream`.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Header, String> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream
            .read(&mut chunk[..(MAX_HEADER - buf.len()).min(512)])
            .await
            .map_err(|e| format!("connection failed before the header was complete: {e}"))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "connection closed before a PROXY header".to_owned()
            } else {
                "connection closed in the middle of the PROXY header".to_owned()
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        // A v1 (text) header ends with CRLF within 107 bytes. Parse it only once complete:
        // ppp reports some cut-short headers (e.g. ending right after a space) as malformed
        // rather than incomplete.
        let text = b"PROXY";
        let v1 = buf[..buf.len().min(text.len())] == text[..buf.len().min(text.len())];
        let line_end = buf.windows(2).position(|w| w == b"\r\n");
        if v1 && line_end.is_none() {
            if buf.len() >= V1_MAX {
                return Err(format!("v1 PROXY header longer than {V1_MAX} bytes"));
            }
            continue;
        }
        // Once its line has ended, nothing more can complete a v1 header (ppp calls
        // "PROXY TCP4\r\n" incomplete, as if more addresses might come).
        let parsed = match line_end.filter(|_| v1) {
            Some(end) => HeaderResult::parse(&buf[..end + 2]),
            None => HeaderResult::parse(&buf),
        };
        if v1 && parsed.is_incomplete() {
            return Err("malformed v1 header: the line ends before its addresses".to_owned());
        }
        if parsed.is_incomplete() {
            if buf.len() >= MAX_HEADER {
                return Err(format!("PROXY header longer than {MAX_HEADER} bytes"));
            }
            continue;
        }
        let (len, source) = match parsed {
            HeaderResult::V1(Ok(h)) => {
                let source = match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Unknown => None,
                };
                (h.header.len(), source)
            }
            // LOCAL: the proxy's own connection (a health check); any addresses it
            // carries are to be ignored.
            HeaderResult::V2(Ok(h)) if h.command == ppp::v2::Command::Local => (h.len(), None),
            HeaderResult::V2(Ok(h)) => {
                let source = match h.addresses {
                    ppp::v2::Addresses::IPv4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v2::Addresses::IPv6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
                };
                (h.len(), source)
            }
            HeaderResult::V1(Err(e)) => return Err(format!("malformed or missing header: {e:?}")),
            HeaderResult::V2(Err(e)) => return Err(format!("malformed v2 header: {e:?}")),
        };
        let rest = buf.split_off(len.min(buf.len()));
        return Ok(Header { source, rest });
    }
}

#[cfg(test)]
mod tests;

/// Property tests (proptest) of the header reader: arbitrary and mutated input never makes it
/// panic, spin or read more than it gives back; headers that the `ppp` crate writes come back
/// with the address written, however the peer's bytes are cut into reads.
///
/// `PROPTEST_CASES` overrides the number of cases of every property ([`CASES`] by default).
#[cfg(test)]
mod fuzz;
