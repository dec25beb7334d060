//! What makes sure no private cluster outlives its owner: an owner file in each cluster's
//! directory, a watchdog process outside the owner's session that stops the cluster and removes
//! the directory the moment the owner is gone (whatever ended it, SIGKILL included), and a sweep,
//! at each start, of directories whose owner is dead (a watchdog that died too, a machine that
//! lost power).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::{Error, Result};

/// The prefix of every private cluster's directory in the temporary directory.
pub(super) const DIR_PREFIX: &str = "learnsync-pg-";
/// The file in a cluster's directory naming its owner: `<pid> <start time>`.
pub(super) const OWNER_FILE: &str = "owner.pid";
/// The watchdog's `$0`, so `ps` says what it is.
const WATCHDOG_NAME: &str = "learnsync-pg-watchdog";

/// The watchdog's script. It blocks reading its stdin, a pipe whose only writer is the owner: the
/// read ends when the owner closes it (a normal stop, after the directory is gone) or when the
/// kernel does (the owner ended, however). Waiting on a pipe rather than polling a pid reacts at
/// once and cannot be fooled by a reused pid. It then stops the postmaster of `$1/data` (SIGQUIT:
/// immediate shutdown, the data is thrown away), SIGKILL after 10 s, and removes `$1`.
const WATCHDOG_SCRIPT: &str = r#"dir=$1
while read -r line; do :; done
[ -d "$dir" ] || exit 0
alive() { kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }
ours() { [ ! -d /proc/self ] || tr '\000' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$dir/data"; }
pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null)
case $pid in ''|*[!0-9]*) pid= ;; esac
if [ -n "$pid" ] && alive "$pid" && ours "$pid"; then
  kill -QUIT "$pid" 2>/dev/null
  i=0
  while alive "$pid" && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
fi
rm -rf "$dir"
"#;

/// The watchdog of one cluster directory.
#[derive(Debug)]
pub(super) struct Watchdog {
    child: Child,
    /// The write end of the watchdog's stdin; closing it (or the owner ending) wakes the watchdog.
    pipe: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog of `dir` in a session of its own (`setsid`), so the signals that end
    /// the owner's process group (Ctrl-C, a closed terminal) do not end it too.
    pub(super) fn start(dir: &Path) -> Result<Watchdog> {
        let command = |program: &str| {
            let mut command = Command::new(program);
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            command
        };
        let mut detached = command("setsid");
        detached
            .arg("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg(WATCHDOG_NAME)
            .arg(dir);
        let mut child = match detached.spawn() {
            Ok(child) => child,
            // No `setsid` (macOS): a process group of its own keeps Ctrl-C away at least.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                use std::os::unix::process::CommandExt as _;
                command("sh")
                    .arg("-c")
                    .arg(WATCHDOG_SCRIPT)
                    .arg(WATCHDOG_NAME)
                    .arg(dir)
                    .process_group(0)
                    .spawn()
                    .map_err(|error| Error::Embedded(format!("watchdog: {error}")))?
            }
            Err(error) => return Err(Error::Embedded(format!("watchdog: {error}"))),
        };
        let pipe = child.stdin.take();
        Ok(Watchdog { child, pipe })
    }

    /// Lets the watchdog go once the owner has stopped the cluster and removed its directory
    /// itself: the watchdog finds nothing to do and exits, and is reaped here.
    pub(super) fn dismiss(mut self) {
        drop(self.pipe.take());
        let _ = self.child.wait();
    }
}

/// Writes the owner file of `dir`: this process's id and start time (the pair tells a live owner
/// from a dead one whose pid was reused).
pub(super) fn write_owner_file(dir: &Path) -> Result<()> {
    let pid = std::process::id();
    let start = process_start_time(pid).unwrap_or(0);
    let temporary = dir.join(format!("{OWNER_FILE}.tmp"));
    let written = std::fs::File::create(&temporary)
        .and_then(|mut file| writeln!(file, "{pid} {start}"))
        .and_then(|()| std::fs::rename(&temporary, dir.join(OWNER_FILE)));
    written.map_err(|error| Error::Embedded(format!("owner file in {}: {error}", dir.display())))
}

/// Stops and removes the private clusters in the temporary directory whose owner is dead. A
/// directory without an owner file (from a learnsync before owner files) is named, with the command
/// that removes it, but left alone: its owner may still be running.
pub(super) fn sweep_leftovers() {
    let temp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_cluster_dir = name.to_str().is_some_and(|n| n.starts_with(DIR_PREFIX))
            && entry.file_type().is_ok_and(|kind| kind.is_dir());
        if !is_cluster_dir {
            continue;
        }
        let dir = entry.path();
        match std::fs::read_to_string(dir.join(OWNER_FILE)) {
            Ok(text) => {
                let Some((pid, start)) = parse_owner(&text) else {
                    continue;
                };
                if is_alive(pid, Some(start).filter(|start| *start != 0)) {
                    continue;
                }
                match remove_cluster(&dir) {
                    Ok(()) => tracing::info!(
                        dir = %dir.display(),
                        owner_pid = pid,
                        "removed a private postgres left by a program that ended"
                    ),
                    Err(error) => tracing::warn!(
                        dir = %dir.display(),
                        %error,
                        command = %removal_command(&dir),
                        "could not remove a private postgres left by a program that ended"
                    ),
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // Just created by a starting owner, which writes its owner file at once.
                let young = std::fs::metadata(&dir)
                    .and_then(|meta| meta.modified())
                    .ok()
                    .and_then(|modified| SystemTime::now().duration_since(modified).ok())
                    .is_none_or(|age| age < Duration::from_secs(60));
                if !young {
                    tracing::warn!(
                        dir = %dir.display(),
                        command = %removal_command(&dir),
                        "a private postgres directory without an owner file (from an older learnsync): if no program uses it, remove it"
                    );
                }
            }
            Err(_) => {}
        }
    }
}

/// Stops the cluster of `dir` if it runs, then removes `dir`.
fn remove_cluster(dir: &Path) -> Result<()> {
    if let Some(pid) = postmaster_of(dir) {
        signal(pid, "QUIT");
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_alive(pid, None) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_alive(pid, None) {
            signal(pid, "KILL");
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(Error::Embedded(format!(
            "removing {}: {error}",
            dir.display()
        ))),
    }
}

/// The running postmaster of the cluster in `dir`, if any (checked against its command line where
/// `/proc` exists, so a stale `postmaster.pid` naming a reused pid is ignored).
pub(super) fn postmaster_of(dir: &Path) -> Option<u32> {
    let data = dir.join("data");
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    if !is_alive(pid, None) {
        return None;
    }
    if Path::new("/proc/self").is_dir() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(&*data.to_string_lossy()) {
            return None;
        }
    }
    Some(pid)
}

fn removal_command(dir: &Path) -> String {
    let dir = dir.display();
    format!("kill -QUIT $(head -n 1 '{dir}/data/postmaster.pid'); rm -rf '{dir}'")
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn parse_owner(text: &str) -> Option<(u32, u64)> {
    let mut fields = text.split_whitespace();
    let pid = fields.next()?.parse().ok()?;
    let start = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    Some((pid, start))
}

/// A process's start time in clock ticks since boot (`/proc/<pid>/stat`, field 22).
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields follow the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether `pid` runs (a zombie does not), and, given `start`, is the process that started then.
pub(super) fn is_alive(pid: u32, start: Option<u64>) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if Path::new("/proc/self").is_dir() {
        let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
            return false;
        };
        let Some((_, fields)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = fields.split_whitespace();
        if fields.next() == Some("Z") {
            return false;
        }
        return match start {
            Some(start) => fields.nth(18).and_then(|s| s.parse().ok()) == Some(start),
            None => true,
        };
    }
    Command::new("kill")
        .arg("-0")
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_owner_files() {
        assert_eq!(parse_owner("123 456\n"), Some((123, 456)));
        assert_eq!(parse_owner("123\n"), Some((123, 0)));
        assert_eq!(parse_owner("x 1\n"), None);
        assert_eq!(parse_owner(""), None);
    }
}
