//! The two directions of a client attached to a server connection: the
//! client's messages to the server (`ClientSide`) and the server's to the
//! client (`ServerSide`). Both follow message boundaries with a
//! `MessageScanner`, record into one `Common`, and write whole batches;
//! in transaction mode with statement tracking they also rename, add and
//! answer the extended-protocol messages `statements` decides.
//!
//! [`attached`] drives both as one hand-written future over the two
//! streams, each direction a poll function that goes as far as its
//! sockets let it: the client's direction first, then the server's, on
//! every wake-up. Nothing is shared between tasks, so what the two
//! directions both know (`Common`) is plain data borrowed in turn; the
//! streams are not split. A transaction costs no lock, no atomic and no
//! allocation here beyond what the messages themselves need.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use intransit_wire::pg::session::{
    backend, encode_query, frontend, parse_parameter_status, MessageScanner, Scanned,
    TransactionStatus, HEADER_LEN, MAX_MESSAGE_LEN,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

use super::statements::{
    self, bind_statement, close_statement, parse_parse, target, ClientStatements, Deliver, Expect,
    Expected, ServerStatements, Statement,
};
use super::tracking::{has_listen, ClientMessage, Exchange, Parameters, LISTEN_PREFIX};

/// What both directions know of the attachment.
pub(super) struct Common<'a> {
    pub(super) exchange: Exchange,
    /// Completions due from the server, with statement tracking (the
    /// server connection's queue, empty between attachments: its room
    /// is kept).
    expected: &'a mut Expected,
    /// The statements the server connection holds.
    server_statements: &'a mut ServerStatements,
    /// The server's direction saw the end of a transaction while the
    /// client's was writing: the client's direction lets the connection
    /// go once its write is complete.
    release_wanted: bool,
    pub(super) from_client: u64,
    pub(super) to_client: u64,
    transaction_mode: bool,
}

impl<'a> Common<'a> {
    pub(super) fn new(
        exchange: Exchange,
        expected: &'a mut Expected,
        server_statements: &'a mut ServerStatements,
        transaction_mode: bool,
    ) -> Self {
        expected.clear();
        Common {
            exchange,
            expected,
            server_statements,
            release_wanted: false,
            from_client: 0,
            to_client: 0,
            transaction_mode,
        }
    }
}

/// How an attachment ended.
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

/// The client's direction: its read buffer and what it is writing.
pub(super) struct ClientSide<'a> {
    buf: &'a mut BytesMut,
    scanner: &'a mut MessageScanner,
    /// Statement tracking (transaction mode, `max_prepared_statements` > 0).
    tracking: Option<Tracking<'a>>,
    /// The batch being written to the server, the bytes of `buf` it
    /// covers, and the stop to report once it is written.
    out: Option<Outgoing>,
    scanned: usize,
    stop: Option<Stop>,
}

impl<'a> ClientSide<'a> {
    pub(super) fn new(
        buf: &'a mut BytesMut,
        scanner: &'a mut MessageScanner,
        tracking: Option<Tracking<'a>>,
    ) -> Self {
        ClientSide {
            buf,
            scanner,
            tracking,
            out: None,
            scanned: 0,
            stop: None,
        }
    }
}

/// A client's named statements and how they map to the server's.
pub(super) struct Tracking<'a> {
    pub(super) client: &'a mut ClientStatements,
    pub(super) cap: usize,
    /// The client's `search_path` when the attachment began: part of a
    /// statement's server-side name.
    pub(super) search_path: Option<std::sync::Arc<str>>,
}

/// The server's direction: its read buffer and what it is writing.
pub(super) struct ServerSide<'a> {
    buf: &'a mut BytesMut,
    scanner: &'a mut MessageScanner,
    /// What the server connection's session holds.
    params: &'a mut Parameters,
    /// What the client's session holds.
    client_params: &'a mut Parameters,
    tracking: bool,
    out: Option<Outgoing>,
    scanned: usize,
    /// The size of `out` when it was made, counted once it is written.
    out_len: usize,
    /// `out` is written; the client's stream is being flushed.
    flushing: bool,
    /// The batch ends a transaction: once it is written, the server
    /// connection goes back.
    release: bool,
}

impl<'a> ServerSide<'a> {
    pub(super) fn new(
        buf: &'a mut BytesMut,
        scanner: &'a mut MessageScanner,
        params: &'a mut Parameters,
        client_params: &'a mut Parameters,
        tracking: bool,
    ) -> Self {
        ServerSide {
            buf,
            scanner,
            params,
            client_params,
            tracking,
            out: None,
            scanned: 0,
            out_len: 0,
            flushing: false,
            release: false,
        }
    }
}

/// Runs both directions until one of them stops.
pub(super) async fn attached<C, S>(
    common: &mut Common<'_>,
    up: &mut ClientSide<'_>,
    down: &mut ServerSide<'_>,
    client: &mut C,
    server: &mut S,
) -> Stop
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    std::future::poll_fn(|cx| {
        if let Poll::Ready(stop) = poll_client_to_server(common, up, cx, client, server) {
            return Poll::Ready(stop);
        }
        let state = ClientState {
            writing: up.out.is_some(),
            inside_message: up.scanner.inside_message(),
        };
        poll_server_to_client(common, down, state, cx, server, client)
    })
    .await
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

    /// What to write: one range of `input` as it is, or the pieces joined.
    fn finish(self, input: &[u8]) -> Option<Outgoing> {
        if let Some((start, end)) = self.single {
            return Some(Outgoing::Input { start, end });
        }
        match self.pieces.as_slice() {
            [] => None,
            [Piece::Input(start, end)] => Some(Outgoing::Input {
                start: *start,
                end: *end,
            }),
            pieces => {
                let mut joined = Vec::new();
                for p in pieces {
                    match p {
                        Piece::Input(s, e) => joined.extend_from_slice(&input[*s..*e]),
                        Piece::Own(bytes) => joined.extend_from_slice(bytes),
                    }
                }
                Some(Outgoing::Own {
                    bytes: joined,
                    written: 0,
                })
            }
        }
    }
}

/// A batch being written: what of it is left.
enum Outgoing {
    /// `input[start..end]`, of the buffer the batch was scanned from.
    Input { start: usize, end: usize },
    /// Bytes of the pool's own (with input joined in), from `written` on.
    Own { bytes: Vec<u8>, written: usize },
}

impl Outgoing {
    /// Bytes left to write.
    fn len(&self) -> usize {
        match self {
            Outgoing::Input { start, end } => end - start,
            Outgoing::Own { bytes, written } => bytes.len() - written,
        }
    }

    /// Writes what is left, as far as `out` takes it.
    fn poll_write<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        input: &[u8],
        out: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let rest = match self {
                Outgoing::Input { start, end } => &input[*start..*end],
                Outgoing::Own { bytes, written } => &bytes[*written..],
            };
            if rest.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut *out).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            match self {
                Outgoing::Input { start, .. } => *start += n,
                Outgoing::Own { written, .. } => *written += n,
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
    fn ensure(&self, common: &mut Common<'_>, statement: &Statement, batch: &mut Batch) {
        if common.server_statements.touch(&statement.server_name) {
            return;
        }
        batch.own(statement.parse.to_vec());
        common.expected.push(Expect::ParseAdded {
            statement: statement.server_name.clone(),
        });
        if let Some(evicted) = common
            .server_statements
            .add(statement.server_name.clone(), self.cap)
        {
            batch.own(close_statement(&evicted));
            common.expected.push(Expect::CloseAdded);
        }
    }

    fn search_path(&self) -> &str {
        self.search_path.as_deref().unwrap_or_default()
    }
}

/// The client's messages to the server, as far as the streams allow.
fn poll_client_to_server<C, S>(
    common: &mut Common<'_>,
    side: &mut ClientSide<'_>,
    cx: &mut Context<'_>,
    client: &mut C,
    server: &mut S,
) -> Poll<Stop>
where
    C: AsyncRead + Unpin + ?Sized,
    S: AsyncWrite + Unpin + ?Sized,
{
    loop {
        if let Some(out) = &mut side.out {
            if let Err(e) = ready!(out.poll_write(side.buf, server, cx)) {
                return Poll::Ready(Stop::ServerLost(format!("writing to the server: {e}")));
            }
            side.out = None;
            common.from_client += side.scanned as u64;
            side.buf.advance(std::mem::take(&mut side.scanned));
            if let Some(stop) = side.stop.take() {
                return Poll::Ready(stop);
            }
            if std::mem::take(&mut common.release_wanted)
                && common.exchange.at_transaction_boundary()
                && !side.scanner.inside_message()
            {
                return Poll::Ready(Stop::Released);
            }
        }
        if !side.buf.is_empty() {
            let (batch, scanned, stop) = scan_client(common, side);
            if let Some(out) = batch.finish(side.buf) {
                side.out = Some(out);
                side.scanned = scanned;
                side.stop = stop;
                continue;
            }
            side.buf.advance(scanned);
            if let Some(stop) = stop {
                return Poll::Ready(stop);
            }
        }
        if side.buf.capacity() - side.buf.len() < 1024 {
            side.buf.reserve(8192);
        }
        match ready!(poll_read_buf(Pin::new(&mut *client), cx, side.buf)) {
            Ok(0) | Err(_) => return Poll::Ready(Stop::ClientGone),
            Ok(_) => {}
        }
    }
}

/// Scans the client's bytes read so far into a batch for the server:
/// the batch, how many bytes of the buffer it accounts for, and the stop
/// the scan came to, if any.
fn scan_client(common: &mut Common<'_>, side: &mut ClientSide<'_>) -> (Batch, usize, Option<Stop>) {
    let transaction_mode = common.transaction_mode;
    let tracks = side.tracking.is_some();
    let buf: &[u8] = side.buf;
    let mut pos = 0;
    let mut batch = Batch::default();
    loop {
        let scanned = side.scanner.scan(&buf[pos..], MAX_MESSAGE_LEN, |tag| {
            client_wants(tag, transaction_mode, tracks)
        });
        let (tag, prefix, len, body_len) = match scanned {
            Err(e) => {
                let stop = Stop::Malformed(format!("invalid message from the client: {e}"));
                return (batch, pos, Some(stop));
            }
            Ok(Scanned::NeedMore) => return (batch, pos, None),
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
        match common.exchange.client_message(tag) {
            ClientMessage::Forward => {}
            ClientMessage::Terminate => return (batch, pos, Some(Stop::ClientGone)),
            ClientMessage::Invalid => {
                let stop = Stop::Malformed(format!(
                    "message type 0x{tag:02x} is not one a client sends after startup"
                ));
                return (batch, pos, Some(stop));
            }
        }
        let at = pos;
        pos += len;
        if transaction_mode && tag == frontend::QUERY && has_listen(prefix) {
            if !whole {
                let stop =
                    Stop::Malformed("a LISTEN query longer than what arrived with it".into());
                return (Batch::default(), 0, Some(stop));
            }
            let mut replacement = Vec::new();
            let _ = encode_query(LISTEN_REFUSAL, &mut replacement);
            batch.own(replacement);
            if tracks {
                common.expected.push(Expect::Ready);
            }
            continue;
        }
        let Some(t) = side.tracking.as_mut() else {
            batch.input(at, pos);
            continue;
        };
        // Statement tracking: what each message becomes.
        let expect = match tag {
            frontend::PARSE => match parse_parse(prefix).filter(|_| whole) {
                Some(p) if p.rest.split(|&b| b == 0).next().is_some_and(has_listen) => {
                    // The statement is prepared as the refusal, which its
                    // Execute then raises in order.
                    let name = p.name.to_vec();
                    let mut body = name.clone();
                    body.push(0);
                    body.extend_from_slice(LISTEN_REFUSAL.as_bytes());
                    body.extend_from_slice(&[0, 0, 0]);
                    let refusal = parse_parse(&body).map(|p| {
                        (
                            p.name.is_empty(),
                            statements::statement(&p, t.search_path()),
                        )
                    });
                    match refusal {
                        Some((false, statement)) => {
                            t.client.insert(&name, statement.clone());
                            t.ensure(common, &statement, &mut batch);
                            common.expected.push(Expect::ParseAnswered);
                        }
                        _ => {
                            batch.own(statements::frame(tag, &body));
                            common.expected.push(Expect::Parse { statement: None });
                        }
                    }
                    continue;
                }
                Some(p) if !p.name.is_empty() => {
                    let statement = statements::statement(&p, t.search_path());
                    let name = p.name.to_vec();
                    t.client.insert(&name, statement.clone());
                    if common.server_statements.touch(&statement.server_name) {
                        common.expected.push(Expect::ParseAnswered);
                        continue;
                    }
                    batch.own(statement.parse.to_vec());
                    common.expected.push(Expect::Parse {
                        statement: Some(statement.server_name.clone()),
                    });
                    if let Some(evicted) = common
                        .server_statements
                        .add(statement.server_name.clone(), t.cap)
                    {
                        batch.own(close_statement(&evicted));
                        common.expected.push(Expect::CloseAdded);
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
                        t.ensure(common, &statement, &mut batch);
                        let name_len = range.end - range.start;
                        let new_body = body_len - name_len + statement.server_name.len();
                        let mut rewritten = statements::header(tag, new_body).to_vec();
                        rewritten.extend_from_slice(&prefix[..range.start]);
                        rewritten.extend_from_slice(statement.server_name.as_bytes());
                        rewritten.extend_from_slice(&prefix[range.end..]);
                        batch.own(rewritten);
                        // The rest of the body that arrived with it.
                        batch.input(at + HEADER_LEN + prefix.len(), pos);
                        common.expected.push(Expect::Bind);
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
                        common.expected.push(Expect::CloseAnswered);
                        continue;
                    }
                    (frontend::DESCRIBE, Some((_, name))) => match t.client.get(name).cloned() {
                        Some(statement) => {
                            t.ensure(common, &statement, &mut batch);
                            batch.own(statements::renamed(
                                tag,
                                b"S",
                                &statement.server_name,
                                b"\0",
                            ));
                            common.expected.push(Expect::Describe);
                            continue;
                        }
                        None => Expect::Describe,
                    },
                    (frontend::CLOSE, None) => Expect::Close,
                    _ => Expect::Describe,
                }
            }
            frontend::EXECUTE => Expect::Execute,
            frontend::SYNC | frontend::QUERY | frontend::FUNCTION_CALL => {
                if tag == frontend::QUERY && drops_statements(prefix) {
                    *common.server_statements = ServerStatements::default();
                }
                Expect::Ready
            }
            _ => {
                batch.input(at, pos);
                continue;
            }
        };
        common.expected.push(expect);
        batch.input(at, pos);
    }
}

/// Where the client's direction is, as the server's direction sees it.
#[derive(Clone, Copy)]
struct ClientState {
    /// Writing a batch to the server: the connection goes back only
    /// once the write is complete.
    writing: bool,
    /// In the middle of a message: a ReadyForQuery does not end the
    /// client's transaction yet.
    inside_message: bool,
}

/// The server's messages to the client, as far as the streams allow.
fn poll_server_to_client<C, S>(
    common: &mut Common<'_>,
    side: &mut ServerSide<'_>,
    client_state: ClientState,
    cx: &mut Context<'_>,
    server: &mut S,
    client: &mut C,
) -> Poll<Stop>
where
    C: AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + Unpin + ?Sized,
{
    loop {
        if common.release_wanted {
            // The client's direction lets the connection go when its
            // write is complete; nothing more is read for this client.
            return Poll::Pending;
        }
        if let Some(out) = &mut side.out {
            if ready!(out.poll_write(side.buf, client, cx)).is_err() {
                return Poll::Ready(Stop::ClientGone);
            }
            side.out = None;
            side.flushing = true;
        }
        if side.flushing {
            if ready!(Pin::new(&mut *client).poll_flush(cx)).is_err() {
                return Poll::Ready(Stop::ClientGone);
            }
            side.flushing = false;
            common.to_client += std::mem::take(&mut side.out_len) as u64;
            side.buf.advance(std::mem::take(&mut side.scanned));
            if std::mem::take(&mut side.release) {
                return release(common, client_state);
            }
        }
        let answers_due = side.tracking && common.expected.answer_at_front();
        if answers_due || !side.buf.is_empty() {
            let mut batch = Batch::default();
            if answers_due {
                let mut answers = Vec::new();
                common.expected.answers_due(&mut answers);
                batch.own(answers);
            }
            let scanned = match scan_server(common, side, client_state, &mut batch) {
                Ok(scanned) => scanned,
                Err(stop) => return Poll::Ready(stop),
            };
            if let Some(out) = batch.finish(side.buf) {
                side.out_len = out.len();
                side.out = Some(out);
                side.scanned = scanned;
                continue;
            }
            side.buf.advance(scanned);
            if std::mem::take(&mut side.release) {
                return release(common, client_state);
            }
        }
        if side.buf.capacity() - side.buf.len() < 1024 {
            side.buf.reserve(16384);
        }
        match ready!(poll_read_buf(Pin::new(&mut *server), cx, side.buf)) {
            Ok(0) => {
                return Poll::Ready(Stop::ServerLost("the server closed the connection".into()))
            }
            Err(e) => {
                return Poll::Ready(Stop::ServerLost(format!("reading from the server: {e}")))
            }
            Ok(_) => {}
        }
    }
}

/// The server connection goes back now, or once the client's direction
/// has written what it is writing.
fn release(common: &mut Common<'_>, client: ClientState) -> Poll<Stop> {
    if client.writing {
        common.release_wanted = true;
        Poll::Pending
    } else {
        Poll::Ready(Stop::Released)
    }
}

/// Scans the server's bytes read so far into `batch` for the client, up
/// to the ReadyForQuery that ends a transaction (then `side.release` is
/// set); returns how many bytes of the buffer it accounts for.
fn scan_server(
    common: &mut Common<'_>,
    side: &mut ServerSide<'_>,
    client: ClientState,
    batch: &mut Batch,
) -> Result<usize, Stop> {
    let buf: &[u8] = side.buf;
    let mut pos = 0;
    loop {
        let scanned = side
            .scanner
            .scan(&buf[pos..], MAX_MESSAGE_LEN, |tag| match tag {
                backend::READY_FOR_QUERY => 1,
                backend::PARAMETER_STATUS => usize::MAX,
                _ => 0,
            });
        let (tag, prefix, len) = match scanned {
            Err(e) => {
                return Err(Stop::ServerLost(format!(
                    "invalid message from the server: {e}"
                )))
            }
            Ok(Scanned::NeedMore) => return Ok(pos),
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
        if side.tracking {
            let Common {
                expected,
                server_statements,
                ..
            } = common;
            if expected.server_message(tag, |name| server_statements.forget(name))
                == Deliver::Forward
            {
                batch.input(at, pos);
            }
            if expected.answer_at_front() {
                let mut answers = Vec::new();
                expected.answers_due(&mut answers);
                batch.own(answers);
            }
        } else {
            batch.input(at, pos);
        }
        match tag {
            backend::PARAMETER_STATUS => {
                if let Ok((name, value)) = parse_parameter_status(prefix) {
                    side.client_params.record(name, value);
                    side.params.record(name, value);
                }
            }
            backend::READY_FOR_QUERY => {
                let Ok(status) = TransactionStatus::parse(prefix) else {
                    return Err(Stop::ServerLost(
                        "invalid ReadyForQuery from the server".into(),
                    ));
                };
                common.exchange.ready(status);
                if common.transaction_mode
                    && common.exchange.at_transaction_boundary()
                    && !client.inside_message
                {
                    side.release = true;
                    return Ok(pos);
                }
            }
            backend::COPY_BOTH_RESPONSE => {
                return Err(Stop::ServerLost(
                    "the server started a COPY BOTH (replication), which a pool cannot carry"
                        .into(),
                ))
            }
            _ => {}
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
        fn joined(batch: Batch, input: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let Some(mut outgoing) = batch.finish(input) else {
                return out;
            };
            let len = outgoing.len();
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            match outgoing.poll_write(input, &mut out, &mut cx) {
                Poll::Ready(result) => result.expect("write"),
                Poll::Pending => panic!("a Vec takes every write"),
            }
            assert_eq!(len, out.len());
            assert_eq!(outgoing.len(), 0);
            out
        }
        let input = b"0123456789";
        let mut one = Batch::default();
        one.input(0, 2);
        one.input(2, 5);
        one.input(5, 5);
        assert!(one.pieces.is_empty(), "contiguous ranges stay one");
        assert_eq!(joined(one, input), b"01234");

        let mut mixed = Batch::default();
        mixed.input(1, 3);
        mixed.own(b"ab".to_vec());
        mixed.input(3, 4);
        mixed.input(6, 8);
        mixed.own(Vec::new());
        assert_eq!(joined(mixed, input), b"12ab367");

        assert!(joined(Batch::default(), input).is_empty());
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
