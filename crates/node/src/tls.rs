//! Transport security of a node: TLS on the client port, mutual TLS on the
//! peer port and on every connection this node opens to a peer.
//!
//! One certificate serves both ports, and is also this node's client
//! certificate towards its peers; `lockstep dev-certs` makes such
//! certificates (server and client use, the node's IP as a subject
//! alternative name). A peer connection is refused, both ways, unless the
//! other side's certificate chains to the cluster CA (`tls.ca_file`).

use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

use crate::config::{ConfigError, TlsConfig};

/// Largest PEM file read (a certificate chain or key is a few KiB).
pub const PEM_BYTES_MAX: u64 = 1024 * 1024;

/// The TLS settings of a node, ready for tonic.
#[derive(Clone, Debug)]
pub struct NodeTls {
    /// The dashboard's server (`ui_addr`): the client port's certificate,
    /// no client certificate asked, HTTP/2 or HTTP/1.1.
    pub ui_server: std::sync::Arc<tokio_rustls::rustls::ServerConfig>,
    /// The client port: TLS with this node's certificate; clients need no
    /// certificate of their own (they authenticate with tokens).
    pub client_server: ServerTlsConfig,
    /// The peer port: TLS, and the caller must show a certificate that
    /// chains to the cluster CA.
    pub peer_server: ServerTlsConfig,
    /// Connections to peers: their certificate must chain to the cluster
    /// CA, and this node shows its own.
    pub peer_client: ClientTlsConfig,
}

fn read_pem(key: &str, path: &str, marker: &str) -> Result<Vec<u8>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: key.into(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
    if meta.len() > PEM_BYTES_MAX {
        return Err(invalid(format!(
            "{path} is {} bytes, more than PEM_BYTES_MAX = {PEM_BYTES_MAX}",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains("-----BEGIN ") || !text.contains(marker) {
        return Err(invalid(format!(
            "{path} is not a PEM file with a `{marker}` block"
        )));
    }
    Ok(bytes)
}

/// Reads the files of `config` (`None` when TLS is off) and checks that
/// tonic accepts them; every error names the key at fault.
pub fn load(config: &TlsConfig) -> Result<Option<NodeTls>, ConfigError> {
    if !config.enabled() {
        return Ok(None);
    }
    let cert = read_pem("tls.cert_file", &config.cert_file, "CERTIFICATE-----")?;
    let key = read_pem("tls.key_file", &config.key_file, "PRIVATE KEY-----")?;
    let ca = read_pem("tls.ca_file", &config.ca_file, "CERTIFICATE-----")?;
    let ui_server = ui_server_config(&cert, &key).map_err(|message| ConfigError::Invalid {
        key: "tls.cert_file".into(),
        message: format!(
            "{} / tls.key_file {}: {message}",
            config.cert_file, config.key_file
        ),
    })?;
    let identity = Identity::from_pem(cert, key);
    let ca = Certificate::from_pem(ca);
    let client_server = ServerTlsConfig::new().identity(identity.clone());
    let peer_server = ServerTlsConfig::new()
        .identity(identity.clone())
        .client_ca_root(ca.clone());
    let peer_client = ClientTlsConfig::new().ca_certificate(ca).identity(identity);
    // tonic parses the PEM when a server takes the config: do it now, so a
    // bad file stops start-up with its key named rather than at the first
    // connection.
    Server::builder()
        .tls_config(peer_server.clone())
        .map_err(|e| ConfigError::Invalid {
            key: "tls.cert_file".into(),
            message: format!(
                "{} / tls.key_file {} / tls.ca_file {}: {e}",
                config.cert_file, config.key_file, config.ca_file
            ),
        })?;
    Ok(Some(NodeTls {
        ui_server,
        client_server,
        peer_server,
        peer_client,
    }))
}

/// Whether serving plaintext on `addr` deserves a warning: anything but a
/// loopback address.
pub fn exposed(addr: &str) -> bool {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => !a.ip().is_loopback(),
        Err(_) => false,
    }
}

/// A rustls server configuration of the node's certificate chain and key,
/// for the dashboard (tonic builds its own for the gRPC ports).
fn ui_server_config(
    cert: &[u8],
    key: &[u8],
) -> Result<std::sync::Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("key: {e}"))?;
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn bad_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk = junk.display().to_string();
        let config = |cert: &str, key: &str, ca: &str| TlsConfig {
            cert_file: cert.into(),
            key_file: key.into(),
            ca_file: ca.into(),
        };
        let err = load(&config("/nonexistent.pem", &junk, &junk)).unwrap_err();
        assert!(err.to_string().contains("`tls.cert_file`"), "{err}");
        let err = load(&config(&junk, &junk, &junk)).unwrap_err();
        assert!(err.to_string().contains("`tls.cert_file`"), "{err}");
        assert!(err.to_string().contains("not a PEM file"), "{err}");
        assert!(load(&config("", "", "")).unwrap().is_none());
    }

    #[test]
    fn only_non_loopback_addresses_are_exposed() {
        assert!(!exposed("127.0.0.2:7100"));
        assert!(!exposed("[::1]:7100"));
        assert!(exposed("0.0.0.0:7100"));
        assert!(exposed("10.1.2.3:7100"));
    }
}
