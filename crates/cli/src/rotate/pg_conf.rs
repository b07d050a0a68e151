//! Reading the settings of a PostgreSQL server from its configuration
//! files, the way the server itself does: `postgresql.conf`, the files its
//! `include`, `include_if_exists` and `include_dir` directives name, then
//! `postgresql.auto.conf` (ALTER SYSTEM) in the data directory, later
//! settings winning. This module only reads; it never writes a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// How deep includes may nest, as in PostgreSQL (`CONF_FILE_MAX_DEPTH`).
const MAX_INCLUDE_DEPTH: usize = 10;

/// One setting and the file that set it last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub file: PathBuf,
}

/// The settings found, by lower-case name.
#[derive(Debug, Default)]
pub struct PgSettings {
    values: HashMap<String, Setting>,
}

impl PgSettings {
    /// Reads `<conf_dir>/postgresql.conf` and what it includes, then the
    /// data directory's `postgresql.auto.conf`. The data directory is the
    /// `data_directory` setting if there is one (Debian keeps configuration
    /// in /etc), otherwise `conf_dir` itself.
    pub fn load(conf_dir: &Path) -> Result<PgSettings> {
        let mut settings = PgSettings::default();
        let main = conf_dir.join("postgresql.conf");
        settings.read_file(&main, 0, true)?;
        let data_dir = settings.data_dir(conf_dir);
        settings.read_file(&data_dir.join("postgresql.auto.conf"), 0, false)?;
        Ok(settings)
    }

    /// The value of `name`, if any file sets it.
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.values.get(&name.to_ascii_lowercase())
    }

    /// The data directory: `data_directory` if set, else `conf_dir`.
    pub fn data_dir(&self, conf_dir: &Path) -> PathBuf {
        match self.get("data_directory") {
            Some(s) if !s.value.is_empty() => conf_dir.join(&s.value),
            _ => conf_dir.to_path_buf(),
        }
    }

    fn read_file(&mut self, path: &Path, depth: usize, required: bool) -> Result<()> {
        if depth > MAX_INCLUDE_DEPTH {
            bail!(
                "{}: includes nest more than {MAX_INCLUDE_DEPTH} deep",
                path.display()
            );
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                bail!(
                    "cannot read {}: permission denied; run as root or as the user that owns the data directory",
                    path.display()
                );
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", path.display()));
            }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        for (number, line) in text.lines().enumerate() {
            let Some((name, value)) = parse_line(line)
                .with_context(|| format!("{}, line {}", path.display(), number + 1))?
            else {
                continue;
            };
            match name.as_str() {
                "include" => self.read_file(&dir.join(&value), depth + 1, true)?,
                "include_if_exists" => self.read_file(&dir.join(&value), depth + 1, false)?,
                "include_dir" => {
                    let included = dir.join(&value);
                    let mut files: Vec<PathBuf> = std::fs::read_dir(&included)
                        .with_context(|| format!("reading the directory {}", included.display()))?
                        .filter_map(|entry| entry.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.extension().is_some_and(|e| e == "conf")
                                && p.file_name()
                                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
                        })
                        .collect();
                    files.sort();
                    for file in files {
                        self.read_file(&file, depth + 1, true)?;
                    }
                }
                _ => {
                    self.values.insert(
                        name,
                        Setting {
                            value,
                            file: path.to_path_buf(),
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

/// One line of postgresql.conf: `name = value`, `name value`, a comment or
/// nothing. Values are bare words or single-quoted strings in which `''`
/// and backslash escapes stand for a quote.
pub fn parse_line(line: &str) -> Result<Option<(String, String)>> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
        .unwrap_or(line.len());
    if name_end == 0 {
        bail!("expected a setting name: {line:?}");
    }
    let name = line[..name_end].to_ascii_lowercase();
    let mut rest = line[name_end..].trim_start();
    if let Some(after) = rest.strip_prefix('=') {
        rest = after.trim_start();
    }
    let value = if let Some(quoted) = rest.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = quoted.chars();
        loop {
            match chars.next() {
                None => bail!("unterminated quoted value for {name}"),
                Some('\'') => {
                    if chars.as_str().starts_with('\'') {
                        chars.next();
                        value.push('\'');
                    } else {
                        break;
                    }
                }
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some('r') => value.push('\r'),
                    Some(other) => value.push(other),
                    None => bail!("unterminated quoted value for {name}"),
                },
                Some(c) => value.push(c),
            }
        }
        let trailing = chars.as_str().trim_start();
        if !(trailing.is_empty() || trailing.starts_with('#')) {
            bail!("unexpected text after the value of {name}: {trailing:?}");
        }
        value
    } else {
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '#')
            .unwrap_or(rest.len());
        rest[..end].to_owned()
    };
    Ok(Some((name, value)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn setting(line: &str) -> Option<(String, String)> {
        parse_line(line).unwrap()
    }

    #[test]
    fn lines_parse_like_postgresql() {
        assert_eq!(setting("# comment"), None);
        assert_eq!(setting("   "), None);
        assert_eq!(
            setting("ssl_cert_file = 'server.crt'  # the cert"),
            Some(("ssl_cert_file".into(), "server.crt".into()))
        );
        assert_eq!(setting("Port 5433"), Some(("port".into(), "5433".into())));
        assert_eq!(setting("ssl=on"), Some(("ssl".into(), "on".into())));
        assert_eq!(
            setting("ssl_key_file = '/etc/o''brien/k\\'ey'"),
            Some(("ssl_key_file".into(), "/etc/o'brien/k'ey".into()))
        );
        assert!(parse_line("ssl_cert_file = 'open").is_err());
        assert!(parse_line("= 'x'").is_err());
        assert!(parse_line("a = 'x' y").is_err());
    }

    #[test]
    fn includes_and_auto_conf_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("conf.d")).unwrap();
        std::fs::write(
            d.join("postgresql.conf"),
            "ssl_cert_file = 'a.crt'\ninclude 'extra.conf'\ninclude_if_exists 'missing.conf'\ninclude_dir 'conf.d'\nport = 1\n",
        )
        .unwrap();
        std::fs::write(d.join("extra.conf"), "ssl_key_file = 'b.key'\nport = 2\n").unwrap();
        std::fs::write(d.join("conf.d/10-a.conf"), "ssl_ca_file = 'ca1'\n").unwrap();
        std::fs::write(d.join("conf.d/20-b.conf"), "ssl_ca_file = 'ca2'\n").unwrap();
        std::fs::write(
            d.join("postgresql.auto.conf"),
            "ssl_cert_file = 'auto.crt'\n",
        )
        .unwrap();
        let s = PgSettings::load(d).unwrap();
        assert_eq!(s.get("ssl_cert_file").unwrap().value, "auto.crt");
        assert_eq!(s.get("ssl_key_file").unwrap().value, "b.key");
        assert_eq!(s.get("ssl_ca_file").unwrap().value, "ca2");
        assert_eq!(s.get("port").unwrap().value, "1");
        assert_eq!(s.data_dir(d), d);
    }

    #[test]
    fn an_include_loop_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postgresql.conf"),
            "include 'postgresql.conf'\n",
        )
        .unwrap();
        assert!(PgSettings::load(dir.path()).is_err());
    }
}
