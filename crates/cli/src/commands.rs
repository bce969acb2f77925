//! The client commands of the `lockstep` binary: `enqueue`, `fetch`, `ack`,
//! `nack`, `work`, `queue`, `groups`, `dlq` and `cluster join|remove`, over
//! the Rust client (`lockstep-client`). Tables for people by default,
//! `--json` for scripts; an error is one line that says what to do, and a
//! non-zero exit.

#![allow(clippy::print_stdout)]

use std::io::{BufRead, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lockstep_client::{
    pb, CancellationToken, Client, ClientConfig, Code, Consistency, EnqueueOutcome, Outcome,
    Worker, WorkerConfig,
};
use serde_json::{json, Value};

/// Jobs per enqueue call of a bulk enqueue from a file or stdin.
pub const BULK_BATCH: usize = 500;
/// Longest line (job) a bulk enqueue reads.
pub const LINE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Groups or dead letters one listing asks for.
pub const LIST_LIMIT: u32 = 1_000;
/// Exit status of a `work` command that dead-letters its job at once.
pub const EXIT_POISON: i32 = 100;

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
        Ok(config)
    }

    /// The client configuration for every `--addr`.
    pub fn config(&self) -> Result<ClientConfig, String> {
        self.config_for(self.addrs.clone())
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e} (e.g. 30s, 500ms, 2m)"))
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Enqueue one job (--data) or one job per line (--file, or stdin).
    Enqueue {
        queue: String,
        #[arg(long, default_value = "")]
        group: String,
        /// The job's id (one job); default: the client makes one.
        #[arg(long)]
        id: Option<String>,
        /// Ids PREFIX-<line number> for jobs read from a file or stdin, so a
        /// rerun is answered DUPLICATE instead of enqueuing twice.
        #[arg(long)]
        id_prefix: Option<String>,
        #[arg(long, default_value_t = 0)]
        priority: u32,
        /// Not before this long from now (e.g. 30s).
        #[arg(long, value_parser = duration)]
        delay: Option<Duration>,
        #[arg(long, conflicts_with = "file")]
        data: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Lease up to --max jobs and print them (offset, fence, payload).
    Fetch {
        queue: String,
        #[arg(long, default_value_t = 1)]
        max: u32,
        #[arg(long, value_parser = duration, default_value = "30s")]
        lease: Duration,
        /// Long-poll this long for a job.
        #[arg(long, value_parser = duration, default_value = "0s")]
        wait: Duration,
        #[arg(long, default_value = "cli")]
        consumer: String,
    },
    /// Finish a job: OFFSET and FENCE as fetch printed them.
    Ack {
        queue: String,
        offset: u64,
        fence: u64,
    },
    /// Fail an attempt; the queue's backoff (or --delay) decides when it runs again.
    Nack {
        queue: String,
        offset: u64,
        fence: u64,
        #[arg(long, value_parser = duration)]
        delay: Option<Duration>,
    },
    /// Run COMMAND once per job, the payload on stdin and the job in
    /// LOCKSTEP_* variables. Exit 0 acks; 100 dead-letters; any other
    /// status nacks.
    Work {
        queue: String,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, value_parser = duration, default_value = "30s")]
        lease: Duration,
        /// Stop after this many jobs finished (acked, nacked or dead-lettered).
        #[arg(long)]
        max_jobs: Option<u64>,
        #[arg(long, default_value = "")]
        consumer: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Create, update, delete, show or list queues.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// List, pause or resume a queue's groups.
    #[command(subcommand)]
    Groups(GroupsCmd),
    /// List, requeue or purge a queue's dead letters.
    #[command(subcommand)]
    Dlq(DlqCmd),
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct QueueFlags {
    #[arg(long)]
    max_attempts: Option<u32>,
    #[arg(long, value_parser = duration)]
    lease_default: Option<Duration>,
    #[arg(long, value_parser = duration)]
    lease_max: Option<Duration>,
    #[arg(long, value_parser = duration)]
    backoff_base: Option<Duration>,
    #[arg(long, value_parser = duration)]
    backoff_cap: Option<Duration>,
    #[arg(long, value_parser = duration)]
    dedup_window: Option<Duration>,
    #[arg(long)]
    max_jobs: Option<u64>,
    #[arg(long)]
    max_payload_bytes: Option<u32>,
    /// `continue` (later jobs of a group run after a dead letter) or `park`.
    #[arg(long)]
    group_policy: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum QueueCmd {
    Create {
        name: String,
        #[command(flatten)]
        flags: QueueFlags,
    },
    /// Change the given settings; the others stay.
    Update {
        name: String,
        #[command(flatten)]
        flags: QueueFlags,
    },
    Delete {
        name: String,
    },
    Get {
        name: String,
    },
    List,
}

#[derive(clap::Subcommand, Debug)]
pub enum GroupsCmd {
    List {
        queue: String,
        #[arg(long, default_value = "")]
        prefix: String,
    },
    Pause {
        queue: String,
        group: String,
    },
    Resume {
        queue: String,
        group: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum DlqCmd {
    List {
        queue: String,
    },
    /// Give a dead letter a new offset at the tail of its group.
    Requeue {
        queue: String,
        offset: u64,
    },
    /// Delete dead letters for good (all of them without OFFSETs).
    Purge {
        queue: String,
        offsets: Vec<u64>,
    },
}

/// Runs a client command; the error is the one line to print.
pub fn run(connect: Connect, command: Command) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let client = Client::connect(connect.config()?).map_err(|e| e.to_string())?;
        let out = Out { json: connect.json };
        execute(&client, &out, command)
            .await
            .map_err(|e| explain(e, &connect.addrs))
    })
}

/// Joins cluster membership commands to the same client plumbing.
pub fn run_cluster(connect: Connect, command: ClusterCmd) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let client = Client::connect(connect.config()?).map_err(|e| e.to_string())?;
        let out = Out { json: connect.json };
        let done = match command {
            ClusterCmd::Join {
                id,
                peer_addr,
                client_addr,
            } => client
                .join(id, &peer_addr, &client_addr)
                .await
                .map(|()| json!({"joined": id})),
            ClusterCmd::Remove { id } => client.remove(id).await.map(|()| json!({"removed": id})),
        };
        let done = done.map_err(|e| explain(CliError::Client(e), &connect.addrs))?;
        out.value(&done, || format!("{done}"));
        Ok(())
    })
}

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCmd {
    /// Add a node (started empty, without bootstrap) as a voter.
    Join {
        id: u64,
        #[arg(long)]
        peer_addr: String,
        #[arg(long)]
        client_addr: String,
    },
    /// Remove a member; stop its process afterwards.
    Remove { id: u64 },
}

#[derive(Debug)]
enum CliError {
    Client(lockstep_client::Error),
    Usage(String),
}

impl From<lockstep_client::Error> for CliError {
    fn from(e: lockstep_client::Error) -> Self {
        CliError::Client(e)
    }
}

/// One line that says what went wrong and what to do.
fn explain(e: CliError, addrs: &[String]) -> String {
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

struct Out {
    json: bool,
}

impl Out {
    /// Prints the answer. A closed stdout (`lockstep ... | head`) is not an
    /// error worth a panic: the write is dropped.
    fn value(&self, value: &Value, human: impl FnOnce() -> String) {
        let text = if self.json {
            value.to_string()
        } else {
            human()
        };
        let _ = writeln!(std::io::stdout(), "{text}");
    }
}

fn config(flags: &QueueFlags) -> Result<pb::QueueConfig, CliError> {
    let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
    let group_policy = match flags.group_policy.as_deref() {
        None => pb::GroupPolicy::Unspecified,
        Some("continue") => pb::GroupPolicy::Continue,
        Some("park") => pb::GroupPolicy::Park,
        Some(other) => {
            return Err(CliError::Usage(format!(
                "--group-policy `{other}`: expected `continue` or `park`"
            )))
        }
    };
    Ok(pb::QueueConfig {
        max_attempts: flags.max_attempts.unwrap_or(0),
        lease_ms_default: ms(flags.lease_default),
        lease_ms_max: ms(flags.lease_max),
        backoff_base_ms: ms(flags.backoff_base),
        backoff_cap_ms: ms(flags.backoff_cap),
        dedup_window_ms: ms(flags.dedup_window),
        max_jobs: flags.max_jobs.unwrap_or(0),
        max_payload_bytes: flags.max_payload_bytes.unwrap_or(0),
        group_policy: group_policy.into(),
        ..Default::default()
    })
}

fn queue_json(q: &pb::QueueInfo) -> Value {
    let c = q.config.unwrap_or_default();
    let s = q.stats.unwrap_or_default();
    json!({
        "name": q.name,
        "config": {
            "max_attempts": c.max_attempts, "lease_ms_default": c.lease_ms_default,
            "lease_ms_max": c.lease_ms_max, "backoff_base_ms": c.backoff_base_ms,
            "backoff_cap_ms": c.backoff_cap_ms, "dedup_window_ms": c.dedup_window_ms,
            "max_jobs": c.max_jobs, "max_payload_bytes": c.max_payload_bytes,
            "group_policy": pb::GroupPolicy::try_from(c.group_policy).map_or("unknown", |p| p.as_str_name()),
        },
        "stats": {
            "ready": s.ready, "delayed": s.delayed, "leased": s.leased, "dead": s.dead,
            "bytes": s.bytes, "groups": s.groups, "next_offset": s.next_offset,
            "oldest_ready_age_ms": s.oldest_ready_age_ms,
        },
    })
}

fn queue_row(q: &pb::QueueInfo) -> String {
    let s = q.stats.unwrap_or_default();
    format!(
        "{:<20} {:>8} {:>8} {:>8} {:>6} {:>8} {:>11}",
        q.name, s.ready, s.delayed, s.leased, s.dead, s.groups, s.next_offset
    )
}

const QUEUE_HEADER: &str =
    "name                    ready  delayed   leased   dead   groups next_offset";

fn payload_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn execute(client: &Client, out: &Out, command: Command) -> Result<(), CliError> {
    match command {
        Command::Enqueue {
            queue,
            group,
            id,
            id_prefix,
            priority,
            delay,
            data,
            file,
        } => {
            let base = pb::Job {
                group,
                priority,
                delay_ms: delay.map_or(0, |d| d.as_millis() as u64),
                ..Default::default()
            };
            if let Some(data) = data {
                let job = pb::Job {
                    id,
                    payload: data.into_bytes(),
                    ..base
                };
                let r = client.enqueue(&queue, vec![job]).await?;
                let r = &r[0];
                let outcome = match r.outcome {
                    EnqueueOutcome::Created => "created",
                    EnqueueOutcome::Duplicate { .. } => "duplicate",
                    EnqueueOutcome::IdConflict => "id-conflict",
                };
                out.value(
                    &json!({"id": r.id, "offset": r.offset, "outcome": outcome}),
                    || format!("{outcome} offset {} id {}", r.offset, r.id),
                );
                return Ok(());
            }
            if id.is_some() {
                return Err(CliError::Usage(
                    "--id names one job: give it with --data, or use --id-prefix for many".into(),
                ));
            }
            bulk_enqueue(client, out, &queue, base, id_prefix, file).await
        }
        Command::Fetch {
            queue,
            max,
            lease,
            wait,
            consumer,
        } => {
            let got = client.fetch(&queue, &consumer, max, lease, wait).await?;
            let list: Vec<Value> = got
                .iter()
                .map(|d| {
                    json!({"offset": d.offset, "fence": d.fence, "id": d.id, "group": d.group,
                           "attempt": d.attempt, "payload": payload_text(&d.payload)})
                })
                .collect();
            out.value(&Value::Array(list), || {
                let mut t = format!(
                    "{:>8} {:>8} {:<24} {:<16} {:>7}  payload",
                    "offset", "fence", "id", "group", "attempt"
                );
                for d in &got {
                    t.push_str(&format!(
                        "\n{:>8} {:>8} {:<24} {:<16} {:>7}  {}",
                        d.offset,
                        d.fence,
                        d.id,
                        d.group,
                        d.attempt,
                        payload_text(&d.payload)
                    ));
                }
                if got.is_empty() {
                    t = "no job ready".into();
                }
                t
            });
            Ok(())
        }
        Command::Ack {
            queue,
            offset,
            fence,
        } => {
            client.ack_one(&queue, offset, fence).await?;
            out.value(&json!({"acked": offset}), || format!("acked {offset}"));
            Ok(())
        }
        Command::Nack {
            queue,
            offset,
            fence,
            delay,
        } => {
            let r = client.nack(&queue, offset, fence, delay).await?;
            out.value(
                &json!({"nacked": offset, "dead": r.dead, "not_before_ms": r.not_before_ms}),
                || {
                    if r.dead {
                        format!(
                            "nacked {offset}: that was its last attempt; it is a dead letter now"
                        )
                    } else {
                        format!(
                            "nacked {offset}; it runs again after {} (cluster ms)",
                            r.not_before_ms
                        )
                    }
                },
            );
            Ok(())
        }
        Command::Work {
            queue,
            concurrency,
            lease,
            max_jobs,
            consumer,
            command,
        } => {
            work(
                client,
                out,
                &queue,
                concurrency,
                lease,
                max_jobs,
                consumer,
                command,
            )
            .await
        }
        Command::Queue(cmd) => queue_cmd(client, out, cmd).await,
        Command::Groups(cmd) => groups_cmd(client, out, cmd).await,
        Command::Dlq(cmd) => dlq_cmd(client, out, cmd).await,
    }
}

async fn bulk_enqueue(
    client: &Client,
    out: &Out,
    queue: &str,
    base: pb::Job,
    id_prefix: Option<String>,
    file: Option<PathBuf>,
) -> Result<(), CliError> {
    let reader: Box<dyn BufRead> = match &file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path)
                .map_err(|e| CliError::Usage(format!("--file {}: {e}", path.display())))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let size = file
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    let bar = if out.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(size.unwrap_or(0));
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} read, {msg}, eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    };
    let (mut created, mut duplicate, mut conflict) = (0u64, 0u64, 0u64);
    let mut batch = Vec::with_capacity(BULK_BATCH);
    let mut line_no = 0u64;
    let flush = |batch: Vec<pb::Job>| async {
        let results = client.enqueue(queue, batch).await?;
        Ok::<_, CliError>(results)
    };
    for line in reader.lines() {
        let line = line.map_err(|e| CliError::Usage(format!("reading the jobs: {e}")))?;
        line_no += 1;
        if line.len() > LINE_BYTES_MAX {
            return Err(CliError::Usage(format!(
                "line {line_no} has {} bytes, more than LINE_BYTES_MAX ({LINE_BYTES_MAX})",
                line.len()
            )));
        }
        bar.inc(line.len() as u64 + 1);
        batch.push(pb::Job {
            id: id_prefix.as_ref().map(|p| format!("{p}-{line_no}")),
            payload: line.into_bytes(),
            ..base.clone()
        });
        if batch.len() == BULK_BATCH {
            for r in flush(std::mem::take(&mut batch)).await? {
                match r.outcome {
                    EnqueueOutcome::Created => created += 1,
                    EnqueueOutcome::Duplicate { .. } => duplicate += 1,
                    EnqueueOutcome::IdConflict => conflict += 1,
                }
            }
            bar.set_message(format!("{created} created"));
        }
    }
    if !batch.is_empty() {
        for r in flush(batch).await? {
            match r.outcome {
                EnqueueOutcome::Created => created += 1,
                EnqueueOutcome::Duplicate { .. } => duplicate += 1,
                EnqueueOutcome::IdConflict => conflict += 1,
            }
        }
    }
    bar.finish_and_clear();
    out.value(
        &json!({"created": created, "duplicate": duplicate, "id_conflict": conflict}),
        || format!("{created} created, {duplicate} duplicate, {conflict} id conflicts"),
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn work(
    client: &Client,
    out: &Out,
    queue: &str,
    concurrency: usize,
    lease: Duration,
    max_jobs: Option<u64>,
    consumer: String,
    command: Vec<String>,
) -> Result<(), CliError> {
    let mut config = WorkerConfig::new(queue);
    if !consumer.is_empty() {
        config.consumer = consumer;
    }
    config.concurrency = concurrency;
    config.lease = lease;
    let stop = CancellationToken::new();
    let finished = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let command = Arc::new(command);
    let handler = {
        let (stop, finished, command) = (stop.clone(), finished.clone(), command.clone());
        move |job: lockstep_client::Job, cancel: CancellationToken| {
            let (stop, finished, command) = (stop.clone(), finished.clone(), command.clone());
            async move {
                let outcome = run_job(&command, &job, cancel).await;
                let n = finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if max_jobs.is_some_and(|m| n >= m) {
                    stop.cancel();
                }
                outcome
            }
        }
    };
    let worker = Worker::new(client.clone(), config, handler)?;
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = lockstep_node::run::shutdown_signal() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        })
    };
    let report = worker.run(stop.clone()).await?;
    signals.abort();
    out.value(
        &json!({"fetched": report.fetched, "acked": report.acked, "nacked": report.retried,
                "dead_lettered": report.poisoned, "lease_lost": report.lease_lost,
                "released": report.released, "failed": report.failed}),
        || {
            format!(
                "worked {} jobs: {} acked, {} nacked, {} dead-lettered, {} lost their lease, {} released",
                report.fetched, report.acked, report.retried, report.poisoned, report.lease_lost, report.released
            )
        },
    );
    Ok(())
}

/// Runs the command for one job; its exit status decides the outcome. A
/// lost lease kills the child.
async fn run_job(
    command: &[String],
    job: &lockstep_client::Job,
    cancel: CancellationToken,
) -> Outcome {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("LOCKSTEP_QUEUE", &job.queue)
        .env("LOCKSTEP_GROUP", &job.group)
        .env("LOCKSTEP_OFFSET", job.offset.to_string())
        .env("LOCKSTEP_JOB_ID", &job.id)
        .env("LOCKSTEP_ATTEMPT", job.attempt.to_string())
        .env("LOCKSTEP_FENCE", job.fence.to_string())
        .env("LOCKSTEP_PRIORITY", job.priority.to_string())
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(command = %command[0], error = %e, "cannot start the command");
            eprintln!("lockstep work: cannot start `{}`: {e}", command[0]);
            return Outcome::Retry;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let payload = job.payload.clone();
        // A command that does not read its stdin must not block the job.
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&payload).await;
        });
    }
    tokio::select! {
        status = child.wait() => match status {
            Ok(s) if s.success() => Outcome::Ack,
            Ok(s) if s.code() == Some(EXIT_POISON) => Outcome::Poison(format!("`{}` exited with {EXIT_POISON}", command[0])),
            Ok(_) | Err(_) => Outcome::Retry,
        },
        () = cancel.cancelled() => {
            let _ = child.kill().await;
            Outcome::Retry
        }
    }
}

async fn queue_cmd(client: &Client, out: &Out, cmd: QueueCmd) -> Result<(), CliError> {
    match cmd {
        QueueCmd::Create { name, flags } => {
            let created = client.create_queue(&name, config(&flags)?).await?;
            out.value(&json!({"name": name, "created": created}), || {
                if created {
                    format!("queue `{name}` created")
                } else {
                    format!("queue `{name}` already exists; `lockstep queue update` changes its settings")
                }
            });
        }
        QueueCmd::Update { name, flags } => {
            let mut current = client
                .get_queue(&name, Consistency::Linearizable)
                .await?
                .config
                .unwrap_or_default();
            let given = config(&flags)?;
            macro_rules! take {
                ($($f:ident),*) => { $( if given.$f != 0 { current.$f = given.$f; } )* };
            }
            take!(
                max_attempts,
                lease_ms_default,
                lease_ms_max,
                backoff_base_ms,
                backoff_cap_ms,
                dedup_window_ms,
                max_jobs,
                max_payload_bytes,
                group_policy
            );
            client.update_queue(&name, current).await?;
            out.value(&json!({"name": name, "updated": true}), || {
                format!("queue `{name}` updated")
            });
        }
        QueueCmd::Delete { name } => {
            client.delete_queue(&name).await?;
            out.value(&json!({"name": name, "deleted": true}), || {
                format!("queue `{name}` deleted")
            });
        }
        QueueCmd::Get { name } => {
            let q = client.get_queue(&name, Consistency::Linearizable).await?;
            out.value(&queue_json(&q), || {
                let v = queue_json(&q);
                format!("{QUEUE_HEADER}\n{}\nconfig: {}", queue_row(&q), v["config"])
            });
        }
        QueueCmd::List => {
            let qs = client.list_queues(Consistency::Linearizable).await?;
            out.value(&Value::Array(qs.iter().map(queue_json).collect()), || {
                let mut t = QUEUE_HEADER.to_string();
                for q in &qs {
                    t.push('\n');
                    t.push_str(&queue_row(q));
                }
                t
            });
        }
    }
    Ok(())
}

async fn groups_cmd(client: &Client, out: &Out, cmd: GroupsCmd) -> Result<(), CliError> {
    match cmd {
        GroupsCmd::List { queue, prefix } => {
            let r = client
                .list_groups(pb::ListGroupsRequest {
                    queue: queue.clone(),
                    key_prefix: prefix,
                    limit: LIST_LIMIT,
                    ..Default::default()
                })
                .await?;
            let list: Vec<Value> = r
                .groups
                .iter()
                .map(|g| {
                    json!({"group": g.key, "backlog": g.backlog, "head_offset": g.head_offset,
                           "head_age_ms": g.head_age_ms, "lease_holder": g.lease_holder,
                           "attempts": g.attempts, "paused": g.paused, "parked_reason": g.parked_reason})
                })
                .collect();
            out.value(&Value::Array(list), || {
                let mut t = format!(
                    "{:<24} {:>8} {:>8} {:>10} {:<20} {:>8} {:<6}",
                    "group", "backlog", "head", "head age", "lease holder", "attempts", "paused"
                );
                for g in &r.groups {
                    t.push_str(&format!(
                        "\n{:<24} {:>8} {:>8} {:>9}s {:<20} {:>8} {:<6}",
                        g.key,
                        g.backlog,
                        g.head_offset.map_or("-".into(), |o| o.to_string()),
                        g.head_age_ms / 1_000,
                        if g.lease_holder.is_empty() {
                            "-"
                        } else {
                            &g.lease_holder
                        },
                        g.attempts,
                        if g.paused { "yes" } else { "no" }
                    ));
                }
                if !r.next_after.is_empty() {
                    t.push_str(&format!("\n(first {LIST_LIMIT} groups shown)"));
                }
                t
            });
        }
        GroupsCmd::Pause { queue, group } => {
            client.pause_group(&queue, &group).await?;
            out.value(&json!({"group": group, "paused": true}), || {
                format!("group `{group}` paused")
            });
        }
        GroupsCmd::Resume { queue, group } => {
            client.resume_group(&queue, &group).await?;
            out.value(&json!({"group": group, "paused": false}), || {
                format!("group `{group}` resumed")
            });
        }
    }
    Ok(())
}

async fn dlq_cmd(client: &Client, out: &Out, cmd: DlqCmd) -> Result<(), CliError> {
    match cmd {
        DlqCmd::List { queue } => {
            let r = client
                .list_dead_letters(&queue, None, LIST_LIMIT, Consistency::Linearizable)
                .await?;
            let list: Vec<Value> = r
                .dead_letters
                .iter()
                .map(|d| {
                    json!({"offset": d.offset, "id": d.id, "group": d.group, "attempts": d.attempts,
                           "reason": d.reason, "payload": payload_text(&d.payload)})
                })
                .collect();
            out.value(&Value::Array(list), || {
                let mut t = format!(
                    "{:>8} {:<24} {:<16} {:>8}  reason",
                    "offset", "id", "group", "attempts"
                );
                for d in &r.dead_letters {
                    t.push_str(&format!(
                        "\n{:>8} {:<24} {:<16} {:>8}  {}",
                        d.offset, d.id, d.group, d.attempts, d.reason
                    ));
                }
                t
            });
        }
        DlqCmd::Requeue { queue, offset } => {
            let new = client.requeue_dead_letter(&queue, offset).await?;
            out.value(&json!({"offset": offset, "new_offset": new}), || {
                format!("dead letter {offset} requeued at offset {new}")
            });
        }
        DlqCmd::Purge { queue, offsets } => {
            let n = client.purge_dead_letters(&queue, offsets).await?;
            out.value(&json!({"purged": n}), || format!("{n} dead letters purged"));
        }
    }
    let _ = std::io::stdout().flush();
    Ok(())
}
