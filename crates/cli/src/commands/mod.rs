//! The client commands of the `lockstep` binary, which talk to a running
//! cluster over the Rust client (`lockstep-client`): `enqueue`, `fetch`,
//! `ack`, `nack`, `work`, `queue`, `groups`, `dlq`, `subs` and `cluster`. Tables
//! for people by default, `--json` for scripts; an error is one line that
//! says what to do, and a non-zero exit.
//!
//! This file holds the command line and sends each subcommand to the file
//! that does it; what they all share is in `common`, which imports none of
//! them, so that no two files import each other.

pub mod cluster;
mod common;
mod dlq;
mod groups;
mod jobs;
mod queue;
mod subs;
mod work;

use lockstep_client::Client;
use tracing::Instrument;

pub use common::{outln, Connect};

use common::{block_on, explain, CliError, Out};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Enqueue one job (--data) or one job per line (--file, or stdin).
    Enqueue(jobs::EnqueueArgs),
    /// Lease up to --max jobs and print them (offset, fence, payload).
    Fetch(jobs::FetchArgs),
    /// Finish a job: OFFSET and FENCE as fetch printed them.
    Ack(jobs::AckArgs),
    /// Fail an attempt; the queue's backoff (or --delay) decides when it runs again.
    Nack(jobs::NackArgs),
    /// Run COMMAND once per job, the payload on stdin and the job in
    /// LOCKSTEP_* variables. Exit 0 acks; 100 dead-letters; any other
    /// status nacks.
    Work(work::WorkArgs),
    /// Create, update, delete, show or list queues.
    #[command(subcommand)]
    Queue(queue::QueueCmd),
    /// List, pause or resume a queue's groups.
    Groups(InSubscription<groups::GroupsCmd>),
    /// List, requeue or purge a queue's dead letters.
    Dlq(InSubscription<dlq::DlqCmd>),
    /// Create, delete or list a queue's named subscriptions (fan-out).
    #[command(subcommand)]
    Subs(subs::SubsCmd),
}

/// A subcommand group that may work on a named subscription of its queue.
#[derive(clap::Args, Debug)]
pub struct InSubscription<C: clap::Subcommand> {
    #[command(subcommand)]
    cmd: C,
    /// The queue's named subscription to work on (default: the queue's own).
    #[arg(long, global = true, default_value = "")]
    subscription: String,
}

impl Command {
    /// The subcommand's name, for its span.
    fn name(&self) -> &'static str {
        match self {
            Command::Enqueue(_) => "enqueue",
            Command::Fetch(_) => "fetch",
            Command::Ack(_) => "ack",
            Command::Nack(_) => "nack",
            Command::Work(_) => "work",
            Command::Queue(_) => "queue",
            Command::Groups(_) => "groups",
            Command::Dlq(_) => "dlq",
            Command::Subs(_) => "subs",
        }
    }
}

/// Runs a client command; the error is the one line to print.
pub fn run(connect: Connect, command: Command) -> Result<(), String> {
    block_on(async move {
        // Without an endpoint no subscriber is installed, as before.
        let _telemetry = match connect.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
            Some(endpoint) => Some(
                lockstep_node::telemetry::init("lockstep-cli", endpoint)
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        let client = Client::connect(connect.config()?).map_err(|e| e.to_string())?;
        let out = Out { json: connect.json };
        // The command's span: a child of the caller's TRACEPARENT, if any.
        let span = tracing::info_span!("lockstep", command = command.name());
        let parent = std::env::var("TRACEPARENT").ok();
        lockstep_client::trace::continue_trace(&span, parent.as_deref());
        execute(&client, &out, command)
            .instrument(span)
            .await
            .map_err(|e| explain(e, &connect.addrs))
    })
}

async fn execute(client: &Client, out: &Out, command: Command) -> Result<(), CliError> {
    match command {
        Command::Enqueue(args) => jobs::enqueue(client, out, args).await,
        Command::Fetch(args) => jobs::fetch(client, out, args).await,
        Command::Ack(args) => jobs::ack(client, out, args).await,
        Command::Nack(args) => jobs::nack(client, out, args).await,
        Command::Work(args) => work::work(client, out, args).await,
        Command::Queue(cmd) => queue::run(client, out, cmd).await,
        Command::Groups(a) => {
            groups::run(&client.in_subscription(&a.subscription), out, a.cmd).await
        }
        Command::Dlq(a) => dlq::run(&client.in_subscription(&a.subscription), out, a.cmd).await,
        Command::Subs(cmd) => subs::run(client, out, cmd).await,
    }
}
