//! The client outside the node: a network namespace on the node's bridge, and the
//! traffic it sends to a VIP (python3 inside the namespace).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{BRIDGE, CLIENT_IP, CLIENT_NETNS};

/// The client's network namespace, on the node's bridge; removed on drop.
pub struct Client;

impl Client {
    pub fn create() -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", CLIENT_NETNS])
            .stderr(Stdio::null())
            .status();
        for args in [
            vec!["netns", "add", CLIENT_NETNS],
            vec![
                "link",
                "add",
                "klvs-cl0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                CLIENT_NETNS,
            ],
            vec!["link", "set", "klvs-cl0", "master", BRIDGE, "up"],
            vec![
                "-n",
                CLIENT_NETNS,
                "addr",
                "add",
                &format!("{CLIENT_IP}/24"),
                "dev",
                "eth0",
            ],
            vec!["-n", CLIENT_NETNS, "link", "set", "eth0", "up"],
            vec!["-n", CLIENT_NETNS, "link", "set", "lo", "up"],
            vec![
                "-n",
                CLIENT_NETNS,
                "route",
                "add",
                "default",
                "via",
                "192.168.77.1",
            ],
        ] {
            let ok = Command::new("ip").args(&args).status().unwrap().success();
            assert!(ok, "ip {args:?}");
        }
        Self
    }

    /// One HTTP request on a new connection: the answering Pod's name.
    pub fn get(&self, url: &str) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", CLIENT_NETNS, "curl", "-sS", "-m", "3", url])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", CLIENT_NETNS])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", "klvs-cl0"])
            .stderr(Stdio::null())
            .status();
    }
}

/// Traffic from the client, in a child process inside its namespace (python3):
/// `loop` makes one request after another, each on a new connection, until told to
/// stop; `hold` opens connections, keeps them idle until told to go on, then makes one
/// request on each. Each prints one line per request: `ok <pod>` or `fail <why>`.
const TRAFFIC_PY: &str = r#"
import os, socket, sys, time
mode, vip, ctl = sys.argv[1], sys.argv[2], sys.argv[3]
def request(s):
    s.sendall(b"GET / HTTP/1.0\r\nHost: lb\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        raise Exception("bad answer: %r" % head[:60])
    return body.decode().strip()
if mode == "loop":
    while not os.path.exists(ctl):
        try:
            s = socket.create_connection((vip, 80), timeout=3)
            print("ok", request(s), flush=True)
            s.close()
        except Exception as e:
            print("fail", repr(e), flush=True)
        time.sleep(0.02)
else:
    conns = []
    for i in range(int(sys.argv[4])):
        conns.append(socket.create_connection((vip, 80), timeout=5))
    print("open", len(conns), flush=True)
    while not os.path.exists(ctl):
        time.sleep(0.05)
    for s in conns:
        try:
            print("ok", request(s), flush=True)
        except Exception as e:
            print("fail", repr(e), flush=True)
"#;

pub struct Traffic {
    child: Child,
    out: PathBuf,
    ctl: PathBuf,
}

impl Traffic {
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Self {
        let script = dir.join("traffic.py");
        std::fs::write(&script, TRAFFIC_PY).unwrap();
        let out = dir.join(format!("{name}.out"));
        let ctl = dir.join(format!("{name}.go"));
        let _ = std::fs::remove_file(&ctl);
        let child = Command::new("ip")
            .args(["netns", "exec", CLIENT_NETNS, "python3", "-u"])
            .arg(&script)
            .arg(args[0])
            .arg(args[1])
            .arg(&ctl)
            .args(&args[2..])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self { child, out, ctl }
    }

    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Signals the script and waits for it: every line it printed.
    pub fn finish(mut self) -> Vec<String> {
        std::fs::write(&self.ctl, "").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the client's traffic did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.lines()
    }
}

/// The lines of `lines` that are failures.
pub fn failures(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| !l.starts_with("ok ")).collect()
}
