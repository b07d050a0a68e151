//! Logging in and doing one trivial thing, per protocol, over a TLS stream
//! from [`crate::client`]: PostgreSQL `SELECT 1` (simple query), MySQL
//! `COM_QUERY SELECT 1`, Redis `PING`, and Redis `GET` of a large value for
//! throughput.
//!
//! Supported logins, and only these: PostgreSQL `trust`, `password`
//! (cleartext), `md5` and `SCRAM-SHA-256` (without channel binding, and
//! without SASLprep: the password is used as given); MySQL and MariaDB
//! `mysql_native_password` (also after an AuthSwitchRequest to it); Redis
//! without a password or with `AUTH`. Anything else is an error that names
//! what is missing. Message bytes come from `intransit_wire` where it has
//! them; this module moves them and keeps no secret longer than a login.

use std::num::NonZeroU32;

use aws_lc_rs::{digest, hmac, pbkdf2};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{Buf, BytesMut};
use intransit_scan::Target;
use intransit_wire::mysql::{
    self, HandshakeResponse41, HandshakeV10, ServerAuthReply, CLIENT_CONNECT_WITH_DB,
    CLIENT_LONG_PASSWORD, CLIENT_PLUGIN_AUTH, CLIENT_PROTOCOL_41, CLIENT_SECURE_CONNECTION,
    CLIENT_SSL, CLIENT_TRANSACTIONS, MYSQL_NATIVE_PASSWORD, UTF8MB4_GENERAL_CI,
};
use intransit_wire::pg::{self, AuthenticationRequest, BackendFrame, StartupMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::client::{drain_until_closed, Connected, OpError};

/// The capabilities of the MySQL SSLRequest and HandshakeResponse41 this
/// client sends (without the database flag, added when one is named).
pub const MYSQL_CAPABILITIES: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_PROTOCOL_41
    | CLIENT_SSL
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH;

/// The largest SCRAM iteration count accepted, so a hostile server cannot
/// make a login take minutes.
const MAX_SCRAM_ITERATIONS: u32 = 1 << 20;
/// The largest server message read (a `GET` reply has its own bound).
const MAX_MESSAGE: usize = 1 << 20;

/// Who logs in.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The database user (PostgreSQL, MySQL) or ACL user (Redis `AUTH`).
    pub user: Option<String>,
    /// The password, if the server asks for one.
    pub password: Option<String>,
    /// The database to connect to (PostgreSQL: defaults to the user).
    pub database: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .finish()
    }
}

impl Credentials {
    /// The MySQL capabilities for these credentials.
    pub fn mysql_capabilities(&self) -> u32 {
        if self.database.is_some() {
            MYSQL_CAPABILITIES | CLIENT_CONNECT_WITH_DB
        } else {
            MYSQL_CAPABILITIES
        }
    }
}

/// A logged-in connection.
#[derive(Debug)]
pub struct Session {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Postgres,
    Mysql,
    Redis,
}

fn failed(what: impl Into<String>) -> OpError {
    OpError::Failed(what.into())
}

/// An I/O failure; a TLS alert from the server (a client certificate it
/// refused after the handshake, say) is a refusal.
fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> OpError {
    move |e| crate::client::classify(&e).unwrap_or_else(|| OpError::Failed(format!("{step}: {e}")))
}

impl Session {
    /// Logs in over an established TLS connection to `target`.
    pub async fn login(
        target: &Target,
        connected: Connected,
        creds: &Credentials,
    ) -> Result<Session, OpError> {
        let kind = match target {
            Target::Postgres { .. } => Kind::Postgres,
            Target::Mysql { .. } => Kind::Mysql,
            Target::Tls { .. } => Kind::Redis,
        };
        let mut session = Session {
            stream: connected.stream,
            buf: BytesMut::with_capacity(4096),
            kind,
        };
        match kind {
            Kind::Postgres => session.postgres_login(creds).await?,
            Kind::Mysql => {
                let greeting = connected
                    .mysql_greeting
                    .ok_or_else(|| failed("no MySQL greeting was read"))?;
                session.mysql_login(&greeting, creds).await?
            }
            Kind::Redis => session.redis_login(creds).await?,
        }
        Ok(session)
    }

    /// One round trip of the protocol's trivial query: `SELECT 1` or `PING`.
    pub async fn query(&mut self) -> Result<(), OpError> {
        match self.kind {
            Kind::Postgres => {
                self.pg_send(b'Q', b"SELECT 1\0").await?;
                self.pg_until_ready().await
            }
            Kind::Mysql => self.mysql_select_1().await,
            Kind::Redis => {
                self.redis_command(&[b"PING"]).await?;
                let line = self.redis_line().await?;
                if line == b"+PONG" {
                    Ok(())
                } else {
                    Err(failed(format!(
                        "PING answered {:?}",
                        String::from_utf8_lossy(&line)
                    )))
                }
            }
        }
    }

    /// Ends the session the protocol's way (Terminate, COM_QUIT, QUIT),
    /// then closes TLS.
    pub async fn terminate(mut self) -> Result<(), OpError> {
        let bye: &[u8] = match self.kind {
            Kind::Postgres => &[b'X', 0, 0, 0, 4],
            Kind::Mysql => &[1, 0, 0, 0, 0x01],
            Kind::Redis => b"*1\r\n$4\r\nQUIT\r\n",
        };
        let _ = self.stream.write_all(bye).await;
        let _ = self.stream.shutdown().await;
        drain_until_closed(&mut self.stream).await
    }

    /// Stores `value` under `key` (Redis `SET`).
    pub async fn redis_set(&mut self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        self.redis_command(&[b"SET", key, value]).await?;
        let line = self.redis_line().await?;
        if line == b"+OK" {
            Ok(())
        } else {
            Err(failed(format!(
                "SET answered {:?}",
                String::from_utf8_lossy(&line)
            )))
        }
    }

    /// Removes `key` (Redis `DEL`).
    pub async fn redis_del(&mut self, key: &[u8]) -> Result<(), OpError> {
        self.redis_command(&[b"DEL", key]).await?;
        self.redis_line().await.map(|_| ())
    }

    /// Reads `key` (Redis `GET`) and returns how many value bytes arrived;
    /// values longer than `max` are an error.
    pub async fn redis_get(&mut self, key: &[u8], max: usize) -> Result<u64, OpError> {
        self.redis_command(&[b"GET", key]).await?;
        let line = self.redis_line().await?;
        let len = line
            .strip_prefix(b"$")
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| n.parse::<i64>().ok())
            .ok_or_else(|| failed(format!("GET answered {:?}", String::from_utf8_lossy(&line))))?;
        let len = usize::try_from(len).map_err(|_| failed("GET found no value"))?;
        if len > max {
            return Err(failed(format!("GET returned {len} bytes, more than {max}")));
        }
        self.fill(len + 2, len + 2).await?;
        self.buf.advance(len + 2);
        Ok(len as u64)
    }

    /// Reads until `buf` holds at least `n` bytes; more than `max` is an error.
    async fn fill(&mut self, n: usize, max: usize) -> Result<(), OpError> {
        if n > max.max(MAX_MESSAGE) {
            return Err(failed(format!(
                "a server message of {n} bytes is too large"
            )));
        }
        while self.buf.len() < n {
            self.buf.reserve(n - self.buf.len());
            let read = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(io("reading from the server"))?;
            if read == 0 {
                return Err(failed("the server closed the connection"));
            }
        }
        Ok(())
    }

    async fn read_more(&mut self) -> Result<(), OpError> {
        if self.buf.len() > MAX_MESSAGE {
            return Err(failed("a server message is too large"));
        }
        let read = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(io("reading from the server"))?;
        if read == 0 {
            return Err(failed("the server closed the connection"));
        }
        Ok(())
    }

    // PostgreSQL.

    async fn pg_send(&mut self, tag: u8, body: &[u8]) -> Result<(), OpError> {
        let len = u32::try_from(body.len() + 4).map_err(|_| failed("message too long"))?;
        let mut out = Vec::with_capacity(body.len() + 5);
        out.push(tag);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
        self.stream
            .write_all(&out)
            .await
            .map_err(io("writing to the server"))
    }

    /// The next complete backend message, tag and body; an ErrorResponse
    /// is an error.
    async fn pg_next(&mut self) -> Result<(u8, Vec<u8>), OpError> {
        loop {
            let parsed = pg::parse_backend_frame(&self.buf)
                .map_err(|e| failed(format!("reading the server: {e}")))?
                .map(|(frame, used)| (frame.tag, frame.body.to_vec(), used));
            if let Some((tag, body, used)) = parsed {
                self.buf.advance(used);
                if tag == BackendFrame::ERROR_RESPONSE {
                    let fields = pg::parse_error_response(&body)
                        .map_err(|e| failed(format!("reading an error: {e}")))?;
                    return Err(failed(format!(
                        "the server said: {} ({})",
                        fields.message().unwrap_or("(no message)"),
                        fields
                            .code()
                            .map(|c| c.as_str().to_owned())
                            .unwrap_or_default()
                    )));
                }
                return Ok((tag, body));
            }
            self.read_more().await?;
        }
    }

    async fn pg_until_ready(&mut self) -> Result<(), OpError> {
        loop {
            let (tag, _) = self.pg_next().await?;
            if tag == BackendFrame::READY_FOR_QUERY {
                return Ok(());
            }
        }
    }

    async fn postgres_login(&mut self, creds: &Credentials) -> Result<(), OpError> {
        let user = creds
            .user
            .clone()
            .ok_or_else(|| failed("PostgreSQL needs a user: pass --user"))?;
        let database = creds.database.clone().unwrap_or_else(|| user.clone());
        let startup = StartupMessage {
            protocol: pg::ProtocolVersion::V3_0,
            params: vec![
                ("user".into(), user.clone()),
                ("database".into(), database),
                ("application_name".into(), "intransit-bench".into()),
            ],
        };
        let bytes = startup
            .encode()
            .map_err(|e| failed(format!("encoding the StartupMessage: {e}")))?;
        self.stream
            .write_all(&bytes)
            .await
            .map_err(io("sending the StartupMessage"))?;
        let mut scram: Option<Scram> = None;
        loop {
            let (tag, body) = self.pg_next().await?;
            if tag == BackendFrame::READY_FOR_QUERY {
                return Ok(());
            }
            if tag != BackendFrame::AUTHENTICATION {
                continue;
            }
            let request = pg::parse_authentication(&body)
                .map_err(|e| failed(format!("reading an authentication request: {e}")))?;
            let password = || {
                creds.password.clone().ok_or_else(|| {
                    failed("the server asks for a password: set it in the environment variable named by --password-env (default PGPASSWORD)")
                })
            };
            match request {
                AuthenticationRequest::Ok => {}
                AuthenticationRequest::CleartextPassword => {
                    let mut body = password()?.into_bytes();
                    body.push(0);
                    self.pg_send(b'p', &body).await?;
                }
                AuthenticationRequest::Md5Password { salt } => {
                    let mut body = md5_password(&user, &password()?, salt).into_bytes();
                    body.push(0);
                    self.pg_send(b'p', &body).await?;
                }
                AuthenticationRequest::Sasl { mechanisms } => {
                    if !mechanisms.contains(&pg::SCRAM_SHA_256) {
                        return Err(failed(format!(
                            "the server offers SASL {mechanisms:?}; bench speaks SCRAM-SHA-256 only"
                        )));
                    }
                    let s = Scram::new(password()?)?;
                    let first = s.client_first();
                    let mut body = pg::SCRAM_SHA_256.as_bytes().to_vec();
                    body.push(0);
                    let len = i32::try_from(first.len()).map_err(|_| failed("SCRAM message too long"))?;
                    body.extend_from_slice(&len.to_be_bytes());
                    body.extend_from_slice(first.as_bytes());
                    self.pg_send(b'p', &body).await?;
                    scram = Some(s);
                }
                AuthenticationRequest::SaslContinue { data } => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| failed("SASLContinue before SASL"))?;
                    let final_message = s.client_final(data)?;
                    self.pg_send(b'p', final_message.as_bytes()).await?;
                }
                AuthenticationRequest::SaslFinal { data } => {
                    let s = scram
                        .as_ref()
                        .ok_or_else(|| failed("SASLFinal before SASL"))?;
                    s.verify_server(data)?;
                }
                other => {
                    return Err(failed(format!(
                        "the server asks for {other:?}; bench supports trust, password, md5 and SCRAM-SHA-256"
                    )))
                }
            }
        }
    }

    // MySQL.

    async fn mysql_packet(&mut self) -> Result<(u8, Vec<u8>), OpError> {
        loop {
            let parsed = mysql::parse_packet_with_max(&self.buf, MAX_MESSAGE)
                .map_err(|e| failed(format!("reading the server: {e}")))?
                .map(|(p, used)| (p.sequence_id, p.payload.to_vec(), used));
            if let Some((seq, payload, used)) = parsed {
                self.buf.advance(used);
                return Ok((seq, payload));
            }
            self.read_more().await?;
        }
    }

    async fn mysql_send(&mut self, seq: u8, payload: &[u8]) -> Result<(), OpError> {
        let bytes = mysql::encode_packet(seq, payload)
            .map_err(|e| failed(format!("encoding a packet: {e}")))?;
        self.stream
            .write_all(&bytes)
            .await
            .map_err(io("writing to the server"))
    }

    async fn mysql_login(&mut self, greeting: &[u8], creds: &Credentials) -> Result<(), OpError> {
        let hello = HandshakeV10::parse(greeting)
            .map_err(|e| failed(format!("reading the greeting: {e}")))?;
        let user = creds
            .user
            .clone()
            .ok_or_else(|| failed("MySQL needs a user: pass --user"))?;
        let password = creds.password.clone().unwrap_or_default();
        // Answer with mysql_native_password whatever the server's default;
        // a server whose user needs another plugin switches us, and that is
        // refused below with a clear message.
        let response = HandshakeResponse41 {
            capabilities: creds.mysql_capabilities(),
            max_packet_size: 1 << 24,
            collation: UTF8MB4_GENERAL_CI,
            extended_capabilities: 0,
            user: user.into_bytes(),
            auth_response: native_password(&password, &hello.scramble()),
            database: creds.database.clone().map(String::into_bytes),
            auth_plugin_name: Some(MYSQL_NATIVE_PASSWORD.as_bytes().to_vec()),
            connect_attrs: None,
            zstd_compression_level: None,
        };
        let payload = response
            .encode()
            .map_err(|e| failed(format!("encoding the HandshakeResponse: {e}")))?;
        self.mysql_send(2, &payload).await?;
        loop {
            let (seq, payload) = self.mysql_packet().await?;
            match mysql::parse_server_auth_reply(&payload)
                .map_err(|e| failed(format!("reading the login reply: {e}")))?
            {
                ServerAuthReply::Ok(_) => return Ok(()),
                ServerAuthReply::Err(err) => {
                    return Err(failed(format!(
                        "the server refused the login: ERROR {}: {}",
                        err.code,
                        err.message_lossy()
                    )))
                }
                ServerAuthReply::AuthSwitch(switch)
                    if switch.plugin_name == MYSQL_NATIVE_PASSWORD.as_bytes() =>
                {
                    let scramble = match switch.plugin_data.split_last() {
                        Some((0, head)) => head.to_vec(),
                        _ => switch.plugin_data.clone(),
                    };
                    let answer = native_password(&password, &scramble);
                    self.mysql_send(seq.wrapping_add(1), &answer).await?;
                }
                ServerAuthReply::AuthSwitch(switch) => {
                    return Err(failed(format!(
                        "the server wants the auth plugin {}; bench speaks mysql_native_password only (not caching_sha2_password or client_ed25519)",
                        String::from_utf8_lossy(&switch.plugin_name)
                    )))
                }
                ServerAuthReply::AuthMoreData(_) | ServerAuthReply::OldAuthSwitch => {
                    return Err(failed(
                        "the server continued with another auth plugin; bench speaks mysql_native_password only",
                    ))
                }
            }
        }
    }

    async fn mysql_select_1(&mut self) -> Result<(), OpError> {
        self.mysql_send(0, b"\x03SELECT 1").await?;
        let (_, first) = self.mysql_packet().await?;
        if mysql::is_err_packet(&first) {
            return Err(failed("SELECT 1 failed with an ERR packet"));
        }
        if mysql::is_ok_packet(&first) {
            return Ok(());
        }
        let (columns, _) = mysql::lenenc::parse_int(&first)
            .map_err(|e| failed(format!("reading the column count: {e}")))?
            .ok_or_else(|| failed("truncated column count"))?;
        // Column definitions, the EOF after them, rows, the final EOF.
        for _ in 0..columns {
            self.mysql_packet().await?;
        }
        let (_, eof) = self.mysql_packet().await?;
        if !mysql::is_eof_packet(&eof) {
            return Err(failed("no EOF after the column definitions"));
        }
        loop {
            let (_, packet) = self.mysql_packet().await?;
            if mysql::is_err_packet(&packet) {
                return Err(failed("SELECT 1 failed while sending rows"));
            }
            if mysql::is_eof_packet(&packet) {
                return Ok(());
            }
        }
    }

    // Redis.

    async fn redis_command(&mut self, args: &[&[u8]]) -> Result<(), OpError> {
        let mut out = Vec::with_capacity(64 + args.iter().map(|a| a.len()).sum::<usize>());
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.stream
            .write_all(&out)
            .await
            .map_err(io("writing to the server"))
    }

    /// One RESP line without its CRLF; an error reply is an error.
    async fn redis_line(&mut self) -> Result<Vec<u8>, OpError> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(at).to_vec();
                self.buf.advance(2);
                if line.first() == Some(&b'-') {
                    return Err(failed(format!(
                        "the server said {:?}",
                        String::from_utf8_lossy(&line)
                    )));
                }
                return Ok(line);
            }
            self.read_more().await?;
        }
    }

    async fn redis_login(&mut self, creds: &Credentials) -> Result<(), OpError> {
        let Some(password) = &creds.password else {
            return Ok(());
        };
        match &creds.user {
            Some(user) => {
                self.redis_command(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                    .await?
            }
            None => self.redis_command(&[b"AUTH", password.as_bytes()]).await?,
        }
        self.redis_line().await.map(|_| ())
    }
}

/// `md5` + hex(md5(hex(md5(password + user)) + salt)), as libpq sends it.
pub fn md5_password(user: &str, password: &str, salt: [u8; 4]) -> String {
    use md5::{Digest, Md5};
    let inner = hex(&Md5::digest(
        [password.as_bytes(), user.as_bytes()].concat(),
    ));
    let outer = hex(&Md5::digest([inner.as_bytes(), &salt[..]].concat()));
    format!("md5{outer}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// mysql_native_password: SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password))),
/// empty for an empty password.
pub fn native_password(password: &str, scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let sha1 = |data: &[u8]| digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, data);
    let stage1 = sha1(password.as_bytes());
    let stage2 = sha1(stage1.as_ref());
    let mix = sha1(&[scramble, stage2.as_ref()].concat());
    stage1
        .as_ref()
        .iter()
        .zip(mix.as_ref())
        .map(|(a, b)| a ^ b)
        .collect()
}

/// A SCRAM-SHA-256 exchange (RFC 5802/7677) without channel binding.
struct Scram {
    password: String,
    nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
}

impl Scram {
    fn new(password: String) -> Result<Scram, OpError> {
        let mut raw = [0u8; 18];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| failed("no random bytes for SCRAM"))?;
        let nonce = BASE64.encode(raw);
        // PostgreSQL ignores the SCRAM user name (it has the StartupMessage's).
        let client_first_bare = format!("n=,r={nonce}");
        Ok(Scram {
            password,
            nonce,
            client_first_bare,
            server_signature: None,
        })
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    fn client_final(&mut self, server_first: &[u8]) -> Result<String, OpError> {
        let text = std::str::from_utf8(server_first)
            .map_err(|_| failed("SCRAM server-first-message is not UTF-8"))?;
        let field = |key: &str| {
            text.split(',')
                .find_map(|part| part.strip_prefix(key))
                .ok_or_else(|| failed(format!("SCRAM server-first-message lacks {key}")))
        };
        let nonce = field("r=")?;
        if !nonce.starts_with(&self.nonce) {
            return Err(failed("SCRAM server nonce does not extend ours"));
        }
        let salt = BASE64
            .decode(field("s=")?)
            .map_err(|_| failed("SCRAM salt is not base64"))?;
        let iterations: u32 = field("i=")?
            .parse()
            .map_err(|_| failed("SCRAM iteration count is not a number"))?;
        if iterations > MAX_SCRAM_ITERATIONS {
            return Err(failed(format!(
                "SCRAM iteration count {iterations} is above {MAX_SCRAM_ITERATIONS}"
            )));
        }
        let iterations =
            NonZeroU32::new(iterations).ok_or_else(|| failed("SCRAM iteration count is 0"))?;
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac::sign(&key, b"Server Key");
        self.server_signature = Some(
            hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref()),
                auth_message.as_bytes(),
            )
            .as_ref()
            .to_vec(),
        );
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }

    fn verify_server(&self, server_final: &[u8]) -> Result<(), OpError> {
        let text = std::str::from_utf8(server_final)
            .map_err(|_| failed("SCRAM server-final-message is not UTF-8"))?;
        let sent = text
            .strip_prefix("v=")
            .and_then(|v| BASE64.decode(v).ok())
            .ok_or_else(|| failed(format!("SCRAM server-final-message: {text}")))?;
        match &self.server_signature {
            Some(expected) if *expected == sent => Ok(()),
            _ => Err(failed(
                "the server's SCRAM signature is wrong: it does not know the password",
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn md5_password_matches_an_independent_computation() {
        // Python: 'md5' + md5(md5(b'secretalice').hexdigest().encode() + b'abcd').hexdigest()
        assert_eq!(
            md5_password("alice", "secret", *b"abcd"),
            "md5c90bcafc0a2b54511742383e34d5dc9d"
        );
    }

    #[test]
    fn native_password_matches_an_independent_computation() {
        // Python: SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw))).
        assert_eq!(
            hex(&native_password("pw", b"01234567890123456789")),
            "9bf5a4e0c440182fc8fb2d90ad2a095b7a0945f3"
        );
        assert!(native_password("", b"01234567890123456789").is_empty());
    }

    #[test]
    fn scram_rfc7677_example() {
        // RFC 7677 section 3, with the client nonce of the example.
        let mut s = Scram {
            password: "pencil".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO".into(),
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            server_signature: None,
        };
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let last = s.client_final(server_first).unwrap();
        assert_eq!(
            last,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        s.verify_server(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(s.verify_server(b"v=AAAA").is_err());
    }
}
