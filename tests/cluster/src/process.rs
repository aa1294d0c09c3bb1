//! Child processes that never outlive the test binary.
//!
//! A control plane shared by the tests of one binary lives in a `static`, which Rust
//! never drops. Two things stop its processes and files from leaking: every child is
//! spawned by one thread that lives as long as the process, with `PR_SET_PDEATHSIG`
//! (the kernel kills the child when that thread dies, even on SIGKILL of the test
//! binary); and an `atexit` handler stops the children and removes the registered
//! directories when the test binary exits normally or after failed tests.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

struct Registry {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    dirs: Vec::new(),
});

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("kubelvs-test-cluster-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_parent_death_signal(&mut cmd));
                }
                // The sender lives in a static: this thread never gets here, so
                // PR_SET_PDEATHSIG fires only when the whole process goes away.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the control plane's spawner thread");
        // SAFETY: registering a plain `extern "C" fn` with no captured state.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
        Mutex::new(tx)
    })
}

#[allow(unsafe_code)]
fn spawn_with_parent_death_signal(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns `cmd` so that it dies with the test binary; its pid is registered for
/// the exit handler.
pub(crate) fn spawn(cmd: Command) -> std::io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap()
        .send((cmd, tx))
        .expect("spawner thread is gone");
    let child = rx.recv().expect("spawner thread is gone")?;
    REGISTRY.lock().unwrap().pids.push(child.id());
    Ok(child)
}

/// Removes `dir` (recursively) when the test binary exits.
pub(crate) fn remove_at_exit(dir: PathBuf) {
    let _ = spawner();
    REGISTRY.lock().unwrap().dirs.push(dir);
}

/// Stops a child politely (SIGTERM), then SIGKILL after `grace`.
pub(crate) fn stop(child: &mut Child, grace: Duration) {
    terminate(child.id() as i32, grace);
    let _ = child.wait();
    REGISTRY.lock().unwrap().pids.retain(|p| *p != child.id());
}

#[allow(unsafe_code)]
fn terminate(pid: i32, grace: Duration) {
    // SAFETY: kill(2) and waitpid(2) on a pid this process spawned.
    unsafe {
        if libc::kill(pid, libc::SIGTERM) != 0 {
            return;
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            let mut status = 0;
            if libc::waitpid(pid, &mut status, libc::WNOHANG) == pid {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
}

extern "C" fn cleanup_at_exit() {
    let Ok(mut reg) = REGISTRY.lock() else { return };
    // Stop in reverse start order: controller-manager, apiserver, then etcd.
    for pid in reg.pids.drain(..).rev() {
        terminate(pid as i32, Duration::from_secs(3));
    }
    for dir in reg.dirs.drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}
