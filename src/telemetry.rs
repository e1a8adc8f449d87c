//! Logging: `tracing` with an `EnvFilter` (`CREDGATE_LOG`), text or JSON
//! lines (`CREDGATE_LOG_FORMAT=json`). No secret ever reaches a log line:
//! secrets are `SecretString`, and request spans carry the matched route,
//! never a URI with its query.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber, writing to stderr.
pub fn init(filter: &str, format: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never in a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if format.eq_ignore_ascii_case("json") {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.init();
    }
}
