//! Test helpers shared by the crates' TLS tests (feature `testsuite`): a throw-away certificate authority
//! and certificates made with `rcgen`, written as PEM files where a role expects them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The certificate chain (the certificate alone).
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
}

impl TestCert {
    /// A self-signed certificate for `names` (DNS names or IP addresses), valid from 1975 to 4096.
    ///
    /// # Panics
    /// If `rcgen` cannot make one (test set-up only).
    pub fn self_signed(names: &[&str]) -> TestCert {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("certificate names");
        let key = KeyPair::generate().expect("key pair");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A self-signed certificate for `names` that also says `CA:TRUE`, as `openssl req -x509` makes by
    /// default (and as many origins are deployed).
    ///
    /// # Panics
    /// If `rcgen` cannot make one (test set-up only).
    pub fn self_signed_ca(names: &[&str]) -> TestCert {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("certificate names");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key pair");
        let cert = params.self_signed(&key).expect("self-signed certificate");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `DIR/STEM.crt` and `DIR/STEM.key` (a `--tls-dir` pair) and returns their paths.
    ///
    /// # Panics
    /// If the files cannot be written.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

/// A certificate authority that issues test certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA whose certificate's common name is `name`.
    ///
    /// # Panics
    /// If `rcgen` cannot make one (test set-up only).
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key pair");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// The CA's certificate, PEM (what `--ca` / `--origin-ca` take).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `path` and returns it.
    ///
    /// # Panics
    /// If the file cannot be written.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.pem()).expect("write CA certificate");
        path.to_path_buf()
    }

    /// A certificate for `names`, signed by this CA, valid from 1975 to 4096.
    pub fn issue(&self, names: &[&str]) -> TestCert {
        self.issue_between(names, (1975, 1, 1), (4096, 1, 1))
    }

    /// A certificate for `names`, signed by this CA, that expired at the end of 2001.
    pub fn issue_expired(&self, names: &[&str]) -> TestCert {
        self.issue_between(names, (2000, 1, 1), (2001, 12, 31))
    }

    /// A certificate for `names` valid between two dates (year, month, day).
    ///
    /// # Panics
    /// If `rcgen` cannot make one (test set-up only).
    pub fn issue_between(&self, names: &[&str], from: (i32, u8, u8), until: (i32, u8, u8)) -> TestCert {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("certificate names");
        params.not_before = date_time_ymd(from.0, from.1, from.2);
        params.not_after = date_time_ymd(until.0, until.1, until.2);
        let key = KeyPair::generate().expect("key pair");
        let cert = params.signed_by(&key, &self.issuer).expect("signed certificate");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A loopback address with a port nothing listens on, for a server a test starts later.
///
/// The port comes from below Linux's ephemeral range (32768 and up by default): a port the kernel handed
/// out for `bind(:0)` can be given again at once to another test's outgoing connection, which then makes
/// the server's own bind fail with `AddrInUse` (seen in the mover's tests). Ports are handed out in turn
/// from a per-process offset, so concurrent tests of one binary never get the same one, and each is
/// checked free before it is returned.
///
/// # Panics
/// If no port in the range can be bound (test set-up only).
pub fn free_addr() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(7919) % COUNT;
    for _ in 0..COUNT {
        let port = FIRST + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port between {FIRST} and {}", FIRST + COUNT)
}
