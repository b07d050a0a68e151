//! The configuration examples in README.md and docs/*.md, checked as a
//! reader would use them: every ```toml block goes through
//! `intransit check-config`, complete examples as they are and fragments
//! inside a minimal listener, with file paths pointed at real test
//! certificates.

use std::path::{Path, PathBuf};
use std::process::Command;

use regex::Regex;

use crate::support::*;

/// One ```toml block: where it is, and its text.
struct Block {
    at: String,
    text: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn toml_blocks(path: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(path).expect("reading a markdown file");
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start() == "```toml" => current = Some((i + 1, String::new())),
            None => {}
            Some(_) if line.trim_start().starts_with("```") => {
                if let Some((start, text)) = current.take() {
                    blocks.push(Block {
                        at: format!("{}:{}", path.display(), start),
                        text,
                    });
                }
            }
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(
        current.is_none(),
        "{}: a ```toml block is not closed",
        path.display()
    );
    blocks
}

/// Points every file the example names at a test certificate, key, CA or
/// CRL (a client certificate inside `[listener.upstream_tls]`, where the
/// proxy presents it to a database), and every state or log path into
/// `dir`. The benchmark docs' placeholders become numbers and paths.
fn with_fixture_paths(text: &str, dir: &Path) -> String {
    let p = pki();
    let placeholders = [
        ("PROXYPORT", "6432"),
        ("POOLPORT", "6433"),
        ("PGPORT", "5432"),
        ("SOCKDIR", "/run/postgresql"),
    ];
    let mut table = String::new();
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') && !trimmed.contains('=') {
            table = trimmed.to_owned();
        }
        let client_side = table.starts_with("[listener.upstream_tls]")
            || table.starts_with("[listener.pool.peer_tls]");
        let (cert, key) = if client_side {
            (&p.trainer.chain, &p.trainer.key)
        } else {
            (&p.server.chain, &p.server.key)
        };
        let auth_file = dir.join("userlist.txt");
        if !auth_file.exists() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&auth_file, "\"orders\" \"secret\"\n").expect("auth_file");
            std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(0o600))
                .expect("auth_file mode");
        }
        let fixtures: [(&str, PathBuf); 11] = [
            ("cert", cert.clone()),
            ("key", key.clone()),
            ("client_ca", p.ca.clone()),
            ("ca", p.ca.clone()),
            ("crl", p.crl.clone()),
            ("audit_log", dir.join("audit.jsonl")),
            ("pid_file", dir.join("intransit.pid")),
            ("state_dir", dir.join("state")),
            ("ca_dir", dir.join("ca")),
            ("auth_file", auth_file),
            // A state directory whose CA mints the pool's certificates.
            ("cert_authority", p.dir.clone()),
        ];
        let mut line = line.to_owned();
        for (name, value) in placeholders {
            line = line.replace(name, value);
        }
        for (name, path) in fixtures {
            let re = Regex::new(&format!(r#"(^|[\s{{,])({name}\s*=\s*)"[^"]*""#)).expect("regex");
            let replacement = format!("${{1}}${{2}}\"{}\"", path.display());
            line = re.replace_all(&line, replacement.as_str()).into_owned();
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A fragment placed where it belongs: top-level keys and `[admin_tls]`
/// before a minimal listener, listener tables after it.
fn in_minimal_listener(fragment: &str) -> String {
    const LISTENER: &str = "[[listener]]\nname = \"docs\"\nlisten = \"127.0.0.1:6432\"\nupstream = \"127.0.0.1:5432\"\n";
    const TLS: &str = "[listener.tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n";
    let first = fragment
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    if first.starts_with("[[listener.") || first.starts_with("[listener.") {
        let tls = if fragment.contains("[listener.tls]") {
            ""
        } else {
            TLS
        };
        format!("{LISTENER}{tls}{fragment}")
    } else {
        format!("{fragment}\n{LISTENER}{TLS}")
    }
}

fn check(text: &str, dir: &Path) -> Result<(), String> {
    let path = dir.join("intransit.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("check-config");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", stdout(&out), stderr(&out)))
    }
}

/// A policy file example: `lint` must load it (exit 0 or 1, the verdict;
/// 2 means it could not run).
fn check_policy(text: &str, dir: &Path) -> Result<(), String> {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, text).expect("write");
    let conf = dir.join("postgresql.conf");
    std::fs::write(&conf, "ssl = on\n").expect("write");
    let out = Command::new(BIN)
        .args(["lint", "--policy"])
        .arg(&policy)
        .arg(&conf)
        .output()
        .expect("lint");
    match out.status.code() {
        Some(0 | 1) => Ok(()),
        _ => Err(format!("{}{}", stdout(&out), stderr(&out))),
    }
}

#[test]
fn every_toml_example_in_the_docs_passes_check_config() {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let blocks: Vec<Block> = files.iter().flat_map(|f| toml_blocks(f)).collect();
    assert!(
        blocks.len() >= 10,
        "only {} toml blocks found",
        blocks.len()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    for block in &blocks {
        if block.text.contains("allowed_suites") {
            if let Err(e) = check_policy(&block.text, dir.path()) {
                failures.push(format!("{} (policy file):\n{e}", block.at));
            }
            continue;
        }
        let complete = block.text.lines().any(|l| l.trim() == "[[listener]]");
        let text = if complete {
            block.text.clone()
        } else {
            in_minimal_listener(&block.text)
        };
        if let Err(e) = check(&with_fixture_paths(&text, dir.path()), dir.path()) {
            failures.push(format!(
                "{} ({}):\n{e}",
                block.at,
                if complete { "complete" } else { "fragment" }
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples fail:\n\n{}",
        failures.len(),
        blocks.len(),
        failures.join("\n\n")
    );
}
