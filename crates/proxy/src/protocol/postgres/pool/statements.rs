//! Named prepared statements in transaction mode, decided without I/O.
//!
//! A driver prepares a statement once per connection (Parse with a name)
//! and uses it by name in later transactions (Bind, Describe), which a
//! transaction pool may serve on another server connection. So the pool
//! keeps each client's statements itself and gives each a server-side
//! name derived from its text, parameter types and `search_path`
//! (`intransit_<hash>`): the same statement prepared by two clients is one
//! server-side statement, and two clients' statements of one name but
//! different text never meet. Before a Bind or Describe the pool prepares
//! the statement on a server connection that lacks it; a Parse of a
//! statement the connection already has is answered by the pool; a
//! client's Close forgets the client's name only. Each server connection
//! keeps at most a configured number of statements, closing the least
//! recently used.
//!
//! The responses the pool adds or removes must keep their place in the
//! server's stream, so every extended-protocol message sent (or answered
//! by the pool) queues what its completion will be ([`Expect`]), and the
//! server's messages are matched against that queue ([`Expected`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// Prefix of server-side statement names.
pub(crate) const SERVER_NAME_PREFIX: &str = "intransit_";

/// One statement a client prepared by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    /// Its name on server connections.
    pub(crate) server_name: Arc<str>,
    /// The Parse message that prepares it there, framed.
    pub(crate) parse: Arc<[u8]>,
}

/// A Parse message's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parse<'a> {
    pub(crate) name: &'a [u8],
    /// Query text and parameter types: everything after the name.
    pub(crate) rest: &'a [u8],
}

/// Splits a Parse body into its name and the rest.
pub(crate) fn parse_parse(body: &[u8]) -> Option<Parse<'_>> {
    let nul = body.iter().position(|&b| b == 0)?;
    Some(Parse {
        name: &body[..nul],
        rest: &body[nul + 1..],
    })
}

/// The statement name a Bind refers to, with the byte range it occupies
/// in the body (after the portal name), if the prefix holds it.
pub(crate) fn bind_statement(prefix: &[u8]) -> Option<(&[u8], std::ops::Range<usize>)> {
    let portal_end = prefix.iter().position(|&b| b == 0)?;
    let start = portal_end + 1;
    let len = prefix[start..].iter().position(|&b| b == 0)?;
    Some((&prefix[start..start + len], start..start + len))
}

/// A Describe or Close body: the kind (`S` statement, `P` portal) and
/// the name.
pub(crate) fn target(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let name = rest.strip_suffix(&[0])?;
    (!name.contains(&0)).then_some((kind, name))
}

pub(crate) fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(
        &u32::try_from(body.len() + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(body);
    out
}

/// The statement `parse` (a Parse body with a non-empty name) defines,
/// named on the server by its text, types and `search_path`.
pub(crate) fn statement(parse: &Parse<'_>, search_path: &str) -> Statement {
    let mut hash = Sha256::new();
    hash.update(search_path.as_bytes());
    hash.update([0]);
    hash.update(parse.rest);
    let digest = hash.finalize();
    let mut server_name = String::with_capacity(SERVER_NAME_PREFIX.len() + 32);
    server_name.push_str(SERVER_NAME_PREFIX);
    for b in &digest[..16] {
        server_name.push_str(&format!("{b:02x}"));
    }
    let mut body = Vec::with_capacity(server_name.len() + 1 + parse.rest.len());
    body.extend_from_slice(server_name.as_bytes());
    body.push(0);
    body.extend_from_slice(parse.rest);
    Statement {
        server_name: server_name.into(),
        parse: frame(b'P', &body).into(),
    }
}

/// A Bind, Describe or Close message with the statement name replaced.
pub(crate) fn renamed(tag: u8, before: &[u8], server_name: &str, after: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(before.len() + server_name.len() + after.len());
    body.extend_from_slice(before);
    body.extend_from_slice(server_name.as_bytes());
    body.extend_from_slice(after);
    frame(tag, &body)
}

/// The header of a message of `body_len` bytes: for a Bind whose body
/// streams after its rewritten start.
pub(crate) fn header(tag: u8, body_len: usize) -> [u8; 5] {
    let len = u32::try_from(body_len + 4)
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    [tag, len[0], len[1], len[2], len[3]]
}

/// ParseComplete.
pub(crate) const PARSE_COMPLETE: [u8; 5] = [b'1', 0, 0, 0, 4];
/// CloseComplete.
pub(crate) const CLOSE_COMPLETE: [u8; 5] = [b'3', 0, 0, 0, 4];

/// A client's named statements.
#[derive(Debug, Default)]
pub(crate) struct ClientStatements {
    by_name: HashMap<Vec<u8>, Statement>,
}

impl ClientStatements {
    pub(crate) fn get(&self, name: &[u8]) -> Option<&Statement> {
        self.by_name.get(name)
    }

    pub(crate) fn insert(&mut self, name: &[u8], statement: Statement) {
        self.by_name.insert(name.to_vec(), statement);
    }

    pub(crate) fn remove(&mut self, name: &[u8]) -> Option<Statement> {
        self.by_name.remove(name)
    }
}

/// The statements one server connection holds, with their last use.
#[derive(Debug, Default)]
pub(crate) struct ServerStatements {
    held: HashMap<Arc<str>, u64>,
    tick: u64,
}

impl ServerStatements {
    /// Whether the connection holds `name`; marks it used.
    pub(crate) fn touch(&mut self, name: &Arc<str>) -> bool {
        self.tick += 1;
        match self.held.get_mut(name) {
            Some(used) => {
                *used = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared; returns the least recently used
    /// statement to close when that makes more than `cap`.
    pub(crate) fn add(&mut self, name: Arc<str>, cap: usize) -> Option<Arc<str>> {
        self.tick += 1;
        self.held.insert(name.clone(), self.tick);
        if self.held.len() <= cap {
            return None;
        }
        let oldest = self
            .held
            .iter()
            .filter(|(n, _)| **n != name)
            .min_by_key(|(_, used)| **used)
            .map(|(n, _)| n.clone())?;
        self.held.remove(&oldest);
        Some(oldest)
    }

    /// Forgets `name`: its Parse failed or was never processed.
    pub(crate) fn forget(&mut self, name: &str) {
        self.held.remove(name);
    }

    /// How many statements the connection holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }
}

/// The Close that drops `name` from a server connection.
pub(crate) fn close_statement(name: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(name.len() + 2);
    body.push(b'S');
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    frame(b'C', &body)
}

/// What completes a message the client's direction sent or answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expect {
    /// ParseComplete from the server, for the client (`statement`: what it
    /// prepares on the server).
    Parse { statement: Option<Arc<str>> },
    /// ParseComplete from the server for a Parse the pool added: not for
    /// the client.
    ParseAdded { statement: Arc<str> },
    /// ParseComplete the pool gives the client itself.
    ParseAnswered,
    /// BindComplete.
    Bind,
    /// Describe's answer (RowDescription or NoData, after a
    /// ParameterDescription for a statement).
    Describe,
    /// Execute's end (CommandComplete, EmptyQueryResponse,
    /// PortalSuspended).
    Execute,
    /// CloseComplete from the server, for the client.
    Close,
    /// CloseComplete from the server for a Close the pool added.
    CloseAdded,
    /// CloseComplete the pool gives the client itself.
    CloseAnswered,
    /// ReadyForQuery for a Sync, Query or FunctionCall.
    Ready,
}

impl Expect {
    /// Answered by the pool: no server message completes it.
    fn answered_by_pool(&self) -> bool {
        matches!(self, Expect::ParseAnswered | Expect::CloseAnswered)
    }
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deliver {
    /// Pass it to the client.
    Forward,
    /// Keep it from the client: it answers a message the pool added.
    Drop,
}

/// The completions still due, in the order the server will send them.
#[derive(Debug, Default)]
pub(crate) struct Expected {
    queue: VecDeque<Expect>,
}

impl Expected {
    pub(crate) fn push(&mut self, expect: Expect) {
        self.queue.push_back(expect);
    }

    /// Forgets everything due, keeping the queue's room.
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }

    /// Whether nothing is due.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The answers the pool gives the client now: those at the front of
    /// the queue, with nothing of the server's due before them.
    pub(crate) fn answers_due(&mut self, out: &mut Vec<u8>) {
        while let Some(front) = self.queue.front() {
            match front {
                Expect::ParseAnswered => out.extend_from_slice(&PARSE_COMPLETE),
                Expect::CloseAnswered => out.extend_from_slice(&CLOSE_COMPLETE),
                _ => return,
            }
            self.queue.pop_front();
        }
    }

    /// Matches one server message (its tag) against the queue. `forget`
    /// receives each server-side statement whose Parse the server did not
    /// carry out (an error before or at it).
    pub(crate) fn server_message(&mut self, tag: u8, mut forget: impl FnMut(&str)) -> Deliver {
        let front_is = |q: &VecDeque<Expect>, f: fn(&Expect) -> bool| q.front().is_some_and(f);
        match tag {
            b'1' => match self.queue.pop_front() {
                Some(Expect::ParseAdded { .. }) => Deliver::Drop,
                _ => Deliver::Forward,
            },
            b'2' => {
                if front_is(&self.queue, |e| *e == Expect::Bind) {
                    self.queue.pop_front();
                }
                Deliver::Forward
            }
            b'3' => match self.queue.pop_front() {
                Some(Expect::CloseAdded) => Deliver::Drop,
                _ => Deliver::Forward,
            },
            b'T' | b'n' => {
                if front_is(&self.queue, |e| *e == Expect::Describe) {
                    self.queue.pop_front();
                }
                Deliver::Forward
            }
            b'C' | b'I' | b's' => {
                if front_is(&self.queue, |e| *e == Expect::Execute) {
                    self.queue.pop_front();
                }
                Deliver::Forward
            }
            b'E' => {
                // Inside a simple Query the error is one of its messages;
                // in the extended protocol the server now skips to Sync.
                if !front_is(&self.queue, |e| *e == Expect::Ready) {
                    while let Some(front) = self.queue.front() {
                        if *front == Expect::Ready {
                            break;
                        }
                        if let Some(
                            Expect::Parse { statement: Some(s) }
                            | Expect::ParseAdded { statement: s },
                        ) = self.queue.pop_front()
                        {
                            forget(&s);
                        }
                    }
                }
                Deliver::Forward
            }
            b'Z' => {
                if front_is(&self.queue, |e| *e == Expect::Ready) {
                    self.queue.pop_front();
                }
                Deliver::Forward
            }
            _ => Deliver::Forward,
        }
    }

    /// Whether the front of the queue is an answer the pool gives.
    pub(crate) fn answer_at_front(&self) -> bool {
        self.queue.front().is_some_and(Expect::answered_by_pool)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse_body(name: &str, sql: &str) -> Vec<u8> {
        let mut b = name.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(sql.as_bytes());
        b.extend_from_slice(&[0, 0, 0]);
        b
    }

    #[test]
    fn server_names_follow_text_types_and_search_path_not_the_client_name() {
        let a = parse_body("s1", "SELECT $1");
        let b = parse_body("other", "SELECT $1");
        let c = parse_body("s1", "SELECT $1 + 1");
        let sa = statement(&parse_parse(&a).unwrap(), "public");
        let sb = statement(&parse_parse(&b).unwrap(), "public");
        let sc = statement(&parse_parse(&c).unwrap(), "public");
        let sd = statement(&parse_parse(&a).unwrap(), "app, public");
        assert_eq!(sa.server_name, sb.server_name);
        assert_ne!(sa.server_name, sc.server_name);
        assert_ne!(sa.server_name, sd.server_name);
        assert!(sa.server_name.starts_with(SERVER_NAME_PREFIX));
        assert_eq!(sa.server_name.len(), SERVER_NAME_PREFIX.len() + 32);
        // The Parse it sends carries the server name and the same text.
        let sent = &sa.parse;
        assert_eq!(sent[0], b'P');
        let p = parse_parse(&sent[5..]).unwrap();
        assert_eq!(p.name, sa.server_name.as_bytes());
        assert_eq!(p.rest, parse_parse(&a).unwrap().rest);
    }

    #[test]
    fn bind_describe_and_close_names_are_found() {
        let bind = b"portal\0s1\0\0\0\0\0\0\0";
        let (name, range) = bind_statement(bind).unwrap();
        assert_eq!(name, b"s1");
        assert_eq!(&bind[range], b"s1");
        assert_eq!(bind_statement(b"portal-without-nul"), None);
        assert_eq!(target(b"Ss1\0"), Some((b'S', &b"s1"[..])));
        assert_eq!(target(b"P\0"), Some((b'P', &b""[..])));
        assert_eq!(target(b"Ss1"), None);
    }

    #[test]
    fn the_least_recently_used_statement_is_closed_past_the_cap() {
        let mut s = ServerStatements::default();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert_eq!(s.add(a.clone(), 2), None);
        assert_eq!(s.add(b.clone(), 2), None);
        assert!(s.touch(&a));
        assert_eq!(s.add(c.clone(), 2), Some(b.clone()));
        assert!(!s.touch(&b));
        assert_eq!(s.len(), 2);
        s.forget("a");
        assert!(!s.touch(&a));
    }

    #[test]
    fn answers_keep_their_place_among_the_server_s_messages() {
        let mut q = Expected::default();
        // Parse answered by the pool, Bind, Execute, Sync.
        q.push(Expect::ParseAnswered);
        q.push(Expect::Bind);
        q.push(Expect::Execute);
        q.push(Expect::Ready);
        let mut out = Vec::new();
        q.answers_due(&mut out);
        assert_eq!(out, PARSE_COMPLETE);
        assert_eq!(q.server_message(b'2', |_| {}), Deliver::Forward);
        assert_eq!(q.server_message(b'D', |_| {}), Deliver::Forward);
        assert_eq!(q.server_message(b'C', |_| {}), Deliver::Forward);
        assert_eq!(q.server_message(b'Z', |_| {}), Deliver::Forward);
        assert!(q.is_empty());
    }

    #[test]
    fn an_added_parse_is_kept_from_the_client() {
        let mut q = Expected::default();
        q.push(Expect::ParseAdded {
            statement: "x".into(),
        });
        q.push(Expect::Bind);
        q.push(Expect::Ready);
        assert_eq!(q.server_message(b'1', |_| {}), Deliver::Drop);
        assert_eq!(q.server_message(b'2', |_| {}), Deliver::Forward);
        assert_eq!(q.server_message(b'Z', |_| {}), Deliver::Forward);
        assert!(q.is_empty());
    }

    #[test]
    fn an_error_skips_to_sync_and_forgets_parses_not_carried_out() {
        let mut q = Expected::default();
        q.push(Expect::Parse {
            statement: Some("bad".into()),
        });
        q.push(Expect::ParseAnswered);
        q.push(Expect::ParseAdded {
            statement: "later".into(),
        });
        q.push(Expect::Bind);
        q.push(Expect::Ready);
        let mut forgotten = Vec::new();
        assert_eq!(
            q.server_message(b'E', |s| forgotten.push(s.to_owned())),
            Deliver::Forward
        );
        assert_eq!(forgotten, ["bad", "later"]);
        let mut out = Vec::new();
        q.answers_due(&mut out);
        assert!(out.is_empty(), "the server skipped what followed the error");
        assert_eq!(q.server_message(b'Z', |_| {}), Deliver::Forward);
        assert!(q.is_empty());
    }

    #[test]
    fn an_error_inside_a_simple_query_waits_for_its_ready_for_query() {
        let mut q = Expected::default();
        q.push(Expect::Ready);
        assert_eq!(q.server_message(b'E', |_| {}), Deliver::Forward);
        assert!(!q.is_empty());
        assert_eq!(q.server_message(b'Z', |_| {}), Deliver::Forward);
        assert!(q.is_empty());
    }
}
