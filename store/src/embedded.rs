//! A private PostgreSQL cluster, created in a temporary directory from the machine's PostgreSQL
//! binaries, for the demo and the tests when `DATABASE_URL` is unset. PostgreSQL refuses to run as
//! root, so when the process is root the cluster runs as the `postgres` user (or `nobody`).
//!
//! No cluster outlives the process that started it (see [`cleanup`]): dropping the handle stops
//! it, a watchdog stops it when the process ends without dropping it (a signal, SIGKILL, an abort,
//! a handle in a `static`), and each start removes the clusters of owners that are gone.

mod cleanup;

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Result};

use cleanup::Watchdog;

/// A running private cluster. Dropping it stops the cluster and removes its directory; if this
/// process ends first, however it ends, its watchdog does both.
#[derive(Debug)]
pub struct PrivatePostgres {
    /// The cluster's directory: `data/`, the socket, the log and the owner file.
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    /// The uid and gid PostgreSQL runs as, when this process is root.
    owner: Option<(u32, u32)>,
    /// Stops the cluster if this process ends without dropping the handle.
    watchdog: Option<Watchdog>,
}

impl PrivatePostgres {
    /// Creates and starts a cluster on a free loopback port, after removing the clusters that
    /// programs which ended left behind. It always starts its own cluster: it never reads
    /// `DATABASE_URL` (callers decide whether to use one).
    pub fn start() -> Result<PrivatePostgres> {
        PrivatePostgres::start_with(None)
    }

    /// Like [`PrivatePostgres::start`], with TLS on (`ssl=on`), serving the PEM certificate
    /// chain and key given (for tests of `sslmode`). Plain connections are still admitted.
    pub fn start_with_tls(certificate_pem: &str, key_pem: &str) -> Result<PrivatePostgres> {
        PrivatePostgres::start_with(Some(ServerTls {
            certificate_pem,
            key_pem,
        }))
    }

    fn start_with(tls: Option<ServerTls<'_>>) -> Result<PrivatePostgres> {
        cleanup::sweep_leftovers();
        let bindir = find_bindir()?;
        let owner = unprivileged_owner()?;
        let dir = tempfile::Builder::new()
            .prefix(cleanup::DIR_PREFIX)
            .tempdir()
            .map_err(|error| Error::Embedded(format!("temporary directory: {error}")))?
            .keep();
        // From here on the handle owns the directory: any error below drops it, which removes it.
        let mut cluster = PrivatePostgres {
            watchdog: None,
            dir,
            bindir,
            port: 0,
            owner,
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&cluster.dir, Some(uid), Some(gid)).map_err(|error| {
                Error::Embedded(format!("chown {}: {error}", cluster.dir.display()))
            })?;
        }
        cleanup::write_owner_file(&cluster.dir)?;
        cluster.watchdog = Some(Watchdog::start(&cluster.dir)?);
        cluster.initialize_and_start(tls)?;
        Ok(cluster)
    }

    /// Runs `initdb`, then starts the postmaster on a free port (another process may take the
    /// port between the probe and the start: up to three tries).
    fn initialize_and_start(&mut self, tls: Option<ServerTls<'_>>) -> Result<()> {
        let data = self.dir.join("data");
        run(
            Command::new(self.bindir.join("initdb"))
                .args([
                    "--auth=trust",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .arg("-D")
                .arg(&data),
            self.owner,
            &self.dir,
        )?;
        if let Some(tls) = &tls {
            tls.install(&data, self.owner)?;
        }
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=400 -c shared_buffers=128MB{}",
                self.dir.display(),
                if tls.is_some() { " -c ssl=on" } else { "" },
            );
            let started = run(
                Command::new(self.bindir.join("pg_ctl"))
                    .args(["start", "-w", "-t", "60", "-D"])
                    .arg(&data)
                    .arg("-l")
                    .arg(self.dir.join("postgres.log"))
                    .arg("-o")
                    .arg(options),
                self.owner,
                &self.dir,
            );
            match started {
                Ok(()) => {
                    self.port = port;
                    tracing::info!(port, dir = %self.dir.display(), "private postgres started");
                    return Ok(());
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Embedded("could not start".into())))
    }

    /// The URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The URL of another database of the cluster.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The cluster's directory (its data directory is `data/` inside).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The postmaster's process id (for measuring the cluster's CPU time in benchmarks).
    pub fn postmaster_pid(&self) -> Option<u32> {
        cleanup::postmaster_of(&self.dir)
    }
}

/// The certificate and key a cluster serves TLS with.
struct ServerTls<'a> {
    certificate_pem: &'a str,
    key_pem: &'a str,
}

impl ServerTls<'_> {
    /// Writes `server.crt` and `server.key` (the names `ssl=on` reads) into the data directory,
    /// owned by the user PostgreSQL runs as: it refuses a key others can read.
    fn install(&self, data: &Path, owner: Option<(u32, u32)>) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        for (name, contents) in [
            ("server.crt", self.certificate_pem),
            ("server.key", self.key_pem),
        ] {
            let path = data.join(name);
            let written = std::fs::write(&path, contents)
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                })
                .and_then(|()| match owner {
                    Some((uid, gid)) => std::os::unix::fs::chown(&path, Some(uid), Some(gid)),
                    None => Ok(()),
                });
            written.map_err(|error| Error::Embedded(format!("{}: {error}", path.display())))?;
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Immediate shutdown: the data is thrown away, so there is nothing to checkpoint.
        let data = self.dir.join("data");
        if data.join("postmaster.pid").exists() {
            let stopped = run(
                Command::new(self.bindir.join("pg_ctl"))
                    .args(["stop", "-m", "immediate", "-w", "-D"])
                    .arg(&data),
                self.owner,
                &self.dir,
            );
            if let Err(error) = stopped {
                tracing::warn!(%error, "private postgres did not stop cleanly");
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), %error, "private postgres directory not removed");
        }
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.dismiss();
        }
        tracing::info!(dir = %self.dir.display(), "private postgres stopped and removed");
    }
}

fn run(command: &mut Command, owner: Option<(u32, u32)>, cwd: &Path) -> Result<()> {
    command
        .current_dir(cwd)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid).env("HOME", cwd);
    }
    let output = command
        .output()
        .map_err(|error| Error::Embedded(format!("{:?}: {error}", command.get_program())))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Embedded(format!(
        "{:?} failed ({}): {}{}",
        command.get_program(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|error| Error::Embedded(format!("no free port: {error}")))?;
    let port = listener
        .local_addr()
        .map_err(|error| Error::Embedded(format!("no free port: {error}")))?
        .port();
    Ok(port)
}

/// Finds the directory holding `initdb` and `pg_ctl`: `$PG_BINDIR`, `pg_config --bindir`, the
/// usual install paths (newest version first), then `$PATH`.
pub fn find_bindir() -> Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BINDIR").map(PathBuf::from)
        && has_tools(&dir)
    {
        return Ok(dir);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_tools(&dir) {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    for root in [
        "/usr/lib/postgresql",
        "/usr/local/pgsql",
        "/opt/homebrew/opt",
        "/usr/pgsql",
    ] {
        if let Ok(entries) = std::fs::read_dir(root) {
            let mut versions: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect();
            versions.sort_by_key(|path| {
                std::cmp::Reverse(
                    path.parent()
                        .and_then(|p| p.file_name())
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.trim_start_matches("postgresql@").parse::<u32>().ok())
                        .unwrap_or(0),
                )
            });
            candidates.extend(versions);
        }
    }
    candidates.push(PathBuf::from("/usr/local/pgsql/bin"));
    candidates.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    candidates.into_iter().find(|dir| has_tools(dir)).ok_or_else(|| {
        Error::Embedded(
            "no PostgreSQL server binaries (initdb, pg_ctl) found: install PostgreSQL, set PG_BINDIR, \
             or set DATABASE_URL to an existing server"
                .into(),
        )
    })
}

/// When running as root, the uid and gid to run PostgreSQL as (`postgres`, else `nobody`).
fn unprivileged_owner() -> Result<Option<(u32, u32)>> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|uid| uid.parse::<u32>().ok());
    if euid != Some(0) {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for user in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 4
                && fields[0] == user
                && let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse())
            {
                return Ok(Some((uid, gid)));
            }
        }
    }
    Err(Error::Embedded(
        "running as root and neither a postgres nor a nobody user exists to run PostgreSQL as"
            .into(),
    ))
}
