//! The `credgate` binary: parse the command line, start logging, run.

use clap::Parser;
use credgate::cli::{self, Cli};

/// mimalloc: a gateway call allocates and frees many small buffers on
/// whichever worker thread runs it, and glibc's allocator (its arenas
/// capped below, for the C code that still uses it) spent a sixth of the
/// process's CPU there under load (`docs/benchmarks.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    limit_malloc_arenas();
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| {
        eprintln!("credgate: cannot start the runtime: {e}");
        std::process::exit(1);
    });
    runtime.block_on(run());
}

/// glibc gives each thread that allocates its own arena (up to 8 per core),
/// and every SQLite connection has a thread: the memory freed in one arena
/// is not reused by another, so resident memory grows with the threads.
/// Two arenas are plenty for a server this size. Called before any thread.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn run() {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        // A token given in the wrong place (a stray argument) is not echoed
        // back in clap's error.
        let text = cli::redact_tokens(&e.render().to_string());
        if e.kind() == clap::error::ErrorKind::ValueValidation {
            // A value its parser refused (`--org nope`): one line, like
            // every other failure of a command.
            let first = text.lines().next().unwrap_or_default();
            eprintln!("credgate: {}", first.trim_start_matches("error: "));
        } else if e.use_stderr() {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
        std::process::exit(e.exit_code());
    });
    // Administrative commands print their result alone; only `serve` chats.
    let filter = match cli.command {
        cli::Command::Serve { .. } => cli.settings.log.clone(),
        _ => std::env::var("CREDGATE_LOG").unwrap_or_else(|_| "error".into()),
    };
    let logging = credgate::telemetry::init(&filter, cli.settings.log_format);
    let outcome = cli::run(cli, shutdown_signal()).await;
    // Every line still queued is written before the process ends.
    drop(logging);
    if let Err(e) = outcome {
        eprintln!("credgate: {}", cli::redact_tokens(&format!("{e:#}")));
        std::process::exit(1);
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
