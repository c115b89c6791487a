//! The cluster store's certificates: etcd over TLS, and a client certificate for every host and
//! person allowed to reach it (etcd's `--client-cert-auth`). `plumb cluster init` makes a CA of
//! the cluster's own, the store's certificate (for the addresses clients use) and the clients'
//! certificates; an operator with a PKI of their own hands plumb a directory of the same shape.
//!
//! ```text
//! DIR/ca.crt, DIR/ca.key                          the CA (keep ca.key off the hosts)
//! DIR/store/{ca.crt,server.crt,server.key}        for etcd (server and peer)
//! DIR/clients/NAME/{ca.crt,client.crt,client.key} for `plumb agent`/`deploy` (--tls DIR/clients/NAME)
//! ```

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::failure::{Failure, Result};

/// The CA's name: a CA made again from its key must carry the same one (certificates name
/// their issuer by it).
const CA_NAME: &str = "plumb cluster CA";

/// The files a client presents: the CA that signed the store's certificate, and its own.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientFiles {
    /// `DIR/ca.crt`, `DIR/client.crt`, `DIR/client.key`.
    pub fn in_dir(dir: &Path) -> ClientFiles {
        ClientFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("client.crt"),
            key: dir.join("client.key"),
        }
    }

    /// The three files' contents, or which is missing and what to do.
    pub fn read(&self) -> Result<(String, String, String)> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| {
                Failure::new(format!("cannot read {}: {e}", p.display())).hint(
                    "make the cluster's certificates with `plumb cluster init --out DIR --store-address ADDR --clients NAME,...` \
                     and pass --tls DIR/clients/NAME (or set PLUMB_STORE_TLS)",
                )
            })
        };
        Ok((read(&self.ca)?, read(&self.cert)?, read(&self.key)?))
    }
}

/// What `init` did: files written, and files that were there already (never overwritten).
#[derive(Debug, Default)]
pub struct Made {
    pub written: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

/// Makes (or completes) the cluster's certificates under `dir`: the CA if there is none, the
/// store's certificate for `store_addresses` (IP addresses or host names), and one client
/// certificate per name in `clients`. Files already there are kept, so `init` can add a host.
pub fn init(dir: &Path, store_addresses: &[String], clients: &[String]) -> Result<Made> {
    let mut made = Made::default();
    private_dir(dir)?;
    let ca_key_path = dir.join("ca.key");
    let ca_cert_path = dir.join("ca.crt");
    let ca_key = if ca_key_path.exists() {
        let pem = std::fs::read_to_string(&ca_key_path)
            .map_err(|e| Failure::new(format!("cannot read {}: {e}", ca_key_path.display())))?;
        made.kept.push(ca_key_path.clone());
        KeyPair::from_pem(&pem).map_err(|e| bad(&ca_key_path, e))?
    } else {
        let key = KeyPair::generate().map_err(tls_failure)?;
        write(&ca_key_path, &key.serialize_pem(), 0o600, &mut made)?;
        key
    };
    let ca_params = ca_params()?;
    if !ca_cert_path.exists() {
        let cert = ca_params.self_signed(&ca_key).map_err(tls_failure)?;
        write(&ca_cert_path, &cert.pem(), 0o644, &mut made)?;
    } else {
        made.kept.push(ca_cert_path.clone());
    }
    let ca_pem = std::fs::read_to_string(&ca_cert_path)
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", ca_cert_path.display())))?;
    let issuer = Issuer::new(ca_params, ca_key);

    if !store_addresses.is_empty() {
        let store = dir.join("store");
        private_dir(&store)?;
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        sans.extend(store_addresses.iter().cloned());
        leaf(
            &store,
            "server",
            "plumb cluster store",
            &sans,
            &issuer,
            &ca_pem,
            &mut made,
        )?;
    }
    for name in clients {
        if !plumb_core::spec::valid_host_name(name) {
            return Err(Failure::new(format!("{name:?} is not a client name"))
                .hint("client names are host names: letters, digits and '-'")
                .code(2));
        }
        let client = dir.join("clients").join(name);
        private_dir(&dir.join("clients"))?;
        private_dir(&client)?;
        leaf(&client, "client", name, &[], &issuer, &ca_pem, &mut made)?;
    }
    Ok(made)
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_failure)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// `DIR/ca.crt`, `DIR/ROLE.crt`, `DIR/ROLE.key` for one identity. The store's certificate
/// serves both sides (etcd peers present it as clients); a client's only as a client.
fn leaf(
    dir: &Path,
    role: &str,
    common_name: &str,
    sans: &[String],
    issuer: &Issuer<'_, KeyPair>,
    ca_pem: &str,
    made: &mut Made,
) -> Result<()> {
    let (cert_path, key_path) = (dir.join(format!("{role}.crt")), dir.join(format!("{role}.key")));
    let ca_copy = dir.join("ca.crt");
    if !ca_copy.exists() {
        write(&ca_copy, ca_pem, 0o644, made)?;
    }
    if cert_path.exists() && key_path.exists() {
        made.kept.extend([cert_path, key_path]);
        return Ok(());
    }
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_failure)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    for san in sans {
        params.subject_alt_names.push(match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(san.clone().try_into().map_err(tls_failure)?),
        });
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = match role {
        "server" => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    let key = KeyPair::generate().map_err(tls_failure)?;
    let cert = params.signed_by(&key, issuer).map_err(tls_failure)?;
    write(&key_path, &key.serialize_pem(), 0o600, made)?;
    write(&cert_path, &cert.pem(), 0o644, made)
}

/// A directory only root may enter (keys live there).
fn private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Failure::new(format!("cannot create {}: {e}", dir.display())))
}

/// Writes a new file with `mode` (never over an existing one).
fn write(path: &Path, text: &str, mode: u32, made: &mut Made) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())))?;
    made.written.push(path.to_path_buf());
    Ok(())
}

fn tls_failure(e: rcgen::Error) -> Failure {
    Failure::new(format!("cannot make a certificate: {e}"))
}

fn bad(path: &Path, e: rcgen::Error) -> Failure {
    Failure::new(format!("{} is not a usable key: {e}", path.display()))
        .hint("move it away to make a new CA (every certificate it signed must then be made again)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_makes_a_ca_a_store_and_clients_and_keeps_what_exists() {
        let dir = std::env::temp_dir().join(format!("plumb-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = init(&dir, &["10.0.0.1".into()], &["h1".into()]).unwrap();
        assert!(made.kept.is_empty());
        for f in [
            "ca.crt",
            "ca.key",
            "store/server.crt",
            "store/server.key",
            "store/ca.crt",
            "clients/h1/client.key",
        ] {
            assert!(dir.join(f).exists(), "{f}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("clients/h1/client.key"), 0o600);
        assert_eq!(mode("clients"), 0o700);
        // Again with one more client: the CA and the others are kept, the new one signed by it.
        let ca = std::fs::read(dir.join("ca.crt")).unwrap();
        let again = init(&dir, &["10.0.0.1".into()], &["h1".into(), "h2".into()]).unwrap();
        assert!(again.kept.contains(&dir.join("ca.key")));
        assert!(again.written.contains(&dir.join("clients/h2/client.crt")));
        assert_eq!(std::fs::read(dir.join("ca.crt")).unwrap(), ca);
        assert!(init(&dir, &[], &["bad name".into()]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
