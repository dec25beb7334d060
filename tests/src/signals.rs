//! The signals that end the demo, the benchmark and `learnsync-private-postgres` cleanly: Ctrl-C
//! (SIGINT), SIGTERM (`kill`, a CI timeout, a container stop) and SIGHUP (a closed terminal).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT, SIGTERM and SIGHUP, caught. Once installed, these signals no longer end the process by
/// themselves: the holder stops what it runs, then exits.
#[derive(Debug)]
pub struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl ShutdownSignals {
    /// Catches the three signals from now on (inside a tokio runtime).
    pub fn install() -> std::io::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next of the three signals and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// The exit status of a process ended by `signal` (128 + its number), as shells report it.
pub fn exit_code(signal: &str) -> i32 {
    match signal {
        "SIGHUP" => 129,
        "SIGINT" => 130,
        _ => 143,
    }
}
