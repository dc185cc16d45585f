//! Built-in JWT verification of the CONNECT `auth.token`, for deployments
//! without an upstream `OnConnect` hook. It wraps any application: the
//! token decides who connects (its `sub` is the user, its `rooms` claim the
//! initial rooms), the wrapped application still handles everything else.
//!
//! docs/API.md ("JWT") lists the claims and the CONNECT_ERROR messages.

use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::config::Config;
use crate::socketio::{
    AckSender, Application, ConnectFuture, ConnectRequest, DisconnectReason, Event, Grant, Refusal,
    SocketRef,
};

/// Why a key could not be loaded (a configuration error, at start).
#[derive(Debug, Error)]
pub enum JwtConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not an RSA public key in PEM: {source}")]
    Key {
        path: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("{path} holds a private key: give the RSA public key")]
    PrivateKey { path: String },
    #[error("the HS256 secret is empty")]
    EmptySecret,
}

/// Why a token was refused. The message is what the client sees in its
/// CONNECT_ERROR.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JwtError {
    #[error("missing token")]
    MissingToken,
    #[error("malformed token")]
    Malformed,
    #[error("invalid signature")]
    InvalidSignature,
    #[error("invalid algorithm")]
    InvalidAlgorithm,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("invalid audience")]
    InvalidAudience,
    #[error("invalid issuer")]
    InvalidIssuer,
    #[error("missing claim: {0}")]
    MissingClaim(String),
    #[error("invalid claim: {0}")]
    InvalidClaim(String),
}

impl From<jsonwebtoken::errors::Error> for JwtError {
    fn from(err: jsonwebtoken::errors::Error) -> JwtError {
        match err.into_kind() {
            ErrorKind::InvalidSignature => JwtError::InvalidSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                JwtError::InvalidAlgorithm
            }
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidAudience => JwtError::InvalidAudience,
            ErrorKind::InvalidIssuer => JwtError::InvalidIssuer,
            ErrorKind::MissingRequiredClaim(claim) => JwtError::MissingClaim(claim),
            ErrorKind::InvalidClaimFormat(claim) => JwtError::InvalidClaim(claim),
            _ => JwtError::Malformed,
        }
    }
}

/// The claims Ringway reads besides the registered ones the library
/// checks (`exp`, `nbf`, `aud`, `iss`).
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    rooms: Option<Value>,
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub rooms: Vec<String>,
}

/// A key and the checks every token must pass.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Result<Verifier, JwtConfigError> {
        if secret.is_empty() {
            return Err(JwtConfigError::EmptySecret);
        }
        Ok(Verifier::new(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
        ))
    }

    /// RS256 with an RSA public key in PEM.
    pub fn rs256_pem(pem: &[u8], path: &str) -> Result<Verifier, JwtConfigError> {
        // The library would take a private key's PEM as well; a gateway
        // has no business holding one.
        if String::from_utf8_lossy(pem).contains("PRIVATE KEY-----") {
            return Err(JwtConfigError::PrivateKey {
                path: path.to_owned(),
            });
        }
        let key = DecodingKey::from_rsa_pem(pem).map_err(|source| JwtConfigError::Key {
            path: path.to_owned(),
            source,
        })?;
        Ok(Verifier::new(key, Algorithm::RS256))
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Verifier {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Without configured audiences a token's `aud` is not checked
        // (the library would refuse any token that has one).
        validation.validate_aud = false;
        Verifier { key, validation }
    }

    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub fn leeway(mut self, seconds: u64) -> Verifier {
        self.validation.leeway = seconds;
        self
    }

    /// Tokens must name one of these audiences (none: not checked).
    pub fn audiences(mut self, audiences: &[String]) -> Verifier {
        if !audiences.is_empty() {
            self.validation.set_audience(audiences);
            self.validation.validate_aud = true;
            self.validation.required_spec_claims.insert("aud".into());
        }
        self
    }

    /// Tokens must name one of these issuers (none: not checked).
    pub fn issuers(mut self, issuers: &[String]) -> Verifier {
        if !issuers.is_empty() {
            self.validation.set_issuer(issuers);
            self.validation.required_spec_claims.insert("iss".into());
        }
        self
    }

    /// The verifier the configuration asks for, if any. Reads key files.
    pub fn from_config(config: &Config) -> Result<Option<Verifier>, JwtConfigError> {
        let verifier = if let Some(secret) = &config.jwt_hs256_secret {
            Verifier::hs256(secret.0.as_bytes())?
        } else if let Some(path) = &config.jwt_hs256_secret_file {
            let secret = read(path)?;
            Verifier::hs256(trim_newline(&secret))?
        } else if let Some(path) = &config.jwt_rs256_public_key {
            Verifier::rs256_pem(&read(path)?, &path.display().to_string())?
        } else {
            return Ok(None);
        };
        Ok(Some(
            verifier
                .leeway(config.jwt_leeway)
                .audiences(&config.jwt_audiences)
                .issuers(&config.jwt_issuers),
        ))
    }

    /// Verifies a token: signature, `exp` (required), `nbf`, `aud` and
    /// `iss` when configured, `sub` (a non-empty string), `rooms` (when
    /// present, an array of strings).
    pub fn verify(&self, token: &str) -> Result<Identity, JwtError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?;
        let user = match data.claims.sub {
            Some(Value::String(sub)) if !sub.is_empty() => sub,
            Some(_) => return Err(JwtError::InvalidClaim("sub".into())),
            None => return Err(JwtError::MissingClaim("sub".into())),
        };
        let rooms = match data.claims.rooms {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(room) => Ok(room),
                    _ => Err(JwtError::InvalidClaim("rooms".into())),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(JwtError::InvalidClaim("rooms".into())),
        };
        Ok(Identity { user, rooms })
    }

    /// Verifies the `token` field of a CONNECT payload.
    pub fn verify_auth(&self, auth: &str) -> Result<Identity, JwtError> {
        #[derive(Deserialize)]
        struct Auth {
            #[serde(default)]
            token: Option<Value>,
        }
        let token = match serde_json::from_str::<Auth>(auth) {
            Ok(Auth {
                token: Some(Value::String(token)),
            }) if !token.is_empty() => token,
            _ => return Err(JwtError::MissingToken),
        };
        self.verify(&token)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, JwtConfigError> {
    std::fs::read(path).map_err(|source| JwtConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A secret file written by `echo` ends with a newline that is not part
/// of the secret.
fn trim_newline(secret: &[u8]) -> &[u8] {
    let secret = secret.strip_suffix(b"\n").unwrap_or(secret);
    secret.strip_suffix(b"\r").unwrap_or(secret)
}

/// Any application behind JWT verification of the CONNECT.
pub struct Jwt<A> {
    inner: A,
    verifier: Verifier,
}

impl<A: Application> Jwt<A> {
    pub fn new(inner: A, verifier: Verifier) -> Jwt<A> {
        Jwt { inner, verifier }
    }
}

impl<A: Application> Application for Jwt<A> {
    fn has_namespace(&self, namespace: &str) -> bool {
        self.inner.has_namespace(namespace)
    }

    /// The token first; then the wrapped application, whose grant gets the
    /// token's user and rooms.
    fn authorize(&self, request: ConnectRequest) -> ConnectFuture {
        let identity = match self.verifier.verify_auth(&request.auth) {
            Ok(identity) => identity,
            Err(err) => {
                tracing::debug!(sid = %request.session.sid(), %err, "JWT refused");
                return Box::pin(std::future::ready(Err(Refusal::new(err.to_string()))));
            }
        };
        let inner = self.inner.authorize(request);
        Box::pin(async move {
            let Grant { rooms, data, .. } = inner.await?;
            let mut all = identity.rooms;
            for room in rooms {
                if !all.contains(&room) {
                    all.push(room);
                }
            }
            Ok(Grant {
                user: Some(identity.user),
                rooms: all,
                data,
            })
        })
    }

    fn on_connect(&self, socket: &SocketRef) {
        self.inner.on_connect(socket);
    }

    fn on_event(&self, socket: &SocketRef, event: Event, ack: Option<AckSender>) {
        self.inner.on_event(socket, event, ack);
    }

    fn on_disconnect(&self, socket: &SocketRef, reason: DisconnectReason) {
        self.inner.on_disconnect(socket, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, get_current_timestamp, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("encode")
    }

    fn verifier() -> Verifier {
        Verifier::hs256(SECRET).expect("key").leeway(5)
    }

    fn now() -> u64 {
        get_current_timestamp()
    }

    #[test]
    fn valid_token_gives_user_and_rooms() {
        let t = token(json!({"sub": "alice", "exp": now() + 60, "rooms": ["a", "b"]}));
        let id = verifier()
            .verify_auth(&json!({ "token": t }).to_string())
            .expect("valid");
        assert_eq!(
            id,
            Identity {
                user: "alice".into(),
                rooms: vec!["a".into(), "b".into()]
            }
        );
    }

    #[test]
    fn each_failure_has_its_message() {
        let v = verifier();
        let cases = [
            (json!({"sub": "a", "exp": now() - 60}), "token expired"),
            (
                json!({"sub": "a", "exp": now() + 60, "nbf": now() + 60}),
                "token not yet valid",
            ),
            (json!({"sub": "a"}), "missing claim: exp"),
            (json!({"exp": now() + 60}), "missing claim: sub"),
            (json!({"sub": 7, "exp": now() + 60}), "missing claim: sub"),
            (
                json!({"sub": "a", "exp": now() + 60, "rooms": "x"}),
                "invalid claim: rooms",
            ),
            (
                json!({"sub": "a", "exp": now() + 60, "rooms": [1]}),
                "invalid claim: rooms",
            ),
        ];
        for (claims, message) in cases {
            let err = v.verify(&token(claims.clone())).expect_err("refused");
            assert_eq!(err.to_string(), message, "{claims}");
        }
        assert_eq!(
            v.verify_auth("{}").expect_err("no token").to_string(),
            "missing token"
        );
        assert_eq!(
            v.verify_auth(r#"{"token":5}"#)
                .expect_err("no token")
                .to_string(),
            "missing token"
        );
        assert_eq!(
            v.verify("not.a.jwt").expect_err("bad").to_string(),
            "malformed token"
        );
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "a", "exp": now() + 60}),
            &EncodingKey::from_secret(b"other"),
        )
        .expect("encode");
        assert_eq!(
            v.verify(&other).expect_err("bad").to_string(),
            "invalid signature"
        );
    }

    #[test]
    fn leeway_tolerates_small_skew() {
        let t = token(json!({"sub": "a", "exp": now() - 2, "nbf": now() + 2}));
        assert!(verifier().verify(&t).is_ok());
    }

    #[test]
    fn audience_and_issuer_when_configured() {
        let v = verifier()
            .audiences(&["chat".into()])
            .issuers(&["auth.example".into()]);
        let ok = json!({"sub": "a", "exp": now() + 60, "aud": "chat", "iss": "auth.example"});
        assert!(v.verify(&token(ok)).is_ok());
        let wrong_aud = json!({"sub": "a", "exp": now() + 60, "aud": "x", "iss": "auth.example"});
        assert_eq!(
            v.verify(&token(wrong_aud)).expect_err("aud").to_string(),
            "invalid audience"
        );
        let no_aud = json!({"sub": "a", "exp": now() + 60, "iss": "auth.example"});
        assert_eq!(
            v.verify(&token(no_aud)).expect_err("aud").to_string(),
            "missing claim: aud"
        );
        let wrong_iss = json!({"sub": "a", "exp": now() + 60, "aud": "chat", "iss": "x"});
        assert_eq!(
            v.verify(&token(wrong_iss)).expect_err("iss").to_string(),
            "invalid issuer"
        );
        // Without configured audiences a token's `aud` is not checked.
        let any_aud = json!({"sub": "a", "exp": now() + 60, "aud": "x"});
        assert!(verifier().verify(&token(any_aud)).is_ok());
    }

    #[test]
    fn secret_file_newline_is_trimmed() {
        assert_eq!(trim_newline(b"s3cret\n"), b"s3cret");
        assert_eq!(trim_newline(b"s3cret\r\n"), b"s3cret");
        assert_eq!(trim_newline(b"s3cret"), b"s3cret");
    }
}
