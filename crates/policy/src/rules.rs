//! Identity allow-lists and identity-to-database-user mapping.
//!
//! These are pure functions over a [`ClientIdentity`]: no I/O, no TLS. The
//! proxy asks two questions, in this order: may this certificate connect at
//! all ([`AllowList::permits`]), and may it log in as the database user it
//! asked for ([`DbUserRules::permits`]).

use std::fmt;

use regex::Regex;

use crate::identity::{ClientIdentity, IdentityKind, IdentityName};
use crate::PolicyError;

/// A pattern over one kind of identity name: `dns:*.ml.internal`.
///
/// `*` matches any run of characters except the kind's separator: `.` for
/// `dns:` names and `/` for `uri:` names, so `dns:*.ml.internal` does not
/// match `a.b.ml.internal` and `uri:spiffe://prod/*` does not match
/// `spiffe://prod/team/job`. `**` matches across separators. `cn:` and
/// `spki:` patterns have no separator. DNS names compare case-insensitively,
/// everything else exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPattern {
    kind: IdentityKind,
    pattern: String,
}

impl IdentityPattern {
    /// Parses `kind:pattern`. The kind is one of `cn`, `dns`, `uri`, `spki`.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let Some((prefix, pattern)) = text.split_once(':') else {
            return Err(PolicyError::Pattern {
                pattern: text.to_owned(),
                reason: "expected KIND:PATTERN, where KIND is cn, dns, uri or spki".into(),
            });
        };
        let Some(kind) = IdentityKind::from_prefix(prefix) else {
            return Err(PolicyError::Pattern {
                pattern: text.to_owned(),
                reason: format!("unknown identity kind {prefix:?}; use cn, dns, uri or spki"),
            });
        };
        if pattern.is_empty() {
            return Err(PolicyError::Pattern {
                pattern: text.to_owned(),
                reason: "the pattern after the kind is empty".into(),
            });
        }
        let pattern = if kind == IdentityKind::Dns {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_owned()
        };
        Ok(IdentityPattern { kind, pattern })
    }

    /// Whether one name matches this pattern.
    pub fn matches_name(&self, name: &IdentityName) -> bool {
        if name.kind != self.kind {
            return false;
        }
        let separator = match self.kind {
            IdentityKind::Dns => Some(b'.'),
            IdentityKind::Uri => Some(b'/'),
            IdentityKind::Cn | IdentityKind::Spki => None,
        };
        if self.kind == IdentityKind::Dns {
            glob_match(
                self.pattern.as_bytes(),
                name.value.to_ascii_lowercase().as_bytes(),
                separator,
            )
        } else {
            glob_match(self.pattern.as_bytes(), name.value.as_bytes(), separator)
        }
    }

    /// The first name of `identity` this pattern matches.
    pub fn matches(&self, identity: &ClientIdentity) -> Option<IdentityName> {
        identity.names().into_iter().find(|n| self.matches_name(n))
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.prefix(), self.pattern)
    }
}

/// Glob matching with `*` (not across `separator`) and `**` (across anything).
fn glob_match(pattern: &[u8], text: &[u8], separator: Option<u8>) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => {
            let (crosses, rest) = match rest.split_first() {
                Some((b'*', after)) => (true, after),
                _ => (separator.is_none(), rest),
            };
            // Try every possible length for the starred run, shortest first.
            for skip in 0..=text.len() {
                if glob_match(rest, &text[skip..], separator) {
                    return true;
                }
                if skip < text.len() && !crosses && Some(text[skip]) == separator {
                    return false;
                }
            }
            false
        }
        Some((&c, rest)) => match text.split_first() {
            Some((&t, text_rest)) if t == c => glob_match(rest, text_rest, separator),
            _ => false,
        },
    }
}

/// Which certificate identities may connect to a listener.
///
/// An empty list admits every certificate that the trust anchors accept.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    patterns: Vec<IdentityPattern>,
}

impl AllowList {
    /// Builds an allow-list from parsed patterns.
    pub fn new(patterns: Vec<IdentityPattern>) -> Self {
        AllowList { patterns }
    }

    /// Whether the list names anybody (an empty list admits all).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns, in configuration order.
    pub fn patterns(&self) -> &[IdentityPattern] {
        &self.patterns
    }

    /// Returns the pattern and name that admitted `identity`, or `None` when
    /// the list is non-empty and nothing matches. An empty list admits with
    /// no pattern.
    pub fn permits(&self, identity: &ClientIdentity) -> AllowDecision {
        if self.patterns.is_empty() {
            return AllowDecision::Open;
        }
        for pattern in &self.patterns {
            if let Some(name) = pattern.matches(identity) {
                return AllowDecision::Matched {
                    pattern: pattern.clone(),
                    name,
                };
            }
        }
        AllowDecision::Denied
    }
}

/// The answer of [`AllowList::permits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowDecision {
    /// The list is empty: every trusted certificate is admitted.
    Open,
    /// A pattern admitted the certificate through one of its names.
    Matched {
        /// The pattern that matched.
        pattern: IdentityPattern,
        /// The certificate name it matched.
        name: IdentityName,
    },
    /// The list is non-empty and no pattern matched.
    Denied,
}

impl AllowDecision {
    /// Whether the connection may proceed.
    pub fn is_allowed(&self) -> bool {
        !matches!(self, AllowDecision::Denied)
    }
}

/// One `[[listener.db_users]]` rule.
#[derive(Debug, Clone)]
pub enum DbUserRule {
    /// `identity = "uri:..."`, `users = ["a", "b"]`: identities matching the
    /// pattern may log in as any of the listed users (`"*"` means any user).
    Listed {
        /// Which identities the rule applies to.
        identity: IdentityPattern,
        /// The users they may log in as.
        users: Vec<String>,
    },
    /// `identity_regex = "^cn:(.+)$"`, `user = "\\1"`: like a `pg_ident.conf`
    /// regular-expression line. The regex is matched against each identity
    /// name written as `kind:value`; `\1` to `\9` in `user` are replaced by
    /// the captures. The regex is not anchored implicitly: write `^` and `$`.
    Regex {
        /// The expression over `kind:value` names.
        identity_regex: Regex,
        /// The user template.
        user: String,
    },
}

impl DbUserRule {
    /// Builds a regex rule, checking that every `\N` in the template refers
    /// to a capture group that exists.
    pub fn regex(identity_regex: &str, user: &str) -> Result<Self, PolicyError> {
        let re = Regex::new(identity_regex).map_err(|e| PolicyError::Regex {
            regex: identity_regex.to_owned(),
            reason: e.to_string(),
        })?;
        let groups = re.captures_len() - 1;
        let bytes = user.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\\' {
                if let Some(d) = bytes.get(i + 1).filter(|d| d.is_ascii_digit()) {
                    let n = usize::from(d - b'0');
                    if n == 0 || n > groups {
                        return Err(PolicyError::Regex {
                            regex: identity_regex.to_owned(),
                            reason: format!(
                                "the user template {user:?} refers to \\{n}, but the expression has {groups} capture group(s)"
                            ),
                        });
                    }
                }
            }
        }
        Ok(DbUserRule::Regex {
            identity_regex: re,
            user: user.to_owned(),
        })
    }

    fn permits(&self, identity: &ClientIdentity, user: &str) -> bool {
        match self {
            DbUserRule::Listed {
                identity: pattern,
                users,
            } => pattern.matches(identity).is_some() && users.iter().any(|u| u == "*" || u == user),
            DbUserRule::Regex {
                identity_regex,
                user: template,
            } => identity.names().iter().any(|name| {
                let text = name.to_string();
                identity_regex
                    .captures(&text)
                    .is_some_and(|caps| expand_template(template, &caps) == user)
            }),
        }
    }
}

fn expand_template(template: &str, caps: &regex::Captures<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                chars.next();
                if let Some(m) = caps.get(d as usize) {
                    out.push_str(m.as_str());
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Which identities may log in as which database users.
///
/// No rules at all means the mapping is not enforced (any user); once one
/// rule exists, a login is allowed only when some rule permits it.
#[derive(Debug, Clone, Default)]
pub struct DbUserRules {
    rules: Vec<DbUserRule>,
}

impl DbUserRules {
    /// Builds the rule set.
    pub fn new(rules: Vec<DbUserRule>) -> Self {
        DbUserRules { rules }
    }

    /// Whether no rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `identity` may log in as `user`. `identity` is `None` when the
    /// client presented no certificate (client_auth optional or none); then
    /// only an empty rule set permits.
    pub fn permits(&self, identity: Option<&ClientIdentity>, user: &str) -> bool {
        if self.rules.is_empty() {
            return true;
        }
        let Some(identity) = identity else {
            return false;
        };
        self.rules.iter().any(|r| r.permits(identity, user))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn identity(cn: &str, dns: &[&str], uris: &[&str]) -> ClientIdentity {
        ClientIdentity {
            common_name: Some(cn.into()),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            uris: uris.iter().map(|s| s.to_string()).collect(),
            spki_pin: "sha256/AAAA".into(),
        }
    }

    #[test]
    fn dns_star_matches_one_label_only() {
        let p = IdentityPattern::parse("dns:*.ml.internal").unwrap();
        assert!(p.matches(&identity("x", &["a.ml.internal"], &[])).is_some());
        assert!(p.matches(&identity("x", &["A.ML.Internal"], &[])).is_some());
        assert!(p
            .matches(&identity("x", &["a.b.ml.internal"], &[]))
            .is_none());
        assert!(p.matches(&identity("x", &["ml.internal"], &[])).is_none());
        let deep = IdentityPattern::parse("dns:**.ml.internal").unwrap();
        assert!(deep
            .matches(&identity("x", &["a.b.ml.internal"], &[]))
            .is_some());
    }

    #[test]
    fn uri_star_stops_at_slash() {
        let p = IdentityPattern::parse("uri:spiffe://prod/*").unwrap();
        assert!(p
            .matches(&identity("x", &[], &["spiffe://prod/trainer"]))
            .is_some());
        assert!(p
            .matches(&identity("x", &[], &["spiffe://prod/team/job"]))
            .is_none());
        assert!(p
            .matches(&identity("x", &[], &["spiffe://staging/trainer"]))
            .is_none());
    }

    #[test]
    fn cn_is_exact_and_case_sensitive() {
        let p = IdentityPattern::parse("cn:reporting").unwrap();
        assert!(p.matches(&identity("reporting", &[], &[])).is_some());
        assert!(p.matches(&identity("Reporting", &[], &[])).is_none());
        assert!(p.matches(&identity("reporting2", &[], &[])).is_none());
        let any = IdentityPattern::parse("cn:*").unwrap();
        assert!(any.matches(&identity("a/b.c", &[], &[])).is_some());
    }

    #[test]
    fn kinds_do_not_cross() {
        let p = IdentityPattern::parse("cn:db.internal").unwrap();
        assert!(p.matches(&identity("x", &["db.internal"], &[])).is_none());
    }

    #[test]
    fn bad_patterns_are_explained() {
        for bad in ["reporting", "ip:1.2.3.4", "cn:"] {
            let err = IdentityPattern::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad) || err.contains("empty"), "{err}");
        }
    }

    #[test]
    fn allow_list_decisions() {
        let list = AllowList::new(vec![
            IdentityPattern::parse("uri:spiffe://prod/trainer").unwrap(),
            IdentityPattern::parse("cn:reporting").unwrap(),
        ]);
        assert!(list
            .permits(&identity("x", &[], &["spiffe://prod/trainer"]))
            .is_allowed());
        assert!(list.permits(&identity("reporting", &[], &[])).is_allowed());
        assert_eq!(
            list.permits(&identity("intruder", &[], &[])),
            AllowDecision::Denied
        );
        assert_eq!(
            AllowList::default().permits(&identity("anyone", &[], &[])),
            AllowDecision::Open
        );
    }

    #[test]
    fn listed_db_users() {
        let rules = DbUserRules::new(vec![DbUserRule::Listed {
            identity: IdentityPattern::parse("uri:spiffe://prod/trainer").unwrap(),
            users: vec!["trainer".into(), "readonly".into()],
        }]);
        let trainer = identity("t", &[], &["spiffe://prod/trainer"]);
        assert!(rules.permits(Some(&trainer), "trainer"));
        assert!(rules.permits(Some(&trainer), "readonly"));
        assert!(!rules.permits(Some(&trainer), "postgres"));
        assert!(!rules.permits(Some(&identity("t", &[], &[])), "trainer"));
        assert!(!rules.permits(None, "trainer"));
        assert!(DbUserRules::default().permits(None, "anyone"));
    }

    #[test]
    fn regex_db_users_use_captures() {
        let rules = DbUserRules::new(vec![DbUserRule::regex("^cn:(.+)$", "\\1").unwrap()]);
        assert!(rules.permits(Some(&identity("alice", &[], &[])), "alice"));
        assert!(!rules.permits(Some(&identity("alice", &[], &[])), "bob"));
        let spiffe = DbUserRules::new(vec![DbUserRule::regex(
            "^uri:spiffe://prod/svc/([a-z]+)$",
            "svc_\\1",
        )
        .unwrap()]);
        let id = identity("x", &[], &["spiffe://prod/svc/orders"]);
        assert!(spiffe.permits(Some(&id), "svc_orders"));
        assert!(!spiffe.permits(Some(&id), "orders"));
    }

    #[test]
    fn regex_template_must_refer_to_existing_groups() {
        let err = DbUserRule::regex("^cn:.+$", "\\1").unwrap_err().to_string();
        assert!(err.contains("0 capture group"), "{err}");
        assert!(DbUserRule::regex("(", "x").is_err());
    }
}
