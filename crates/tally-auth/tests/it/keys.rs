//! Key directory management and issuing.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tally_auth::{inspect, AuthError, IssueRequest, KeyRing, Scope};

use crate::support::{issue, Fixture};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn key_files_are_private() {
    let f = Fixture::new();
    let keys = f.path().join("keys");
    assert_eq!(mode(&keys), 0o700);
    assert_eq!(mode(&keys.join(format!("{}.key", f.key_id))), 0o600);
    assert_eq!(mode(&keys.join(format!("{}.pub", f.key_id))), 0o644);
    let secret = std::fs::read_to_string(keys.join(format!("{}.key", f.key_id))).unwrap();
    assert!(secret.starts_with("k4.secret."));
    let public = std::fs::read_to_string(keys.join(format!("{}.pub", f.key_id))).unwrap();
    assert!(public.starts_with("k4.public."));
    // No temporaries left behind.
    let mut names: Vec<String> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            format!("{}.key", f.key_id),
            format!("{}.pub", f.key_id),
            "signing".to_owned()
        ]
    );
}

#[test]
fn issue_refuses_a_readable_secret_key() {
    let f = Fixture::new();
    let path = f.path().join("keys").join(format!("{}.key", f.key_id));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let request = IssueRequest {
        subject: "s".to_owned(),
        scopes: vec![Scope::Read],
        ledgers: vec![],
        accounts: vec![],
        ttl: Duration::from_secs(60),
    };
    let error = KeyRing::issue(f.path(), request).unwrap_err();
    assert!(matches!(error, AuthError::KeyFile { .. }), "{error}");
    assert!(error.to_string().contains("chmod 600"), "{error}");
    assert!(!error.to_string().contains("k4.secret"), "{error}");
}

#[test]
fn lifecycle_errors() {
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(KeyRing::list(empty.path()).unwrap(), []);
    assert!(matches!(
        KeyRing::rotate(empty.path()),
        Err(AuthError::NotInitialized { .. })
    ));
    let request = IssueRequest {
        subject: "s".to_owned(),
        scopes: vec![Scope::Read],
        ledgers: vec![],
        accounts: vec![],
        ttl: Duration::from_secs(60),
    };
    assert!(matches!(
        KeyRing::issue(empty.path(), request),
        Err(AuthError::NotInitialized { .. })
    ));
    let verifier = tally_auth::Verifier::load(empty.path(), std::sync::Arc::new(|_: &str| false));
    assert!(matches!(verifier, Err(AuthError::NotInitialized { .. })));

    let f = Fixture::new();
    assert!(matches!(
        KeyRing::init(f.path()),
        Err(AuthError::AlreadyInitialized { .. })
    ));
    assert!(matches!(
        KeyRing::retire(f.path(), &f.key_id),
        Err(AuthError::RetireSigningKey { .. })
    ));
    assert!(matches!(
        KeyRing::retire(f.path(), "0000000000000000"),
        Err(AuthError::UnknownKey { .. })
    ));
    for bad in ["", "../signing", "0000000000000000.pub", "ABCDEF0123456789"] {
        assert!(
            matches!(
                KeyRing::retire(f.path(), bad),
                Err(AuthError::InvalidKeyId { .. })
            ),
            "{bad}"
        );
    }
    let error = KeyRing::init(f.path()).unwrap_err().to_string();
    assert!(!error.ends_with('.'), "{error}");
}

#[test]
fn list_shows_the_signing_key() {
    let f = Fixture::new();
    let keys = KeyRing::list(f.path()).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].id.as_str(), f.key_id);
    assert!(keys[0].signing);
    assert!(keys[0].has_secret_key);

    let second = KeyRing::rotate(f.path()).unwrap();
    let keys = KeyRing::list(f.path()).unwrap();
    assert_eq!(keys.len(), 2);
    for key in &keys {
        assert_eq!(key.signing, key.id == second, "{key:?}");
    }

    KeyRing::retire(f.path(), &f.key_id).unwrap();
    let keys = KeyRing::list(f.path()).unwrap();
    assert_eq!(
        keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>(),
        [second]
    );
}

#[test]
fn inspect_decodes_without_a_key() {
    let f = Fixture::new();
    let request = IssueRequest {
        subject: "billing".to_owned(),
        scopes: vec![Scope::Write, Scope::Read],
        ledgers: vec!["usd".to_owned()],
        accounts: vec!["alice".to_owned(), "bob".to_owned()],
        ttl: Duration::from_secs(86_400),
    };
    let (token, claims) = KeyRing::issue(f.path(), request).unwrap();
    drop(f); // The key directory is gone.
    assert_eq!(inspect(&token).unwrap(), claims);
    assert_eq!(claims.key_id.len(), 16);
    assert_eq!(claims.token_id.len(), 32);
    assert_eq!(
        claims.expires_at.duration_since(claims.issued_at).unwrap(),
        Duration::from_secs(86_400)
    );

    for garbage in ["", "v4.public.", "v4.public.!!!", "v2.public.AAAA", "hello"] {
        assert!(
            matches!(inspect(garbage), Err(AuthError::MalformedToken { .. })),
            "{garbage:?}"
        );
    }
}

#[test]
fn token_ids_are_unique() {
    let f = Fixture::new();
    let ids: std::collections::HashSet<String> = (0..100)
        .map(|_| issue(f.path(), &[Scope::Read]).1.token_id)
        .collect();
    assert_eq!(ids.len(), 100);
}

#[test]
fn write_secret_file_is_private_and_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.token");
    std::fs::write(&path, "old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    tally_auth::write_secret_file(&path, b"new\n").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
