//! The binary's own command line, run as a user runs it: `--help` names
//! every subcommand the README documents, and a bad flag is refused with a
//! clear message and a non-zero exit.
//!
//! Being an integration test of `lockstep-cli`, it also makes
//! `cargo test --workspace` build the `lockstep` binary that the black-box
//! tests in `tests/` run (see `lockstep_harness::lockstep_binary`).

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn lockstep(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_names_every_subcommand() {
    let out = lockstep(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for sub in [
        "node",
        "cluster",
        "chaos",
        "bench",
        "bench-plot",
        "dev-certs",
        "token",
        "enqueue",
        "fetch",
        "ack",
        "nack",
        "work",
        "queue",
        "groups",
        "dlq",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "`lockstep --help` does not list `{sub}`:\n{text}"
        );
    }
}

#[test]
fn an_unknown_flag_is_refused_by_name() {
    let out = lockstep(&["node", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8(out.stderr).unwrap();
    assert!(text.contains("--no-such-flag"), "{text}");
}
