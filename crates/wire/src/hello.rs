//! Hand-built ClientHellos and the server's first flight, for probing
//! which protocol versions, cipher suites and groups a server accepts,
//! including the ones rustls will not speak (SSL 3.0, TLS 1.0 and 1.1,
//! CBC, RC4, 3DES, export and NULL suites).
//!
//! A probe offers exactly what it wants to test and reads the answer up to
//! the point where the server has chosen: a ServerHello (or a TLS 1.3
//! HelloRetryRequest, which chooses too), or an alert. It never completes a
//! handshake and never holds key material: TLS 1.3 probes send an empty
//! `key_share`, so a server that accepts the offer answers with a
//! HelloRetryRequest naming its group, and one that does not, with an
//! alert.
//!
//! This module is pure: bytes in, bytes out. Connections live in
//! `intransit-scan`.

use crate::tls::{CONTENT_TYPE_ALERT, CONTENT_TYPE_HANDSHAKE, RECORD_HEADER_LEN};

/// SSL 3.0.
pub const SSL3: u16 = 0x0300;
/// TLS 1.0.
pub const TLS10: u16 = 0x0301;
/// TLS 1.1.
pub const TLS11: u16 = 0x0302;
/// TLS 1.2.
pub const TLS12: u16 = 0x0303;
/// TLS 1.3.
pub const TLS13: u16 = 0x0304;

/// The name of a protocol version.
pub fn version_name(version: u16) -> &'static str {
    match version {
        SSL3 => "SSLv3",
        TLS10 => "TLSv1.0",
        TLS11 => "TLSv1.1",
        TLS12 => "TLSv1.2",
        TLS13 => "TLSv1.3",
        _ => "unknown",
    }
}

/// Cipher suites a probe can offer, with IANA names. TLS 1.3 suites first.
pub const SUITES: &[(u16, &str)] = &[
    (0x1301, "TLS_AES_128_GCM_SHA256"),
    (0x1302, "TLS_AES_256_GCM_SHA384"),
    (0x1303, "TLS_CHACHA20_POLY1305_SHA256"),
    (0x1304, "TLS_AES_128_CCM_SHA256"),
    (0x1305, "TLS_AES_128_CCM_8_SHA256"),
    (0xc02b, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
    (0xc02f, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
    (0xc02c, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
    (0xc030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
    (0xcca9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
    (0xcca8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    (0x009e, "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256"),
    (0x009f, "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384"),
    (0xccaa, "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256"),
    (0xc023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"),
    (0xc027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"),
    (0xc024, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384"),
    (0xc028, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384"),
    (0xc009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"),
    (0xc013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
    (0xc00a, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"),
    (0xc014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"),
    (0x0067, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256"),
    (0x006b, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256"),
    (0x0033, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA"),
    (0x0039, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA"),
    (0x009c, "TLS_RSA_WITH_AES_128_GCM_SHA256"),
    (0x009d, "TLS_RSA_WITH_AES_256_GCM_SHA384"),
    (0x003c, "TLS_RSA_WITH_AES_128_CBC_SHA256"),
    (0x003d, "TLS_RSA_WITH_AES_256_CBC_SHA256"),
    (0x002f, "TLS_RSA_WITH_AES_128_CBC_SHA"),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA"),
    (0x0041, "TLS_RSA_WITH_CAMELLIA_128_CBC_SHA"),
    (0x0084, "TLS_RSA_WITH_CAMELLIA_256_CBC_SHA"),
    (0x0096, "TLS_RSA_WITH_SEED_CBC_SHA"),
    (0x0007, "TLS_RSA_WITH_IDEA_CBC_SHA"),
    (0xc012, "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA"),
    (0xc008, "TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA"),
    (0x0016, "TLS_DHE_RSA_WITH_3DES_EDE_CBC_SHA"),
    (0x000a, "TLS_RSA_WITH_3DES_EDE_CBC_SHA"),
    (0xc011, "TLS_ECDHE_RSA_WITH_RC4_128_SHA"),
    (0xc007, "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA"),
    (0x0005, "TLS_RSA_WITH_RC4_128_SHA"),
    (0x0004, "TLS_RSA_WITH_RC4_128_MD5"),
    (0x0009, "TLS_RSA_WITH_DES_CBC_SHA"),
    (0x0015, "TLS_DHE_RSA_WITH_DES_CBC_SHA"),
    (0x0003, "TLS_RSA_EXPORT_WITH_RC4_40_MD5"),
    (0x0008, "TLS_RSA_EXPORT_WITH_DES40_CBC_SHA"),
    (0x0014, "TLS_DHE_RSA_EXPORT_WITH_DES40_CBC_SHA"),
    (0x0034, "TLS_DH_anon_WITH_AES_128_CBC_SHA"),
    (0xc018, "TLS_ECDH_anon_WITH_AES_128_CBC_SHA"),
    (0xc010, "TLS_ECDHE_RSA_WITH_NULL_SHA"),
    (0x003b, "TLS_RSA_WITH_NULL_SHA256"),
    (0x0002, "TLS_RSA_WITH_NULL_SHA"),
    (0x0001, "TLS_RSA_WITH_NULL_MD5"),
];

/// Whether a suite belongs to TLS 1.3 (and only TLS 1.3).
pub fn is_tls13_suite(suite: u16) -> bool {
    (0x1301..=0x1305).contains(&suite)
}

/// The IANA name of a suite, or `0xXXXX`.
pub fn suite_name(suite: u16) -> String {
    SUITES
        .iter()
        .find(|(id, _)| *id == suite)
        .map_or_else(|| format!("0x{suite:04x}"), |(_, n)| (*n).to_owned())
}

/// Named groups a probe can offer.
pub const GROUPS: &[(u16, &str)] = &[
    (0x11ec, "X25519MLKEM768"),
    (0x11eb, "SecP256r1MLKEM768"),
    (0x001d, "X25519"),
    (0x0017, "secp256r1"),
    (0x0018, "secp384r1"),
    (0x0019, "secp521r1"),
    (0x001e, "X448"),
    (0x0100, "ffdhe2048"),
    (0x0101, "ffdhe3072"),
];

/// The name of a group, or `0xXXXX`.
pub fn group_name(group: u16) -> String {
    GROUPS
        .iter()
        .find(|(id, _)| *id == group)
        .map_or_else(|| format!("0x{group:04x}"), |(_, n)| (*n).to_owned())
}

/// What a probe offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHelloSpec {
    /// The version to offer: up to TLS 1.2 it is the ClientHello's version;
    /// TLS 1.3 is offered through `supported_versions` (and only 1.3).
    pub version: u16,
    /// Cipher suites, in preference order.
    pub cipher_suites: Vec<u16>,
    /// Named groups (`supported_groups`), in preference order.
    pub groups: Vec<u16>,
    /// SNI host name.
    pub server_name: Option<String>,
    /// Offer DEFLATE compression as well as none.
    pub offer_compression: bool,
    /// Ask for a stapled OCSP response (`status_request`).
    pub status_request: bool,
    /// The client random.
    pub random: [u8; 32],
}

const SIGNATURE_ALGORITHMS: &[u16] = &[
    0x0403, 0x0503, 0x0603, 0x0807, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601, 0x0201, 0x0203,
];

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u24(out: &mut Vec<u8>, v: usize) {
    let v = v as u32;
    out.extend_from_slice(&v.to_be_bytes()[1..]);
}

fn extension(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    put_u16(out, kind);
    put_u16(out, body.len() as u16);
    out.extend_from_slice(body);
}

fn u16_list(values: &[u16]) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + 2 * values.len());
    put_u16(&mut body, (2 * values.len()) as u16);
    for v in values {
        put_u16(&mut body, *v);
    }
    body
}

/// Builds the ClientHello record for `spec`.
pub fn client_hello(spec: &ClientHelloSpec) -> Vec<u8> {
    let tls13 = spec.version >= TLS13;
    let legacy_version = spec.version.min(TLS12);
    let mut hello = Vec::with_capacity(512);
    put_u16(&mut hello, legacy_version);
    hello.extend_from_slice(&spec.random);
    hello.push(0); // no session id
    put_u16(&mut hello, (2 * spec.cipher_suites.len() + 2) as u16);
    for s in &spec.cipher_suites {
        put_u16(&mut hello, *s);
    }
    // TLS_EMPTY_RENEGOTIATION_INFO_SCSV, so old servers may report
    // secure renegotiation too.
    put_u16(&mut hello, 0x00ff);
    if spec.offer_compression {
        hello.extend_from_slice(&[2, 1, 0]);
    } else {
        hello.extend_from_slice(&[1, 0]);
    }
    if spec.version > SSL3 {
        let mut ext = Vec::with_capacity(256);
        if let Some(name) = &spec.server_name {
            let name = name.as_bytes();
            let mut body = Vec::with_capacity(name.len() + 5);
            put_u16(&mut body, (name.len() + 3) as u16);
            body.push(0);
            put_u16(&mut body, name.len() as u16);
            body.extend_from_slice(name);
            extension(&mut ext, 0x0000, &body);
        }
        if !spec.groups.is_empty() {
            extension(&mut ext, 0x000a, &u16_list(&spec.groups));
            extension(&mut ext, 0x000b, &[1, 0]);
        }
        if spec.version >= TLS12 {
            extension(&mut ext, 0x000d, &u16_list(SIGNATURE_ALGORITHMS));
        }
        if spec.status_request {
            extension(&mut ext, 0x0005, &[1, 0, 0, 0, 0]);
        }
        if tls13 {
            extension(&mut ext, 0x002b, &[2, 0x03, 0x04]);
            // An empty key_share: a server that accepts answers with a
            // HelloRetryRequest naming its group.
            extension(&mut ext, 0x0033, &[0, 0]);
            extension(&mut ext, 0x002d, &[1, 1]);
        }
        put_u16(&mut hello, ext.len() as u16);
        hello.extend_from_slice(&ext);
    }
    let mut handshake = Vec::with_capacity(hello.len() + 4);
    handshake.push(1);
    put_u24(&mut handshake, hello.len());
    handshake.extend_from_slice(&hello);
    let mut record = Vec::with_capacity(handshake.len() + RECORD_HEADER_LEN);
    record.push(CONTENT_TYPE_HANDSHAKE);
    put_u16(&mut record, if spec.version == SSL3 { SSL3 } else { TLS10 });
    put_u16(&mut record, handshake.len() as u16);
    record.extend_from_slice(&handshake);
    record
}

/// The SHA-256 of "HelloRetryRequest": a ServerHello with this random is
/// a HelloRetryRequest (RFC 8446 section 4.1.3).
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// What the server chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// The negotiated version (`supported_versions` when present).
    pub version: u16,
    /// The chosen suite.
    pub cipher_suite: u16,
    /// The chosen compression method (0 none, 1 DEFLATE).
    pub compression: u8,
    /// A TLS 1.3 HelloRetryRequest rather than a ServerHello.
    pub hello_retry: bool,
    /// The group of a TLS 1.3 key share or HelloRetryRequest.
    pub group: Option<u16>,
    /// The server sent `renegotiation_info` (secure renegotiation).
    pub secure_renegotiation: bool,
    /// The server agreed to staple an OCSP response.
    pub status_request: bool,
}

/// The server's first flight, as far as it was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerFlight {
    /// The ServerHello, once complete.
    pub hello: Option<ServerHello>,
    /// DER certificates of a TLS 1.2-or-older Certificate message.
    pub certificates: Vec<Vec<u8>>,
    /// A stapled OCSP response arrived (CertificateStatus).
    pub ocsp_stapled: bool,
    /// ServerHelloDone arrived: the flight is complete.
    pub done: bool,
    /// An alert (level, description), if the server sent one.
    pub alert: Option<(u8, u8)>,
}

impl ServerFlight {
    /// Whether a probe has read enough: an alert, a complete TLS 1.2
    /// flight, or a ServerHello/HelloRetryRequest of TLS 1.3 (the rest is
    /// encrypted).
    pub fn is_complete(&self) -> bool {
        self.alert.is_some() || self.plaintext_flight_over()
    }

    /// ServerHelloDone arrived, or a TLS 1.3 ServerHello or
    /// HelloRetryRequest: the server's plaintext messages are over.
    fn plaintext_flight_over(&self) -> bool {
        self.done
            || self
                .hello
                .as_ref()
                .is_some_and(|h| h.version >= TLS13 || h.hello_retry)
    }
}

/// Why a server's answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightError {
    /// The bytes are not TLS records.
    NotTls,
    /// A handshake message is malformed.
    Malformed(&'static str),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// Parses as much of the server's first flight as `buf` holds. Handshake
/// messages after ServerHelloDone, or after the ServerHello of TLS 1.3
/// (encrypted there), are ignored.
pub fn parse_server_flight(buf: &[u8]) -> Result<ServerFlight, FlightError> {
    let mut flight = ServerFlight::default();
    let mut handshake = Vec::new();
    let mut rest = buf;
    while rest.len() >= RECORD_HEADER_LEN {
        let kind = rest[0];
        let major = rest[1];
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if major != 3 || !(0x14..=0x18).contains(&kind) {
            return Err(FlightError::NotTls);
        }
        if rest.len() < RECORD_HEADER_LEN + len {
            break;
        }
        let body = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
        rest = &rest[RECORD_HEADER_LEN + len..];
        match kind {
            CONTENT_TYPE_ALERT if body.len() >= 2 => {
                flight.alert = Some((body[0], body[1]));
                break;
            }
            CONTENT_TYPE_HANDSHAKE => handshake.extend_from_slice(body),
            // ChangeCipherSpec or encrypted records: the plaintext part of
            // the flight is over.
            _ => break,
        }
    }
    let mut r = Reader { buf: &handshake };
    // The plaintext flight ends with ServerHelloDone, or with a TLS 1.3
    // ServerHello or HelloRetryRequest. Whatever follows belongs to a later
    // flight, so it is not read: otherwise more bytes could replace an
    // answer the caller already stopped at, and what a probe reports would
    // depend on how the server's bytes were split.
    while !flight.plaintext_flight_over() {
        let (Some(kind), Some(len)) = (r.u8(), r.u24()) else {
            break;
        };
        let Some(body) = r.take(len) else { break };
        match kind {
            2 => flight.hello = Some(parse_server_hello(body)?),
            11 => {
                let tls13 = flight.hello.as_ref().is_some_and(|h| h.version >= TLS13);
                if !tls13 {
                    flight.certificates = parse_certificates(body)?;
                }
            }
            22 => flight.ocsp_stapled = true,
            14 => flight.done = true,
            _ => {}
        }
    }
    Ok(flight)
}

fn parse_server_hello(body: &[u8]) -> Result<ServerHello, FlightError> {
    let bad = FlightError::Malformed;
    let mut r = Reader { buf: body };
    let legacy_version = r.u16().ok_or(bad("ServerHello version"))?;
    let random = r.take(32).ok_or(bad("ServerHello random"))?;
    let sid_len = r.u8().ok_or(bad("ServerHello session id"))?;
    r.take(usize::from(sid_len))
        .ok_or(bad("ServerHello session id"))?;
    let cipher_suite = r.u16().ok_or(bad("ServerHello cipher suite"))?;
    let compression = r.u8().ok_or(bad("ServerHello compression"))?;
    let mut hello = ServerHello {
        version: legacy_version,
        cipher_suite,
        compression,
        hello_retry: random == HRR_RANDOM,
        group: None,
        secure_renegotiation: false,
        status_request: false,
    };
    let Some(ext_len) = r.u16() else {
        return Ok(hello);
    };
    let mut e = Reader {
        buf: r
            .take(usize::from(ext_len))
            .ok_or(bad("ServerHello extensions"))?,
    };
    while let (Some(kind), Some(len)) = (e.u16(), e.u16()) {
        let data = e
            .take(usize::from(len))
            .ok_or(bad("ServerHello extension"))?;
        match kind {
            0x002b if data.len() == 2 => hello.version = u16::from_be_bytes([data[0], data[1]]),
            0x0033 if data.len() >= 2 => hello.group = Some(u16::from_be_bytes([data[0], data[1]])),
            0xff01 => hello.secure_renegotiation = true,
            0x0005 => hello.status_request = true,
            _ => {}
        }
    }
    Ok(hello)
}

fn parse_certificates(body: &[u8]) -> Result<Vec<Vec<u8>>, FlightError> {
    let mut r = Reader { buf: body };
    let total = r.u24().ok_or(FlightError::Malformed("Certificate list"))?;
    let mut list = Reader {
        buf: r
            .take(total)
            .ok_or(FlightError::Malformed("Certificate list"))?,
    };
    let mut out = Vec::new();
    while let Some(len) = list.u24() {
        out.push(
            list.take(len)
                .ok_or(FlightError::Malformed("Certificate entry"))?
                .to_vec(),
        );
    }
    Ok(out)
}

/// The name of an alert description.
pub fn alert_name(description: u8) -> &'static str {
    match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        47 => "illegal_parameter",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        109 => "missing_extension",
        112 => "unrecognized_name",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => "other",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(version: u16) -> ClientHelloSpec {
        ClientHelloSpec {
            version,
            cipher_suites: vec![0x1301, 0xc02f],
            groups: vec![0x001d],
            server_name: Some("db.example".into()),
            offer_compression: false,
            status_request: true,
            random: [7; 32],
        }
    }

    #[test]
    fn a_tls13_hello_carries_supported_versions_and_an_empty_key_share() {
        let bytes = client_hello(&spec(TLS13));
        assert_eq!(&bytes[..3], &[0x16, 0x03, 0x01]);
        assert_eq!(
            usize::from(u16::from_be_bytes([bytes[3], bytes[4]])),
            bytes.len() - 5
        );
        assert_eq!(bytes[5], 1);
        // legacy_version is TLS 1.2.
        assert_eq!(&bytes[9..11], &[0x03, 0x03]);
        let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(find(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]));
        assert!(find(&[0x00, 0x33, 0x00, 0x02, 0x00, 0x00]));
        assert!(find(b"db.example"));
    }

    #[test]
    fn an_ssl3_hello_has_no_extensions() {
        let bytes = client_hello(&spec(SSL3));
        assert_eq!(&bytes[..3], &[0x16, 0x03, 0x00]);
        // header 5 + handshake header 4 + version 2 + random 32 + sid 1 +
        // suites (2 + 3*2) + compression 2
        assert_eq!(bytes.len(), 5 + 4 + 2 + 32 + 1 + 8 + 2);
    }

    /// A ServerHello for TLS 1.2 with renegotiation_info, then a
    /// Certificate and ServerHelloDone, as a server sends them.
    fn tls12_flight() -> Vec<u8> {
        let mut sh = vec![0x03, 0x03];
        sh.extend_from_slice(&[1; 32]);
        sh.push(0);
        sh.extend_from_slice(&[0xc0, 0x2f, 0x00]);
        sh.extend_from_slice(&[0x00, 0x05, 0xff, 0x01, 0x00, 0x01, 0x00]);
        let mut hs = vec![2, 0, 0, sh.len() as u8];
        hs.extend_from_slice(&sh);
        let cert = [0x30, 0x03, 0x02, 0x01, 0x05];
        hs.extend_from_slice(&[11, 0, 0, 11, 0, 0, 8, 0, 0, 5]);
        hs.extend_from_slice(&cert);
        hs.extend_from_slice(&[14, 0, 0, 0]);
        let mut rec = vec![0x16, 0x03, 0x03];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn a_tls12_flight_is_read_whole_and_in_pieces() {
        let rec = tls12_flight();
        let f = parse_server_flight(&rec).unwrap();
        let hello = f.hello.clone().unwrap();
        assert_eq!(hello.version, TLS12);
        assert_eq!(hello.cipher_suite, 0xc02f);
        assert!(hello.secure_renegotiation);
        assert_eq!(f.certificates, vec![vec![0x30, 0x03, 0x02, 0x01, 0x05]]);
        assert!(f.done && f.is_complete());
        for cut in 0..rec.len() {
            let partial = parse_server_flight(&rec[..cut]).unwrap();
            assert!(!partial.is_complete(), "complete at {cut}");
        }
    }

    /// A ServerHello message choosing `suite`: TLS 1.2 without extensions,
    /// or TLS 1.3 through `supported_versions`.
    fn server_hello_message(suite: u16, tls13: bool) -> Vec<u8> {
        let mut sh = vec![0x03, 0x03];
        sh.extend_from_slice(&[1; 32]);
        sh.push(0);
        sh.extend_from_slice(&suite.to_be_bytes());
        sh.push(0);
        if tls13 {
            sh.extend_from_slice(&[0x00, 0x06, 0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]);
        }
        let mut message = vec![2, 0, 0, sh.len() as u8];
        message.extend_from_slice(&sh);
        message
    }

    /// What follows the end of the plaintext flight (a TLS 1.3 ServerHello
    /// here) is not read, so the answer a probe stops at does not depend
    /// on how much arrived: a later ServerHello does not replace the first.
    #[test]
    fn messages_after_the_end_of_the_flight_change_nothing() {
        let first = server_hello_message(0x1301, true);
        let mut bytes = vec![0x16, 0x03, 0x03, 0x00, first.len() as u8];
        bytes.extend_from_slice(&first);
        let first_record = bytes.len();
        let mut later = server_hello_message(0xc02f, false);
        later.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
        bytes.extend_from_slice(&[0x16, 0x03, 0x03, 0x00, later.len() as u8]);
        bytes.extend_from_slice(&later);
        for cut in first_record..=bytes.len() {
            let flight = parse_server_flight(&bytes[..cut]).unwrap();
            assert!(flight.is_complete(), "incomplete at {cut}");
            let hello = flight.hello.unwrap();
            assert_eq!((hello.version, hello.cipher_suite), (TLS13, 0x1301));
        }

        // And after ServerHelloDone, a Certificate and ServerHello of a
        // later flight are not read either.
        let mut flight = tls12_flight();
        let mut more = server_hello_message(0x009c, false);
        more.extend_from_slice(&[11, 0, 0, 3, 0, 0, 0]);
        flight.extend_from_slice(&[0x16, 0x03, 0x03, 0x00, more.len() as u8]);
        flight.extend_from_slice(&more);
        let f = parse_server_flight(&flight).unwrap();
        assert_eq!(f.hello.unwrap().cipher_suite, 0xc02f);
        assert_eq!(f.certificates, vec![vec![0x30, 0x03, 0x02, 0x01, 0x05]]);
    }

    #[test]
    fn alerts_and_hello_retry_requests_complete_a_probe() {
        let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46];
        let f = parse_server_flight(&alert).unwrap();
        assert_eq!(f.alert, Some((2, 70)));
        assert_eq!(alert_name(70), "protocol_version");
        assert!(f.is_complete());

        let mut hrr = vec![0x03, 0x03];
        hrr.extend_from_slice(&HRR_RANDOM);
        hrr.push(0);
        hrr.extend_from_slice(&[0x13, 0x01, 0x00]);
        hrr.extend_from_slice(&[
            0x00, 0x0c, 0x00, 0x2b, 0x00, 0x02, 0x03, 0x04, 0x00, 0x33, 0x00, 0x02, 0x11, 0xec,
        ]);
        let mut rec = vec![
            0x16,
            0x03,
            0x03,
            0x00,
            (hrr.len() + 4) as u8,
            2,
            0,
            0,
            hrr.len() as u8,
        ];
        rec.extend_from_slice(&hrr);
        let f = parse_server_flight(&rec).unwrap();
        let h = f.hello.unwrap();
        assert!(h.hello_retry);
        assert_eq!(h.version, TLS13);
        assert_eq!(h.group, Some(0x11ec));
        assert_eq!(group_name(0x11ec), "X25519MLKEM768");
    }

    #[test]
    fn garbage_is_not_tls_and_never_panics() {
        assert_eq!(
            parse_server_flight(b"HTTP/1.1 400 Bad"),
            Err(FlightError::NotTls)
        );
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse_server_flight(&junk);
            let mut rec = vec![0x16, 0x03, 0x03, 0x00, len as u8];
            rec.extend_from_slice(&junk);
            let _ = parse_server_flight(&rec);
        }
        assert_eq!(suite_name(0xc02f), "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256");
        assert_eq!(suite_name(0xfefe), "0xfefe");
    }

    /// Bytes captured from `openssl s_server -cipher ALL:@SECLEVEL=0
    /// -min_protocol TLSv1` (OpenSSL 3.0, RSA certificate) answering a TLS
    /// 1.0 ClientHello that offered only ECDHE-RSA-AES128-SHA.
    #[test]
    fn a_captured_openssl_tls10_flight_parses() {
        let bytes = include_bytes!("../testdata/openssl-tls10-server-flight.bin");
        let f = parse_server_flight(bytes).unwrap();
        let h = f.hello.unwrap();
        assert_eq!(h.version, TLS10);
        assert_eq!(h.cipher_suite, 0xc013);
        assert_eq!(h.compression, 0);
        assert!(h.secure_renegotiation);
        assert_eq!(f.certificates.len(), 1);
        assert_eq!(f.certificates[0][0], 0x30, "a DER SEQUENCE");
        assert!(f.done);
    }

    /// Bytes captured from `openssl s_server` (OpenSSL 3.0, defaults)
    /// answering a TLS 1.3 ClientHello with an empty key_share: a
    /// HelloRetryRequest for X25519, then a ChangeCipherSpec record.
    #[test]
    fn a_captured_openssl_hello_retry_request_parses() {
        let bytes = include_bytes!("../testdata/openssl-tls13-hello-retry.bin");
        let f = parse_server_flight(bytes).unwrap();
        let h = f.hello.unwrap();
        assert!(h.hello_retry);
        assert_eq!(h.version, TLS13);
        assert_eq!(h.cipher_suite, 0x1301);
        assert_eq!(h.group, Some(0x001d));
        assert!(f.certificates.is_empty());
    }
}
