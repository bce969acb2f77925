//! A node process: `lockstep node` runs [`run_node`] until SIGTERM or
//! Ctrl-C. Starting and stopping the node itself is [`start`]'s job, which
//! an embedding application calls directly.

use crate::config::NodeConfig;
pub use crate::error::RunError;
pub use crate::start::{start, Running, SERVER_STOP_MS_MAX};

/// Runs a node until SIGTERM or Ctrl-C.
pub fn run_node(config: NodeConfig) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Server(e.to_string()))?;
    // Inside the runtime: the OTLP exporter is tonic's.
    let telemetry = {
        let _runtime = runtime.enter();
        crate::telemetry::init(
            &format!("lockstep-node-{}", config.id),
            &config.otlp_endpoint,
        )?
    };
    plant_bug()?;
    watch_failpoints()?;
    if config.client_addr.is_empty() {
        // Only an embedded node may go without a client port: it serves its
        // own process in-process instead.
        return Err(RunError::Listen {
            key: "client_addr",
            addr: String::new(),
            message: "a node process needs a client address".into(),
        });
    }
    let result = runtime.block_on(async {
        let running = start(config, false).await?;
        tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!("shutting down");
                running.shutdown().await
            }
            // A node whose Raft stopped (a damaged table block read while
            // running) must not linger answering errors: it exits, saying
            // why, and its supervisor or operator sees it.
            fatal = running.fatal() => {
                tracing::error!(error = %fatal, "Raft stopped; the node exits");
                let _ = running.shutdown().await;
                Err(fatal)
            }
        }
    });
    // The last spans go out while the runtime still runs tonic.
    let _runtime = runtime.enter();
    drop(telemetry);
    result
}

/// The environment variable naming a file of failpoints (`name=actions`
/// per line) that a test build reads while it runs; the chaos harness's
/// `slow-disk` fault writes `log-append=sleep(N)` there.
pub const FAILPOINTS_FILE_ENV: &str = "LOCKSTEP_FAILPOINTS_FILE";

/// Starts reading the failpoints file named by `LOCKSTEP_FAILPOINTS_FILE`,
/// if any. As with planted bugs, a build without them refuses to start
/// with it set.
fn watch_failpoints() -> Result<(), RunError> {
    let Some(path) = std::env::var_os(FAILPOINTS_FILE_ENV).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    #[cfg(feature = "planted-bugs")]
    {
        lockstep_store::failpoints::watch(path.into());
        Ok(())
    }
    #[cfg(not(feature = "planted-bugs"))]
    Err(RunError::Server(format!(
        "{FAILPOINTS_FILE_ENV}={}, but this build has no failpoints (the `planted-bugs` \
         feature, debug builds only)",
        std::path::Path::new(&path).display()
    )))
}

/// The environment variable that switches a planted bug on in a test build.
pub const PLANTED_BUG_ENV: &str = "LOCKSTEP_PLANTED_BUG";

/// Turns on the planted bug named by `LOCKSTEP_PLANTED_BUG`, if any. A
/// build without the `planted-bugs` feature refuses to start with it set,
/// so a test can never believe a bug is planted when it is not.
fn plant_bug() -> Result<(), RunError> {
    let Ok(name) = std::env::var(PLANTED_BUG_ENV) else {
        return Ok(());
    };
    if name.is_empty() {
        return Ok(());
    }
    #[cfg(feature = "planted-bugs")]
    {
        use lockstep_core::planted::{plant, Bug};
        let bug = Bug::parse(&name).ok_or_else(|| {
            let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
            RunError::Server(format!(
                "{PLANTED_BUG_ENV}=`{name}` names no planted bug; one of {}",
                names.join(", ")
            ))
        })?;
        plant(bug);
        tracing::warn!(
            bug = name,
            "PLANTED BUG ON: this node breaks a safety rule on purpose"
        );
        Ok(())
    }
    #[cfg(not(feature = "planted-bugs"))]
    Err(RunError::Server(format!(
        "{PLANTED_BUG_ENV}=`{name}`, but this build has no planted bugs (the \
         `planted-bugs` feature, debug builds only)"
    )))
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT): how a person or a supervisor
/// such as `timeout` asks a node, a worker or a chaos run to stop.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
