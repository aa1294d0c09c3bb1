//! Boots the microVM with `qemu-system-x86_64 -accel tcg` and collects the
//! guest's results from the serial console.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cpio::Archive;
use crate::image::{self, BaseImage, ImageError, GUEST_BIN};
use crate::protocol::{parse_line, Event};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("starting qemu-system-x86_64: {0}")]
    Qemu(std::io::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How to boot one VM run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Passed to the guest binary as `kubelvs.mode=` on the kernel command line.
    pub mode: String,
    /// The whole run, boot included; the VM is killed when it passes.
    pub timeout: Duration,
    pub memory_mib: u32,
    pub cpus: u32,
    /// qemu `-cpu` model. `max` gives the guest RDRAND, so its CRNG (and Rust's
    /// HashMap seeding) is ready at once.
    pub cpu: String,
    /// More executables for the guest: (path in the guest, path on the host). They
    /// are stripped, and their shared libraries come along.
    pub extra: Vec<(String, PathBuf)>,
    /// Print the console to stdout as it comes (a person is watching).
    pub echo: bool,
}

/// What one VM run produced.
#[derive(Debug)]
pub struct VmOutcome {
    pub events: Vec<Event>,
    pub console: String,
    pub console_log: PathBuf,
    pub elapsed: Duration,
    /// From qemu start to the first console line the guest binary printed.
    pub boot_time: Option<Duration>,
    pub timed_out: bool,
}

impl VmOutcome {
    pub fn passed(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Pass { case, .. } => Some(case.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn failures(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Fail { case, reason } => Some(format!("{case}: {reason}")),
                _ => None,
            })
            .collect()
    }

    pub fn measure(&self, name: &str) -> Option<f64> {
        self.events.iter().find_map(|e| match e {
            Event::Measure { name: n, value, .. } if n == name => Some(*value),
            _ => None,
        })
    }

    pub fn ended(&self) -> bool {
        self.events.iter().any(|e| matches!(e, Event::End { .. }))
    }

    /// Every reason this run is not a success: failures, missing cases, no end marker, timeout.
    pub fn problems(&self, expected_cases: &[&str]) -> Vec<String> {
        let mut problems = self.failures();
        let passed = self.passed();
        for case in expected_cases {
            if !passed.contains(case)
                && !problems.iter().any(|p| p.starts_with(&format!("{case}:")))
            {
                problems.push(format!("{case}: no result on the console"));
            }
        }
        if self.timed_out {
            problems.push(format!("timed out after {:?}", self.elapsed));
        } else if !self.ended() {
            problems.push("the guest never printed its END line".to_owned());
        }
        if let Some(status) = self.events.iter().find_map(|e| match e {
            Event::Exit { status } => Some(*status),
            _ => None,
        }) {
            if status != 0 {
                problems.push(format!("guest binary exited with status {status}"));
            }
        }
        problems
    }
}

/// Kills qemu if the host test fails or panics mid-run.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `target/ipvs-vm`, derived from where cargo put the guest binary
/// (`target/<profile>/<name>`), so every target dir gets its own cache.
pub fn cache_root(guest_bin: &Path) -> PathBuf {
    guest_bin
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .join("ipvs-vm")
}

/// Builds (or reuses) the image, adds `guest_bin`, boots, and collects the results.
pub fn run(guest_bin: &Path, config: &VmConfig) -> Result<VmOutcome, VmError> {
    let root = cache_root(guest_bin);
    fs::create_dir_all(&root).map_err(|source| VmError::Io {
        path: root.clone(),
        source,
    })?;
    let base = image::base_image(&root)?;
    let run_dir = root.join(format!("run-{}-{}", config.mode, std::process::id()));
    fs::create_dir_all(&run_dir).map_err(|source| VmError::Io {
        path: run_dir.clone(),
        source,
    })?;
    let initrd = run_dir.join("initrd.cpio");
    write_initrd(&base, guest_bin, &config.extra, &run_dir, &initrd)?;
    let console_log = root.join(format!("console-{}.log", config.mode));
    let outcome = boot(&base, &initrd, config, &console_log);
    let _ = fs::remove_dir_all(&run_dir);
    outcome
}

/// The cached base archive followed by a second archive with the guest binary
/// (stripped: debug info would make the initramfs, and so the boot, much slower).
fn write_initrd(
    base: &BaseImage,
    guest_bin: &Path,
    extra: &[(String, PathBuf)],
    run_dir: &Path,
    initrd: &Path,
) -> Result<(), VmError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| VmError::Io { path, source }
    };
    let mut archive = Archive::new();
    let mut libraries = BTreeSet::new();
    let bins =
        std::iter::once((GUEST_BIN.to_owned(), guest_bin.to_owned())).chain(extra.iter().cloned());
    for (i, (guest_path, host_bin)) in bins.enumerate() {
        let stripped = run_dir.join(format!("bin{i}"));
        let strip_ok = Command::new("strip")
            .arg("-o")
            .arg(&stripped)
            .arg(&host_bin)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let bin = if strip_ok {
            stripped.as_path()
        } else {
            host_bin.as_path()
        };
        let data = fs::read(bin).map_err(io(bin))?;
        archive.file(&guest_path, 0o755, &data);
        for (guest, host) in image::shared_libraries(&host_bin, run_dir)? {
            if !base.libraries.contains(&guest) && libraries.insert(guest.clone()) {
                let lib = fs::read(&host).map_err(io(&host))?;
                archive.file(&guest, 0o755, &lib);
            }
        }
    }
    let mut out = fs::read(&base.initrd).map_err(io(&base.initrd))?;
    out.extend_from_slice(&archive.finish());
    fs::write(initrd, out).map_err(io(initrd))
}

fn boot(
    base: &BaseImage,
    initrd: &Path,
    config: &VmConfig,
    console_log: &Path,
) -> Result<VmOutcome, VmError> {
    let append = format!(
        "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init kubelvs.mode={}",
        config.mode
    );
    let start = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .args(["-m", &config.memory_mib.to_string()])
        .args(["-smp", &config.cpus.to_string()])
        .arg("-kernel")
        .arg(&base.kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(VmError::Qemu)?;
    let mut child = KillOnDrop(child);
    let stdout = child
        .0
        .stdout
        .take()
        .ok_or_else(|| VmError::Qemu(std::io::Error::other("qemu stdout was not captured")))?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        // Raw bytes: the console may carry partial or non-UTF-8 output.
        while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                break;
            }
            buf.clear();
        }
    });

    let mut log = fs::File::create(console_log).map_err(|source| VmError::Io {
        path: console_log.to_owned(),
        source,
    })?;
    let mut console = String::new();
    let mut events = Vec::new();
    let mut boot_time = None;
    let mut timed_out = false;
    loop {
        let left = config.timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = log.write_all(line.as_bytes());
                if config.echo {
                    print!("{line}");
                    let _ = std::io::stdout().flush();
                }
                console.push_str(&line);
                if let Some(event) = parse_line(&line) {
                    boot_time.get_or_insert_with(|| start.elapsed());
                    events.push(event);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            // qemu exited (the guest powered off) and the console is drained.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let elapsed = start.elapsed();
    drop(child);
    let _ = reader.join();
    Ok(VmOutcome {
        events,
        console,
        console_log: console_log.to_owned(),
        elapsed,
        boot_time,
        timed_out,
    })
}

/// The `kube-lvs-agent` binary of the same build as `guest` (built when missing or
/// stale: cargo builds only this package's binaries for its tests and benches), for
/// `VmConfig::extra`.
pub fn agent_binary(guest: &Path) -> PathBuf {
    let dir = guest.parent().expect("the guest binary's directory");
    let mut build = std::process::Command::new(env!("CARGO"));
    build.args(["build", "-p", "kubelvs-agent", "--bin", "kube-lvs-agent"]);
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build for the agent");
    assert!(status.success(), "cargo build -p kubelvs-agent failed");
    dir.join("kube-lvs-agent")
}
