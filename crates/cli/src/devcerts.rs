//! `lockstep dev-certs` and `lockstep token`: a throwaway CA with node
//! certificates, and fresh bearer tokens, so the TLS and auth paths can be
//! tried in minutes. Not a PKI: the CA key is written next to the
//! certificates, and nothing expires before a year is out.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Most node certificates made at once.
pub const HOSTS_MAX: usize = 64;

#[derive(clap::Args, Debug)]
pub struct DevCertsArgs {
    /// Directory to write ca.pem, ca.key, node-<i>.pem and node-<i>.key to
    /// (created if missing; existing files are replaced).
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// One node certificate per host (an IP address or a DNS name), each
    /// valid for that name and `localhost`; node-<i> is the i-th host.
    #[arg(
        long = "host",
        value_delimiter = ',',
        default_value = "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5"
    )]
    pub hosts: Vec<String>,
    /// The CA's common name; two runs with different names make CAs that
    /// trust none of each other's certificates.
    #[arg(long, default_value = "Lockstep development CA")]
    pub ca_name: String,
}

/// Writes a CA and one certificate per host into `args.out`; returns the
/// files written.
pub fn dev_certs(args: &DevCertsArgs) -> Result<Vec<PathBuf>, String> {
    if args.hosts.is_empty() || args.hosts.len() > HOSTS_MAX {
        return Err(format!("--host: give 1 to HOSTS_MAX = {HOSTS_MAX} hosts"));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("--out {}: {e}", args.out.display()))?;
    let tls = |e: rcgen::Error| format!("making a certificate: {e}");
    let ca_key = KeyPair::generate().map_err(tls)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, args.ca_name.clone());
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(tls)?;
    let mut written = vec![
        write(&args.out.join("ca.pem"), &ca_cert.pem(), false)?,
        write(&args.out.join("ca.key"), &ca_key.serialize_pem(), true)?,
    ];
    let issuer = Issuer::new(ca, ca_key);
    for (i, host) in args.hosts.iter().enumerate() {
        let host = host.trim();
        let mut names = vec![host.to_string()];
        if host != "localhost" {
            names.push("localhost".into());
        }
        let mut params =
            CertificateParams::new(names).map_err(|e| format!("--host `{host}`: {e}"))?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("lockstep node {} ({host})", i + 1),
        );
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // Both: the node serves with it and shows it to peers it calls.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(tls)?;
        let cert = params.signed_by(&key, &issuer).map_err(tls)?;
        let n = i + 1;
        written.push(write(
            &args.out.join(format!("node-{n}.pem")),
            &cert.pem(),
            false,
        )?);
        written.push(write(
            &args.out.join(format!("node-{n}.key")),
            &key.serialize_pem(),
            true,
        )?);
    }
    Ok(written)
}

/// Writes `text` to `path`; a key is readable by its owner only.
fn write(path: &Path, text: &str, secret: bool) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if secret { 0o600 } else { 0o644 };
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}

/// Random bytes in a new token.
pub const TOKEN_RANDOM_BYTES: usize = 32;

/// A new random bearer token (hex) and the `[[token]]` entry for a tokens
/// file that stores only its SHA-256.
pub fn new_token(name: &str) -> (String, String) {
    let bytes: [u8; TOKEN_RANDOM_BYTES] = rand::random();
    let secret = lockstep_node::auth::hex(&bytes);
    let entry = format!(
        "[[token]]\nname = {name:?}\nsecret_sha256 = \"{}\"\nproduce = [\"*\"]\nconsume = [\"*\"]\nadmin = []\n",
        lockstep_node::auth::hex(&lockstep_node::auth::digest(&secret))
    );
    (secret, entry)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_certificates_load_as_a_node_tls_config() {
        let dir = tempfile::tempdir().unwrap();
        let args = DevCertsArgs {
            out: dir.path().to_path_buf(),
            hosts: vec!["127.0.0.1".into(), "node2.example".into()],
            ca_name: "test CA".into(),
        };
        let files = dev_certs(&args).unwrap();
        assert_eq!(files.len(), 6);
        let path = |f: &str| dir.path().join(f).display().to_string();
        let config = lockstep_node::config::TlsConfig {
            cert_file: path("node-2.pem"),
            key_file: path("node-2.key"),
            ca_file: path("ca.pem"),
        };
        assert!(lockstep_node::tls::load(&config).unwrap().is_some());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path("node-1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_new_token_parses_and_authenticates() {
        let (secret, entry) = new_token("app");
        let auth = lockstep_node::auth::Auth::parse(&entry, "new").unwrap();
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("authorization", format!("Bearer {secret}").parse().unwrap());
        auth.authorize(&m, lockstep_node::auth::Permission::Produce, "any")
            .unwrap();
    }
}
