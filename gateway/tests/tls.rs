//! TLS on the gRPC ports: node-to-node traffic of a 3-node cluster over
//! mutual TLS (`--cluster-tls-*`) and the Push API over TLS
//! (`--api-tls-*`), with certificates made here.

mod common;

use std::path::Path;

use common::cluster::{Cluster, TestTls};
use common::{ws_open, ws_send, ws_text, Polling};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use ringway_proto::v1::push_client::PushClient;
use ringway_proto::v1::{target, EmitRequest, StatsRequest, Target};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const TOKEN: &str = "tls-token";
const NAME: &str = "gateways.ringway.test";

/// A CA, and one certificate for every gateway signed by it (the shared
/// name, and 127.0.0.1).
fn certificates(dir: &Path) -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec![NAME.to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer).expect("certificate");
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write a PEM");
        path.to_string_lossy().into_owned()
    };
    (
        write("ca.pem", ca.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_ports_speak_tls_between_nodes_and_to_backends() {
    let dir = std::env::temp_dir().join(format!("ringway-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (ca, cert, key) = certificates(&dir);
    let tls = TestTls {
        ca: ca.clone(),
        cert: cert.clone(),
        key: key.clone(),
        name: NAME.to_owned(),
    };
    let c = Cluster::start_tls(
        3,
        Some(tls),
        &[
            "--api-token",
            TOKEN,
            "--api-tls-cert",
            &cert,
            "--api-tls-key",
            &key,
        ],
    )
    .await;

    // Node-to-node traffic over TLS: a polling session of node 1 served
    // through nodes 2 and 3.
    let p = Polling::open(c.addr(0), "/socket.io/").await;
    p.on(c.addr(1)).send("40").await;
    let got = p.on(c.addr(2)).packets().await;
    assert!(got.iter().any(|g| g.starts_with("40{\"sid\"")), "{got:?}");

    // A backend that trusts the CA pushes over TLS to a socket of node 1
    // through node 3.
    let (mut ws, open) = ws_open(c.addr(0)).await;
    let sid = open["sid"].as_str().expect("sid").to_owned();
    ws_send(&mut ws, "40").await;
    let grpc = c.nodes[2].api.as_deref().expect("api");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(&ca).expect("read the CA"),
        ))
        .domain_name(NAME);
    let channel = Channel::from_shared(format!("https://{grpc}"))
        .expect("url")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
        .expect("TLS connection");
    let mut api = PushClient::with_interceptor(channel, common::cluster::Bearer(Some(TOKEN)));
    let reply = api
        .emit(EmitRequest {
            namespace: "/".into(),
            target: Some(Target {
                to: Some(target::To::Sid(sid)),
                except_rooms: vec![],
            }),
            event: "secure".into(),
            args_json: "[]".into(),
            attachments: vec![],
            volatile: false,
            skip_count: false,
        })
        .await
        .expect("push over TLS")
        .into_inner();
    assert_eq!(reply.sockets, 1);
    loop {
        let text = ws_text(&mut ws).await.expect("websocket open");
        if text == "42[\"secure\"]" {
            break;
        }
    }

    // A plain-text client gets nowhere.
    let plain = Channel::from_shared(format!("http://{grpc}"))
        .expect("url")
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut api = PushClient::with_interceptor(channel, common::cluster::Bearer(Some(TOKEN)));
        assert!(api.stats(StatsRequest {}).await.is_err());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
