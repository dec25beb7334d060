//! How learnsync's processes set up tracing, in one place: the server, the workers, the demo, the
//! benchmark and the test harnesses all call [`init`].
//!
//! Layout:
//! - [`Output`]: where log lines go and in which form.
//! - [`init`]: installs the subscriber once (`RUST_LOG` filters; later calls do nothing).

/// Where log lines go and in which form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Human-readable lines on standard output.
    Text,
    /// Human-readable lines on standard error (a program whose standard output is read by another).
    Stderr,
    /// One JSON object per line on standard output (for log shippers).
    Json,
    /// Into the test harness's captured output: a passing test stays quiet, a failing one shows
    /// what went wrong.
    Test,
}

/// Installs the tracing subscriber for `output`, filtered by `RUST_LOG` or else at
/// `default_level` (`info`, `warn`, ...). Only the first call in a process takes effect, so every
/// test may call it.
pub fn init(output: Output, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // An error means a subscriber is already installed: the first one stays.
    let _ = match output {
        Output::Text => builder.try_init(),
        Output::Stderr => builder.with_writer(std::io::stderr).try_init(),
        Output::Json => builder.json().try_init(),
        Output::Test => builder.with_test_writer().try_init(),
    };
}
