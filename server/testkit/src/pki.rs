//! Throwaway certificates for TLS tests and the bench's `--tls`: a CA made on the spot and the
//! leaf certificates it signs, as PEM text a caller writes wherever its server reads them.
//! ECDSA P-256 (rcgen's default), the usual choice for new certificates and what
//! cert-manager issues when asked for ECDSA. Nothing here is secret past the process's life.

pub use rcgen::Error;

/// A certificate authority that signs leaf certificates.
pub struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate, PEM.
    pub cert: String,
    /// Its private key, PEM.
    pub key: String,
}

impl Ca {
    /// A new self-signed CA whose common name ends in `name`, so a failing handshake's
    /// message says which test's CA it was.
    pub fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("snowlease test CA {name}"),
        );
        let pem = params.self_signed(&key)?.pem();
        Ok(Ca {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        })
    }

    /// The CA's own certificate, PEM: what a peer trusts.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A leaf for `names` (DNS names or IP addresses), signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Result<Leaf, rcgen::Error> {
        let key = rcgen::KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)?.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_signs_leaves_that_are_pem_certificates_and_keys() {
        let ca = Ca::new("unit").expect("CA");
        assert!(ca.pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let leaf = ca.leaf(&["localhost", "127.0.0.1"]).expect("leaf");
        assert!(leaf.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key.contains("PRIVATE KEY-----"));
        assert_ne!(leaf.cert, ca.pem());
    }
}
