//! Named network namespaces that remove themselves, and threads that run inside them.
//!
//! A network namespace belongs to a thread, not a process: [`Netns::run`] and
//! [`Netns::spawn`] start a thread, move it into the namespace with setns(2), and run
//! the closure there. Sockets keep the namespace they were created in, so a socket
//! made inside may be used from any thread afterwards.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use crate::{cmd, LabError, Result};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A prefix unique to this process and call, so that parallel tests never share a name.
pub fn unique_prefix() -> String {
    format!(
        "klab{}x{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace created with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up. A namespace of that name
    /// can only be left over from a killed run of a process with our pid (names
    /// carry the pid): it is deleted first.
    pub fn create(name: &str) -> Result<Self> {
        if let Err(e) = cmd::run("ip", &["netns", "add", name]) {
            if !std::path::Path::new("/run/netns").join(name).exists() {
                return Err(e);
            }
            cmd::run("ip", &["netns", "del", name])?;
            cmd::run("ip", &["netns", "add", name])?;
        }
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        cmd::run("ip", &full)
    }

    /// Runs `program args...` inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        self.exec_with_input(program, args, None)
    }

    pub fn exec_with_input(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        cmd::run_with_input("ip", &full, input)
    }

    /// Sets sysctl `key` (e.g. `net.ipv4.ip_forward`) inside the namespace.
    /// `/proc/sys/net` shows the network namespace of the thread that opens it.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        self.run(|| std::fs::write(&path, value))?
            .map_err(|source| LabError::Io {
                what: format!("sysctl {key}={value} in {}", self.name),
                source,
            })
    }

    /// Reads sysctl `key` inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        let value = self
            .run(|| std::fs::read_to_string(&path))?
            .map_err(|source| LabError::Io {
                what: format!("sysctl {key} in {}", self.name),
                source,
            })?;
        Ok(value.trim().to_owned())
    }

    /// Interface index of `ifname` inside the namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let path = format!("/sys/class/net/{ifname}/ifindex");
        let text = self.exec("cat", &[&path])?;
        text.trim().parse().map_err(|_| LabError::Parse {
            command: format!("cat {path} in {}", self.name),
            detail: format!("not an interface index: {text:?}"),
        })
    }

    /// Moves the calling thread into this namespace. Only for threads made to stay there.
    pub fn enter(&self) -> Result<()> {
        enter_named(&self.name)
    }

    /// Runs `f` on a fresh thread inside the namespace and returns its result.
    /// A panic in `f` is re-raised in the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            let handle = s.spawn(|| -> Result<T> {
                self.enter()?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// `GET path` from `127.0.0.1:port` inside the namespace (an agent's /metrics,
    /// /healthz, /readyz): the status code and the body, or `None` when nothing answers.
    pub fn http_get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let path = path.to_owned();
        self.run(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            let status = text.split_whitespace().nth(1)?.parse().ok()?;
            Some((status, text.split_once("\r\n\r\n")?.1.to_owned()))
        })
        .ok()
        .flatten()
    }

    /// Starts a thread inside the namespace running `f`.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<JoinHandle<Result<T>>> {
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || -> Result<T> {
                enter_named(&name)?;
                Ok(f())
            })
            .map_err(|source| LabError::Io {
                what: format!("spawning a thread for {}", self.name),
                source,
            })
    }
}

/// `net.ipv4.ip_forward` -> `/proc/sys/net/ipv4/ip_forward`.
fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Moves the calling thread into the namespace `/run/netns/<name>`.
fn enter_named(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).map_err(|source| LabError::Netns {
        netns: name.to_owned(),
        what: "open",
        source,
    })?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| LabError::Netns {
        netns: name.to_owned(),
        what: "setns",
        source: e.into(),
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the interfaces in it, and their veth peers.
        if let Err(e) = cmd::run("ip", &["netns", "del", &self.name]) {
            eprintln!("xdp-lab: cleanup: {e}");
        }
    }
}
