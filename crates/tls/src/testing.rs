//! A certificate authority made on the spot, and certificates it signs, as
//! PEM files in a folder: what tests of TLS and mutual TLS need.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    /// A server's TLS settings with this certificate, requiring client
    /// certificates signed by `client_ca` when given.
    pub fn server_args(&self, client_ca: Option<&Ca>) -> crate::ServerTlsArgs {
        crate::ServerTlsArgs {
            tls_cert: Some(self.cert.clone()),
            tls_key: Some(self.key.clone()),
            tls_client_ca: client_ca.map(|c| c.cert.clone()),
        }
    }
}

/// A CA, as files, that signs server and client certificates.
pub struct Ca {
    pub cert: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("cert", &self.cert).finish_non_exhaustive()
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

impl Ca {
    /// A new CA named `name`, its certificate written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let cert = dir.join(format!("{name}.pem"));
        std::fs::write(&cert, issuer.pem())?;
        Ok(Self { cert, issuer, dir: dir.to_owned(), name: name.to_owned() })
    }

    /// A server certificate for `localhost` and 127.0.0.1, as `<file>.pem` and `<file>.key`.
    pub fn server(&self, file: &str) -> Result<Pair> {
        self.sign(file, vec!["localhost".into(), "127.0.0.1".into()], ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate, as `<file>.pem` and `<file>.key`.
    pub fn client(&self, file: &str) -> Result<Pair> {
        self.sign(file, vec![], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(&self, file: &str, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Result<Pair> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, format!("{} {file}", self.name));
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let pair = Pair { cert: self.dir.join(format!("{file}.pem")), key: self.dir.join(format!("{file}.key")) };
        std::fs::write(&pair.cert, cert.pem())?;
        std::fs::write(&pair.key, key.serialize_pem())?;
        Ok(pair)
    }
}
