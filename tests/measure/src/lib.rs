//! What the benchmarks read off a running process: CPU time and memory from /proc, and
//! a sample from its Prometheus `/metrics` text; and how tests wait for a condition.
//! No dependencies, so a microVM guest can use it as well as a host bench.

/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on every Linux we run).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds of `pid` so far (0 when it cannot be read).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / TICKS_PER_SECOND
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`), in KiB (0 when unreadable).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// The value of the first sample in Prometheus text whose line starts with `prefix`
/// (a name, or a name with the start of its labels) and contains `label`.
pub fn sample(text: &str, prefix: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Polls `f` every 50 ms until it gives a value; panics naming `what` once `limit`
/// has passed without one.
pub fn eventually<T>(
    limit: std::time::Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A scale bench's size from its command line: `N M` (flags like cargo's `--bench`
/// are skipped), `default` where absent or not a number.
pub fn bench_size(default: (usize, usize)) -> (usize, usize) {
    let [n, m] = bench_args([default.0, default.1]);
    (n, m)
}

/// A bench's numeric arguments, in order (flags like cargo's `--bench` are skipped),
/// each `default` where absent or not a number.
pub fn bench_args<const K: usize>(default: [usize; K]) -> [usize; K] {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    std::array::from_fn(|i| {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default[i])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_prometheus_text() {
        assert!(rss_kib(std::process::id()) > 0);
        assert!(status_kib(std::process::id(), "VmHWM") >= rss_kib(std::process::id()) / 2);
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {}
        assert!(cpu_seconds(std::process::id()) > 0.0);
        assert_eq!(rss_kib(u32::MAX), 0);
        let text = "# HELP a_total x\na_total{k=\"1\"} 3\na_total{k=\"2\"} 4.5\nb 7\n";
        assert_eq!(sample(text, "a_total", "k=\"2\""), Some(4.5));
        assert_eq!(sample(text, "a_total{", ""), Some(3.0));
        assert_eq!(sample(text, "b", ""), Some(7.0));
        assert_eq!(sample(text, "c", ""), None);
    }
}
