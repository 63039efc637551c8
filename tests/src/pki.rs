//! A private certificate authority of one test's own, made with the `openssl` command as an
//! operator (or the ansible broker role) makes one: a CA, and certificates it signs for
//! brokers (with the addresses clients reach them at) and for clients (mutual TLS). Keys are
//! EC P-256, in PEM files under a temporary directory removed with it.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
}

/// A CA and the certificates it signed.
pub struct TestPki {
    /// The CA's certificate: what clients and brokers trust.
    pub ca: PathBuf,
    ca_key: PathBuf,
    dir: TempDir,
}

impl TestPki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestPki {
        let dir = tempfile::Builder::new().prefix("demofleet-pki-").tempdir().unwrap();
        let (ca, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        openssl(
            dir.path(),
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -keyout ca.key -out ca.pem \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
            &["-subj", &format!("/CN={name}")],
        );
        TestPki { ca, ca_key, dir }
    }

    /// Where the certificate [`TestPki::issue`] makes for `name` is.
    pub fn files(&self, name: &str) -> CertFiles {
        let dir = self.dir.path();
        CertFiles { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
    }

    /// A certificate for `name`, signed by this CA, valid for `sans` (`IP:10.0.0.1`,
    /// `DNS:broker.internal`; a server's names as clients reach it).
    pub fn issue(&self, name: &str, sans: &[String], usage: Usage) -> CertFiles {
        let dir = self.dir.path();
        let (cert, key, csr, ext) =
            (format!("{name}.pem"), format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"));
        let new_key = "req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        openssl(dir, new_key, &["-subj", &format!("/CN={name}"), "-keyout", &key, "-out", &csr]);
        let purpose = match usage {
            Usage::Server => "serverAuth",
            Usage::Client => "clientAuth",
        };
        let mut extensions = format!("basicConstraints=CA:FALSE\nextendedKeyUsage={purpose}\n");
        if !sans.is_empty() {
            extensions.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(dir.join(&ext), extensions).unwrap();
        let (ca, ca_key) = (self.ca.to_str().unwrap(), self.ca_key.to_str().unwrap());
        let sign = "x509 -req -CAcreateserial -days 2";
        openssl(dir, sign, &["-in", &csr, "-CA", ca, "-CAkey", ca_key, "-extfile", &ext, "-out", &cert]);
        self.files(name)
    }
}

/// `openssl` with the words of `command`, then `args` as they are.
fn openssl(dir: &Path, command: &str, args: &[&str]) {
    let out = crate::command::output(
        Command::new("openssl").current_dir(dir).args(command.split_whitespace()).args(args),
        crate::command::QUICK,
    )
    .expect("openssl runs");
    assert!(out.status.success(), "openssl {command} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
