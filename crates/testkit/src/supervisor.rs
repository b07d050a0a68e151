//! Stops a test server and removes its directory once the test process is
//! gone, however it went.
//!
//! A server shared by a whole test binary lives in a `static`, and Rust never
//! drops statics, so cleanup cannot rely on `Drop`. Nor can it rely on
//! `PR_SET_PDEATHSIG`, which fires when the spawning *thread* exits, and test
//! threads exit all the time. Instead a small shell process, the supervisor,
//! is started before anything is written to the directory. It reads its
//! standard input, whose write end only the test process holds (Rust opens
//! pipes close-on-exec, so no other child inherits it). The kernel closes
//! that end when the test process exits, panics, aborts or is killed; the
//! supervisor's read then returns end-of-file, and it stops the postmaster
//! with an immediate shutdown and removes the directory.
//!
//! The supervisor must never end for any other reason: it ignores the
//! signals a terminal or a test harness sends to a process group, and it
//! runs in a process group of its own.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{Context, Result};

/// The supervisor program, run by `/bin/sh` with the directory to remove as
/// `$1`. Each line `postmaster <pid>` on standard input names the process to
/// stop; a later line replaces an earlier one, which is how a start-up retry
/// on a new port hands over.
///
/// "Running" excludes zombies: while the test process is alive the
/// postmaster is its unreaped child, and a zombie has already released every
/// file and port, so waiting for it to be reaped would only stall.
const SCRIPT: &str = r#"
root=$1
trap '' HUP INT QUIT TERM
postmaster=
while read -r verb pid; do
    if [ "$verb" = postmaster ]; then
        postmaster=$pid
    fi
done

running() {
    if [ -d /proc/self ]; then
        [ -r "/proc/$1/stat" ] && read -r _ _ state _ < "/proc/$1/stat" && [ "$state" != Z ]
    else
        kill -0 "$1"
    fi
} 2>/dev/null

if [ -n "$postmaster" ] && running "$postmaster"; then
    kill -QUIT "$postmaster" 2>/dev/null
    tries=0
    while running "$postmaster" && [ "$tries" -lt 300 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    if running "$postmaster"; then
        kill -KILL "$postmaster" 2>/dev/null
        sleep 1
    fi
fi
rm -rf -- "$root"
"#;

/// The running supervisor of one server directory.
#[derive(Debug)]
pub(crate) struct Supervisor {
    process: Child,
    /// Closing this is the only way to make the supervisor act.
    stdin: Option<ChildStdin>,
}

impl Supervisor {
    /// Starts a supervisor that will remove `root` once this process exits
    /// or [`Supervisor::stop`] is called.
    pub(crate) fn spawn(root: &Path) -> Result<Supervisor> {
        let mut process = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("intransit-testkit-supervisor")
            .arg(root)
            .current_dir("/")
            .stdin(Stdio::piped())
            // Inheriting the test's stdout or stderr would keep a harness that
            // reads them until end-of-file (cargo-nextest) waiting for the
            // supervisor, which outlives the test process by design.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the server supervisor with /bin/sh")?;
        let stdin = process.stdin.take();
        Ok(Supervisor { process, stdin })
    }

    /// Tells the supervisor which process to stop: the postmaster `pid`.
    pub(crate) fn watch(&mut self, pid: u32) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the server supervisor was already stopped")?;
        writeln!(stdin, "postmaster {pid}")
            .and_then(|()| stdin.flush())
            .context("telling the server supervisor the postmaster's process id")
    }

    /// Stops the watched postmaster, removes the directory, and waits until
    /// both are done. Does nothing the second time.
    pub(crate) fn stop(&mut self) {
        if self.stdin.take().is_some() {
            // The supervisor's exit status carries no information: it has
            // done all it can by the time it exits.
            let _ = self.process.wait();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}
