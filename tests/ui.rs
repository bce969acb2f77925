//! Black-box: the dashboard's JSON API (`ui_addr`) of one real `lockstep
//! node` process with auth on. Proves that the API keeps the client API's
//! token rules (no token: 401; a token without `admin`: 403 and nothing
//! changes; an admin token: the change is made), that bad input gets a
//! typed JSON error naming the parameter and its bound, that the page and
//! its assets are served from the binary, that a taken `ui_addr` stops
//! start-up naming the key, and that a TLS node serves the dashboard over
//! TLS with its own certificate. The browser test of
//! the page itself is scripts/ui-test. Every wait is bounded.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_port;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest one HTTP call of the test may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a CLI call of the test may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node that must refuse to start may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

const ADMIN: &str = "admin-secret-aaaaaaaaaaaaaaaa";
const READER: &str = "reader-secret-bbbbbbbbbbbbbbbb";

/// A node process, killed when the test ends however it ends.
struct NodeProcess {
    child: Child,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tokens_file(dir: &Path) -> String {
    let path = dir.join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[token]]
name = "ops"
secret = "{ADMIN}"
produce = ["*"]
consume = ["*"]
admin = ["*"]

[[token]]
name = "reader"
secret = "{READER}"
consume = ["*"]
"#
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn node(dir: &Path, peer: &str, client: &str, ui: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(lockstep_harness::lockstep_binary());
    command
        .args(["node", "--id", "1"])
        .args(["--peer-addr", peer])
        .args(["--client-addr", client])
        .args(["--ui-addr", ui])
        .args(["--data-dir", &dir.join("n1").display().to_string()])
        .args(extra)
        .env("LOCKSTEP_LOG", "warn")
        .env("NO_COLOR", "1");
    command
}

/// Runs the CLI with the admin token against `client`, within
/// [`CLI_TIMEOUT`]; its stdout, or None while it fails.
fn cli(client: &str, args: &[&str]) -> Option<String> {
    let mut child = Command::new(lockstep_harness::lockstep_binary())
        .args(["--addr", client])
        .args(args)
        .env("LOCKSTEP_TOKEN", ADMIN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + CLI_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
            return status.success().then_some(out);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`lockstep {}` did not finish within {CLI_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.0 call: its status code and body.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    tokio::time::timeout(HTTP_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut request = format!("{method} {path} HTTP/1.0\r\nHost: lockstep\r\n");
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let body = body.unwrap_or("");
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        (code, body.to_string())
    })
    .await
    .unwrap_or_else(|_| panic!("{method} {path} took more than {HTTP_TIMEOUT:?}"))
}

/// A call that must fail: its HTTP status, and its typed error's code and
/// message.
async fn refused(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let (status, text) = http(addr, method, path, token, body).await;
    let json: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: `{text}` is not JSON: {e}"));
    let error = &json["error"];
    (
        status,
        error["code"].as_str().unwrap_or_default().to_string(),
        error["message"].as_str().unwrap_or_default().to_string(),
    )
}

async fn ok(addr: &str, method: &str, path: &str, token: &str, body: Option<&str>) -> Value {
    let (status, text) = http(addr, method, path, Some(token), body).await;
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

async fn paused_groups(ui: &str) -> Vec<String> {
    let v = ok(
        ui,
        "GET",
        "/api/groups?queue=jobs&status=paused",
        ADMIN,
        None,
    )
    .await;
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_keeps_the_token_rules_and_types_its_errors() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let [peer, client, ui] =
            [free_port(), free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
        let tokens = tokens_file(dir.path());
        let child = node(
            dir.path(),
            &peer,
            &client,
            &ui,
            &[
                "--set",
                "auth.mode=token",
                "--set",
                &format!("auth.tokens_file={tokens}"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let _node = NodeProcess { child };

        // Formed, a queue made and a job enqueued through the CLI, which
        // uses client sessions.
        let member = format!("1={peer}/{client}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while cli(&client, &["cluster", "bootstrap", "--member", &member]).is_none() {
            assert!(Instant::now() < deadline, "the node never formed a cluster");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        while cli(&client, &["queue", "create", "jobs"]).is_none() {
            assert!(Instant::now() < deadline, "no leader to create the queue");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cli(&client, &["enqueue", "jobs", "--group", "g", "--data", "x"]).unwrap();

        // The page and its assets come from the binary.
        let (status, page) = http(&ui, "GET", "/", None, None).await;
        assert_eq!(status, 200);
        assert!(page.contains("<title>Lockstep</title>"), "{page}");
        for asset in ["/app.js", "/style.css"] {
            assert_eq!(http(&ui, "GET", asset, None, None).await.0, 200, "{asset}");
        }
        let bounds = ok(&ui, "GET", "/api/ui", READER, None).await;
        assert_eq!(bounds["auth"], Value::Bool(true));

        // Reads: a token is needed, any valid one sees the queue.
        let (status, code, _) = refused(&ui, "GET", "/api/queues", None, None).await;
        assert_eq!((status, code.as_str()), (401, "UNAUTHENTICATED"));
        let (status, code, _) =
            refused(&ui, "GET", "/api/cluster", Some("not-a-token-at-all"), None).await;
        assert_eq!((status, code.as_str()), (401, "UNAUTHENTICATED"));
        let queues = ok(&ui, "GET", "/api/queues", READER, None).await;
        assert_eq!(queues["queues"][0]["name"], "jobs");
        assert_eq!(queues["queues"][0]["ready"], 1);
        assert_eq!(queues["queues"][0]["totals"]["enqueued"], 1);
        let cluster = ok(&ui, "GET", "/api/cluster", READER, None).await;
        assert_eq!(cluster["leader_id"], 1);
        assert_eq!(cluster["lag_from"], 1);
        assert_eq!(cluster["members"][0]["lag"], 0);

        // A change needs `admin`: refused without it, and nothing changed.
        let pause = r#"{"queue": "jobs", "group": "g"}"#;
        let (status, code, _) = refused(&ui, "POST", "/api/groups/pause", None, Some(pause)).await;
        assert_eq!((status, code.as_str()), (401, "UNAUTHENTICATED"));
        let (status, code, message) =
            refused(&ui, "POST", "/api/groups/pause", Some(READER), Some(pause)).await;
        assert_eq!((status, code.as_str()), (403, "PERMISSION_DENIED"));
        assert!(
            message.contains("`reader`") && message.contains("admin"),
            "{message}"
        );
        let requeue = r#"{"queue": "jobs", "offset": 0}"#;
        let (status, code, _) = refused(
            &ui,
            "POST",
            "/api/dead-letters/requeue",
            Some(READER),
            Some(requeue),
        )
        .await;
        assert_eq!((status, code.as_str()), (403, "PERMISSION_DENIED"));
        let purge = r#"{"queue": "jobs", "offsets": []}"#;
        let (status, code, _) = refused(
            &ui,
            "POST",
            "/api/dead-letters/purge",
            Some(READER),
            Some(purge),
        )
        .await;
        assert_eq!((status, code.as_str()), (403, "PERMISSION_DENIED"));
        assert!(paused_groups(&ui).await.is_empty());

        // With `admin` the change is made, through the same handler.
        let v = ok(&ui, "POST", "/api/groups/pause", ADMIN, Some(pause)).await;
        assert_eq!(v["paused"], Value::Bool(true));
        assert_eq!(paused_groups(&ui).await, vec!["g".to_string()]);
        ok(&ui, "POST", "/api/groups/resume", ADMIN, Some(pause)).await;
        assert!(paused_groups(&ui).await.is_empty());

        // Bad input: a typed error naming the parameter (and its bound).
        let cases: [BadCall; 12] = [
            (
                "GET",
                "/api/groups",
                None,
                400,
                "INVALID_ARGUMENT",
                "`queue`",
            ),
            (
                "GET",
                "/api/groups?queue=jobs&limit=5000",
                None,
                400,
                "INVALID_ARGUMENT",
                "PAGE_MAX = 100",
            ),
            (
                "GET",
                "/api/groups?queue=jobs&limit=0",
                None,
                400,
                "INVALID_ARGUMENT",
                "`limit`",
            ),
            (
                "GET",
                "/api/groups?queue=jobs&sort=size",
                None,
                400,
                "INVALID_ARGUMENT",
                "`sort`",
            ),
            (
                "GET",
                "/api/groups?queue=jobs&status=gone",
                None,
                400,
                "INVALID_ARGUMENT",
                "`status`",
            ),
            (
                "GET",
                "/api/groups?queue=jobs&sort=age&after=g",
                None,
                400,
                "INVALID_ARGUMENT",
                "`after`",
            ),
            (
                "GET",
                "/api/groups?queue=jobs&colour=red",
                None,
                400,
                "INVALID_ARGUMENT",
                "`colour`",
            ),
            (
                "GET",
                "/api/dead-letters?queue=jobs&after=abc",
                None,
                400,
                "INVALID_ARGUMENT",
                "`after`",
            ),
            (
                "GET",
                "/api/groups?queue=nope",
                None,
                404,
                "NOT_FOUND",
                "nope",
            ),
            (
                "POST",
                "/api/groups/pause",
                Some("not json"),
                400,
                "INVALID_ARGUMENT",
                "`body`",
            ),
            (
                "POST",
                "/api/dead-letters/requeue",
                Some(r#"{"queue": "jobs", "offset": "x"}"#),
                400,
                "INVALID_ARGUMENT",
                "`body`",
            ),
            (
                "GET",
                "/api/nothing-here",
                None,
                404,
                "NOT_FOUND",
                "no such",
            ),
        ];
        for (method, path, body, want_status, want_code, says) in cases {
            let (status, code, message) = refused(&ui, method, path, Some(ADMIN), body).await;
            assert_eq!(
                (status, code.as_str()),
                (want_status, want_code),
                "{method} {path}: {message}"
            );
            assert!(
                message.contains(says),
                "{method} {path}: `{message}` should name {says}"
            );
        }
        let many: Vec<u64> = (0..1_001).collect();
        let body = serde_json::json!({"queue": "jobs", "offsets": many}).to_string();
        let (status, code, message) = refused(
            &ui,
            "POST",
            "/api/dead-letters/purge",
            Some(ADMIN),
            Some(&body),
        )
        .await;
        assert_eq!((status, code.as_str()), (400, "INVALID_ARGUMENT"));
        assert!(message.contains("PURGE_OFFSETS_MAX"), "{message}");
        // The node is still up and answering after all of that.
        ok(&ui, "GET", "/api/cluster", READER, None).await;
    })
    .await
    .expect("the test took too long");
}

/// A bad call: method, path, body, and the HTTP status, gRPC code and
/// words its error must have.
type BadCall = (
    &'static str,
    &'static str,
    Option<&'static str>,
    u16,
    &'static str,
    &'static str,
);

/// Waits (bounded) for a node that must refuse to start; its stderr.
fn refused_start(mut command: Command, dir: &Path) -> String {
    let log = dir.join("refused.txt");
    let mut child = command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "the node started");
            return std::fs::read_to_string(&log).unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the node did not stop within {EXIT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_taken_ui_addr_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let [peer, client] = [free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let ui = taken.local_addr().unwrap().to_string();
    let text = refused_start(node(dir.path(), &peer, &client, &ui, &[]), dir.path());
    assert!(text.contains("ui_addr"), "{text}");
}

/// With TLS on, the dashboard speaks TLS with the node's certificate, as
/// the client port does: a client that trusts the cluster CA gets the
/// page and its API over HTTPS, and plain HTTP gets no page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_node_serves_its_dashboard_over_tls() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls;

    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let made = Command::new(lockstep_harness::lockstep_binary())
            .args(["dev-certs", "--out"])
            .arg(&certs)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(made.success(), "dev-certs");
        let file = |name: &str| certs.join(name).display().to_string();
        let settings = [
            format!("tls.cert_file={}", file("node-1.pem")),
            format!("tls.key_file={}", file("node-1.key")),
            format!("tls.ca_file={}", file("ca.pem")),
        ];
        let mut extra = Vec::new();
        for s in &settings {
            extra.extend(["--set", s.as_str()]);
        }
        let [peer, client, ui] =
            [free_port(), free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
        let child = node(dir.path(), &peer, &client, &ui, &extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _node = NodeProcess { child };

        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let request = "GET /api/ui HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let deadline = Instant::now() + HTTP_TIMEOUT;
        let answer = loop {
            let tried = async {
                let tcp = tokio::net::TcpStream::connect(&ui).await.ok()?;
                let mut tls = connector.connect(name.clone(), tcp).await.ok()?;
                tls.write_all(request.as_bytes()).await.ok()?;
                let mut answer = Vec::new();
                let _ = tls.read_to_end(&mut answer).await;
                Some(String::from_utf8_lossy(&answer).into_owned())
            };
            if let Some(answer) = tried.await {
                break answer;
            }
            assert!(Instant::now() < deadline, "no TLS answer on {ui}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("poll_ms"), "{answer}");

        // Plain HTTP to the same port gets no page.
        let mut plain = tokio::net::TcpStream::connect(&ui).await.unwrap();
        plain.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(HTTP_TIMEOUT, plain.read_to_end(&mut answer)).await;
        assert!(
            !String::from_utf8_lossy(&answer).contains("poll_ms"),
            "plain HTTP was answered"
        );
    })
    .await
    .expect("the test finished in time");
}
