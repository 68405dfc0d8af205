//! HTTPS and device mTLS end to end, over real TCP, with certificates made in the test.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SerialNumber, date_time_ymd,
};
use wavecast_server::tls::TlsConfig;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
}

/// A leaf certificate: (cert PEM, key PEM).
fn leaf(ca: &Ca, cn: &str, sans: Vec<String>, serial: u64) -> (String, String) {
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serial_number = Some(SerialNumber::from(serial));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b =
        reqwest::Client::builder().tls_certs_only(reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{key}{cert}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_device_mtls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server_ca = ca("wavecast test server CA");
    let device_ca = ca("wavecast test device CA");
    let other_ca = ca("someone else's CA");
    let (server_cert, server_key) = leaf(&server_ca, "localhost", vec!["localhost".into(), "127.0.0.1".into()], 1);
    let good = leaf(&device_ca, "cam-001", vec![], 10);
    let revoked = leaf(&device_ca, "cam-002", vec![], 11);
    let foreign = leaf(&other_ca, "cam-001", vec![], 12);
    let wrong_name = leaf(&device_ca, "cam-999", vec![], 13);
    let crl = CertificateRevocationListParams {
        this_update: date_time_ymd(2024, 1, 1),
        next_update: date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(11u64),
            revocation_time: date_time_ymd(2024, 6, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&device_ca.issuer)
    .unwrap();

    let install = dir.join("install");
    let report = wavecast_server::install::init(&install).await.unwrap();
    let admin = std::fs::read_to_string(&report.admin_token_file).unwrap().trim().to_owned();
    let mut config = wavecast_server::ServerConfig::new(
        install,
        "127.0.0.1:0".parse().unwrap(),
        None,
        wavecast_core::rollout::GateApproval::AnyApprover,
    )
    .unwrap();
    config.tls = Some(TlsConfig {
        cert: write(dir, "server.pem", &server_cert),
        key: write(dir, "server.key", &server_key),
        device_client_ca: Some(write(dir, "devices-ca.pem", &device_ca.pem)),
        device_client_crls: vec![write(dir, "devices.crl", &crl.pem().unwrap())],
    });
    let state = wavecast_server::open(&config).await.unwrap();
    let tls = wavecast_server::tls::server_config(config.tls.as_ref().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://localhost:{}", listener.local_addr().unwrap().port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(wavecast_server::serve_with(state, listener, Some(tls), async {
        let _ = stopped.await;
    }));

    // Operators need no client certificate.
    let operator = client(&server_ca.pem, None);
    let r = operator.get(format!("{base}/api/v1/whoami")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Under TLS the dashboard's session cookie travels only over TLS.
    let browser = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(server_ca.pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = browser
        .post(format!("{base}/ui/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.ends_with("; Secure") && cookie.contains("HttpOnly"), "{cookie}");
    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::Client::builder().timeout(std::time::Duration::from_secs(2)).build().unwrap();
    let port = base.rsplit(':').next().unwrap();
    assert!(
        plain.get(format!("http://127.0.0.1:{port}/healthz")).send().await.map_or(true, |r| !r.status().is_success())
    );
    // A client that does not trust the server's CA refuses to talk.
    assert!(client(&other_ca.pem, None).get(format!("{base}/healthz")).send().await.is_err());

    operator
        .post(format!("{base}/api/v1/groups"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "name": "g" }))
        .send()
        .await
        .unwrap();
    let token: serde_json::Value = operator
        .post(format!("{base}/api/v1/enrollment-tokens"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({ "group": "g" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let enroll = |c: &reqwest::Client, name: &str| {
        c.post(format!("{base}/device/v1/enroll"))
            .json(&serde_json::json!({ "token": token["token"], "name": name, "hardware": "hw" }))
            .send()
    };

    // No certificate: the handshake succeeds (operators need that) but the device API refuses.
    let r = enroll(&operator, "cam-001").await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("client certificate"));
    // A certificate naming another device: refused.
    let r = enroll(&client(&server_ca.pem, Some((&wrong_name.0, &wrong_name.1))), "cam-001").await.unwrap();
    assert_eq!(r.status(), 401);
    // A certificate from another CA, and a revoked one: the handshake itself fails.
    assert!(
        enroll(&client(&server_ca.pem, Some((&foreign.0, &foreign.1))), "cam-001").await.is_err(),
        "foreign CA accepted"
    );
    assert!(
        enroll(&client(&server_ca.pem, Some((&revoked.0, &revoked.1))), "cam-002").await.is_err(),
        "revoked certificate accepted"
    );

    // The right certificate: enrollment and the device API work, with the credential.
    let device = client(&server_ca.pem, Some((&good.0, &good.1)));
    let r = enroll(&device, "cam-001").await.unwrap();
    assert_eq!(r.status(), 201);
    let cred = r.json::<serde_json::Value>().await.unwrap()["credential"].as_str().unwrap().to_owned();
    let me = device.get(format!("{base}/device/v1/whoami")).bearer_auth(&cred).send().await.unwrap();
    assert_eq!(me.status(), 200);
    // The credential alone, without the certificate, is not enough.
    let r = operator.get(format!("{base}/device/v1/whoami")).bearer_auth(&cred).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
