//! The packages as an administrator installs them. The Debian package is
//! built by `packaging/build-deb` from the binary this test suite already
//! built, its contents and conffiles are read with dpkg-deb, its unit is
//! checked with `systemd-analyze verify`, and it is installed with dpkg on
//! this machine (the tests run as root in CI), used as the shipped
//! configuration says, then removed and purged, leaving nothing behind.
//! The Python wheel is built with maturin from the same build and installed
//! in a fresh venv.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

use crate::support::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The target directory and the cargo profile the tested binary comes
/// from, so packaging reuses that build instead of making another.
fn build_of_binary() -> (PathBuf, String) {
    let profile_dir = Path::new(BIN).parent().expect("the binary's directory");
    let target = profile_dir.parent().expect("the target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(other) => other.to_owned(),
        None => panic!("unexpected binary path {BIN}"),
    };
    (target.to_owned(), profile)
}

/// Runs `command`, failing the test with `hint` when its program is not
/// installed.
fn output(command: &mut Command, hint: &str) -> Output {
    match command.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{:?} is not installed: {hint}", command.get_program())
        }
        Err(e) => panic!("running {command:?}: {e}"),
    }
}

/// Runs `command` and returns its stdout, failing the test unless it
/// succeeds.
fn succeed(command: &mut Command, hint: &str) -> String {
    let out = output(command, hint);
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

const DEB_HINT: &str = "run .ci/install-deps.sh (cargo install --locked cargo-deb; apt-get install dpkg-dev systemd adduser)";

/// Purges the package when the test ends, however it ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "intransit"]).output();
    }
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_debian_package_installs_a_service_that_is_configured_as_shipped_and_purges_clean() {
    let uid = succeed(Command::new("id").arg("-u"), "coreutils");
    assert_eq!(
        uid.trim(),
        "0",
        "installing the package needs root (the CI runs the tests as root)"
    );
    let installed = Command::new("dpkg")
        .args(["-s", "intransit"])
        .output()
        .expect("running dpkg");
    assert!(
        !installed.status.success() && !user_exists("intransit"),
        "a package or user named intransit already exists on this machine; this test installs \
         and purges its own (dpkg --purge intransit to remove it first)"
    );

    // Build the package from the binary under test, stripped (as a
    // release build is) so compressing it stays quick.
    let (target_dir, _) = build_of_binary();
    let out = TempDir::new().expect("temp dir");
    succeed(
        Command::new(repo_root().join("packaging/build-deb"))
            .args(["--binary", BIN, "--fast", "--strip"])
            .arg("--output")
            .arg(out.path())
            .env("CARGO_TARGET_DIR", &target_dir),
        DEB_HINT,
    );
    let deb = std::fs::read_dir(out.path())
        .expect("listing the output")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb in the output directory");

    // What it holds.
    let contents = succeed(Command::new("dpkg-deb").arg("-c").arg(&deb), DEB_HINT);
    for path in [
        "./usr/bin/intransit",
        "./etc/intransit/intransit.toml",
        "./usr/lib/systemd/system/intransit.service",
        "./usr/share/man/man1/intransit.1.gz",
        "./usr/share/man/man1/intransit-proxy.1.gz",
        "./usr/share/man/man1/intransit-cert-issue.1.gz",
        "./usr/share/bash-completion/completions/intransit",
        "./usr/share/zsh/vendor-completions/_intransit",
        "./usr/share/fish/vendor_completions.d/intransit.fish",
        "./usr/share/doc/intransit/copyright",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(&format!(" {path}"))),
            "{path} is not in the package:\n{contents}"
        );
    }
    let conffiles = succeed(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"),
        DEB_HINT,
    );
    assert_eq!(conffiles.trim(), "/etc/intransit/intransit.toml");
    let fields = succeed(
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .args(["Package", "Version", "Depends", "Section"]),
        DEB_HINT,
    );
    assert!(fields.contains("Package: intransit\n"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{fields}"
    );
    assert!(fields.contains("Section: net"), "{fields}");
    let depends = fields
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends: {fields}"));
    assert!(
        depends.contains("adduser") && depends.contains("libc6"),
        "{depends}"
    );

    // Install it.
    let guard = Installed;
    succeed(Command::new("dpkg").arg("-i").arg(&deb), DEB_HINT);
    let version = succeed(Command::new("/usr/bin/intransit").arg("--version"), "");
    assert_eq!(
        version,
        succeed(Command::new(BIN).arg("--version"), ""),
        "the installed binary is not the one under test"
    );
    assert_eq!(
        version.trim(),
        format!("intransit {}", env!("CARGO_PKG_VERSION"))
    );

    // The unit, where systemd looks for it, valid by systemd's own check.
    let listed = succeed(Command::new("dpkg").args(["-L", "intransit"]), DEB_HINT);
    let unit = "/usr/lib/systemd/system/intransit.service";
    assert!(listed.lines().any(|l| l == unit), "{listed}");
    let verify = output(
        Command::new("systemd-analyze").args(["verify", unit]),
        DEB_HINT,
    );
    assert!(
        verify.status.success() && !stderr(&verify).contains("intransit"),
        "systemd-analyze verify {unit}: {}\n{}",
        verify.status,
        stderr(&verify)
    );
    let unit_text = std::fs::read_to_string(unit).expect("reading the unit");
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/intransit proxy /etc/intransit/intransit.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=intransit",
        "StateDirectory=intransit",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
    ] {
        assert!(
            unit_text.lines().any(|l| l == line),
            "{line} missing:\n{unit_text}"
        );
    }
    // systemd's own score of the sandbox: 0 is the most confined, 10 the
    // least; under 2 it calls a unit's exposure "OK".
    let security = succeed(
        Command::new("systemd-analyze").args(["security", "--offline=yes", unit]),
        DEB_HINT,
    );
    let exposure: f64 = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for intransit.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{security}"));
    assert!(exposure < 2.0, "exposure {exposure}:\n{security}");

    // The service's user and state directory, made by the postinst.
    let passwd = succeed(Command::new("getent").args(["passwd", "intransit"]), "");
    assert!(passwd.contains(":/var/lib/intransit:"), "{passwd}");
    assert!(passwd.trim_end().ends_with("nologin"), "{passwd}");
    let uid: u32 = passwd
        .split(':')
        .nth(2)
        .and_then(|u| u.parse().ok())
        .expect("uid");
    let state = std::fs::metadata("/var/lib/intransit").expect("the state directory");
    assert_eq!(state.uid(), uid);
    assert_eq!(state.mode() & 0o777, 0o750);

    // Manual pages and completions generated from the binary.
    let page = succeed(
        Command::new("zcat").arg("/usr/share/man/man1/intransit-proxy.1.gz"),
        "gzip",
    );
    assert!(page.contains(".TH intransit-proxy 1"), "{page}");
    let complete = succeed(
        Command::new("bash").args([
            "-c",
            "source /usr/share/bash-completion/completions/intransit && complete -p intransit",
        ]),
        "bash",
    );
    assert!(complete.contains("intransit"), "{complete}");

    // The shipped configuration parses, and names the certificates its
    // comments say how to make; made that way, it passes check-config.
    let config = "/etc/intransit/intransit.toml";
    let check = output(
        Command::new("/usr/bin/intransit").args(["check-config", config]),
        "",
    );
    assert!(!check.status.success());
    assert!(
        stderr(&check).contains("/var/lib/intransit/certs/server/chain.pem"),
        "{}",
        stderr(&check)
    );
    let as_service_user = |args: &[&str]| {
        succeed(
            Command::new("runuser")
                .args(["-u", "intransit", "--", "/usr/bin/intransit"])
                .args(args)
                .current_dir("/"),
            "util-linux",
        )
    };
    as_service_user(&["ca", "init", "--state-dir", "/var/lib/intransit"]);
    as_service_user(&[
        "cert",
        "issue",
        "server",
        "--state-dir",
        "/var/lib/intransit",
        "--name",
        "server",
        "--dns",
        "db.example.com",
    ]);
    let checked = succeed(
        Command::new("/usr/bin/intransit").args(["check-config", config]),
        "",
    );
    assert!(checked.starts_with(&format!("{config}: OK")), "{checked}");
    assert!(checked.contains("listener \"postgres\""), "{checked}");

    // Remove keeps the conffile and the user; purge takes everything.
    succeed(Command::new("dpkg").args(["-r", "intransit"]), DEB_HINT);
    assert!(!Path::new("/usr/bin/intransit").exists());
    assert!(!Path::new(unit).exists());
    assert!(Path::new(config).exists(), "dpkg -r removed the conffile");
    succeed(
        Command::new("dpkg").args(["--purge", "intransit"]),
        DEB_HINT,
    );
    drop(guard);
    for gone in ["/etc/intransit", "/var/lib/intransit"] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
    assert!(
        !user_exists("intransit"),
        "the intransit user is left after purge"
    );
}

#[test]
fn the_python_wheel_puts_intransit_on_path_in_a_fresh_venv() {
    let hint =
        "run .ci/install-deps.sh (python3 -m pip install maturin; apt-get install python3-venv)";
    let (target_dir, profile) = build_of_binary();
    let out = TempDir::new().expect("temp dir");
    let wheels = out.path().join("wheels");
    // maturin moves the binary it packs out of cargo's output directory
    // and back while it writes the wheel, which would take the binary away
    // from the tests running beside this one. Its cargo (`$CARGO`) is
    // wrapped so that cargo's report of the binary names a hard link
    // instead; cargo itself finds the build fresh and builds nothing.
    let packed = out.path().join("intransit");
    std::fs::hard_link(BIN, &packed)
        .or_else(|_| std::fs::copy(BIN, &packed).map(drop))
        .expect("linking the binary");
    let cargo = out.path().join("cargo");
    std::fs::write(
        &cargo,
        format!(
            "#!/usr/bin/env bash\nset -o pipefail\n\"$REAL_CARGO\" \"$@\" | sed 's#\"{bin}\"#\"{packed}\"#g'\n",
            bin = BIN,
            packed = packed.display()
        ),
    )
    .expect("writing the cargo wrapper");
    std::fs::set_permissions(&cargo, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    succeed(
        Command::new("maturin")
            .args(["build", "--quiet", "--profile", &profile])
            .arg("--out")
            .arg(&wheels)
            .current_dir(repo_root())
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("CARGO", &cargo)
            .env("REAL_CARGO", option_env!("CARGO").unwrap_or("cargo")),
        hint,
    );
    assert!(packed.exists(), "maturin did not put the binary back");
    let wheel = std::fs::read_dir(&wheels)
        .expect("listing the wheels")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("a wheel");
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("intransit-{}-", env!("CARGO_PKG_VERSION"))),
        "{name}"
    );

    let venv = out.path().join("venv");
    succeed(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        hint,
    );
    succeed(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--no-index",
                "--disable-pip-version-check",
            ])
            .arg(&wheel),
        hint,
    );
    let intransit = venv.join("bin/intransit");
    let version = succeed(Command::new(&intransit).arg("--version"), hint);
    assert_eq!(
        version.trim(),
        format!("intransit {}", env!("CARGO_PKG_VERSION"))
    );
    // On the venv's PATH, as `pip install intransit` leaves it.
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let help = succeed(
        Command::new("sh")
            .args(["-c", "command -v intransit && intransit up --help"])
            .env("PATH", path),
        hint,
    );
    assert!(
        help.starts_with(&format!("{}\n", intransit.display())),
        "{help}"
    );
    assert!(help.contains("--listen"), "{help}");
    assert!(help.contains("--upstream"), "{help}");
}

/// Sets the kernel's memory-deny-write-execute (`PR_SET_MDWE`, what
/// `MemoryDenyWriteExecute=yes` in the unit asks for), proves that it
/// holds by failing to map a writable and executable page, and execs the
/// command given.
const DENY_WRITE_EXECUTE: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_MDWE) failed (errno %d): this kernel lacks it (Linux 6.3+)" % ctypes.get_errno())
PROT_RWX, MAP_PRIVATE_ANONYMOUS = 7, 0x22
if libc.mmap(None, 4096, PROT_RWX, MAP_PRIVATE_ANONYMOUS, -1, 0) != ctypes.c_void_p(-1).value:
    sys.exit("PR_SET_MDWE is set but a writable and executable page was mapped")
os.execv(sys.argv[1], sys.argv[1:])
"#;

#[test]
fn tls_handshakes_work_where_no_page_may_be_writable_and_executable() {
    // The in-process server has the proxy's TLS settings; every
    // configuration (TLS 1.3, resumption, client certificates, X25519,
    // X25519MLKEM768) runs aws-lc-rs on both sides.
    let out = output(
        Command::new("python3")
            .args(["-c", DENY_WRITE_EXECUTE, BIN])
            .args([
                "bench",
                "handshake",
                "--self",
                "--count",
                "3",
                "--format",
                "json",
            ]),
        "apt-get install python3",
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON report");
    let runs = report["runs"].as_array().expect("runs");
    let ok: Vec<&str> = runs
        .iter()
        .filter(|r| r["status"] == "ok" && r["operations"] == 3)
        .filter_map(|r| r["configuration"].as_str())
        .collect();
    for configuration in [
        "tls1.3",
        "tls1.3-resumed",
        "tls1.3-client-cert",
        "x25519mlkem768",
    ] {
        assert!(ok.contains(&configuration), "{configuration}: {report:#}");
    }
}
