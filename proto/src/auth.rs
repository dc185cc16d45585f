//! The cluster credential: what every internal call (gateway to gateway,
//! gateway to coordinator) carries, and how the called side checks it.
//!
//! Two credentials, usable together:
//! - a shared secret (`--cluster-secret-file`, at least 32 bytes). It never
//!   crosses the wire: each call carries `x-ringway-cluster:
//!   v1.<node id>.<unix seconds>.<HMAC-SHA256>`, the MAC keyed with the
//!   secret over the caller's node id and the time. The called side checks
//!   it in constant time and accepts it for [`WINDOW_SECS`] either way of
//!   its own clock;
//! - mutual TLS (`--cluster-tls-*`): the TLS layer verifies the caller's
//!   certificate; a certificate with a URI SAN `urn:ringway:node:<id>`
//!   names its node, and calls about another node are refused.
//!
//! A call without a valid credential is refused with `UNAUTHENTICATED`
//! before the service sees it ([`Guard`]); the service learns who called
//! from the request's [`Caller`] extension.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Request, Status};

/// The metadata key of the shared-secret credential.
pub const METADATA_KEY: &str = "x-ringway-cluster";
/// Shortest shared secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// How far a credential's time may be from the called node's clock.
pub const WINDOW_SECS: u64 = 300;
/// How long a caller reuses one credential before it signs a new one.
const RESIGN_SECS: u64 = 30;
/// The URI SAN prefix that names a node in a client certificate.
pub const NODE_URI_PREFIX: &str = "urn:ringway:node:";
/// Longest node id a credential may carry.
const MAX_NODE_ID: usize = 256;

type HmacSha256 = Hmac<Sha256>;

/// Why a secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the cluster secret {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster secret has {len} bytes: it needs at least {MIN_SECRET_LEN}")]
    TooShort { len: usize },
}

/// Why a call's credential was refused. The text is what the caller sees
/// in the `UNAUTHENTICATED` status: it says what is wrong, never the
/// secret or the expected MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the cluster credential is missing")]
    Missing,
    #[error("the cluster credential is malformed")]
    Malformed,
    #[error("the cluster credential does not verify")]
    BadSignature,
    #[error(
        "the cluster credential is outside the {WINDOW_SECS} s window: are the clocks in sync?"
    )]
    OutOfWindow,
    #[error("a client certificate is required")]
    NoCertificate,
}

impl AuthError {
    /// A short label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::BadSignature => "bad_signature",
            AuthError::OutOfWindow => "out_of_window",
            AuthError::NoCertificate => "no_certificate",
        }
    }
}

/// The cluster's shared secret. Never printed (`Debug` hides it).
#[derive(Clone)]
pub struct ClusterSecret(Arc<[u8]>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// The secret in `bytes` (at least [`MIN_SECRET_LEN`]).
    pub fn new(bytes: &[u8]) -> Result<ClusterSecret, SecretError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort { len: bytes.len() });
        }
        Ok(ClusterSecret(bytes.into()))
    }

    /// Reads the secret from a file; one trailing newline (`\n` or
    /// `\r\n`) is not part of it, as editors and `echo` add one.
    pub fn from_file(path: &Path) -> Result<ClusterSecret, SecretError> {
        let raw = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.to_owned(),
            source,
        })?;
        let trimmed = raw
            .strip_suffix(b"\r\n")
            .or_else(|| raw.strip_suffix(b"\n"))
            .unwrap_or(&raw);
        ClusterSecret::new(trimmed)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        }
    }

    fn signed(&self, node_id: &str, secs: u64) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(b"ringway-cluster-v1\n");
        mac.update(node_id.as_bytes());
        mac.update(b"\n");
        mac.update(secs.to_string().as_bytes());
        mac
    }

    /// The credential of `node_id` at `secs` (Unix time).
    pub fn token(&self, node_id: &str, secs: u64) -> String {
        let tag = self.signed(node_id, secs).finalize().into_bytes();
        format!(
            "v1.{}.{secs}.{}",
            URL_SAFE_NO_PAD.encode(node_id),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Checks a credential at `now` (Unix seconds); the node id it names.
    pub fn verify(&self, token: &str, now: u64) -> Result<String, AuthError> {
        let mut parts = token.split('.');
        let (Some("v1"), Some(node), Some(secs), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(AuthError::Malformed);
        };
        if node.len() > MAX_NODE_ID * 4 / 3 + 4 || tag.len() > 64 {
            return Err(AuthError::Malformed);
        }
        let node = URL_SAFE_NO_PAD
            .decode(node)
            .ok()
            .and_then(|n| String::from_utf8(n).ok())
            .ok_or(AuthError::Malformed)?;
        let secs: u64 = secs.parse().map_err(|_| AuthError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| AuthError::Malformed)?;
        // The MAC first: a forged credential learns nothing from the time.
        self.signed(&node, secs)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadSignature)?;
        if secs.abs_diff(now) > WINDOW_SECS {
            return Err(AuthError::OutOfWindow);
        }
        Ok(node)
    }

    /// A key for another purpose, derived from the secret (never the
    /// secret itself): HMAC(secret, "ringway-derive\n" + label).
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(b"ringway-derive\n");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The coordinator's proof of one membership: HMAC-SHA256 with the
/// coordinator's key over the node id and the process incarnation. Given
/// to the member at its join; asked for when the node id joins again
/// while that membership lives.
pub fn member_token(key: &[u8], node_id: &str, incarnation: u64) -> [u8; 32] {
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(b"ringway-member\n");
    mac.update(node_id.as_bytes());
    mac.update(b"\n");
    mac.update(&incarnation.to_be_bytes());
    mac.finalize().into_bytes().into()
}

/// Compares two byte strings in time that depends on their lengths only.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The caller's side: adds the credential to every call of a client
/// (`NodeClient::with_interceptor(channel, signer)`). Without a secret
/// (mutual TLS alone, or an insecure cluster) it adds nothing.
#[derive(Clone, Debug)]
pub struct Signer {
    inner: Option<Arc<SignerInner>>,
}

#[derive(Debug)]
struct SignerInner {
    secret: ClusterSecret,
    node_id: String,
    /// The credential in use and when it was signed.
    current: Mutex<(u64, AsciiMetadataValue)>,
}

impl Signer {
    /// Signs as `node_id` with `secret`; `None`: adds nothing.
    pub fn new(secret: Option<ClusterSecret>, node_id: &str) -> Signer {
        Signer {
            inner: secret.map(|secret| {
                let now = unix_now();
                let first = header_value(&secret, node_id, now);
                Arc::new(SignerInner {
                    secret,
                    node_id: node_id.to_owned(),
                    current: Mutex::new((now, first)),
                })
            }),
        }
    }

    /// A signer that adds nothing.
    pub fn none() -> Signer {
        Signer { inner: None }
    }

    /// Adds the credential to `metadata`.
    pub fn sign(&self, metadata: &mut MetadataMap) {
        let Some(inner) = &self.inner else {
            return;
        };
        let now = unix_now();
        let value = {
            let mut current = inner.current.lock().unwrap_or_else(|e| e.into_inner());
            if now.abs_diff(current.0) >= RESIGN_SECS {
                *current = (now, header_value(&inner.secret, &inner.node_id, now));
            }
            current.1.clone()
        };
        metadata.insert(METADATA_KEY, value);
    }
}

fn header_value(secret: &ClusterSecret, node_id: &str, secs: u64) -> AsciiMetadataValue {
    // Base64url and digits only: always a valid header value.
    secret
        .token(node_id, secs)
        .parse()
        .unwrap_or_else(|_| AsciiMetadataValue::from_static("v1.invalid"))
}

impl tonic::service::Interceptor for Signer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        self.sign(request.metadata_mut());
        Ok(request)
    }
}

/// Who made an internal call, once its credential was checked. The
/// [`Guard`] puts it in the request's extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The node the shared-secret credential names (any holder of the
    /// secret can name any node: a claim, not a proof).
    pub claimed: Option<String>,
    /// The node the client certificate names (`urn:ringway:node:<id>`),
    /// checked by the TLS layer.
    pub certified: Option<String>,
    /// The call came without checks (`--insecure-cluster`).
    pub insecure: bool,
}

impl Caller {
    /// Whether this caller may act as `node_id`: a certificate that names
    /// a node must name this one. The shared secret proves membership of
    /// the cluster, not which member: its claim is not checked (any holder
    /// could claim any node). A caller that names no node (a certificate
    /// for the whole cluster, the secret alone, an insecure cluster) may
    /// act as any.
    pub fn may_act_as(&self, node_id: &str) -> bool {
        self.certified.as_deref().is_none_or(|c| c == node_id)
    }

    /// The caller's node as far as it is known, for logs.
    pub fn node(&self) -> Option<&str> {
        self.certified.as_deref().or(self.claimed.as_deref())
    }

    /// Refuses a call about `node_id` from a caller that is another node.
    pub fn check_acts_as(&self, node_id: &str, field: &str) -> Result<(), Status> {
        if self.may_act_as(node_id) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{field} {node_id:?} is not the calling node ({})",
                self.node().unwrap_or("?")
            )))
        }
    }

    /// The caller of a request that went through a [`Guard`].
    pub fn of<T>(request: &Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_default()
    }
}

/// Counts refusals (the binaries count them in a metric).
pub type RefusalHook = Arc<dyn Fn(AuthError) + Send + Sync>;

/// The called side: refuses calls without a valid credential.
#[derive(Clone)]
pub struct Guard {
    secret: Option<ClusterSecret>,
    /// Client certificates are verified by the TLS layer: a call must
    /// come with one.
    mtls: bool,
    on_refusal: Option<RefusalHook>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("secret", &self.secret.is_some())
            .field("mtls", &self.mtls)
            .finish()
    }
}

impl Guard {
    /// Checks the shared secret when given, a client certificate with
    /// `mtls`; with neither every call passes (an insecure cluster).
    pub fn new(secret: Option<ClusterSecret>, mtls: bool) -> Guard {
        Guard {
            secret,
            mtls,
            on_refusal: None,
        }
    }

    /// Calls `hook` with the reason of every refusal.
    pub fn on_refusal(mut self, hook: RefusalHook) -> Guard {
        self.on_refusal = Some(hook);
        self
    }

    /// Whether anything is checked.
    pub fn is_secure(&self) -> bool {
        self.secret.is_some() || self.mtls
    }

    /// Checks a call: who made it, or why it is refused.
    pub fn check<T>(&self, request: &Request<T>) -> Result<Caller, AuthError> {
        let mut caller = Caller {
            insecure: !self.is_secure(),
            ..Caller::default()
        };
        if self.mtls {
            let certs = request.peer_certs().ok_or(AuthError::NoCertificate)?;
            let leaf = certs.first().ok_or(AuthError::NoCertificate)?;
            caller.certified = certificate_node(leaf.as_ref());
        }
        if let Some(secret) = &self.secret {
            let token = request
                .metadata()
                .get(METADATA_KEY)
                .ok_or(AuthError::Missing)?
                .to_str()
                .map_err(|_| AuthError::Malformed)?;
            caller.claimed = Some(secret.verify(token, unix_now())?);
        }
        Ok(caller)
    }
}

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.check(&request) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok(request)
            }
            Err(err) => {
                if let Some(hook) = &self.on_refusal {
                    hook(err);
                }
                Err(Status::unauthenticated(err.to_string()))
            }
        }
    }
}

/// The node a certificate names: its URI SAN `urn:ringway:node:<id>`.
pub fn certificate_node(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => {
            uri.strip_prefix(NODE_URI_PREFIX).map(str::to_owned)
        }
        _ => None,
    })
}

/// Mutual TLS between the members of a cluster: this member's certificate
/// and key, and the CA its peers' certificates must chain to. Both sides
/// of every internal connection present and verify a certificate.
#[derive(Clone, Debug)]
pub struct ClusterTls {
    ca: tonic::transport::Certificate,
    identity: tonic::transport::Identity,
    /// The name checked in the called member's certificate; `None`: the
    /// host of the address called.
    server_name: Option<String>,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct TlsFileError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl ClusterTls {
    /// Reads the PEM files (`--cluster-tls-ca`, `--cluster-tls-cert`,
    /// `--cluster-tls-key`).
    pub fn from_files(
        ca: &Path,
        cert: &Path,
        key: &Path,
        server_name: Option<String>,
    ) -> Result<ClusterTls, TlsFileError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsFileError {
                path: path.to_owned(),
                source,
            })
        };
        Ok(ClusterTls {
            ca: tonic::transport::Certificate::from_pem(read(ca)?),
            identity: tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
            server_name,
        })
    }

    /// The listener's side: presents this member's certificate and
    /// requires one from every caller, chained to the cluster CA.
    pub fn server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// The caller's side towards `addr` (`host:port`): verifies the called
    /// member's certificate and presents this member's.
    pub fn client(&self, addr: &str) -> tonic::transport::ClientTlsConfig {
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(self.server_name.as_deref().unwrap_or(host))
    }
}

/// How one member of a cluster talks to the others and checks who calls
/// it: the shared secret, mutual TLS, both, or (`--insecure-cluster`)
/// neither.
#[derive(Clone, Debug)]
pub struct ClusterSecurity {
    pub node_id: String,
    pub secret: Option<ClusterSecret>,
    pub tls: Option<ClusterTls>,
}

impl ClusterSecurity {
    /// Nothing checked, nothing presented (tests of an insecure cluster,
    /// tools).
    pub fn insecure(node_id: &str) -> ClusterSecurity {
        ClusterSecurity {
            node_id: node_id.to_owned(),
            secret: None,
            tls: None,
        }
    }

    pub fn is_secure(&self) -> bool {
        self.secret.is_some() || self.tls.is_some()
    }

    /// Signs this member's calls.
    pub fn signer(&self) -> Signer {
        Signer::new(self.secret.clone(), &self.node_id)
    }

    /// Checks the calls this member serves.
    pub fn guard(&self) -> Guard {
        Guard::new(self.secret.clone(), self.tls.is_some())
    }

    /// An endpoint for `addr` (`host:port`, or a URL whose scheme must
    /// then agree with the TLS setting), with TLS when the cluster uses it.
    pub fn endpoint(
        &self,
        addr: &str,
    ) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("{scheme}://{addr}")
        };
        let host_port = url.split_once("://").map_or(addr, |(_, rest)| rest);
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())?;
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.client(host_port.trim_end_matches('/'))),
            None => Ok(endpoint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> ClusterSecret {
        ClusterSecret::new(&[7u8; 32]).expect("secret")
    }

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert!(matches!(
            ClusterSecret::new(b"short"),
            Err(SecretError::TooShort { len: 5 })
        ));
        assert_eq!(format!("{:?}", secret()), "ClusterSecret(..)");
    }

    #[test]
    fn tokens_verify_and_name_their_node() {
        let s = secret();
        let token = s.token("n1 \"odd\"\n", 1_000_000);
        assert_eq!(s.verify(&token, 1_000_000).as_deref(), Ok("n1 \"odd\"\n"));
        assert_eq!(
            s.verify(&token, 1_000_000 + WINDOW_SECS).as_deref(),
            Ok("n1 \"odd\"\n")
        );
        assert!(!token.contains("odd"), "the id is encoded: {token}");
    }

    #[test]
    fn forged_stale_and_other_secrets_fail() {
        let s = secret();
        let other = ClusterSecret::new(&[8u8; 40]).expect("secret");
        let token = s.token("n1", 1_000_000);
        assert_eq!(
            other.verify(&token, 1_000_000),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            s.verify(&token, 1_000_000 + WINDOW_SECS + 1),
            Err(AuthError::OutOfWindow)
        );
        // Another node id under the same MAC.
        let forged = token.replacen(
            &URL_SAFE_NO_PAD.encode("n1"),
            &URL_SAFE_NO_PAD.encode("n2"),
            1,
        );
        assert_eq!(s.verify(&forged, 1_000_000), Err(AuthError::BadSignature));
        for bad in [
            "",
            "v1",
            "v2.bjE.1.AAAA",
            "v1.bjE.x.AAAA",
            "v1.bjE.1.AAAA.extra",
            "v1.!!.1.AA",
        ] {
            assert!(s.verify(bad, 1_000_000).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn files_lose_one_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("ringway-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("secret");
        std::fs::write(&path, format!("{}\n", "k".repeat(32))).expect("write");
        let from_file = ClusterSecret::from_file(&path).expect("secret");
        let direct = ClusterSecret::new("k".repeat(32).as_bytes()).expect("secret");
        assert_eq!(from_file.token("n", 5), direct.token("n", 5));
        std::fs::write(&path, "k".repeat(31)).expect("write");
        assert!(ClusterSecret::from_file(&path).is_err());
        assert!(ClusterSecret::from_file(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_guard_checks_the_metadata() {
        let s = secret();
        let guard = Guard::new(Some(s.clone()), false);
        let mut request = Request::new(());
        assert_eq!(guard.check(&request), Err(AuthError::Missing));
        Signer::new(Some(s), "n3").sign(request.metadata_mut());
        let caller = guard.check(&request).expect("accepted");
        assert_eq!(caller.claimed.as_deref(), Some("n3"));
        assert!(caller.may_act_as("n3"));
        let certified = Caller {
            certified: Some("n3".into()),
            ..Caller::default()
        };
        assert!(certified.may_act_as("n3") && !certified.may_act_as("n1"));
        let insecure = Guard::new(None, false)
            .check(&Request::new(()))
            .expect("open");
        assert!(insecure.insecure && insecure.may_act_as("anyone"));
        assert_eq!(
            Guard::new(None, true).check(&Request::new(())),
            Err(AuthError::NoCertificate)
        );
    }

    #[test]
    fn derived_keys_differ_by_label_and_from_the_secret() {
        let s = secret();
        assert_ne!(s.derive("sid"), s.derive("other"));
        assert_ne!(&s.derive("sid")[..], &[7u8; 32][..]);
    }
}
