//! pg_hba.conf: which lines let a client in without TLS, without a
//! client certificate, or without authenticating at all.

use crate::finding::{Finding, Requirement, Status};
use crate::lint::is_loopback_address;
use crate::policy::Policy;

/// One connection rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaLine {
    /// 1-based line.
    pub line: usize,
    /// `local`, `host`, `hostssl`, `hostnossl`, `hostgssenc`, `hostnogssenc`.
    pub kind: String,
    /// The address field (`None` for `local`).
    pub address: Option<String>,
    /// The authentication method.
    pub method: String,
    /// `name=value` options after the method.
    pub options: Vec<String>,
}

/// Parses pg_hba.conf lines (fields separated by blanks, `#` comments,
/// double quotes). Include directives and lines it cannot read are
/// returned as line numbers to report.
pub fn parse(text: &str) -> (Vec<HbaLine>, Vec<usize>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let fields = fields(raw);
        let Some(kind) = fields.first() else { continue };
        let kind = kind.to_ascii_lowercase();
        let (address, method_at) = match kind.as_str() {
            "local" => (None, 3),
            "host" | "hostssl" | "hostnossl" | "hostgssenc" | "hostnogssenc" => {
                // An address with a separate mask takes two fields.
                let addr = fields.get(3).cloned();
                let mask = fields
                    .get(4)
                    .filter(|f| f.parse::<std::net::IpAddr>().is_ok());
                match (addr, mask) {
                    (Some(a), Some(m)) => (Some(format!("{a}/{}", mask_bits(m))), 5),
                    (a, None) => (a, 4),
                    (None, Some(_)) => (None, 4),
                }
            }
            _ => {
                skipped.push(line);
                continue;
            }
        };
        let Some(method) = fields.get(method_at) else {
            skipped.push(line);
            continue;
        };
        out.push(HbaLine {
            line,
            kind,
            address,
            method: method.to_ascii_lowercase(),
            options: fields[method_at + 1..].to_vec(),
        });
    }
    (out, skipped)
}

fn fields(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_field = false;
    for c in raw.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_field = true;
            }
            '#' if !quoted => break,
            c if c.is_whitespace() && !quoted => {
                if in_field {
                    out.push(std::mem::take(&mut cur));
                    in_field = false;
                }
            }
            c => {
                cur.push(c);
                in_field = true;
            }
        }
    }
    if in_field {
        out.push(cur);
    }
    out
}

fn mask_bits(mask: &str) -> u32 {
    match mask.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => u32::from(v4).count_ones(),
        Ok(std::net::IpAddr::V6(v6)) => u128::from(v6).count_ones(),
        Err(_) => 0,
    }
}

/// Lints a pg_hba.conf.
pub fn lint(file: &str, text: &str, policy: &Policy) -> Vec<Finding> {
    let (lines, skipped) = parse(text);
    let mut out = Vec::new();
    for line in skipped {
        out.push(Finding::at_line(
            Requirement::NoPlaintext,
            Status::Warn,
            file,
            Some(line),
            "line not understood (or an include directive, which lint does not follow); check it by hand",
        ));
    }
    let mut plaintext_lines = 0;
    let mut cert_gaps = 0;
    let mut trust_lines = 0;
    for l in &lines {
        if l.kind == "local" || l.method == "reject" {
            continue;
        }
        let address = l.address.as_deref().unwrap_or("");
        let remote = !is_loopback_address(address);
        let where_ = format!("{} {} {}", l.kind, address, l.method);
        if l.method == "trust" && remote {
            trust_lines += 1;
            out.push(Finding::at_line(
                Requirement::NoTrust,
                Status::Fail,
                file,
                Some(l.line),
                format!("{where_}: anyone who can reach the server logs in without a password or certificate"),
            ));
        }
        // `host` matches with or without TLS; GSSAPI encryption is not TLS
        // but is encryption, so `hostgssenc` does not count as plaintext.
        let plaintext = matches!(l.kind.as_str(), "host" | "hostnossl" | "hostnogssenc");
        if plaintext && policy.no_plaintext && remote {
            plaintext_lines += 1;
            out.push(Finding::at_line(
                Requirement::NoPlaintext,
                Status::Fail,
                file,
                Some(l.line),
                format!(
                    "{where_}: `{}` matches connections without TLS from {address}; use hostssl (and `host ... reject` for the rest)",
                    l.kind
                ),
            ));
        }
        if policy.require_client_cert && remote && (l.kind == "hostssl" || plaintext) {
            let verify_full = l.method == "cert"
                || l.options
                    .iter()
                    .any(|o| o.eq_ignore_ascii_case("clientcert=verify-full"));
            let verify_ca = l
                .options
                .iter()
                .any(|o| o.eq_ignore_ascii_case("clientcert=verify-ca") || o == "clientcert=1");
            if !verify_full {
                cert_gaps += 1;
                out.push(Finding::at_line(
                    Requirement::ClientCertificate,
                    if verify_ca { Status::Warn } else { Status::Fail },
                    file,
                    Some(l.line),
                    if verify_ca {
                        format!("{where_}: clientcert=verify-ca checks the chain but not that the certificate names the user; prefer clientcert=verify-full or `cert`")
                    } else {
                        format!("{where_}: no client certificate is demanded; add clientcert=verify-full or use the `cert` method")
                    },
                ));
            }
        }
    }
    if policy.no_plaintext && plaintext_lines == 0 {
        out.push(Finding::at_line(
            Requirement::NoPlaintext,
            Status::Pass,
            file,
            None,
            "no rule admits a remote client without TLS",
        ));
    }
    if policy.require_client_cert && cert_gaps == 0 {
        out.push(Finding::at_line(
            Requirement::ClientCertificate,
            Status::Pass,
            file,
            None,
            "every remote rule demands a verified client certificate",
        ));
    }
    if trust_lines == 0 {
        out.push(Finding::at_line(
            Requirement::NoTrust,
            Status::Pass,
            file,
            None,
            "no remote rule uses trust",
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const WEAK: &str = "\
# TYPE  DATABASE USER ADDRESS        METHOD
local   all      all                 peer
host    all      all  127.0.0.1/32   scram-sha-256
host    all      all  10.0.0.0/8     scram-sha-256
hostssl all      all  0.0.0.0/0      scram-sha-256
hostssl all      all  192.168.0.0 255.255.0.0 trust
hostssl all      all  ::/0           scram-sha-256 clientcert=verify-full
host    all      all  0.0.0.0/0      reject
";

    #[test]
    fn each_weakness_is_found_on_its_line() {
        let p = Policy::preset("hipaa").unwrap();
        let f = lint("pg_hba.conf", WEAK, &p);
        let failing = |req: Requirement| -> Vec<usize> {
            f.iter()
                .filter(|x| x.requirement == req && x.status == Status::Fail)
                .filter_map(|x| x.location.line)
                .collect()
        };
        assert_eq!(failing(Requirement::NoPlaintext), vec![4]);
        assert_eq!(failing(Requirement::NoTrust), vec![6]);
        assert_eq!(failing(Requirement::ClientCertificate), vec![4, 5, 6]);
    }

    #[test]
    fn a_strict_file_passes() {
        let p = Policy::preset("hipaa").unwrap();
        let strict = "local all all peer\nhost all all 127.0.0.1/32 scram-sha-256\nhostssl all all 0.0.0.0/0 cert\nhost all all 0.0.0.0/0 reject\n";
        let f = lint("pg_hba.conf", strict, &p);
        assert!(f.iter().all(|x| x.status == Status::Pass), "{f:#?}");
    }

    #[test]
    fn masks_and_quotes_parse() {
        let (l, skipped) =
            parse("host \"my db\" all 192.168.0.0 255.255.0.0 md5\ninclude other.conf\n");
        assert_eq!(l[0].address.as_deref(), Some("192.168.0.0/16"));
        assert_eq!(l[0].method, "md5");
        assert_eq!(skipped, vec![2]);
    }
}
