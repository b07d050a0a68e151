//! What a pool must know of a conversation to hand a server connection
//! to someone else safely, decided without I/O: when the server has
//! answered everything the client sent (`Exchange`), and which session
//! parameters each side holds (`Parameters`).

use std::fmt::Write as _;
use std::sync::Arc;

use intransit_wire::pg::session::{frontend, TransactionStatus};

/// One client message, as the pool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientMessage {
    /// Goes to the server.
    Forward,
    /// Terminate: the client is leaving; it does not go to the server.
    Terminate,
    /// Not a message a client sends after startup.
    Invalid,
}

/// The state of the conversation between one client and the server
/// connection serving it: how many ReadyForQuery messages are still due
/// (one for each Query, Sync and FunctionCall sent), whether
/// extended-protocol messages were sent since the last Sync, and the
/// transaction status of the latest ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exchange {
    awaiting: u32,
    unsynced: bool,
    status: TransactionStatus,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            awaiting: 0,
            unsynced: false,
            status: TransactionStatus::Idle,
        }
    }
}

impl Exchange {
    /// Records a message the client sends.
    pub(crate) fn client_message(&mut self, tag: u8) -> ClientMessage {
        match tag {
            frontend::QUERY | frontend::FUNCTION_CALL => {
                self.awaiting = self.awaiting.saturating_add(1);
            }
            frontend::SYNC => {
                self.awaiting = self.awaiting.saturating_add(1);
                self.unsynced = false;
            }
            frontend::PARSE
            | frontend::BIND
            | frontend::DESCRIBE
            | frontend::EXECUTE
            | frontend::CLOSE
            | frontend::FLUSH => self.unsynced = true,
            // Only meaningful inside COPY FROM STDIN, which a Query or a
            // Sync already keeps open; outside it the server ignores them.
            frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {}
            frontend::TERMINATE => return ClientMessage::Terminate,
            _ => return ClientMessage::Invalid,
        }
        ClientMessage::Forward
    }

    /// Records a ReadyForQuery from the server.
    pub(crate) fn ready(&mut self, status: TransactionStatus) {
        self.awaiting = self.awaiting.saturating_sub(1);
        self.status = status;
    }

    /// The server has answered everything it was sent, and no
    /// extended-protocol sequence is waiting for its Sync.
    pub(crate) fn answered(&self) -> bool {
        self.awaiting == 0 && !self.unsynced
    }

    /// The transaction status of the latest ReadyForQuery.
    pub(crate) fn status(&self) -> TransactionStatus {
        self.status
    }

    /// The server connection may serve another client's transaction.
    pub(crate) fn at_transaction_boundary(&self) -> bool {
        self.answered() && self.status == TransactionStatus::Idle
    }
}

/// The session parameters a pool keeps the same for a client whichever
/// server connection serves it: those the server reports with
/// ParameterStatus and a client may change, plus two a driver sets at
/// startup that the server does not report. Lower-case names.
pub(crate) const RESTORED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "standard_conforming_strings",
    "timezone",
];
/// The slot of `search_path` in [`RESTORED`].
const SEARCH_PATH: usize = 5;
/// Startup parameters a pooled client may send besides those in
/// [`RESTORED`].
const ACCEPTED: &[&str] = &["user", "database"];

/// A pooled client's startup parameter that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotPoolable {
    /// The parameter's name.
    pub(crate) name: String,
}

/// Values of [`RESTORED`] parameters, one slot per name in its order
/// (alphabetical, which is also the order of a restoring statement).
/// Values are shared: a client that keeps the values its login reported
/// holds the pool's own, so an idle client costs no allocation for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Parameters([Option<Arc<str>>; RESTORED.len()]);

/// The slot of a restored parameter, by name in any case.
fn slot(name: &str) -> Option<usize> {
    RESTORED.iter().position(|r| r.eq_ignore_ascii_case(name))
}

impl Parameters {
    /// The restored parameters among a client's startup parameters; an
    /// error names the first one a pool cannot honour (`options`,
    /// `replication`, anything unknown). `_pq_.` protocol options are
    /// left to the caller.
    pub(crate) fn from_startup<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, NotPoolable> {
        let mut out = Parameters::default();
        for (name, value) in params {
            let protocol_option = name
                .as_bytes()
                .get(..5)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"_pq_."));
            if protocol_option || ACCEPTED.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                continue;
            }
            let Some(at) = slot(name) else {
                return Err(NotPoolable {
                    name: name.to_owned(),
                });
            };
            out.0[at] = Some(Arc::from(value));
        }
        Ok(out)
    }

    /// Records a value the server reported or was set to; parameters the
    /// pool does not restore are ignored, and so is a value already held.
    pub(crate) fn record(&mut self, name: &str, value: &str) {
        if let Some(at) = slot(name) {
            if self.0[at].as_deref() != Some(value) {
                self.0[at] = Some(Arc::from(value));
            }
        }
    }

    /// The value of `name`, if known.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        slot(name).and_then(|at| self.0[at].as_deref())
    }

    /// The value of `search_path`, if known, shared.
    pub(crate) fn search_path(&self) -> Option<Arc<str>> {
        self.0[SEARCH_PATH].clone()
    }

    /// Fills in what `self` does not set from `defaults` (a client
    /// that set nothing has the values its login reported).
    pub(crate) fn or_defaults(mut self, defaults: &Parameters) -> Self {
        for (mine, default) in self.0.iter_mut().zip(&defaults.0) {
            if mine.is_none() {
                mine.clone_from(default);
            }
        }
        self
    }

    /// Whether `server` holds each of `self`'s values as the very same
    /// allocation (see [`Parameters::adopt`]): then nothing differs, and
    /// no value needs comparing.
    pub(crate) fn shared_with(&self, server: &Parameters) -> bool {
        self.0
            .iter()
            .zip(&server.0)
            .all(|(mine, held)| match (mine, held) {
                (None, _) => true,
                (Some(mine), Some(held)) => Arc::ptr_eq(mine, held),
                (Some(_), None) => false,
            })
    }

    /// Records that a server connection now holds `client`'s values
    /// (they were equal, or were just set), as the client's own
    /// allocations, so that the next [`Parameters::shared_with`] of the
    /// same values compares pointers only.
    pub(crate) fn adopt(&mut self, client: &Parameters) {
        for (held, mine) in self.0.iter_mut().zip(&client.0) {
            if mine.is_some() {
                held.clone_from(mine);
            }
        }
    }

    /// The statement that makes a server connection holding `server`
    /// hold `self`, or `None` when nothing differs. Values go through
    /// `set_config` as string literals (`E''`, so neither a quote nor a
    /// backslash can end them), which also parses list values such as
    /// `search_path` as `SET` would.
    pub(crate) fn difference_from(&self, server: &Parameters) -> Option<String> {
        let calls: Vec<String> = RESTORED
            .iter()
            .zip(self.0.iter().zip(&server.0))
            .filter_map(|(name, (mine, held))| match mine {
                Some(value) if Some(value) != held.as_ref() => Some((name, value)),
                _ => None,
            })
            .map(|(name, value)| {
                format!(
                    "pg_catalog.set_config('{name}', {}, false)",
                    string_literal(value)
                )
            })
            .collect();
        (!calls.is_empty()).then(|| format!("SELECT {}", calls.join(", ")))
    }
}

/// `value` as an escape string literal written in ASCII: a quote and a
/// backslash doubled, every other character outside printable ASCII as a
/// `\u` or `\U` escape. The statement is read in whatever
/// `client_encoding` the server connection was left with by the client
/// it served before; ASCII reads the same in every encoding PostgreSQL
/// accepts from a client, whereas UTF-8 bytes would be read as other
/// characters in LATIN1, and in SJIS one of them could take the
/// backslash after it as the second byte of a character.
fn string_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('\'');
    out
}

/// Whether a simple Query starts with LISTEN, which transaction pooling
/// cannot honour: notifications arrive on a server connection the client
/// no longer holds. What comes before the keyword is skipped the way
/// PostgreSQL's lexer skips it (blanks, `--` comments to the end of the
/// line, nested `/* */` comments), and so are empty statements; the
/// keyword ends where an identifier could not go on. A LISTEN after
/// another statement of the same Query is not seen.
pub(crate) fn is_listen(query_prefix: &[u8]) -> bool {
    let mut rest = query_prefix;
    loop {
        match rest {
            [b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' | b'(' | b';', tail @ ..] => {
                rest = tail
            }
            [b'-', b'-', tail @ ..] => match tail.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(end) => rest = &tail[end..],
                None => return false,
            },
            [b'/', b'*', tail @ ..] => match block_comment_end(tail) {
                Some(after) => rest = after,
                None => return false,
            },
            _ => break,
        }
    }
    rest.len() >= 6
        && rest[..6].eq_ignore_ascii_case(b"listen")
        && rest.get(6).is_none_or(|&b| !continues_identifier(b))
}

/// What follows the end of a block comment whose `/*` was just read, or
/// `None` if it does not end. Comments nest, as in PostgreSQL.
fn block_comment_end(mut rest: &[u8]) -> Option<&[u8]> {
    let mut depth = 0usize;
    loop {
        match rest {
            [b'/', b'*', tail @ ..] => {
                depth += 1;
                rest = tail;
            }
            [b'*', b'/', tail @ ..] => {
                if depth == 0 {
                    return Some(tail);
                }
                depth -= 1;
                rest = tail;
            }
            [_, tail @ ..] => rest = tail,
            [] => return None,
        }
    }
}

/// Whether `b` may continue an identifier or keyword in PostgreSQL's
/// lexer (`ident_cont`: letters, digits, `_`, `$` and any byte of a
/// multibyte character).
fn continues_identifier(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Whether any statement of a query text (statements separated by `;`
/// outside quotes, quoted identifiers, dollar quotes and comments) is a
/// LISTEN. Text cut short is judged on what is there.
pub(crate) fn has_listen(text: &[u8]) -> bool {
    if is_listen(text) {
        return true;
    }
    // Every statement after the first begins after a `;`, so after the
    // first one in the text; most queries have no "listen" there (often
    // nothing but the terminating NUL): found (or not) with vectorised
    // searches, before any statement is lexed.
    let Some(first_end) = memchr::memchr(b';', text) else {
        return false;
    };
    let after = &text[first_end..];
    let mentions = memchr::memchr2_iter(b'l', b'L', after).any(|at| {
        after
            .get(at..at + 6)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"listen"))
    });
    mentions && listen_in_any_statement(text)
}

/// [`has_listen`] without its shortcuts: each statement lexed in turn.
pub(crate) fn listen_in_any_statement(text: &[u8]) -> bool {
    let mut rest = text;
    loop {
        if is_listen(rest) {
            return true;
        }
        match next_statement(rest) {
            Some(after) => rest = after,
            None => return false,
        }
    }
}

/// The text after the `;` that ends the statement at the front of
/// `text`, or `None` when no such `;` is there.
fn next_statement(mut rest: &[u8]) -> Option<&[u8]> {
    let mut previous = 0u8;
    loop {
        match rest {
            [] => return None,
            [b';', tail @ ..] => return Some(tail),
            [b'-', b'-', tail @ ..] => {
                let end = tail.iter().position(|&b| b == b'\n' || b == b'\r')?;
                rest = &tail[end..];
            }
            [b'/', b'*', tail @ ..] => rest = block_comment_end(tail)?,
            [b'\'', tail @ ..] => {
                let escapes = previous == b'E' || previous == b'e';
                rest = quoted_end(tail, b'\'', escapes)?;
            }
            [b'"', tail @ ..] => rest = quoted_end(tail, b'"', false)?,
            [b'$', tail @ ..] if !continues_identifier(previous) || previous >= 0x80 => {
                rest = dollar_quoted_end(tail).unwrap_or(tail);
            }
            [b, tail @ ..] => {
                previous = *b;
                rest = tail;
                continue;
            }
        }
        previous = 0;
    }
}

/// What follows a quoted string or identifier whose opening `quote` was
/// just read (a doubled quote stays inside; with `escapes`, a backslash
/// escapes the next byte).
fn quoted_end(mut rest: &[u8], quote: u8, escapes: bool) -> Option<&[u8]> {
    loop {
        match rest {
            [b'\\', _, tail @ ..] if escapes => rest = tail,
            [q1, q2, tail @ ..] if *q1 == quote && *q2 == quote => rest = tail,
            [q, tail @ ..] if *q == quote => return Some(tail),
            [_, tail @ ..] => rest = tail,
            [] => return None,
        }
    }
}

/// What follows a dollar-quoted string whose first `$` was just read
/// (`$tag$ ... $tag$`), or `None` when `$` does not open one here (a
/// positional parameter such as `$1`).
fn dollar_quoted_end(rest: &[u8]) -> Option<&[u8]> {
    let tag_len = rest.iter().position(|&b| b == b'$')?;
    let tag = &rest[..tag_len];
    if tag.first().is_some_and(u8::is_ascii_digit)
        || !tag.iter().all(|&b| continues_identifier(b) && b != b'$')
    {
        return None;
    }
    let body = &rest[tag_len + 1..];
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'$'
            && body[i + 1..].starts_with(tag)
            && body.get(i + 1 + tag_len) == Some(&b'$')
        {
            return Some(&body[i + 2 + tag_len..]);
        }
        i += 1;
    }
    // An unterminated dollar quote runs to the end of the text.
    Some(&[])
}

/// How much of a Query's text [`has_listen`] sees: all of it up to 1 MiB.
pub(crate) const LISTEN_PREFIX: usize = 1 << 20;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn feed(exchange: &mut Exchange, tags: &[u8]) {
        for &t in tags {
            assert_eq!(exchange.client_message(t), ClientMessage::Forward);
        }
    }

    #[test]
    fn a_simple_query_is_answered_by_its_ready_for_query() {
        let mut e = Exchange::default();
        feed(&mut e, b"Q");
        assert!(!e.at_transaction_boundary());
        e.ready(TransactionStatus::Idle);
        assert!(e.at_transaction_boundary());
    }

    #[test]
    fn an_open_transaction_holds_the_server() {
        let mut e = Exchange::default();
        feed(&mut e, b"Q");
        e.ready(TransactionStatus::InTransaction);
        assert!(e.answered());
        assert!(!e.at_transaction_boundary());
        feed(&mut e, b"Q");
        e.ready(TransactionStatus::Failed);
        assert!(!e.at_transaction_boundary());
        feed(&mut e, b"Q");
        e.ready(TransactionStatus::Idle);
        assert!(e.at_transaction_boundary());
    }

    #[test]
    fn the_extended_protocol_is_released_only_at_sync() {
        let mut e = Exchange::default();
        feed(&mut e, b"PBDE");
        assert!(!e.answered());
        feed(&mut e, b"H");
        assert!(!e.answered());
        feed(&mut e, b"S");
        assert!(!e.answered());
        e.ready(TransactionStatus::Idle);
        assert!(e.at_transaction_boundary());
    }

    #[test]
    fn a_pipeline_waits_for_every_sync() {
        let mut e = Exchange::default();
        feed(&mut e, b"PBES");
        feed(&mut e, b"BES");
        feed(&mut e, b"BES");
        e.ready(TransactionStatus::Idle);
        e.ready(TransactionStatus::Idle);
        assert!(!e.at_transaction_boundary());
        e.ready(TransactionStatus::Idle);
        assert!(e.at_transaction_boundary());
    }

    #[test]
    fn copy_in_is_inside_its_query() {
        let mut e = Exchange::default();
        feed(&mut e, b"Qdddc");
        assert!(!e.answered());
        e.ready(TransactionStatus::Idle);
        assert!(e.at_transaction_boundary());
    }

    #[test]
    fn terminate_and_strangers_are_not_forwarded() {
        let mut e = Exchange::default();
        assert_eq!(e.client_message(b'X'), ClientMessage::Terminate);
        for t in [b'p', 0, b'Z', 0xff] {
            assert_eq!(e.client_message(t), ClientMessage::Invalid);
        }
    }

    #[test]
    fn startup_parameters_a_pool_cannot_honour_are_named() {
        let ok = Parameters::from_startup([
            ("user", "alice"),
            ("database", "shop"),
            ("application_name", "psql"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("_pq_.foo", "1"),
        ])
        .unwrap();
        assert_eq!(ok.get("datestyle"), Some("ISO"));
        for name in ["options", "replication", "work_mem"] {
            assert_eq!(
                Parameters::from_startup([("user", "a"), (name, "x")]),
                Err(NotPoolable {
                    name: name.to_owned()
                })
            );
        }
    }

    #[test]
    fn only_differences_are_set_and_values_cannot_escape() {
        let mut server = Parameters::default();
        server.record("TimeZone", "UTC");
        server.record("client_encoding", "UTF8");
        server.record("server_version", "15");
        let mut client = Parameters::default();
        client.record("client_encoding", "UTF8");
        assert_eq!(client.difference_from(&server), None);
        client.record("TimeZone", "Europe/Paris");
        client.record("application_name", "it's \\ here");
        assert_eq!(
            client.difference_from(&server).unwrap(),
            "SELECT pg_catalog.set_config('application_name', E'it''s \\\\ here', false), pg_catalog.set_config('timezone', E'Europe/Paris', false)"
        );
    }

    #[test]
    fn search_path_has_its_slot() {
        assert_eq!(RESTORED[SEARCH_PATH], "search_path");
        let mut p = Parameters::default();
        p.record("Search_Path", "app, public");
        assert_eq!(p.search_path().as_deref(), Some("app, public"));
        assert_eq!(p.get("search_path"), Some("app, public"));
    }

    #[test]
    fn adopted_values_are_shared_until_either_side_changes() {
        let mut server = Parameters::default();
        server.record("TimeZone", "UTC");
        let mut client = Parameters::default();
        client.record("timezone", "UTC");
        assert!(!client.shared_with(&server), "equal, but not yet shared");
        assert_eq!(client.difference_from(&server), None);
        server.adopt(&client);
        assert!(client.shared_with(&server));
        // The server reporting the value it holds changes nothing.
        server.record("TimeZone", "UTC");
        assert!(client.shared_with(&server));

        client.record("application_name", "app");
        assert!(!client.shared_with(&server));
        assert!(client.difference_from(&server).is_some());
        server.adopt(&client);
        assert!(client.shared_with(&server));
        assert_eq!(server.get("application_name"), Some("app"));

        server.record("TimeZone", "Europe/Paris");
        assert!(!client.shared_with(&server));
        assert!(client.difference_from(&server).is_some());
    }

    #[test]
    fn values_are_written_in_ascii() {
        let mut client = Parameters::default();
        client.record("application_name", "caf\u{e9} \u{101}\n\u{1f600}");
        assert_eq!(
            client.difference_from(&Parameters::default()).unwrap(),
            "SELECT pg_catalog.set_config('application_name', E'caf\\u00e9 \\u0101\\u000a\\U0001f600', false)"
        );
    }

    #[test]
    fn listen_is_found_in_any_statement_of_a_query() {
        for q in [
            "SELECT 1; LISTEN jobs",
            "SELECT 'a;b'; listen x",
            "SELECT $$ ; $$; LISTEN x",
            "SELECT $tag$ ; LISTEN no $tag$; LISTEN yes",
            "SELECT \"we;ird\"; LISTEN x",
            "SELECT E'it\\'s;'; LISTEN x",
        ] {
            assert!(has_listen(q.as_bytes()), "{q}");
        }
        for q in [
            "SELECT ';LISTEN x'",
            "SELECT $$;LISTEN x$$",
            "SELECT 1 -- ; LISTEN x",
            "SELECT 1 /* ; LISTEN x */",
            "SELECT \";LISTEN x\"",
            "SELECT $1; SELECT 2",
            "SELECT E'\\';LISTEN x'",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "SELECT 'listen'",
            "SELECT 1 -- listen",
            "",
            "l",
            "SELECT 1; liste",
        ] {
            assert!(!has_listen(q.as_bytes()), "{q}");
        }
    }

    #[test]
    fn listen_is_found_behind_blanks_and_comments() {
        for q in [
            "LISTEN chan",
            "  listen chan",
            "/* hi */ Listen \"Chan\"",
            "-- c\nLISTEN x",
            "-- c\rLISTEN x",
            "/* a /* nested */ comment */ LISTEN x",
            "\x0c\x0bLISTEN x",
            "; ;LISTEN x",
            "LISTEN/* c */x",
            "LISTEN-- c\nx",
            "listen",
        ] {
            assert!(is_listen(q.as_bytes()), "{q}");
        }
        for q in [
            "SELECT 1",
            "listener",
            "UNLISTEN x",
            "/* LISTEN",
            "/* /* */ LISTEN x",
            "-- LISTEN x",
            "listen_x",
            "LISTEN$1",
            "LISTEN\u{e9}",
            "NOTIFY x",
        ] {
            assert!(!is_listen(q.as_bytes()), "{q}");
        }
    }
}
