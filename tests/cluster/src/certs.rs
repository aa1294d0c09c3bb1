//! The control plane's PKI, made with the `openssl` command: one CA that signs the
//! API server's serving certificate and the admin client certificate, and the
//! ServiceAccount signing key. ECDSA P-256 throughout: fast to generate.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), Error> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| Error::Tool {
            tool: "openssl".into(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: format!("openssl {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

fn new_key(dir: &Path, name: &str) -> Result<(), Error> {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            name,
        ],
    )
}

/// A certificate for `subject` signed by the CA in `dir`, with the given extensions.
fn signed(dir: &Path, name: &str, subject: &str, extensions: &str) -> Result<(), Error> {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let ext = format!("{name}.ext");
    new_key(dir, &key)?;
    openssl(
        dir,
        &["req", "-new", "-key", &key, "-subj", subject, "-out", &csr],
    )?;
    std::fs::write(dir.join(&ext), extensions).map_err(|e| Error::io(&dir.join(&ext), e))?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.crt"),
        ],
    )
}

/// Writes the PKI into `dir`. `server_ips` become IP SANs of the serving certificate.
pub fn generate(dir: &Path, server_ips: &[IpAddr]) -> Result<Pki, Error> {
    new_key(dir, "ca.key")?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=kubelvs-test-ca",
            "-days",
            "2",
            "-out",
            "ca.crt",
        ],
    )?;
    let mut sans: Vec<String> = [
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
    ]
    .map(String::from)
    .to_vec();
    sans.extend(server_ips.iter().map(|ip| format!("IP:{ip}")));
    signed(
        dir,
        "apiserver",
        "/CN=kube-apiserver",
        &format!(
            "subjectAltName={}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n",
            sans.join(",")
        ),
    )?;
    // O=system:masters: the admin group the API server's RBAC trusts unconditionally.
    signed(
        dir,
        "admin",
        "/O=system:masters/CN=kubelvs-test-admin",
        "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n",
    )?;
    new_key(dir, "sa.key")?;
    openssl(dir, &["ec", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(Pki {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        admin_cert: dir.join("admin.crt"),
        admin_key: dir.join("admin.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    })
}
