//! Test support for the client's tests. Everything here is a test double:
//! nothing talks to a real Lockstep node.

#![allow(dead_code, clippy::unwrap_used)]

pub mod fake_node;

use std::future::Future;
use std::time::Duration;

/// The bound on every test of this crate.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `test` under [`TEST_TIMEOUT`].
pub async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test did not finish within TEST_TIMEOUT")
}

/// Polls `condition` every 10 ms until it holds; panics after `within`.
pub async fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
