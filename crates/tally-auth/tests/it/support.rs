//! Helpers shared by the tests: a data directory, tokens, and forgeries.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use pasetors::keys::AsymmetricSecretKey;
use pasetors::version4::{PublicToken, V4};
use tally_auth::{Claims, IssueRequest, KeyRing, Scope, UnauthorizedReason, Verifier};

/// A data directory with an initialised key ring, and a verifier whose revocation set the
/// test controls.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub key_id: String,
    pub verifier: Verifier,
    pub revoked: Arc<RwLock<HashSet<String>>>,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key_id = KeyRing::init(dir.path()).unwrap().to_string();
        let revoked: Arc<RwLock<HashSet<String>>> = Arc::default();
        let check = Arc::clone(&revoked);
        let verifier = Verifier::load(
            dir.path(),
            Arc::new(move |id: &str| check.read().unwrap().contains(id)),
        )
        .unwrap();
        Fixture {
            dir,
            key_id,
            verifier,
            revoked,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn issue(&self, scopes: &[Scope]) -> (String, Claims) {
        issue(self.path(), scopes)
    }

    /// Signs `payload` with `footer` using this directory's key `key_id`: a token with claims
    /// `KeyRing::issue` would refuse to write.
    pub fn forge(&self, key_id: &str, payload: &str, footer: &str) -> String {
        forge(self.path(), key_id, payload, footer)
    }
}

pub fn issue(data_dir: &Path, scopes: &[Scope]) -> (String, Claims) {
    KeyRing::issue(
        data_dir,
        IssueRequest {
            subject: "test".to_owned(),
            scopes: scopes.to_vec(),
            ledgers: vec![],
            accounts: vec![],
            ttl: Duration::from_secs(3600),
        },
    )
    .unwrap()
}

pub fn forge(data_dir: &Path, key_id: &str, payload: &str, footer: &str) -> String {
    let text =
        std::fs::read_to_string(data_dir.join("keys").join(format!("{key_id}.key"))).unwrap();
    let secret = AsymmetricSecretKey::<V4>::try_from(text.trim_end()).unwrap();
    PublicToken::sign(&secret, payload.as_bytes(), Some(footer.as_bytes()), None).unwrap()
}

/// A payload in our format with times relative to now.
pub fn payload(scopes: &str, issued_ago_s: i64, expires_in_s: i64) -> String {
    let now = SystemTime::now();
    let at = |offset: i64| {
        let t = if offset >= 0 {
            now + Duration::from_secs(offset as u64)
        } else {
            now - Duration::from_secs(offset.unsigned_abs())
        };
        humantime::format_rfc3339_seconds(t).to_string()
    };
    format!(
        r#"{{"jti":"0123456789abcdef0123456789abcdef","sub":"forger","scopes":{scopes},"ledgers":[],"accounts":[],"iat":"{}","exp":"{}"}}"#,
        at(-issued_ago_s),
        at(expires_in_s)
    )
}

pub fn footer(key_id: &str) -> String {
    format!(r#"{{"kid":"{key_id}"}}"#)
}

/// What `verify` says, as the subject on success or the reason on refusal.
#[track_caller]
pub fn check(verifier: &Verifier, token: &str, expected: Result<&str, UnauthorizedReason>) {
    let actual = verifier.verify(token);
    match (&actual, expected) {
        (Ok(principal), Ok(subject)) => assert_eq!(principal.subject(), subject),
        (Err(refusal), Err(reason)) => {
            assert_eq!(refusal.reason(), reason, "{refusal}");
            assert_eq!(refusal.client_message(), "unauthorized");
        }
        _ => panic!("expected {expected:?}, got {actual:?}"),
    }
}
