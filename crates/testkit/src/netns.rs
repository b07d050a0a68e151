//! Several hosts on one machine: network namespaces joined by a bridge,
//! for tests that need distinct addresses (instances behind a load
//! balancer). Everything is created by the test and removed when the
//! [`Subnet`] is dropped; nothing touches the machine's own interfaces.
//!
//! The root namespace holds the bridge with the first address of the
//! subnet, so processes in it (a load balancer, the test itself) reach
//! every host. Unix sockets live in the file system, which namespaces do
//! not separate: a process in a host namespace still reaches the test
//! PostgreSQL's socket.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::tools::require_tool;

/// A bridge in the root namespace and `hosts` namespaces on it.
#[derive(Debug)]
pub struct Subnet {
    tag: String,
    third_octet: u8,
    hosts: usize,
}

impl Subnet {
    /// Creates the bridge `itb<tag>` with 10.213.N.1/24 and namespaces
    /// `itn<tag>-1`.. with 10.213.N.11, .12, ... (N picked from the
    /// process id, so parallel test binaries do not meet). Needs root and
    /// the `ip` command (iproute2).
    pub fn create(hosts: usize) -> Result<Subnet> {
        require_tool("ip", "iproute2")?;
        if hosts == 0 || hosts > 200 {
            bail!("a subnet holds 1 to 200 hosts, not {hosts}");
        }
        let pid = std::process::id();
        let subnet = Subnet {
            tag: format!("{}", pid % 100_000),
            third_octet: (pid % 200 + 20) as u8,
            hosts,
        };
        // Leftovers of an earlier run with the same tag (a killed test).
        subnet.remove();
        subnet.build().with_context(|| {
            "creating network namespaces (needs root: tests run as root in CI)".to_owned()
        })?;
        Ok(subnet)
    }

    fn build(&self) -> Result<()> {
        let bridge = self.bridge();
        ip(["link", "add", &bridge, "type", "bridge"])?;
        ip([
            "addr",
            "add",
            &format!("{}/24", self.gateway()),
            "dev",
            &bridge,
        ])?;
        ip(["link", "set", &bridge, "up"])?;
        for i in 1..=self.hosts {
            let ns = self.namespace(i);
            let (outer, inner) = (
                format!("itv{}-{i}", self.tag),
                format!("itw{}-{i}", self.tag),
            );
            ip(["netns", "add", &ns])?;
            ip([
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(["link", "set", &inner, "netns", &ns])?;
            ip(["link", "set", &outer, "master", &bridge])?;
            ip(["link", "set", &outer, "up"])?;
            ip([
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.host(i)),
                "dev",
                &inner,
            ])?;
            ip(["-n", &ns, "link", "set", &inner, "up"])?;
            ip(["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// The address of host `i` (1-based).
    pub fn host(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.third_octet, 10 + i as u8)
    }

    /// The bridge's address, in the root namespace.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.third_octet, 1)
    }

    /// The name of host `i`'s namespace, for `ip netns exec NAME`.
    pub fn namespace(&self, i: usize) -> String {
        format!("itn{}-{i}", self.tag)
    }

    /// The command prefix that runs a program in host `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec![
            "ip".to_owned(),
            "netns".to_owned(),
            "exec".to_owned(),
            self.namespace(i),
        ]
    }

    fn bridge(&self) -> String {
        format!("itb{}", self.tag)
    }

    fn remove(&self) {
        for i in 1..=self.hosts {
            let _ = quiet_ip(["netns", "del", &self.namespace(i)]);
            let _ = quiet_ip(["link", "del", &format!("itv{}-{i}", self.tag)]);
        }
        let _ = quiet_ip(["link", "del", &self.bridge()]);
    }
}

impl Drop for Subnet {
    fn drop(&mut self) {
        self.remove();
    }
}

fn ip<I, S>(args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let out = Command::new("ip")
        .args(&args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        let shown: Vec<_> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        bail!(
            "ip {}: {}",
            shown.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn quiet_ip<const N: usize>(args: [&str; N]) -> Result<()> {
    Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running ip")?;
    Ok(())
}
