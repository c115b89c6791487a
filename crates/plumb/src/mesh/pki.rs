//! The mesh's certificates: at every `up` of a meshed stack the supervisor makes a new CA of
//! the stack's own, signs one certificate per meshed service with it, and forgets the CA's
//! key (nothing is ever signed again with it: the next `up` makes another). A service's
//! certificate names it as `spiffe://plumb/STACK/SERVICE`, `SERVICE.STACK.plumb`, and the
//! addresses it is reached at (its replicas' and its VIP), which is what the calling sidecar
//! checks. All of it sits in the stack's state folder, private to root:
//!
//! ```text
//! mesh/ca.crt                    the CA, and the one before it (sidecars not yet reloaded)
//! mesh/SERVICE.crt, SERVICE.key  each meshed service's
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use plumb_core::Desired;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::failure::{Failure, Result};

pub fn dir(stack_dir: &Path) -> PathBuf {
    stack_dir.join("mesh")
}

fn failure(e: rcgen::Error) -> Failure {
    Failure::new(format!("cannot make the mesh's certificates: {e}"))
}

/// Makes a new CA and every meshed service's certificate (none for a stack without mesh).
pub fn issue(stack_dir: &Path, desired: &Desired) -> Result<()> {
    let meshed: std::collections::BTreeSet<&str> = desired
        .containers
        .iter()
        .filter(|c| c.mesh)
        .map(|c| c.service.as_str())
        .collect();
    let dir = dir(stack_dir);
    if meshed.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    crate::state::create_private_dir(&dir).map_err(|e| Failure::new(e.to_string()))?;
    let ca_key = KeyPair::generate().map_err(failure)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failure)?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, format!("plumb mesh CA of {}", desired.stack));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(failure)?;
    let issuer = Issuer::new(ca, ca_key);
    for service in &meshed {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failure)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{service}.{}", desired.stack));
        let uri = format!("spiffe://plumb/{}/{service}", desired.stack);
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().map_err(failure)?));
        let dns = format!("{service}.{}.plumb", desired.stack);
        params
            .subject_alt_names
            .push(SanType::DnsName(dns.try_into().map_err(failure)?));
        let addresses = desired
            .containers
            .iter()
            .filter(|c| c.service == *service)
            .flat_map(|c| c.interfaces.iter().map(|i| i.address))
            .chain(
                desired
                    .services
                    .iter()
                    .filter(|s| s.name == *service)
                    .filter_map(|s| s.vip),
            );
        for a in addresses {
            params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(a)));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        // Each sidecar both serves and calls with its service's certificate.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(failure)?;
        let cert = params.signed_by(&key, &issuer).map_err(failure)?;
        write(&dir.join(format!("{service}.key")), &key.serialize_pem())?;
        write(&dir.join(format!("{service}.crt")), &cert.pem())?;
    }
    // The previous CA stays trusted until the next rotation: sidecars still holding a
    // certificate it signed are reloading.
    let previous = std::fs::read_to_string(dir.join("ca.crt")).unwrap_or_default();
    let previous = previous
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap_or("");
    write(&dir.join("ca.crt"), &format!("{}{previous}", ca_cert.pem()))
}

/// Replaces `path` with `text` (the state folder's files are root's alone).
fn write(path: &Path, text: &str) -> Result<()> {
    crate::state::write_atomically(path, text.as_bytes())
}
