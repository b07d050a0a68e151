//! What the command line says about itself outside `--help`: shell
//! completion scripts and manual pages, both generated from the clap
//! definitions in `cli.rs`, so they cannot drift from the parser.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Prints the completion script for `shell`.
pub fn completions(shell: Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "intransit", &mut script);
    write_stdout(&script)
}

/// Prints the manual page of `intransit`, or of one of its commands, as
/// roff.
pub fn man(command: Option<&str>) -> Result<()> {
    write_stdout(&render_man(command)?)
}

/// Writes the manual page of `intransit` and of every command and
/// subcommand into `dir` (created if missing), one `NAME.1` file each, and
/// returns how many pages the directory then holds.
pub fn write_man_pages(dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing manual pages to {}", dir.display()))?;
    let pages = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "1"))
        .count();
    Ok(pages)
}

fn render_man(command: Option<&str>) -> Result<Vec<u8>> {
    let mut top = Cli::command();
    // Building gives each command its display name (intransit-proxy), the
    // title of its page.
    top.build();
    let page = match command {
        None => top,
        Some(name) => top.find_subcommand(name).cloned().with_context(|| {
            let commands = Cli::command();
            let names: Vec<&str> = commands.get_subcommands().map(|c| c.get_name()).collect();
            format!("no command {name:?}; the commands are {}", names.join(", "))
        })?,
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut roff)
        .context("rendering the manual page")?;
    Ok(roff)
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_manual_page_lists_every_command() {
        // roff writes a hyphen as "\-".
        let page = String::from_utf8(render_man(None).unwrap())
            .unwrap()
            .replace("\\-", "-");
        assert!(
            page.starts_with(".ie") || page.contains("\n.TH intransit 1"),
            "{page}"
        );
        for command in Cli::command().get_subcommands() {
            assert!(page.contains(command.get_name()), "{}", command.get_name());
        }
    }

    #[test]
    fn every_command_and_subcommand_gets_a_page_file() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_man_pages(dir.path()).unwrap();
        for name in ["intransit.1", "intransit-proxy.1", "intransit-ca-init.1"] {
            let page = std::fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(page.contains(".TH "), "{name}: {page}");
        }
        assert!(pages > Cli::command().get_subcommands().count(), "{pages}");
    }

    #[test]
    fn each_command_has_a_page_of_its_own() {
        let page = String::from_utf8(render_man(Some("proxy")).unwrap()).unwrap();
        assert!(page.contains(".TH intransit-proxy 1"), "{page}");
        assert!(page.contains("docs/configuration.md"), "{page}");
        let err = render_man(Some("nope")).unwrap_err().to_string();
        assert!(err.contains("check-config"), "{err}");
    }
}
