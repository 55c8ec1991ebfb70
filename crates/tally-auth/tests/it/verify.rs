//! Verification of issued, forged, rotated, retired and revoked tokens.

use std::time::Duration;

use tally_auth::limits::{CACHE_ENTRIES_MAX, TOKEN_BYTES_MAX};
use tally_auth::{IssueRequest, KeyRing, Scope, UnauthorizedReason as Reason, Verifier};

use crate::support::{check, footer, payload, Fixture};

#[test]
fn issued_token_verifies() {
    let f = Fixture::new();
    let request = IssueRequest {
        subject: "billing".to_owned(),
        scopes: vec![Scope::Write],
        ledgers: vec!["usd".to_owned()],
        accounts: vec![],
        ttl: Duration::from_secs(600),
    };
    let (token, claims) = KeyRing::issue(f.path(), request).unwrap();
    for _ in 0..2 {
        // Miss, then hit: both give the same principal.
        let principal = f.verifier.verify(&token).unwrap();
        assert_eq!(principal.token_id(), claims.token_id);
        assert_eq!(principal.subject(), "billing");
        assert_eq!(principal.scopes(), [Scope::Write]);
        assert_eq!(principal.ledgers(), ["usd"]);
        assert!(principal.accounts().is_empty());
        assert_eq!(principal.expires_at(), claims.expires_at);
        assert_eq!(principal.key_id(), f.key_id);
        assert!(principal.allows(Scope::Write));
        assert!(!principal.allows(Scope::Read));
        assert!(principal.is_restricted());
        assert!(principal.allows_ledger("usd"));
        assert!(!principal.allows_ledger("eur"));
        assert!(principal.allows_account("anyone"));
    }
    assert_eq!(f.verifier.cache_entries(), 1);
}

#[test]
fn admin_token_allows_everything() {
    let f = Fixture::new();
    let (token, _) = f.issue(&[Scope::Admin]);
    let principal = f.verifier.verify(&token).unwrap();
    assert!(Scope::ALL.iter().all(|&scope| principal.allows(scope)));
    assert!(!principal.is_restricted());
}

#[test]
fn expired_and_future_tokens() {
    let f = Fixture::new();
    let expired = f.forge(
        &f.key_id,
        &payload(r#"["read"]"#, 7200, -3600),
        &footer(&f.key_id),
    );
    check(&f.verifier, &expired, Err(Reason::Expired));
    let future = f.forge(
        &f.key_id,
        &payload(r#"["read"]"#, -3600, 7200),
        &footer(&f.key_id),
    );
    check(&f.verifier, &future, Err(Reason::IssuedInFuture));
    // Within the allowed clock skew.
    let skewed = f.forge(
        &f.key_id,
        &payload(r#"["read"]"#, -60, 3600),
        &footer(&f.key_id),
    );
    check(&f.verifier, &skewed, Ok("forger"));
}

#[test]
fn cached_token_expires() {
    let f = Fixture::new();
    let token = f.forge(&f.key_id, &payload(r#"["read"]"#, 0, 1), &footer(&f.key_id));
    check(&f.verifier, &token, Ok("forger"));
    assert_eq!(f.verifier.cache_entries(), 1);
    std::thread::sleep(Duration::from_millis(1100));
    check(&f.verifier, &token, Err(Reason::Expired));
}

#[test]
fn signed_but_malformed_claims() {
    let f = Fixture::new();
    let good = payload(r#"["read"]"#, 0, 3600);
    let cases = [
        payload(r#"["read","root"]"#, 0, 3600),
        payload("[]", 0, 3600),
        payload(r#""read""#, 0, 3600),
        payload(r#"["read"]"#, 0, 401 * 24 * 3600),
        payload(r#"["read"]"#, 0, -1),
        good.replace(r#","accounts":[]"#, ""),
        good.replace(
            r#""sub":"forger""#,
            r#""sub":"forger","nbf":"2020-01-01T00:00:00Z""#,
        ),
        good.replace("0123456789abcdef0123456789abcdef", "not-hex"),
        good.replace(r#""ledgers":[]"#, r#""ledgers":[""]"#),
        "not json".to_owned(),
    ];
    for payload in cases {
        let token = f.forge(&f.key_id, &payload, &footer(&f.key_id));
        assert!(
            matches!(
                f.verifier.verify(&token).unwrap_err().reason(),
                Reason::Malformed(_)
            ),
            "{payload}"
        );
    }
    for footer in [
        "",
        "{}",
        r#"{"kid":"ABCDEF0123456789"}"#,
        "kid",
        r#"{"kid":"x","y":1}"#,
    ] {
        let token = f.forge(&f.key_id, &good, footer);
        assert!(
            matches!(
                f.verifier.verify(&token).unwrap_err().reason(),
                Reason::Malformed(_)
            ),
            "{footer}"
        );
    }
    assert_eq!(f.verifier.cache_entries(), 0);
}

#[test]
fn garbage_is_malformed() {
    let f = Fixture::new();
    let (token, _) = f.issue(&[Scope::Read]);
    let huge = "v4.public.".to_owned() + &"A".repeat(TOKEN_BYTES_MAX);
    let garbage = [
        "",
        " ",
        "Bearer x",
        "v4.public.",
        "v4.public..",
        "v4.public.%%%%",
        "v4.local.AAAA.AAAA",
        "v3.public.AAAA",
        "v4.public.AAAA",
        "v4.public.AAAA.AAAA.AAAA",
        "\u{0}\u{ff}é",
        &huge,
        &token[..token.len() / 2],
    ];
    for text in garbage {
        let reason = f.verifier.verify(text).unwrap_err().reason();
        assert!(
            matches!(reason, Reason::Malformed(_)),
            "{text:?}: {reason:?}"
        );
    }
}

#[test]
fn tampered_tokens_are_refused() {
    let f = Fixture::new();
    let (token, _) = f.issue(&[Scope::Read]);
    let (body, foot) = token.rsplit_once('.').unwrap();
    // Flip a base64 character inside the payload: it still decodes, but the signature fails.
    let mut bytes = body.as_bytes().to_vec();
    let index = "v4.public.".len() + 20;
    bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{}.{foot}", String::from_utf8(bytes).unwrap());
    check(&f.verifier, &tampered, Err(Reason::BadSignature));
    // The footer is signed too: pointing it at another trusted key breaks the signature.
    let other_key = KeyRing::rotate(f.path()).unwrap();
    assert!(f.verifier.reload_if_changed().unwrap());
    let redirected = format!(
        "{body}.{}",
        base64url(footer(other_key.as_str()).as_bytes())
    );
    check(&f.verifier, &redirected, Err(Reason::BadSignature));
    // The original still verifies, and the refusals were not cached.
    check(&f.verifier, &token, Ok("test"));
    assert_eq!(f.verifier.cache_entries(), 1);
}

#[test]
fn wrong_key_is_refused() {
    let f = Fixture::new();
    let stranger = Fixture::new();
    let (foreign, _) = stranger.issue(&[Scope::Admin]);
    check(&f.verifier, &foreign, Err(Reason::UnknownKey));
    // Signed by the stranger's key but naming ours: the signature gives it away.
    let forged = stranger.forge(
        &stranger.key_id,
        &payload(r#"["admin"]"#, 0, 3600),
        &footer(&f.key_id),
    );
    check(&f.verifier, &forged, Err(Reason::BadSignature));
    // A well-formed kid nobody has.
    let unknown = f.forge(
        &f.key_id,
        &payload(r#"["admin"]"#, 0, 3600),
        &footer("0000000000000000"),
    );
    check(&f.verifier, &unknown, Err(Reason::UnknownKey));
}

#[test]
fn rotation_and_retirement() {
    let f = Fixture::new();
    let (old, _) = f.issue(&[Scope::Read]);
    check(&f.verifier, &old, Ok("test"));
    assert!(!f.verifier.reload_if_changed().unwrap());

    let new_key = KeyRing::rotate(f.path()).unwrap();
    let (new, claims) = f.issue(&[Scope::Read]);
    assert_eq!(claims.key_id, new_key.as_str());
    // Not yet reloaded: the new key is unknown, the old token still verifies.
    check(&f.verifier, &new, Err(Reason::UnknownKey));
    check(&f.verifier, &old, Ok("test"));
    assert!(f.verifier.reload_if_changed().unwrap());
    assert!(!f.verifier.reload_if_changed().unwrap());
    assert_eq!(f.verifier.trusted_key_ids().len(), 2);
    check(&f.verifier, &old, Ok("test"));
    check(&f.verifier, &new, Ok("test"));
    // A fresh verifier trusts both as well.
    let fresh = Verifier::load(f.path(), std::sync::Arc::new(|_: &str| false)).unwrap();
    check(&fresh, &old, Ok("test"));
    check(&fresh, &new, Ok("test"));

    KeyRing::retire(f.path(), &f.key_id).unwrap();
    assert!(f.verifier.reload_if_changed().unwrap());
    assert_eq!(f.verifier.trusted_key_ids(), [new_key.to_string()]);
    // The old token was cached; the reload dropped it.
    check(&f.verifier, &old, Err(Reason::UnknownKey));
    check(&f.verifier, &new, Ok("test"));
}

#[test]
fn revocation_applies_to_cached_tokens() {
    let f = Fixture::new();
    let (token, claims) = f.issue(&[Scope::Read]);
    let (other, _) = f.issue(&[Scope::Read]);
    check(&f.verifier, &token, Ok("test"));
    check(&f.verifier, &other, Ok("test"));
    f.revoked.write().unwrap().insert(claims.token_id.clone());
    let refusal = f.verifier.verify(&token).unwrap_err();
    assert_eq!(refusal.reason(), Reason::Revoked);
    assert_eq!(refusal.token_id(), Some(claims.token_id.as_str()));
    assert!(refusal.to_string().contains(&claims.token_id), "{refusal}");
    check(&f.verifier, &other, Ok("test"));
    f.revoked.write().unwrap().clear();
    check(&f.verifier, &token, Ok("test"));
}

#[test]
fn cache_is_bounded() {
    let f = Fixture::new();
    let count = CACHE_ENTRIES_MAX + CACHE_ENTRIES_MAX / 4;
    let mut tokens = Vec::with_capacity(count);
    for _ in 0..count {
        tokens.push(f.issue(&[Scope::Read]).0);
    }
    for (index, token) in tokens.iter().enumerate() {
        f.verifier.verify(token).unwrap();
        if index % 1000 == 0 {
            assert!(f.verifier.cache_entries() <= CACHE_ENTRIES_MAX);
        }
    }
    let entries = f.verifier.cache_entries();
    assert!(entries <= CACHE_ENTRIES_MAX, "{entries}");
    assert!(
        entries >= CACHE_ENTRIES_MAX / 2,
        "eviction dropped too much: {entries}"
    );
    // Every token still verifies, from the cache or not.
    for token in tokens.iter().step_by(97) {
        check(&f.verifier, token, Ok("test"));
    }
    f.verifier.clear_cache();
    assert_eq!(f.verifier.cache_entries(), 0);
}

#[test]
fn verifier_is_shared_across_threads() {
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send_sync_clone::<Verifier>();

    let f = Fixture::new();
    let tokens: Vec<String> = (0..8).map(|_| f.issue(&[Scope::Read]).0).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let verifier = f.verifier.clone();
            let tokens = &tokens;
            s.spawn(move || {
                for i in 0..200 {
                    verifier.verify(&tokens[(i + t) % tokens.len()]).unwrap();
                }
            });
        }
        s.spawn(|| {
            for _ in 0..20 {
                f.verifier.reload_if_changed().unwrap();
                f.verifier.clear_cache();
            }
        });
    });
    assert!(f.verifier.cache_entries() <= tokens.len());
}

/// Unpadded URL-safe base64, as PASETO uses; enough for a test to rewrite a footer.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            text.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    text
}

#[test]
fn base64url_matches_real_footers() {
    let f = Fixture::new();
    let (token, _) = f.issue(&[Scope::Read]);
    let (_, foot) = token.rsplit_once('.').unwrap();
    assert_eq!(base64url(footer(&f.key_id).as_bytes()), foot);
}
