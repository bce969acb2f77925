//! The plumbing every client command shares: where the cluster is
//! (`Connect`), how an answer is printed (`Out`, `outln`), and how a
//! failure becomes the one line a person reads (`CliError`, `explain`).
//! It imports no other command file, so that each of them can import it
//! without a cycle.

use std::io::Write as _;
use std::time::Duration;

use lockstep_client::{ClientConfig, Code};
use serde_json::Value;

/// Groups or dead letters one listing asks for.
pub const LIST_LIMIT: u32 = 1_000;

/// Where the cluster is, for every client command.
#[derive(clap::Args, Debug, Clone)]
pub struct Connect {
    /// Client addresses of any nodes (comma-separated or repeated).
    #[arg(
        long = "addr",
        value_delimiter = ',',
        env = "LOCKSTEP_ADDR",
        default_value = "127.0.0.1:7100,127.0.0.2:7100,127.0.0.3:7100",
        global = true
    )]
    pub addrs: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Speak TLS to the nodes, trusting this CA certificate (PEM).
    #[arg(long, env = "LOCKSTEP_CA_FILE", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The name to expect in the nodes' certificates, when it is not the
    /// host of --addr.
    #[arg(long, env = "LOCKSTEP_TLS_DOMAIN", global = true)]
    pub tls_domain: Option<String>,
    /// Bearer token for a cluster with auth on. Prefer the environment
    /// variable: a flag shows in the process list.
    #[arg(long, env = "LOCKSTEP_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Export this command's spans to an OTLP/gRPC collector
    /// (`http://host:4317`): `enqueue` gives its jobs this trace, and
    /// `work` runs each job in a span that continues the producer's. A
    /// `TRACEPARENT` in the environment is continued.
    #[arg(long, env = "LOCKSTEP_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    /// Longest a node may send nothing while calls wait on it before the
    /// client fails them over to another node (`silence_timeout`).
    #[arg(long, env = "LOCKSTEP_SILENCE_TIMEOUT", global = true, value_parser = duration)]
    pub silence_timeout: Option<Duration>,
}

impl Connect {
    /// The client configuration for `addrs`, with this command line's TLS
    /// and token.
    pub fn config_for(&self, addrs: Vec<String>) -> Result<ClientConfig, String> {
        let mut config = ClientConfig::new(addrs);
        if let Some(path) = &self.ca_file {
            let ca_pem =
                std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            config.tls = Some(lockstep_client::ClientTls {
                ca_pem,
                domain_name: self.tls_domain.clone(),
            });
        }
        config.token = self.token.clone().map(lockstep_client::Token::new);
        if let Some(silence) = self.silence_timeout {
            config.silence_timeout = silence;
        }
        Ok(config)
    }

    /// The client configuration for every `--addr`.
    pub fn config(&self) -> Result<ClientConfig, String> {
        self.config_for(self.addrs.clone())
    }
}

/// Runs `work` to its end on a new runtime: the commands are synchronous
/// from `main`'s side, and only a client call needs one.
pub fn block_on<T>(
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(work)
}

/// The value parser of every duration flag (`--delay`, `--lease`, ...).
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (e.g. 30s, 500ms, 2m)"))
}

/// A payload as text for a person or a JSON string; bytes that are not
/// UTF-8 show as U+FFFD rather than failing the listing.
pub fn payload_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Why a command failed: a client error, which `explain` turns into advice,
/// or a mistake on the command line, whose text is already the advice.
#[derive(Debug)]
pub enum CliError {
    Client(lockstep_client::Error),
    Usage(String),
}

impl From<lockstep_client::Error> for CliError {
    fn from(e: lockstep_client::Error) -> Self {
        CliError::Client(e)
    }
}

/// One line that says what went wrong and what to do.
pub fn explain(e: CliError, addrs: &[String]) -> String {
    match e {
        CliError::Usage(text) => text,
        CliError::Client(e) => match e.code() {
            Code::Unavailable | Code::DeadlineExceeded if !e.to_string().contains("answered") => {
                format!(
                    "cannot reach the cluster at {} ({e}); is it running? start one with `scripts/cluster up`, or give --addr",
                    addrs.join(",")
                )
            }
            Code::NotFound if e.to_string().contains("queue") => {
                format!("{e}; list queues with `lockstep queue list`, create one with `lockstep queue create NAME`")
            }
            Code::AlreadyExists => {
                format!("{e}; change its settings with `lockstep queue update`")
            }
            Code::FailedPrecondition => format!(
                "{e}; the lease was lost (expired, or another worker holds the job): fetch again"
            ),
            Code::Unauthenticated => {
                format!("{e}; this cluster requires a token: set LOCKSTEP_TOKEN (or give --token)")
            }
            Code::PermissionDenied => {
                format!("{e}; ask for a token with this permission (auth.tokens_file)")
            }
            // A plaintext HTTP/2 client meeting a TLS port sees its
            // connection reset, which says nothing of TLS.
            Code::Internal | Code::Cancelled
                if e.to_string().contains("h2 protocol error")
                    || e.to_string().contains("operation was canceled") =>
            {
                format!(
                    "{e}; if the cluster has TLS on, give its CA with --ca-file (or LOCKSTEP_CA_FILE)"
                )
            }
            _ => e.to_string(),
        },
    }
}

/// One line to stdout. A closed stdout (`lockstep ... | head`) is not an
/// error worth a panic: the write is dropped.
pub fn outln(text: &str) {
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// How a command answers: JSON for scripts with `--json`, text for people
/// otherwise.
#[derive(Debug)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints `value`, or the text of `human` for a person; the text is
    /// only built when it is printed.
    pub fn value(&self, value: &Value, human: impl FnOnce() -> String) {
        if self.json {
            outln(&value.to_string());
        } else {
            outln(&human());
        }
    }
}
