//! TLS on TCP: the real server with `--tls-cert`/`--tls-key` (and `--tls-client-ca` for mutual
//! TLS), reached by the real `fencepostctl` over `https://`, with certificates made here by a test
//! CA.

mod common;

use std::path::PathBuf;

use common::ctl::*;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A test CA and the PEM files it issued, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        write("ca.pem", ca.pem());
        for (name, sans) in [
            (
                "server",
                vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            ),
            ("client", vec!["agent.example".to_owned()]),
        ] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(sans)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        // A CA that issued nothing here: trusting it alone must not be enough.
        let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other = CertifiedIssuer::self_signed(other, KeyPair::generate().unwrap()).unwrap();
        write("other-ca.pem", other.pem());
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// `https://localhost:PORT` for a server the harness reports as `http://127.0.0.1:PORT`.
fn https(server: &Server) -> String {
    let port = server.endpoint().rsplit(':').next().expect("a port");
    format!("https://localhost:{port}")
}

fn tls_server(pki: &Pki, client_ca: bool) -> Server {
    let mut opts = ServerOpts::default()
        .arg("--tls-cert", &pki.arg("server.pem"))
        .arg("--tls-key", &pki.arg("server.key"));
    if client_ca {
        opts = opts.arg("--tls-client-ca", &pki.arg("ca.pem"));
    }
    Server::start(opts)
}

fn with(args: &[&str], tail: &[&str]) -> Vec<String> {
    args.iter().chain(tail).map(|s| (*s).to_owned()).collect()
}

#[test]
fn the_cli_appends_over_tls_to_a_server_it_trusts_and_nowhere_else() {
    const R: &str = "tls/a.jsonl";
    let pki = Pki::new();
    let server = tls_server(&pki, false);
    let endpoint = https(&server);
    let ca = pki.arg("ca.pem");
    let trusted = ["--ca-cert", ca.as_str()];

    let health = ctl(&endpoint, with(&trusted, &["health"]), None);
    assert_eq!(ctl_object(&health)["status"], "serving", "{health:?}");
    let lease = ctl_object(&ctl(&endpoint, with(&trusted, &["acquire", R]), None));
    let (id, token) = (
        lease["lease_id"].as_str().unwrap(),
        lease["token"].as_u64().unwrap().to_string(),
    );
    let appended = ctl(
        &endpoint,
        with(&trusted, &["append", R, "--lease", id, "--token", &token]),
        Some(&b"{\"n\":1}\n"[..]),
    );
    assert!(appended.status.success(), "{appended:?}");
    assert_eq!(server.file_bytes(R), b"{\"n\":1}\n");

    // A client that does not trust the server's CA, or speaks plain HTTP/2, gets nowhere.
    let other = pki.arg("other-ca.pem");
    let untrusted = ctl(
        &endpoint,
        ["--ca-cert", other.as_str(), "describe", R],
        None,
    );
    assert_ctl_error(&untrusted, EXIT_FAILURE, "UNAVAILABLE");
    let public_roots = ctl(&endpoint, ["describe", R], None);
    assert_ctl_error(&public_roots, EXIT_FAILURE, "UNAVAILABLE");
    let plain = ctl(server.endpoint(), ["describe", R], None);
    let line = assert_ctl_error(&plain, EXIT_FAILURE, "PROTOCOL_MISMATCH");
    assert!(line.contains("https://"), "{line}");
    // TLS settings with a plain endpoint are a mistake, said before anything is sent.
    let mixed = ctl(
        server.endpoint(),
        ["--ca-cert", ca.as_str(), "describe", R],
        None,
    );
    assert_ctl_error(&mixed, EXIT_BAD_INPUT, "INVALID_ENDPOINT");
    assert_eq!(server.file_bytes(R), b"{\"n\":1}\n");
}

#[test]
fn a_server_that_requires_client_certificates_refuses_clients_without_one() {
    let pki = Pki::new();
    let server = tls_server(&pki, true);
    let endpoint = https(&server);
    let ca = pki.arg("ca.pem");
    let anonymous = ctl(&endpoint, ["--ca-cert", ca.as_str(), "health"], None);
    assert_ctl_error(&anonymous, EXIT_FAILURE, "UNAVAILABLE");
    let (cert, key) = (pki.arg("client.pem"), pki.arg("client.key"));
    let identity = [
        "--ca-cert",
        ca.as_str(),
        "--client-cert",
        cert.as_str(),
        "--client-key",
        key.as_str(),
    ];
    let identified = ctl(&endpoint, with(&identity, &["health"]), None);
    assert_eq!(
        ctl_object(&identified)["status"],
        "serving",
        "{identified:?}"
    );
    // Half a client identity is a mistake, said before anything is sent.
    let half = ctl(
        &endpoint,
        [
            "--ca-cert",
            ca.as_str(),
            "--client-cert",
            cert.as_str(),
            "health",
        ],
        None,
    );
    assert_ctl_error(&half, EXIT_BAD_INPUT, "INVALID_TLS");
    // `run` hands its command the TLS settings it was given.
    let (ca_path, client_path) = (pki.path("ca.pem"), pki.path("client.pem"));
    let ran = ctl(
        &endpoint,
        with(
            &identity,
            &[
                "run",
                "tls/run.jsonl",
                "--",
                "sh",
                "-c",
                "test \"$FENCEPOST_CA_CERT\" = \"$1\" && test \"$FENCEPOST_CLIENT_CERT\" = \"$2\"",
                "sh",
                ca_path.to_str().unwrap(),
                client_path.to_str().unwrap(),
            ],
        ),
        None,
    );
    assert!(ran.status.success(), "{ran:?}");
}

#[test]
fn bad_tls_settings_are_refused_at_start_with_the_flag_named() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let start = |args: &[&str]| {
        command("fencepost")
            .current_dir(dir.path())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .expect("run fencepost")
    };
    let missing = dir.path().join("missing.pem");
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    let cases: [(Vec<&str>, &str); 3] = [
        (vec!["--tls-cert", cert.as_str()], "--tls-key"),
        (
            vec![
                "--tls-cert",
                missing.to_str().unwrap(),
                "--tls-key",
                key.as_str(),
            ],
            "cannot read --tls-cert",
        ),
        // A certificate given as the key.
        (
            vec!["--tls-cert", cert.as_str(), "--tls-key", cert.as_str()],
            "TLS settings",
        ),
    ];
    for (args, needle) in cases {
        let out = start(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} announced itself ready");
        assert!(
            !dir.path().join("data").exists(),
            "{args:?} opened the data dir"
        );
    }
    let unix = command("fencepost")
        .current_dir(dir.path())
        .args(["--listen"])
        .arg(format!("unix:{}", dir.path().join("s.sock").display()))
        .args(["--tls-cert", cert.as_str(), "--tls-key", key.as_str()])
        .output()
        .expect("run fencepost");
    assert!(!unix.status.success());
    assert!(String::from_utf8_lossy(&unix.stderr).contains("Unix socket"));
}
