//! Client configuration. Every bound is named and has a documented default;
//! [`ClientConfig::validate`] names the key of any value it refuses.

use std::time::Duration;

use crate::error::Error;

/// Default for [`ClientConfig::connect_timeout`].
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Default for [`ClientConfig::call_timeout`]. Longer than the 5 s a node
/// spends by default looking for a leader during an election
/// (`limits.forward_retry_ms_max`), so that its UNAVAILABLE answer, with the
/// leader hint, arrives before the client gives up on it.
pub const CALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default for [`ClientConfig::membership_call_timeout`]: a join waits for
/// the new node to catch up before promoting it. Longer than the node's own
/// bound (`limits.membership_ms_max`, 60 s by default), so its answer
/// arrives first.
pub const MEMBERSHIP_CALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(65);
/// Default for [`ClientConfig::message_bytes_max`]; equal to the node's
/// default `limits.message_bytes_max`.
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// Most endpoints a client keeps: the configured ones plus leaders it
/// learns of. A hint beyond this is ignored (the call still succeeds
/// through forwarding).
pub const ENDPOINTS_MAX: usize = 64;
/// Default for [`RetryPolicy::attempts_max`].
pub const ATTEMPTS_MAX_DEFAULT: u32 = 10;
/// Default for [`RetryPolicy::backoff_min`].
pub const BACKOFF_MIN_DEFAULT: Duration = Duration::from_millis(20);
/// Default for [`RetryPolicy::backoff_max`].
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(1);
/// Default for [`RetryPolicy::retry_elapsed_max`]: long enough to ride out
/// several failovers (each under a second after a leader is killed).
pub const RETRY_ELAPSED_MAX_DEFAULT: Duration = Duration::from_secs(30);
/// Default for [`ClientConfig::silence_timeout`]. A node that answers
/// nothing for this long is taken for paused or cut off: its calls fail
/// over to another node, as after a refused connection. About as long as
/// the default election (the lease of 600 ms plus up to 200 ms), so the
/// client reaches another node about when the new leader is elected.
pub const SILENCE_TIMEOUT_DEFAULT: Duration = Duration::from_millis(600);

/// How a call is retried after an error that another try may cure (see
/// [`Error::is_retryable`]).
///
/// Try `n` (n ≥ 1) that failed is followed by a pause drawn uniformly from
/// `[d/2, d]`, where `d = min(backoff_max, backoff_min · 2^(n-1))`, unless
/// the error named a leader the client was not talking to, in which case
/// the next try goes there at once. No new try starts after `attempts_max`
/// tries or once `retry_elapsed_max` has passed since the first one, so a
/// call takes at most `retry_elapsed_max` plus one call timeout.
///
/// This is the crate's one backoff: a [`Worker`] draws its pauses between
/// failed fetches from a `RetryPolicy` too, with its own bounds
/// ([`WorkerConfig::fetch_backoff_min`] and `fetch_backoff_max`).
///
/// [`Worker`]: crate::Worker
/// [`WorkerConfig::fetch_backoff_min`]: crate::WorkerConfig::fetch_backoff_min
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per call, the first included; at least 1, and 1 disables
    /// retries. Default 10.
    pub attempts_max: u32,
    /// First pause: the ceiling `d` after the first failed try, doubled
    /// after each further one. Above zero. Default 20 ms.
    pub backoff_min: Duration,
    /// Longest pause: the cap on `d`. At least `backoff_min`. Default 1 s.
    pub backoff_max: Duration,
    /// No try starts this long or longer after the first; a pause that
    /// would end that late ends the call with the last error instead.
    /// Default 30 s.
    pub retry_elapsed_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts_max: ATTEMPTS_MAX_DEFAULT,
            backoff_min: BACKOFF_MIN_DEFAULT,
            backoff_max: BACKOFF_MAX_DEFAULT,
            retry_elapsed_max: RETRY_ELAPSED_MAX_DEFAULT,
        }
    }
}

impl RetryPolicy {
    /// The pause after failed try `attempt` (1-based), before jitter: the
    /// exponential step, capped at `backoff_max`.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        // 2^20 times any sane minimum is past any sane maximum; capping the
        // exponent keeps the multiplication from overflowing.
        const DOUBLINGS_MAX: u32 = 20;
        let doublings = attempt.saturating_sub(1).min(DOUBLINGS_MAX);
        self.backoff_min
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }

    /// The pause after failed try `attempt`, with "equal jitter": uniform in
    /// `[ceiling/2, ceiling]`. `unit` maps a bound `n` to a uniform draw in
    /// `0..=n`; tests pass a fixed one.
    pub fn backoff(&self, attempt: u32, unit: impl FnOnce(u64) -> u64) -> Duration {
        let ceiling = u64::try_from(self.backoff_ceiling(attempt).as_micros()).unwrap_or(u64::MAX);
        let half = ceiling / 2;
        let jitter = unit(ceiling - half).min(ceiling - half);
        Duration::from_micros(half + jitter)
    }

    /// The pause after failed try `attempt`, with the jitter drawn at
    /// random: what a [`Client`](crate::Client) sleeps between tries, and
    /// a [`Worker`](crate::Worker) between failed fetches.
    pub fn backoff_random(&self, attempt: u32) -> Duration {
        self.backoff(attempt, |n| rand::random_range(0..=n))
    }

    fn validate(&self) -> Result<(), Error> {
        if self.attempts_max == 0 {
            return Err(Error::config(
                "retry.attempts_max",
                "must be at least 1 (1 means no retries)",
            ));
        }
        self.validate_backoff("retry.backoff_min", "retry.backoff_max")
    }

    /// Checks the two pause bounds, naming them `min_key` and `max_key` in
    /// the error: the worker keeps its fetch pauses under keys of its own.
    pub(crate) fn validate_backoff(&self, min_key: &str, max_key: &str) -> Result<(), Error> {
        if self.backoff_min.is_zero() {
            return Err(Error::config(min_key, "must be above zero"));
        }
        if self.backoff_max < self.backoff_min {
            return Err(Error::config(
                max_key,
                format!(
                    "{:?} is below {min_key} = {:?}",
                    self.backoff_max, self.backoff_min
                ),
            ));
        }
        Ok(())
    }
}

/// A bearer token, sent as `authorization: Bearer <token>` on every call.
/// Its `Debug` shows no part of it, so a logged configuration leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token holding `secret`, unchecked; [`ClientConfig::validate`]
    /// requires 1 to [`TOKEN_BYTES_MAX`] bytes of printable ASCII without
    /// spaces.
    pub fn new(secret: impl Into<String>) -> Token {
        Token(secret.into())
    }

    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// TLS towards the nodes: the CA their certificates chain to (PEM), and
/// optionally the name to expect in them when it is not the host of the
/// endpoint (an IP address is checked against the certificate's IP names).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The certificate(s) of the CA the nodes' certificates chain to, in
    /// PEM. Required; [`ClientConfig::validate`] checks that it holds a
    /// certificate.
    pub ca_pem: Vec<u8>,
    /// The name to expect in the nodes' certificates. `None` (the default)
    /// expects the host of each endpoint.
    pub domain_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("domain_name", &self.domain_name)
            .finish()
    }
}

/// Longest bearer token accepted: the node looks at no more than 1 KiB of
/// the `authorization` value.
pub const TOKEN_BYTES_MAX: usize = 1_000;

/// Where the client connects and how long it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Client addresses of any nodes of the cluster, `host:port` (an
    /// `http://` prefix is accepted). One is enough; more let the client
    /// carry on while some are down. No default: at least one is required.
    pub endpoints: Vec<String>,
    /// Longest wait for a TCP connection to a node. Default 2 s.
    pub connect_timeout: Duration,
    /// Longest wait for the answer to one try of a call. A fetch adds its
    /// long-poll wait to this. Default 10 s.
    pub call_timeout: Duration,
    /// Longest wait for one try of `bootstrap`, `join` or `remove`, which
    /// wait for membership changes. Default 65 s.
    pub membership_call_timeout: Duration,
    /// Longest a node may send nothing on a connection with calls in
    /// flight before the client drops it, and those calls fail over to
    /// another node (an enqueue is retried with its ids, so it is stored
    /// once). Half of it passes without a frame before an HTTP/2 ping is
    /// sent; the other half is the ping's deadline. A busy node answers
    /// pings from its connection task, so only a paused or cut-off node
    /// reaches it. Default 600 ms.
    pub silence_timeout: Duration,
    /// Largest message sent or received. Default 16 MiB, as the node.
    pub message_bytes_max: usize,
    /// Retries. Defaults: see [`RetryPolicy`].
    pub retry: RetryPolicy,
    /// TLS to the nodes; `None` (the default) speaks plaintext, which a node
    /// with TLS on refuses.
    pub tls: Option<ClientTls>,
    /// The bearer token for a node with `auth.mode = "token"`. Default none.
    pub token: Option<Token>,
    /// The local address every connection leaves from. Default none: the
    /// system picks. A host with several addresses, or a test that cuts
    /// links between loopback addresses, sets it.
    pub local_address: Option<std::net::IpAddr>,
}

impl ClientConfig {
    /// A configuration with the given endpoints and every other value at
    /// its default.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            call_timeout: CALL_TIMEOUT_DEFAULT,
            membership_call_timeout: MEMBERSHIP_CALL_TIMEOUT_DEFAULT,
            silence_timeout: SILENCE_TIMEOUT_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            retry: RetryPolicy::default(),
            tls: None,
            token: None,
            local_address: None,
        }
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), Error> {
        if self.endpoints.is_empty() {
            return Err(Error::config(
                "endpoints",
                "give the client address of at least one node",
            ));
        }
        if self.endpoints.len() > ENDPOINTS_MAX {
            return Err(Error::config(
                "endpoints",
                format!(
                    "{} given, at most ENDPOINTS_MAX = {ENDPOINTS_MAX}",
                    self.endpoints.len()
                ),
            ));
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            normalize_endpoint(endpoint)
                .map_err(|problem| Error::config(&format!("endpoints[{i}]"), problem))?;
            if endpoint.trim().starts_with("https://") && self.tls.is_none() {
                return Err(Error::config(
                    "tls",
                    format!("endpoints[{i}] is `{endpoint}`, but no CA is given for TLS"),
                ));
            }
        }
        self.validate_settings()
    }

    /// Checks every value but the endpoints, for a client given its
    /// channel ready-made ([`Client::over_channel`](crate::Client::over_channel)).
    pub(crate) fn validate_settings(&self) -> Result<(), Error> {
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("call_timeout", self.call_timeout),
            ("membership_call_timeout", self.membership_call_timeout),
            ("silence_timeout", self.silence_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::config(key, "must be above zero"));
            }
        }
        if self.message_bytes_max == 0 {
            return Err(Error::config("message_bytes_max", "must be above zero"));
        }
        if let Some(token) = &self.token {
            let secret = token.secret();
            if secret.is_empty() || secret.len() > TOKEN_BYTES_MAX {
                return Err(Error::config(
                    "token",
                    format!("must be 1 to TOKEN_BYTES_MAX = {TOKEN_BYTES_MAX} bytes"),
                ));
            }
            if !secret.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::config(
                    "token",
                    "must be printable ASCII without spaces (it travels in gRPC metadata)",
                ));
            }
        }
        if let Some(tls) = &self.tls {
            if !String::from_utf8_lossy(&tls.ca_pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(Error::config(
                    "tls.ca_pem",
                    "is not a PEM certificate (no `-----BEGIN CERTIFICATE-----`)",
                ));
            }
        }
        self.retry.validate()
    }
}

/// `host:port` from what a person wrote: trims, drops an `http://` or
/// `https://` prefix and a trailing `/`, and insists on a port. Whether TLS
/// is spoken is [`ClientConfig::tls`]'s to say, for every endpoint alike;
/// an `https://` endpoint without it is refused by `validate`.
pub(crate) fn normalize_endpoint(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    let bare = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"))
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    if bare.is_empty() {
        return Err("is empty; give `host:port`".to_string());
    }
    if bare.contains('/') || bare.contains("://") {
        return Err(format!("`{raw}` is not `host:port`"));
    }
    let port = bare.rsplit_once(':').map(|(_, p)| p);
    match port.map(str::parse::<u16>) {
        Some(Ok(p)) if p != 0 => Ok(bare.to_string()),
        _ => Err(format!("`{raw}` has no port; give `host:port`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_maximum() {
        let p = RetryPolicy {
            attempts_max: 10,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            retry_elapsed_max: Duration::from_secs(30),
        };
        let ceilings: Vec<u64> = (1..=7)
            .map(|n| p.backoff_ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [20, 40, 80, 160, 320, 500, 500]);
        // Far past the cap, and with no overflow.
        assert_eq!(p.backoff_ceiling(u32::MAX), Duration::from_millis(500));
        assert_eq!(p.backoff_ceiling(0), Duration::from_millis(20));
    }

    #[test]
    fn jitter_stays_within_half_and_all_of_the_ceiling() {
        let p = RetryPolicy::default();
        for attempt in 1..=12 {
            let ceiling = p.backoff_ceiling(attempt);
            assert_eq!(p.backoff(attempt, |_| 0), ceiling / 2);
            assert_eq!(p.backoff(attempt, |n| n), ceiling);
            // A draw out of range is clamped, never exceeds the ceiling.
            assert_eq!(p.backoff(attempt, |_| u64::MAX), ceiling);
            for _ in 0..50 {
                let d = p.backoff_random(attempt);
                assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}");
            }
        }
    }

    type Change = Box<dyn Fn(&mut ClientConfig)>;

    #[test]
    fn defaults_are_valid_and_each_bad_value_names_its_key() {
        let good = ClientConfig::new(["127.0.0.1:7100"]);
        good.validate().expect("defaults are valid");
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.endpoints.clear()), "endpoints"),
            (
                Box::new(|c| c.endpoints.push("nohost".into())),
                "endpoints[1]",
            ),
            (
                Box::new(|c| c.endpoints = vec!["https://a:1".into()]),
                "tls",
            ),
            (
                Box::new(|c| c.token = Some(Token::new("has space"))),
                "token",
            ),
            (Box::new(|c| c.token = Some(Token::new(""))), "token"),
            (
                Box::new(|c| {
                    c.tls = Some(ClientTls {
                        ca_pem: b"junk".to_vec(),
                        domain_name: None,
                    })
                }),
                "tls.ca_pem",
            ),
            (
                Box::new(|c| c.call_timeout = Duration::ZERO),
                "call_timeout",
            ),
            (
                Box::new(|c| c.connect_timeout = Duration::ZERO),
                "connect_timeout",
            ),
            (Box::new(|c| c.message_bytes_max = 0), "message_bytes_max"),
            (Box::new(|c| c.retry.attempts_max = 0), "retry.attempts_max"),
            (
                Box::new(|c| c.retry.backoff_min = Duration::ZERO),
                "retry.backoff_min",
            ),
            (
                Box::new(|c| c.retry.backoff_max = Duration::from_millis(1)),
                "retry.backoff_max",
            ),
        ];
        for (change, key) in cases {
            let mut c = good.clone();
            change(&mut c);
            match c.validate() {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn endpoints_are_normalized_to_host_and_port() {
        assert_eq!(
            normalize_endpoint(" 127.0.0.1:7100 "),
            Ok("127.0.0.1:7100".into())
        );
        assert_eq!(normalize_endpoint("http://n1:7100/"), Ok("n1:7100".into()));
        assert_eq!(normalize_endpoint("https://n1:7100"), Ok("n1:7100".into()));
        assert_eq!(normalize_endpoint("[::1]:7100"), Ok("[::1]:7100".into()));
        for bad in ["", "n1", "n1:", "n1:0", "n1:99999", "http://n1:1/x"] {
            assert!(normalize_endpoint(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod secrecy {
    use super::*;

    #[test]
    fn a_logged_config_shows_no_token() {
        let mut c = ClientConfig::new(["127.0.0.1:7100"]);
        c.token = Some(Token::new("s3cret-token-value"));
        let text = format!("{c:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }
}
