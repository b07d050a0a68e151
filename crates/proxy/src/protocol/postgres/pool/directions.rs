//! The two directions of a client attached to a server connection, run
//! side by side in the connection's task: the client's messages to the
//! server (`client_to_server`) and the server's to the client
//! (`server_to_client`). Both follow message boundaries with a
//! `MessageScanner`, record into one `Shared`, and write whole batches;
//! in transaction mode with statement tracking they also rename, add and
//! answer the extended-protocol messages `statements` decides.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::{Buf, BytesMut};
use intransit_wire::pg::session::{
    backend, encode_query, frontend, parse_parameter_status, MessageScanner, Scanned,
    TransactionStatus, HEADER_LEN, MAX_MESSAGE_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::statements::{
    self, bind_statement, close_statement, parse_parse, target, ClientStatements, Deliver, Expect,
    Expected, ServerStatements, Statement,
};
use super::tracking::{has_listen, ClientMessage, Exchange, Parameters, LISTEN_PREFIX};

/// What both directions share. They run in one task, so nothing here is
/// ever contended; the types are those a `Send` future may share.
pub(super) struct Shared {
    exchange: Mutex<Exchange>,
    pub(super) client_inside_message: AtomicBool,
    client_writing: AtomicBool,
    release_wanted: AtomicBool,
    /// Completions due from the server, with statement tracking.
    expected: Mutex<Expected>,
    /// The statements the server connection holds.
    pub(super) server_statements: Mutex<ServerStatements>,
    /// Wakes the server's direction when the pool has answers to give.
    answers: Notify,
    pub(super) from_client: AtomicU64,
    pub(super) to_client: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(super) fn new(
        exchange: Exchange,
        client_inside_message: bool,
        server_statements: ServerStatements,
    ) -> Self {
        Shared {
            exchange: Mutex::new(exchange),
            client_inside_message: AtomicBool::new(client_inside_message),
            client_writing: AtomicBool::new(false),
            release_wanted: AtomicBool::new(false),
            expected: Mutex::new(Expected::default()),
            server_statements: Mutex::new(server_statements),
            answers: Notify::new(),
            from_client: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
        }
    }

    pub(super) fn exchange(&self) -> Exchange {
        *lock(&self.exchange)
    }

    fn set_exchange(&self, e: Exchange) {
        *lock(&self.exchange) = e;
    }

    pub(super) fn into_server_statements(self) -> ServerStatements {
        self.server_statements
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// How an attachment ended, from one direction's point of view.
pub(super) enum Stop {
    /// At a transaction boundary: the server connection goes back.
    Released,
    /// The client sent Terminate or closed its connection.
    ClientGone,
    /// The client broke the protocol (what is wrong).
    Malformed(String),
    /// The server connection failed (what happened).
    ServerLost(String),
}

/// What the client's direction needs besides its streams.
pub(super) struct ClientSide<'a> {
    pub(super) buf: &'a mut BytesMut,
    pub(super) scanner: &'a mut MessageScanner,
    pub(super) transaction_mode: bool,
    /// Statement tracking (transaction mode, `max_prepared_statements` > 0).
    pub(super) tracking: Option<Tracking<'a>>,
}

/// A client's named statements and how they map to the server's.
pub(super) struct Tracking<'a> {
    pub(super) client: &'a mut ClientStatements,
    pub(super) cap: usize,
    pub(super) search_path: String,
}

/// What the client is told instead of a query's results when a
/// transaction-mode pool cannot honour LISTEN: the server raises it, so
/// it arrives in order with the rest of the client's results.
const LISTEN_REFUSAL: &str = "DO $intransit$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = 'LISTEN is not available through a transaction-mode pool: notifications would arrive on a server connection this session no longer holds', HINT = 'Connect through a listener whose [listener.pool] has mode = \"session\".'; END $intransit$";

/// Bytes to write: ranges of an input buffer and bytes of the pool's own,
/// in order. The common batch, one range of the input (the messages read
/// in one go, passed on), takes no allocation.
#[derive(Default)]
struct Batch {
    single: Option<(usize, usize)>,
    pieces: Vec<Piece>,
}

enum Piece {
    Input(usize, usize),
    Own(Vec<u8>),
}

impl Batch {
    fn input(&mut self, start: usize, end: usize) {
        if start == end {
            return;
        }
        if self.pieces.is_empty() {
            match &mut self.single {
                None => return self.single = Some((start, end)),
                Some((_, last_end)) if *last_end == start => return *last_end = end,
                Some(_) => self.spill(),
            }
        }
        if let Some(Piece::Input(_, last_end)) = self.pieces.last_mut() {
            if *last_end == start {
                *last_end = end;
                return;
            }
        }
        self.pieces.push(Piece::Input(start, end));
    }

    fn own(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.spill();
            self.pieces.push(Piece::Own(bytes));
        }
    }

    /// Moves the single range into `pieces`, where the rest goes after it.
    fn spill(&mut self) {
        if let Some((start, end)) = self.single.take() {
            self.pieces.push(Piece::Input(start, end));
        }
    }

    fn is_empty(&self) -> bool {
        self.single.is_none() && self.pieces.is_empty()
    }

    /// Writes the batch; a batch that is one range of `input` is written
    /// from it directly.
    async fn write<W: AsyncWrite + Unpin>(
        &self,
        input: &[u8],
        out: &mut W,
    ) -> std::io::Result<usize> {
        if let Some((s, e)) = self.single {
            out.write_all(&input[s..e]).await?;
            return Ok(e - s);
        }
        match self.pieces.as_slice() {
            [] => Ok(0),
            [Piece::Input(s, e)] => {
                out.write_all(&input[*s..*e]).await?;
                Ok(e - s)
            }
            pieces => {
                let mut joined = Vec::new();
                for p in pieces {
                    match p {
                        Piece::Input(s, e) => joined.extend_from_slice(&input[*s..*e]),
                        Piece::Own(bytes) => joined.extend_from_slice(bytes),
                    }
                }
                out.write_all(&joined).await?;
                Ok(joined.len())
            }
        }
    }
}

/// The prefix of a client message the client's direction must see.
fn client_wants(tag: u8, transaction_mode: bool, tracking: bool) -> usize {
    match tag {
        frontend::QUERY if transaction_mode => LISTEN_PREFIX,
        frontend::PARSE | frontend::DESCRIBE | frontend::CLOSE if tracking => 1 << 20,
        frontend::BIND if tracking => 1024,
        _ => 0,
    }
}

/// Whether a Query empties the server connection's prepared statements.
fn drops_statements(query_prefix: &[u8]) -> bool {
    let start = query_prefix
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c'))
        .unwrap_or(query_prefix.len());
    let text = &query_prefix[start..];
    let starts = |word: &[u8]| {
        text.get(..word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    };
    starts(b"discard") || starts(b"deallocate")
}

impl Tracking<'_> {
    /// A statement of the client's, prepared on the server connection if
    /// it lacks it (the Parse added to `batch`).
    fn ensure(&self, shared: &Shared, statement: &Statement, batch: &mut Batch) {
        let mut held = lock(&shared.server_statements);
        if held.touch(&statement.server_name) {
            return;
        }
        batch.own(statement.parse.to_vec());
        let mut expected = lock(&shared.expected);
        expected.push(Expect::ParseAdded {
            statement: statement.server_name.clone(),
        });
        if let Some(evicted) = held.add(statement.server_name.clone(), self.cap) {
            batch.own(close_statement(&evicted));
            expected.push(Expect::CloseAdded);
        }
    }
}

/// The client's messages to the server, until a stop.
pub(super) async fn client_to_server<R, W>(
    shared: &Shared,
    side: ClientSide<'_>,
    reader: &mut R,
    server: &mut W,
) -> Stop
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ClientSide {
        buf,
        scanner,
        transaction_mode,
        mut tracking,
    } = side;
    let tracks = tracking.is_some();
    loop {
        let mut pos = 0;
        let mut batch = Batch::default();
        let mut stop = None;
        loop {
            let scanned = scanner.scan(&buf[pos..], MAX_MESSAGE_LEN, |tag| {
                client_wants(tag, transaction_mode, tracks)
            });
            let (tag, prefix, len, body_len) = match scanned {
                Err(e) => {
                    stop = Some(Stop::Malformed(format!(
                        "invalid message from the client: {e}"
                    )));
                    break;
                }
                Ok(Scanned::NeedMore) => break,
                Ok(Scanned::Continues { len }) => {
                    batch.input(pos, pos + len);
                    pos += len;
                    continue;
                }
                Ok(Scanned::Message {
                    tag,
                    prefix,
                    len,
                    body_len,
                }) => (tag, prefix, len, body_len),
            };
            let whole = len == HEADER_LEN + body_len;
            let mut e = shared.exchange();
            match e.client_message(tag) {
                ClientMessage::Forward => {}
                ClientMessage::Terminate => {
                    stop = Some(Stop::ClientGone);
                    break;
                }
                ClientMessage::Invalid => {
                    stop = Some(Stop::Malformed(format!(
                        "message type 0x{tag:02x} is not one a client sends after startup"
                    )));
                    break;
                }
            }
            shared.set_exchange(e);
            let at = pos;
            pos += len;
            if transaction_mode && tag == frontend::QUERY && has_listen(prefix) {
                if !whole {
                    return Stop::Malformed(
                        "a LISTEN query longer than what arrived with it".into(),
                    );
                }
                let mut replacement = Vec::new();
                let _ = encode_query(LISTEN_REFUSAL, &mut replacement);
                batch.own(replacement);
                if tracks {
                    lock(&shared.expected).push(Expect::Ready);
                }
                continue;
            }
            let Some(t) = tracking.as_mut() else {
                batch.input(at, pos);
                continue;
            };
            // Statement tracking: what each message becomes.
            let expect = match tag {
                frontend::PARSE => match parse_parse(prefix).filter(|_| whole) {
                    Some(p) if p.rest.split(|&b| b == 0).next().is_some_and(has_listen) => {
                        // The statement is prepared as the refusal,
                        // which its Execute then raises in order.
                        let name = p.name.to_vec();
                        let mut body = name.clone();
                        body.push(0);
                        body.extend_from_slice(LISTEN_REFUSAL.as_bytes());
                        body.extend_from_slice(&[0, 0, 0]);
                        let refusal = parse_parse(&body).map(|p| {
                            (p.name.is_empty(), statements::statement(&p, &t.search_path))
                        });
                        match refusal {
                            Some((false, statement)) => {
                                t.client.insert(&name, statement.clone());
                                t.ensure(shared, &statement, &mut batch);
                                lock(&shared.expected).push(Expect::ParseAnswered);
                            }
                            _ => {
                                batch.own(statements::frame(tag, &body));
                                lock(&shared.expected).push(Expect::Parse { statement: None });
                            }
                        }
                        continue;
                    }
                    Some(p) if !p.name.is_empty() => {
                        let statement = statements::statement(&p, &t.search_path);
                        let name = p.name.to_vec();
                        t.client.insert(&name, statement.clone());
                        let mut held = lock(&shared.server_statements);
                        if held.touch(&statement.server_name) {
                            lock(&shared.expected).push(Expect::ParseAnswered);
                            continue;
                        }
                        batch.own(statement.parse.to_vec());
                        let mut expected = lock(&shared.expected);
                        expected.push(Expect::Parse {
                            statement: Some(statement.server_name.clone()),
                        });
                        if let Some(evicted) = held.add(statement.server_name.clone(), t.cap) {
                            batch.own(close_statement(&evicted));
                            expected.push(Expect::CloseAdded);
                        }
                        continue;
                    }
                    _ => Expect::Parse { statement: None },
                },
                frontend::BIND => {
                    let found = bind_statement(prefix)
                        .and_then(|(name, range)| t.client.get(name).map(|s| (s.clone(), range)));
                    match found {
                        Some((statement, range)) => {
                            t.ensure(shared, &statement, &mut batch);
                            let name_len = range.end - range.start;
                            let new_body = body_len - name_len + statement.server_name.len();
                            let mut rewritten = statements::header(tag, new_body).to_vec();
                            rewritten.extend_from_slice(&prefix[..range.start]);
                            rewritten.extend_from_slice(statement.server_name.as_bytes());
                            rewritten.extend_from_slice(&prefix[range.end..]);
                            batch.own(rewritten);
                            // The rest of the body that arrived with it.
                            batch.input(at + HEADER_LEN + prefix.len(), pos);
                            lock(&shared.expected).push(Expect::Bind);
                            continue;
                        }
                        None => Expect::Bind,
                    }
                }
                frontend::DESCRIBE | frontend::CLOSE => {
                    let named = target(prefix)
                        .filter(|(kind, name)| whole && *kind == b'S' && !name.is_empty());
                    match (tag, named) {
                        (frontend::CLOSE, Some((_, name))) => {
                            // Forgotten for this client; the server
                            // connections keep it for others.
                            t.client.remove(name);
                            lock(&shared.expected).push(Expect::CloseAnswered);
                            continue;
                        }
                        (frontend::DESCRIBE, Some((_, name))) => {
                            match t.client.get(name).cloned() {
                                Some(statement) => {
                                    t.ensure(shared, &statement, &mut batch);
                                    batch.own(statements::renamed(
                                        tag,
                                        b"S",
                                        &statement.server_name,
                                        b"\0",
                                    ));
                                    lock(&shared.expected).push(Expect::Describe);
                                    continue;
                                }
                                None => Expect::Describe,
                            }
                        }
                        (frontend::CLOSE, None) => Expect::Close,
                        _ => Expect::Describe,
                    }
                }
                frontend::EXECUTE => Expect::Execute,
                frontend::SYNC | frontend::QUERY | frontend::FUNCTION_CALL => {
                    if tag == frontend::QUERY && drops_statements(prefix) {
                        *lock(&shared.server_statements) = ServerStatements::default();
                    }
                    Expect::Ready
                }
                _ => {
                    batch.input(at, pos);
                    continue;
                }
            };
            lock(&shared.expected).push(expect);
            batch.input(at, pos);
        }
        shared
            .client_inside_message
            .store(scanner.inside_message(), Ordering::Relaxed);
        if !batch.is_empty() {
            shared.client_writing.store(true, Ordering::Relaxed);
            let written = batch.write(buf, server).await;
            shared.client_writing.store(false, Ordering::Relaxed);
            if let Err(e) = written {
                return Stop::ServerLost(format!("writing to the server: {e}"));
            }
            shared.from_client.fetch_add(pos as u64, Ordering::Relaxed);
        }
        buf.advance(pos);
        if tracks && lock(&shared.expected).answer_at_front() {
            shared.answers.notify_one();
        }
        if let Some(stop) = stop {
            return stop;
        }
        if shared.release_wanted.load(Ordering::Relaxed)
            && shared.exchange().at_transaction_boundary()
            && !scanner.inside_message()
        {
            return Stop::Released;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) => return Stop::ClientGone,
            Ok(_) => {}
        }
    }
}

/// What the server's direction needs besides its streams.
pub(super) struct ServerSide<'a> {
    pub(super) buf: &'a mut BytesMut,
    pub(super) scanner: &'a mut MessageScanner,
    pub(super) params: &'a mut Parameters,
    pub(super) client_params: &'a mut Parameters,
    pub(super) transaction_mode: bool,
    pub(super) tracking: bool,
}

/// The server's messages to the client, until a stop.
pub(super) async fn server_to_client<R, W>(
    shared: &Shared,
    side: ServerSide<'_>,
    reader: &mut R,
    client: &mut W,
) -> Stop
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ServerSide {
        buf,
        scanner,
        params,
        client_params,
        transaction_mode,
        tracking,
    } = side;
    loop {
        let mut pos = 0;
        let mut batch = Batch::default();
        let mut release = false;
        if tracking {
            let mut answers = Vec::new();
            lock(&shared.expected).answers_due(&mut answers);
            batch.own(answers);
        }
        loop {
            let scanned = scanner.scan(&buf[pos..], MAX_MESSAGE_LEN, |tag| match tag {
                backend::READY_FOR_QUERY => 1,
                backend::PARAMETER_STATUS => usize::MAX,
                _ => 0,
            });
            let (tag, prefix, len) = match scanned {
                Err(e) => return Stop::ServerLost(format!("invalid message from the server: {e}")),
                Ok(Scanned::NeedMore) => break,
                Ok(Scanned::Continues { len }) => {
                    batch.input(pos, pos + len);
                    pos += len;
                    continue;
                }
                Ok(Scanned::Message {
                    tag, prefix, len, ..
                }) => (tag, prefix, len),
            };
            let at = pos;
            pos += len;
            if tracking {
                let mut expected = lock(&shared.expected);
                let deliver = expected.server_message(tag, |name| {
                    lock(&shared.server_statements).forget(name);
                });
                if deliver == Deliver::Forward {
                    batch.input(at, pos);
                }
                let mut answers = Vec::new();
                expected.answers_due(&mut answers);
                batch.own(answers);
            } else {
                batch.input(at, pos);
            }
            match tag {
                backend::PARAMETER_STATUS => {
                    if let Ok((name, value)) = parse_parameter_status(prefix) {
                        client_params.record(name, value);
                        params.record(name, value);
                    }
                }
                backend::READY_FOR_QUERY => {
                    let Ok(status) = TransactionStatus::parse(prefix) else {
                        return Stop::ServerLost("invalid ReadyForQuery from the server".into());
                    };
                    let mut e = shared.exchange();
                    e.ready(status);
                    shared.set_exchange(e);
                    if transaction_mode
                        && e.at_transaction_boundary()
                        && !shared.client_inside_message.load(Ordering::Relaxed)
                    {
                        release = true;
                        break;
                    }
                }
                backend::COPY_BOTH_RESPONSE => {
                    return Stop::ServerLost(
                        "the server started a COPY BOTH (replication), which a pool cannot carry"
                            .into(),
                    )
                }
                _ => {}
            }
        }
        if !batch.is_empty() {
            let written = async {
                let n = batch.write(buf, client).await?;
                client.flush().await.map(|()| n)
            }
            .await;
            match written {
                Ok(n) => {
                    shared.to_client.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => return Stop::ClientGone,
            }
        }
        buf.advance(pos);
        if release {
            if !shared.client_writing.load(Ordering::Relaxed) {
                return Stop::Released;
            }
            shared.release_wanted.store(true, Ordering::Relaxed);
            std::future::pending::<()>().await;
        }
        if pos == 0 {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(16384);
            }
            tokio::select! {
                read = reader.read_buf(buf) => match read {
                    Ok(0) => return Stop::ServerLost("the server closed the connection".into()),
                    Err(e) => return Stop::ServerLost(format!("reading from the server: {e}")),
                    Ok(_) => {}
                },
                () = shared.answers.notified(), if tracking => {}
            }
        }
    }
}

/// Whether statement tracking applies: transaction mode and a cap above
/// zero.
pub(super) fn tracks(transaction_mode: bool, cap: usize) -> bool {
    transaction_mode && cap > 0
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_its_pieces_in_order() {
        fn joined(batch: &Batch, input: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let written = block_on(batch.write(input, &mut out)).expect("write");
            assert_eq!(written, out.len());
            out
        }
        let input = b"0123456789";
        let mut one = Batch::default();
        assert!(one.is_empty());
        one.input(0, 2);
        one.input(2, 5);
        one.input(5, 5);
        assert!(one.pieces.is_empty(), "contiguous ranges stay one");
        assert_eq!(joined(&one, input), b"01234");

        let mut mixed = Batch::default();
        mixed.input(1, 3);
        mixed.own(b"ab".to_vec());
        mixed.input(3, 4);
        mixed.input(6, 8);
        mixed.own(Vec::new());
        assert_eq!(joined(&mixed, input), b"12ab367");
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn discard_and_deallocate_are_seen_in_any_case_behind_blanks() {
        for q in [
            "DISCARD ALL",
            "  \t\n\x0b\x0cdiscard plans",
            "Deallocate P_0",
            "\r\nDEALLOCATE ALL",
        ] {
            assert!(drops_statements(q.as_bytes()), "{q:?}");
        }
        for q in [
            "",
            "   ",
            "SELECT 1",
            "discar",
            "/* x */ DISCARD ALL",
            "caf\u{e9}",
        ] {
            assert!(!drops_statements(q.as_bytes()), "{q:?}");
        }
    }
}
