//! The mesh's certificates: at every `up` of a meshed stack the supervisor signs one
//! certificate per meshed service with a new CA of the stack's own. That CA was made (and
//! published in the sidecars' trust bundle) at the `up` before, as the "next" CA: a sidecar
//! still on the old files already trusts the new certificates, and one on the new files the
//! old ones (the previous CA stays in the bundle), so rotation breaks no connection. Only the
//! next CA's key is kept (root's alone); a CA's key is deleted once it has signed. A service's
//! certificate names it as `spiffe://plumb/STACK/SERVICE`, `SERVICE.STACK.plumb`, and the
//! addresses it is reached at (its replicas' and its VIP), which is what the calling sidecar
//! checks. All of it sits in the stack's state folder, private to root:
//!
//! ```text
//! mesh/ca.crt                    the trust bundle: the current CA, the next, the previous
//! mesh/next-ca.crt, next-ca.key  the CA the next `up` signs with
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
    // This `up`'s CA: the one published as next last time, else a new one.
    let stored = std::fs::read_to_string(dir.join("next-ca.key"))
        .ok()
        .and_then(|k| KeyPair::from_pem(&k).ok())
        .zip(std::fs::read_to_string(dir.join("next-ca.crt")).ok());
    let (ca_key, ca_pem) = match stored {
        Some(pair) => pair,
        None => new_ca(&desired.stack)?,
    };
    let issuer = Issuer::new(ca_params(&desired.stack)?, ca_key);
    let (next_key, next_pem) = new_ca(&desired.stack)?;
    write(&dir.join("next-ca.key"), &next_key.serialize_pem())?;
    write(&dir.join("next-ca.crt"), &next_pem)?;
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
    write(&dir.join("ca.crt"), &format!("{ca_pem}{next_pem}{previous}"))
}

/// A CA's settings: the same for a CA made again from its key (certificates name their
/// issuer by its name).
fn ca_params(stack: &str) -> Result<CertificateParams> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failure)?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, format!("plumb mesh CA of {stack}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(ca)
}

/// A new CA: its key, and its certificate (PEM).
fn new_ca(stack: &str) -> Result<(KeyPair, String)> {
    let key = KeyPair::generate().map_err(failure)?;
    let cert = ca_params(stack)?.self_signed(&key).map_err(failure)?;
    Ok((key, cert.pem()))
}

/// Replaces `path` with `text` (the state folder's files are root's alone).
fn write(path: &Path, text: &str) -> Result<()> {
    crate::state::write_atomically(path, text.as_bytes())
}
