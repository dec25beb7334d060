//! Proves no private Postgres outlives the program that started it: a program owning one
//! (`learnsync-private-postgres`, which always starts its own cluster, whatever `DATABASE_URL`
//! says) is ended by SIGINT, SIGTERM and SIGHUP, caught and not caught, by SIGKILL, a panic and an
//! abort, and each time its postmaster, the postmaster's children, its watchdog and its directory
//! are gone within a bounded wait; a cluster left by a crash that took its watchdog too is removed
//! by the next program that starts one; and `learnsync-demo --keep-running` ended by SIGTERM stops
//! everything it started. Each case prints how long the cleanup took.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a cluster may take to go once its owner is ended.
const CLEANUP_LIMIT: Duration = Duration::from_secs(15);
/// How long an owner may take to start its cluster (several start at once on a busy machine).
const START_LIMIT: Duration = Duration::from_secs(60);

/// A running program that owns a private cluster.
struct Owner {
    child: Child,
    /// The program's stdout, line by line, read by a thread.
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: thread::JoinHandle<String>,
    dir: PathBuf,
    /// The postmaster and its children, seen while the cluster ran.
    postgres: Vec<u32>,
}

/// Starts an owner, told what to do once its cluster runs (`--then`).
fn start_owner(then: &str) -> Owner {
    start_owner_in(then, None)
}

/// Starts an owner whose temporary directory is `temp` (the system's when `None`).
fn start_owner_in(then: &str, temp: Option<&Path>) -> Owner {
    let mut command = Command::new(env!("CARGO_BIN_EXE_learnsync-private-postgres"));
    if let Some(temp) = temp {
        command.env("TMPDIR", temp);
    }
    let mut child = command
        .arg("--then")
        .arg(then)
        // Ignored by the program: it must start a cluster of its own for the test to mean anything.
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/not-used")
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        // Closing it tells `--then panic` and `--then abort` to go ahead.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = read_lines(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let mut owner = Owner {
        child,
        lines,
        stdout: Vec::new(),
        stderr,
        dir: PathBuf::new(),
        postgres: Vec::new(),
    };
    owner.wait_for_line("ready", START_LIMIT);
    let dir = owner
        .stdout
        .iter()
        .find_map(|line| line.strip_prefix("dir "))
        .map(PathBuf::from)
        .unwrap();
    owner.dir = dir;
    owner.check_running();
    owner
}

impl Owner {
    /// Reads stdout until a line starting with `prefix`; panics with the output on timeout.
    fn wait_for_line(&mut self, prefix: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stdout.iter().any(|line| line.starts_with(prefix)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stdout.push(line),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line {prefix:?} within {limit:?}; stdout: {:?}; stderr: {}",
                        self.stdout,
                        take_stderr(&mut self.stderr)
                    );
                }
            }
        }
    }

    /// Checks the cluster and its watchdog run, and notes the cluster's processes.
    fn check_running(&mut self) {
        assert!(
            self.dir.join("data/PG_VERSION").is_file(),
            "{}",
            self.dir.display()
        );
        let postmaster = postmaster_of(&self.dir).expect("a postmaster runs for the directory");
        assert!(is_alive(postmaster));
        self.postgres = std::iter::once(postmaster)
            .chain(children_of(postmaster))
            .collect();
        assert!(self.postgres.len() > 1, "the postmaster has children");
        let watchdogs = processes_naming(&self.dir)
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains("learnsync-pg-watchdog"))
            .count();
        assert_eq!(watchdogs, 1, "one watchdog watches {}", self.dir.display());
    }

    /// Sends `signal` to the owner, waits for it to end, and returns its exit status and how long
    /// after the signal the cluster was entirely gone.
    fn end_with(mut self, signal: &str) -> (ExitStatus, Duration, Vec<String>, String) {
        let sent = Instant::now();
        kill(self.child.id(), signal);
        let status = self.child.wait().unwrap();
        let gone_after = wait_until_gone(&self.dir, &self.postgres, sent);
        let stdout = self.rest_of_stdout();
        (status, gone_after, stdout, take_stderr(&mut self.stderr))
    }

    /// Closes the owner's stdin, which `--then panic` and `--then abort` wait for, and waits for
    /// it to end; the time is counted from the close.
    fn go_ahead_and_wait(mut self) -> (ExitStatus, Duration, Vec<String>, String) {
        let told = Instant::now();
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        let gone_after = wait_until_gone(&self.dir, &self.postgres, told);
        let stdout = self.rest_of_stdout();
        (status, gone_after, stdout, take_stderr(&mut self.stderr))
    }

    fn rest_of_stdout(&mut self) -> Vec<String> {
        let mut stdout = std::mem::take(&mut self.stdout);
        stdout.extend(self.lines.iter());
        stdout
    }
}

fn read_lines(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn read_all(mut stream: impl std::io::Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    })
}

fn take_stderr(handle: &mut thread::JoinHandle<String>) -> String {
    let handle = std::mem::replace(handle, thread::spawn(String::new));
    handle.join().unwrap_or_default()
}

fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Polls until the directory, every process naming it (postmaster, watchdog) and every process
/// of the cluster seen while it ran are gone; panics after [`CLEANUP_LIMIT`]. Returns the time
/// since `since`.
fn wait_until_gone(dir: &Path, postgres: &[u32], since: Instant) -> Duration {
    loop {
        let naming = processes_naming(dir);
        let alive: Vec<u32> = postgres
            .iter()
            .copied()
            .filter(|pid| is_alive(*pid))
            .collect();
        if !dir.exists() && naming.is_empty() && alive.is_empty() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < CLEANUP_LIMIT,
            "after {CLEANUP_LIMIT:?}: directory {} exists: {}, processes naming it: {naming:?}, \
             cluster processes alive: {alive:?}",
            dir.display(),
            dir.exists()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The processes whose command line names `dir`, with their command lines.
fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && is_alive(pid) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// The postmaster of the cluster in `dir`: the live process whose command line runs `postgres`
/// with `-D <dir>/data`.
fn postmaster_of(dir: &Path) -> Option<u32> {
    let data = format!("-D {}/data", dir.display());
    processes_naming(dir)
        .into_iter()
        .find(|(_, cmdline)| cmdline.contains(&data) && !cmdline.contains("watchdog"))
        .map(|(pid, _)| pid)
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether `pid` runs (a zombie does not).
fn is_alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields[0] != "Z")
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            && stat_fields(pid).is_some_and(|fields| fields[1] == parent.to_string())
        {
            children.push(pid);
        }
    }
    children
}

fn signal_number(signal: &str) -> i32 {
    match signal {
        "HUP" => 1,
        "INT" => 2,
        "ABRT" => 6,
        "KILL" => 9,
        "TERM" => 15,
        other => panic!("unknown signal {other}"),
    }
}

/// Starts one owner per signal at once (the starts overlap), then ends each with its signal.
fn end_owners_with_signals(
    then: &str,
    signals: &[&str],
) -> Vec<(String, ExitStatus, Duration, Vec<String>)> {
    let owners: Vec<thread::JoinHandle<Owner>> = signals
        .iter()
        .map(|_| {
            let then = then.to_string();
            thread::spawn(move || start_owner(&then))
        })
        .collect();
    let owners: Vec<Owner> = owners.into_iter().map(|h| h.join().unwrap()).collect();
    signals
        .iter()
        .zip(owners)
        .map(|(signal, owner)| {
            let (status, gone_after, stdout, stderr) = owner.end_with(signal);
            println!(
                "--then {then}, SIG{signal}: cluster and directory gone after {gone_after:.2?}"
            );
            assert!(
                gone_after < CLEANUP_LIMIT,
                "SIG{signal}: {gone_after:?}; stderr: {stderr}"
            );
            (signal.to_string(), status, gone_after, stdout)
        })
        .collect()
}

#[test]
fn signals_a_program_does_not_catch_still_remove_its_cluster() {
    // A test binary catches no signal: each of these ends it at once, and only the watchdog is left
    // to stop the cluster.
    let ended = end_owners_with_signals("sleep", &["INT", "TERM", "HUP", "KILL"]);
    for (signal, status, _, _) in ended {
        assert_eq!(
            status.signal(),
            Some(signal_number(&signal)),
            "SIG{signal}: {status}"
        );
    }
}

#[test]
fn signals_a_program_catches_stop_its_cluster_before_it_exits() {
    let ended = end_owners_with_signals("wait-for-signal", &["INT", "TERM", "HUP"]);
    for (signal, status, _, stdout) in ended {
        assert!(status.success(), "SIG{signal}: {status}");
        assert!(
            stdout.contains(&format!("SIG{signal}: stopping the private postgres")),
            "SIG{signal}: {stdout:?}"
        );
        assert!(stdout.iter().any(|line| line == "stopped"), "{stdout:?}");
    }
}

#[test]
fn a_panic_and_an_abort_remove_the_cluster() {
    for then in ["panic", "abort"] {
        let owner = start_owner(then);
        let (status, gone_after, _, stderr) = owner.go_ahead_and_wait();
        println!("--then {then}: cluster and directory gone after {gone_after:.2?}");
        match then {
            "panic" => {
                assert_eq!(status.code(), Some(101), "{status}: {stderr}");
                assert!(stderr.contains("asked to panic"), "{stderr}");
            }
            _ => assert_eq!(status.signal(), Some(signal_number("ABRT")), "{status}"),
        }
    }
}

#[test]
fn a_cluster_whose_owner_and_watchdog_died_is_removed_by_the_next_start() {
    // A temporary directory of its own: the owners of the other tests, starting meanwhile, would
    // remove the leftover first.
    let temp = std::env::temp_dir().join(format!("learnsync-leftover-test-{}", std::process::id()));
    std::fs::create_dir_all(&temp).unwrap();
    // A crash that takes the watchdog too (an out-of-memory killer, a `kill -9` of both).
    let crashed = start_owner_in("sleep", Some(&temp));
    let watchdog = processes_naming(&crashed.dir)
        .into_iter()
        .find(|(_, cmdline)| cmdline.contains("learnsync-pg-watchdog"))
        .map(|(pid, _)| pid)
        .unwrap();
    kill(watchdog, "KILL");
    let deadline = Instant::now() + CLEANUP_LIMIT;
    while is_alive(watchdog) {
        assert!(Instant::now() < deadline, "watchdog {watchdog} still runs");
        thread::sleep(Duration::from_millis(20));
    }
    let (dir, postgres) = (crashed.dir.clone(), crashed.postgres.clone());
    let mut child = crashed.child;
    kill(child.id(), "KILL");
    child.wait().unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(dir.exists(), "the crash left the directory");
    assert!(is_alive(postgres[0]), "the crash left the postmaster");

    let started = Instant::now();
    let next = start_owner_in("wait-for-signal", Some(&temp));
    let ready_after = started.elapsed();
    assert!(
        !dir.exists(),
        "the next owner removed the leftover before starting its own"
    );
    let gone_after = wait_until_gone(&dir, &postgres, started);
    println!(
        "leftover of a dead owner and watchdog: gone when the next owner was ready ({ready_after:.2?} after it started; every process of it by {gone_after:.2?})"
    );
    let (status, next_gone_after, _, stderr) = next.end_with("TERM");
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("removed a private postgres left by a program that ended")
            && stderr.contains(&*dir.to_string_lossy()),
        "the next owner says what it removed: {stderr}"
    );
    println!("the next owner's own cluster: gone {next_gone_after:.2?} after SIGTERM");
    std::fs::remove_dir(&temp).unwrap();
}

#[test]
fn the_demo_ended_by_sigterm_stops_everything_it_started() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_learnsync-demo"))
        .args([
            "--users",
            "60",
            "--enrollments",
            "300",
            "--workers",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--keep-running",
        ])
        // The demo uses DATABASE_URL when set: unset, it starts a private cluster.
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let lines = read_lines(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let mut demo = Owner {
        child,
        lines,
        stdout: Vec::new(),
        stderr,
        dir: PathBuf::new(),
        postgres: Vec::new(),
    };
    demo.wait_for_line("press ctrl-c to stop", Duration::from_secs(120));
    demo.dir = owned_cluster_dir(pid).expect("the demo owns a private cluster");
    demo.check_running();
    let (status, gone_after, stdout, stderr) = demo.end_with("TERM");
    println!(
        "learnsync-demo --keep-running, SIGTERM: cluster and directory gone after {gone_after:.2?}"
    );
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stdout
            .iter()
            .any(|line| line == "SIGTERM: stopping the server, the workers and the simulators"),
        "{stdout:?}"
    );
    assert!(
        stdout.iter().any(|line| line
            == "stopped the server, the workers, the simulators and the private postgres"),
        "{stdout:?}"
    );
}

/// The private cluster directory whose owner file names `pid`.
fn owned_cluster_dir(pid: u32) -> Option<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("learnsync-pg-"))
        })
        .find(|path| {
            std::fs::read_to_string(path.join("owner.pid"))
                .is_ok_and(|text| text.split_whitespace().next() == Some(pid.to_string().as_str()))
        })
}
