//! Client authentication and authorization: bearer tokens with
//! `produce`, `consume` and `admin` permissions, each limited to queue-name
//! patterns.
//!
//! A token is never kept or compared as text: the file gives its SHA-256
//! (or the secret, hashed at load), a presented token is hashed, and the
//! digest is compared with every configured one in constant time, so
//! neither the timing nor an early exit tells how much of a guess was right.
//! Tokens are never logged; a token's `name` is what logs and errors show.
//!
//! Which call needs what (the README's "Security" section says the same):
//! - `Enqueue`: `produce` on the queue;
//! - `Fetch`, `Ack`, `Nack`, `Extend`, `Release`, `DeadLetter`: `consume`;
//! - `CreateQueue`, `UpdateQueue`, `DeleteQueue`, `PauseGroup`,
//!   `ResumeGroup`, `RequeueDeadLetter`, `PurgeDeadLetters`: `admin`;
//! - `GetQueue`, `ListGroups`, `ListDeadLetters`: any permission on the queue;
//! - `ListQueues`: any valid token, and it lists only the queues the token
//!   has some permission on;
//! - `Cluster.Status`: any valid token;
//! - `Cluster.Bootstrap`, `Join`, `Remove`: `admin` on every queue (`"*"`).
//!
//! The check runs before a request is turned into a command, so a refused
//! call changes nothing.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::config::{AuthConfig, ConfigError, AUTH_MODE_TOKEN};

/// Shortest secret accepted in a tokens file: 16 bytes of text. A generated
/// token (`lockstep token`) has 32 random bytes.
pub const SECRET_BYTES_MIN: usize = 16;
/// Most tokens in one file; each call compares against all of them.
pub const TOKENS_MAX: usize = 1_024;
/// Most patterns per permission of one token.
pub const PATTERNS_MAX: usize = 64;
/// Longest `authorization` value looked at; longer ones are refused unread.
pub const HEADER_BYTES_MAX: usize = 1_024;

/// The pattern that names every queue; `admin` on it also allows the
/// cluster calls.
pub const ALL_QUEUES: &str = "*";

/// What a token may do on the queues its patterns name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Enqueue.
    Produce,
    /// Fetch, ack, nack, extend, release and dead-letter.
    Consume,
    /// Create, update and delete queues, and manage groups and dead
    /// letters; on `*`, also the cluster calls.
    Admin,
}

impl Permission {
    fn name(self) -> &'static str {
        match self {
            Permission::Produce => "produce",
            Permission::Consume => "consume",
            Permission::Admin => "admin",
        }
    }
}

/// A queue-name pattern: `*` matches any run of characters (none
/// included), every other character itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Whether the pattern matches the whole of `name`.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// Iterative glob with `*` only: linear backtracking to the last star.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// One configured token: its name, the SHA-256 of its secret, and what it
/// may do.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The token's name, for logs and errors; never its secret.
    pub name: String,
    digest: [u8; 32],
    produce: Vec<Pattern>,
    consume: Vec<Pattern>,
    admin: Vec<Pattern>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The digest is left out: it is as good as the secret to a guesser
        // with the file, and logs are read by more people than the file.
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("produce", &self.produce)
            .field("consume", &self.consume)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Token {
    fn patterns(&self, permission: Permission) -> &[Pattern] {
        match permission {
            Permission::Produce => &self.produce,
            Permission::Consume => &self.consume,
            Permission::Admin => &self.admin,
        }
    }

    /// Whether the token has `permission` on `queue`.
    pub fn allows(&self, permission: Permission, queue: &str) -> bool {
        self.patterns(permission).iter().any(|p| p.matches(queue))
    }

    /// Whether the token has any permission on `queue` (for reads).
    pub fn sees(&self, queue: &str) -> bool {
        [Permission::Produce, Permission::Consume, Permission::Admin]
            .iter()
            .any(|&p| self.allows(p, queue))
    }

    fn allows_cluster(&self) -> bool {
        self.admin.iter().any(|p| p.0 == ALL_QUEUES)
    }
}

/// The SHA-256 of `secret`, as stored in a tokens file.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// `bytes` as lowercase hexadecimal, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A tokens file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_sha256: Option<String>,
    #[serde(default)]
    produce: Vec<String>,
    #[serde(default)]
    consume: Vec<String>,
    #[serde(default)]
    admin: Vec<String>,
}

/// The client authentication of a node.
#[derive(Clone, Debug)]
pub struct Auth {
    /// `None`: auth is off and every call is allowed.
    tokens: Option<Vec<Token>>,
}

/// Who made a call: nobody in particular (auth off) or a token.
#[derive(Clone, Copy, Debug)]
pub enum Caller<'a> {
    /// Auth is off: every call is allowed.
    Anyone,
    /// The configured token the call presented.
    Token(&'a Token),
}

impl Caller<'_> {
    /// Whether the caller may see `queue` at all (filters `ListQueues`).
    pub fn sees(&self, queue: &str) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Token(t) => t.sees(queue),
        }
    }
}

impl Auth {
    /// Auth off: every call is allowed (the default).
    pub fn off() -> Auth {
        Auth { tokens: None }
    }

    /// Whether calls must present a token.
    pub fn is_on(&self) -> bool {
        self.tokens.is_some()
    }

    /// The node's auth from its configuration: reads `auth.tokens_file`
    /// when `auth.mode` is "token". Errors name the key, or the file and
    /// the token at fault.
    pub fn load(config: &AuthConfig) -> Result<Auth, ConfigError> {
        if config.mode != AUTH_MODE_TOKEN {
            return Ok(Auth::off());
        }
        let path = Path::new(&config.tokens_file);
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            key: "auth.tokens_file".into(),
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Auth::parse(&text, &path.display().to_string())
    }

    /// Parses a tokens file's text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Auth, ConfigError> {
        let fail = |message: String| ConfigError::Invalid {
            key: "auth.tokens_file".into(),
            message: format!("{source}: {message}"),
        };
        let file: TokensFile = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        if file.token.len() > TOKENS_MAX {
            return Err(fail(format!(
                "{} tokens, at most TOKENS_MAX = {TOKENS_MAX}",
                file.token.len()
            )));
        }
        let mut tokens: Vec<Token> = Vec::with_capacity(file.token.len());
        for (i, entry) in file.token.into_iter().enumerate() {
            let at = format!("token {} (`{}`)", i + 1, entry.name);
            if entry.name.trim().is_empty() {
                return Err(fail(format!("token {}: `name` is empty", i + 1)));
            }
            let digest = match (&entry.secret, &entry.secret_sha256) {
                (Some(secret), None) => {
                    if secret.len() < SECRET_BYTES_MIN {
                        return Err(fail(format!(
                            "{at}: `secret` is {} bytes, at least SECRET_BYTES_MIN = \
                             {SECRET_BYTES_MIN}",
                            secret.len()
                        )));
                    }
                    digest(secret)
                }
                (None, Some(hash)) => unhex(hash)
                    .ok_or_else(|| fail(format!("{at}: `secret_sha256` is not 64 hex digits")))?,
                _ => {
                    return Err(fail(format!(
                        "{at}: give exactly one of `secret` and `secret_sha256`"
                    )))
                }
            };
            if tokens.iter().any(|t| t.digest == digest) {
                return Err(fail(format!("{at}: the same secret as an earlier token")));
            }
            let patterns = |key: &str, list: Vec<String>| -> Result<Vec<Pattern>, ConfigError> {
                if list.len() > PATTERNS_MAX {
                    return Err(fail(format!(
                        "{at}: `{key}` has {} patterns, at most PATTERNS_MAX = {PATTERNS_MAX}",
                        list.len()
                    )));
                }
                if list.iter().any(|p| p.is_empty()) {
                    return Err(fail(format!("{at}: `{key}` has an empty pattern")));
                }
                Ok(list.into_iter().map(Pattern).collect())
            };
            tokens.push(Token {
                produce: patterns("produce", entry.produce)?,
                consume: patterns("consume", entry.consume)?,
                admin: patterns("admin", entry.admin)?,
                name: entry.name,
                digest,
            });
        }
        if tokens.is_empty() {
            return Err(fail(
                "no [[token]]: with auth.mode = \"token\" and no token, every call \
                 would be refused"
                    .into(),
            ));
        }
        Ok(Auth {
            tokens: Some(tokens),
        })
    }

    /// The caller of a call with `metadata`: UNAUTHENTICATED without a
    /// valid bearer token (when auth is on).
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller<'_>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(Caller::Anyone);
        };
        let value = metadata.get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "no `authorization` metadata: this node requires `authorization: Bearer <token>`",
            )
        })?;
        let bytes = value.as_bytes();
        if bytes.len() > HEADER_BYTES_MAX {
            return Err(Status::unauthenticated(format!(
                "`authorization` is longer than HEADER_BYTES_MAX = {HEADER_BYTES_MAX} bytes"
            )));
        }
        let text = std::str::from_utf8(bytes).unwrap_or("");
        let presented = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("`authorization` is not of the form `Bearer <token>`")
            })?;
        let presented = digest(presented.trim());
        // Every token is compared, whatever matched, so the time taken does
        // not say which (or whether) one did.
        let mut found: Option<usize> = None;
        for (i, token) in tokens.iter().enumerate() {
            if bool::from(token.digest.ct_eq(&presented)) {
                found = found.or(Some(i));
            }
        }
        match found {
            Some(i) => Ok(Caller::Token(&tokens[i])),
            None => Err(Status::unauthenticated("the bearer token is not valid")),
        }
    }

    /// Allows a call that needs `permission` on `queue`, or says why not:
    /// UNAUTHENTICATED or PERMISSION_DENIED.
    pub fn authorize(
        &self,
        metadata: &MetadataMap,
        permission: Permission,
        queue: &str,
    ) -> Result<(), Status> {
        match self.authenticate(metadata)? {
            Caller::Anyone => Ok(()),
            Caller::Token(t) if t.allows(permission, queue) => Ok(()),
            Caller::Token(t) => Err(Status::permission_denied(format!(
                "token `{}` has no `{}` permission on queue `{queue}`",
                t.name,
                permission.name()
            ))),
        }
    }

    /// Allows a read of `queue`: any permission on it.
    pub fn authorize_read(&self, metadata: &MetadataMap, queue: &str) -> Result<(), Status> {
        match self.authenticate(metadata)? {
            Caller::Anyone => Ok(()),
            Caller::Token(t) if t.sees(queue) => Ok(()),
            Caller::Token(t) => Err(Status::permission_denied(format!(
                "token `{}` has no permission on queue `{queue}`",
                t.name
            ))),
        }
    }

    /// Allows a cluster change: `admin` on every queue (`"*"`).
    pub fn authorize_cluster(&self, metadata: &MetadataMap) -> Result<(), Status> {
        match self.authenticate(metadata)? {
            Caller::Anyone => Ok(()),
            Caller::Token(t) if t.allows_cluster() => Ok(()),
            Caller::Token(t) => Err(Status::permission_denied(format!(
                "token `{}` may not change the cluster: that needs `admin = [\"*\"]`",
                t.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tonic::Code;

    const FILE: &str = r#"
[[token]]
name = "orders-app"
secret = "orders-secret-0123456789"
produce = ["orders", "orders-*"]
consume = ["orders*"]

[[token]]
name = "ops"
secret_sha256 = "SHA"
admin = ["*"]
"#;

    fn auth() -> Auth {
        let text = FILE.replace("SHA", &hex(&digest("ops-secret-0123456789")));
        Auth::parse(&text, "tokens.toml").unwrap()
    }

    fn bearer(token: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", format!("Bearer {token}").parse().unwrap());
        m
    }

    #[test]
    fn patterns_match_with_stars() {
        let p = |s: &str| Pattern(s.into());
        assert!(p("*").matches("anything"));
        assert!(p("*").matches(""));
        assert!(p("orders").matches("orders"));
        assert!(!p("orders").matches("orders2"));
        assert!(p("orders-*").matches("orders-eu"));
        assert!(!p("orders-*").matches("orders"));
        assert!(p("a*b*c").matches("aXXbYYc"));
        assert!(p("a*b*c").matches("abc"));
        assert!(!p("a*b*c").matches("aXXbYY"));
        assert!(p("*-eu").matches("orders-eu"));
        assert!(!p("*-eu").matches("orders-us"));
    }

    #[test]
    fn each_case_gets_its_code() {
        let a = auth();
        let code = |r: Result<(), Status>| r.err().map(|s| s.code());
        let orders = bearer("orders-secret-0123456789");
        let ops = bearer("ops-secret-0123456789");
        assert_eq!(
            code(a.authorize(&orders, Permission::Produce, "orders")),
            None
        );
        assert_eq!(
            code(a.authorize(&orders, Permission::Produce, "orders-eu")),
            None
        );
        assert_eq!(
            code(a.authorize(&orders, Permission::Produce, "billing")),
            Some(Code::PermissionDenied)
        );
        assert_eq!(
            code(a.authorize(&orders, Permission::Admin, "orders")),
            Some(Code::PermissionDenied)
        );
        assert_eq!(code(a.authorize_read(&orders, "ordersx")), None);
        assert_eq!(
            code(a.authorize_read(&orders, "billing")),
            Some(Code::PermissionDenied)
        );
        assert_eq!(
            code(a.authorize_cluster(&orders)),
            Some(Code::PermissionDenied)
        );
        assert_eq!(code(a.authorize(&ops, Permission::Admin, "billing")), None);
        assert_eq!(code(a.authorize_cluster(&ops)), None);
        for bad in [
            MetadataMap::new(),
            bearer("orders-secret-012345678"),
            bearer(""),
        ] {
            assert_eq!(
                code(a.authorize(&bad, Permission::Produce, "orders")),
                Some(Code::Unauthenticated)
            );
        }
        let mut basic = MetadataMap::new();
        basic.insert("authorization", "Basic b3JkZXJz".parse().unwrap());
        assert_eq!(
            code(a.authorize(&basic, Permission::Produce, "orders")),
            Some(Code::Unauthenticated)
        );
        // Off: everything is allowed, no token needed.
        assert_eq!(
            code(Auth::off().authorize_cluster(&MetadataMap::new())),
            None
        );
    }

    #[test]
    fn a_refusal_names_the_token_but_never_its_secret() {
        let a = auth();
        let status = a
            .authorize(
                &bearer("orders-secret-0123456789"),
                Permission::Admin,
                "orders",
            )
            .unwrap_err();
        assert!(status.message().contains("`orders-app`"), "{status:?}");
        assert!(!status.message().contains("orders-secret"), "{status:?}");
        let debug = format!("{a:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(
            !debug.contains(&hex(&digest("ops-secret-0123456789"))),
            "{debug}"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_token_named() {
        let cases = [
            ("[[token]]\nname = \"a\"\nsecret = \"short\"\n", "SECRET_BYTES_MIN"),
            ("[[token]]\nname = \"a\"\n", "exactly one"),
            (
                "[[token]]\nname = \"a\"\nsecret_sha256 = \"xyz\"\n",
                "64 hex digits",
            ),
            ("[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\nproduce = [\"\"]\n", "empty pattern"),
            (
                "[[token]]\nname = \"a\"\nsecret = \"0123456789abcdef\"\n[[token]]\nname = \"b\"\nsecret = \"0123456789abcdef\"\n",
                "same secret",
            ),
            ("", "no [[token]]"),
            ("[[token]]\nname = \"a\"\nsecrt = \"x\"\n", "secrt"),
        ];
        for (text, says) in cases {
            let err = Auth::parse(text, "t.toml").unwrap_err().to_string();
            assert!(err.contains("auth.tokens_file"), "{err}");
            assert!(err.contains(says), "`{err}` should say {says}");
        }
    }
}
