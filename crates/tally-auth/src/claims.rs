//! What a token says, and how it is written inside the PASETO payload and footer.
//!
//! Payload (JSON, signed): `{"jti","sub","scopes","ledgers","accounts","iat","exp"}`, times
//! in RFC 3339 UTC as the PASETO registered claims require. Footer (JSON, signed but not
//! encrypted, readable before verification): `{"kid"}`, the id of the signing key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pasetors::token::UntrustedToken;
use pasetors::version4::V4;
use pasetors::Public;
use serde::{Deserialize, Serialize};

use crate::limits::{
    ID_BYTES_MAX, KEY_ID_BYTES, TOKEN_ACCOUNTS_MAX, TOKEN_BYTES_MAX, TOKEN_ID_BYTES,
    TOKEN_LEDGERS_MAX, TOKEN_TTL_MAX,
};
use crate::{AuthError, Scope};

/// Everything a token states, as issued or decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Random 128-bit id in lowercase hex (`jti`); the handle for revocation.
    pub token_id: String,
    /// Who the token was issued to (`sub`), free text for logs and audit.
    pub subject: String,
    /// What the holder may do; never empty.
    pub scopes: Vec<Scope>,
    /// Ledgers the token is restricted to; empty means any.
    pub ledgers: Vec<String>,
    /// Accounts the token is restricted to; empty means any.
    pub accounts: Vec<String>,
    /// When the token was issued (`iat`), to the second.
    pub issued_at: SystemTime,
    /// When the token stops verifying (`exp`), to the second.
    pub expires_at: SystemTime,
    /// The id of the signing key (`kid` in the footer).
    pub key_id: String,
}

/// Decodes a token's claims and key id WITHOUT verifying its signature, for
/// `tally keys inspect`. Never use the result to grant anything.
///
/// Only the shape is checked: an expired token or one from an unknown key still decodes.
pub fn inspect(token: &str) -> Result<Claims, AuthError> {
    let malformed = |reason: &str| AuthError::MalformedToken {
        reason: reason.to_owned(),
    };
    let untrusted = parse_untrusted(token).map_err(malformed)?;
    let key_id = decode_footer(untrusted.untrusted_footer()).map_err(malformed)?;
    decode_payload(untrusted.untrusted_payload(), key_id).map_err(malformed)
}

#[derive(Serialize, Deserialize)]
// A claim we do not know could be a restriction a newer issuer added; ignoring it would grant
// more than intended, so unknown fields make the token malformed.
#[serde(deny_unknown_fields)]
struct WirePayload {
    jti: String,
    sub: String,
    scopes: Vec<String>,
    ledgers: Vec<String>,
    accounts: Vec<String>,
    iat: String,
    exp: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireFooter {
    kid: String,
}

/// Splits and base64-decodes a token; checks the length first so garbage costs little.
pub(crate) fn parse_untrusted(token: &str) -> Result<UntrustedToken<Public, V4>, &'static str> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err("token too long");
    }
    UntrustedToken::<Public, V4>::try_from(token).map_err(|_| "not a PASETO v4.public token")
}

/// The key id in a footer.
pub(crate) fn decode_footer(footer: &[u8]) -> Result<String, &'static str> {
    if footer.is_empty() {
        return Err("no footer");
    }
    let footer: WireFooter = serde_json::from_slice(footer).map_err(|_| "bad footer")?;
    if !is_lower_hex(&footer.kid, KEY_ID_BYTES) {
        return Err("bad key id in footer");
    }
    Ok(footer.kid)
}

pub(crate) fn encode_footer(key_id: &str) -> String {
    assert!(is_lower_hex(key_id, KEY_ID_BYTES));
    serde_json::to_string(&WireFooter {
        kid: key_id.to_owned(),
    })
    .expect("a struct of strings always serialises")
}

/// Claims from a payload, checked against every rule [`check`] enforces.
pub(crate) fn decode_payload(payload: &[u8], key_id: String) -> Result<Claims, &'static str> {
    let wire: WirePayload = serde_json::from_slice(payload).map_err(|_| "bad payload")?;
    let mut scopes = Vec::with_capacity(wire.scopes.len());
    for scope in &wire.scopes {
        scopes.push(scope.parse::<Scope>().map_err(|_| "unknown scope")?);
    }
    let claims = Claims {
        token_id: wire.jti,
        subject: wire.sub,
        scopes,
        ledgers: wire.ledgers,
        accounts: wire.accounts,
        issued_at: humantime::parse_rfc3339(&wire.iat).map_err(|_| "bad iat")?,
        expires_at: humantime::parse_rfc3339(&wire.exp).map_err(|_| "bad exp")?,
        key_id,
    };
    check(&claims)?;
    Ok(claims)
}

pub(crate) fn encode_payload(claims: &Claims) -> String {
    assert!(check(claims).is_ok());
    let wire = WirePayload {
        jti: claims.token_id.clone(),
        sub: claims.subject.clone(),
        scopes: claims
            .scopes
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        ledgers: claims.ledgers.clone(),
        accounts: claims.accounts.clone(),
        iat: humantime::format_rfc3339_seconds(claims.issued_at).to_string(),
        exp: humantime::format_rfc3339_seconds(claims.expires_at).to_string(),
    };
    serde_json::to_string(&wire).expect("a struct of strings always serialises")
}

/// The rules every token obeys, whoever issued it; time-independent, so expiry is not here.
pub(crate) fn check(claims: &Claims) -> Result<(), &'static str> {
    if !is_lower_hex(&claims.token_id, TOKEN_ID_BYTES) {
        return Err("bad token id");
    }
    if !is_lower_hex(&claims.key_id, KEY_ID_BYTES) {
        return Err("bad key id");
    }
    if !is_id(&claims.subject) {
        return Err("bad subject");
    }
    if claims.scopes.is_empty() {
        return Err("no scopes");
    }
    if claims.ledgers.len() > TOKEN_LEDGERS_MAX || !claims.ledgers.iter().all(|l| is_id(l)) {
        return Err("bad ledger restriction");
    }
    if claims.accounts.len() > TOKEN_ACCOUNTS_MAX || !claims.accounts.iter().all(|a| is_id(a)) {
        return Err("bad account restriction");
    }
    // Whole seconds only: the wire format carries no fraction, so a fraction would not survive
    // a round trip and the issuer's `Claims` would differ from the verifier's.
    if subsec_nanos(claims.issued_at) != 0 || subsec_nanos(claims.expires_at) != 0 {
        return Err("times must be whole seconds");
    }
    match claims.expires_at.duration_since(claims.issued_at) {
        Ok(ttl) if ttl > Duration::ZERO && ttl <= TOKEN_TTL_MAX => Ok(()),
        Ok(ttl) if ttl > Duration::ZERO => Err("lifetime longer than the maximum"),
        _ => Err("expires before it is issued"),
    }
}

/// Subjects, ledgers and accounts: non-empty, bounded, no control characters (which would
/// forge log lines and inflate JSON escaping).
fn is_id(text: &str) -> bool {
    !text.is_empty() && text.len() <= ID_BYTES_MAX && !text.chars().any(char::is_control)
}

fn subsec_nanos(time: SystemTime) -> u32 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(1)
}

/// Whether `text` is exactly `bytes` bytes in lowercase hex.
pub(crate) fn is_lower_hex(text: &str, bytes: usize) -> bool {
    text.len() == 2 * bytes && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        let issued_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Claims {
            token_id: "0123456789abcdef0123456789abcdef".to_owned(),
            subject: "billing \"svc\" \\ é".to_owned(),
            scopes: vec![Scope::Read, Scope::Write],
            ledgers: vec!["usd".to_owned()],
            accounts: vec![],
            issued_at,
            expires_at: issued_at + Duration::from_secs(3600),
            key_id: "00112233aabbccdd".to_owned(),
        }
    }

    #[track_caller]
    fn check_refused(edit: impl FnOnce(&mut Claims), expected: &str) {
        let mut c = claims();
        edit(&mut c);
        assert_eq!(check(&c), Err(expected));
    }

    #[test]
    fn payload_round_trips() {
        let c = claims();
        let payload = encode_payload(&c);
        assert!(
            payload.contains(r#""iat":"2023-11-14T22:13:20Z""#),
            "{payload}"
        );
        assert_eq!(decode_payload(payload.as_bytes(), c.key_id.clone()), Ok(c));
    }

    #[test]
    fn footer_round_trips() {
        let footer = encode_footer("00112233aabbccdd");
        assert_eq!(footer, r#"{"kid":"00112233aabbccdd"}"#);
        assert_eq!(
            decode_footer(footer.as_bytes()).as_deref(),
            Ok("00112233aabbccdd")
        );
        assert_eq!(decode_footer(b""), Err("no footer"));
        assert_eq!(
            decode_footer(br#"{"kid":"../../etc/passwd"}"#),
            Err("bad key id in footer")
        );
        assert_eq!(
            decode_footer(br#"{"kid":"00112233aabbccdd","x":1}"#),
            Err("bad footer")
        );
    }

    #[test]
    fn claims_rules() {
        check_refused(|c| c.scopes.clear(), "no scopes");
        check_refused(|c| c.token_id = "XYZ".into(), "bad token id");
        check_refused(|c| c.subject.clear(), "bad subject");
        check_refused(|c| c.subject = "a\nb".into(), "bad subject");
        check_refused(|c| c.subject = "a".repeat(ID_BYTES_MAX + 1), "bad subject");
        check_refused(
            |c| c.ledgers = vec![String::new()],
            "bad ledger restriction",
        );
        check_refused(
            |c| c.ledgers = vec!["l".into(); TOKEN_LEDGERS_MAX + 1],
            "bad ledger restriction",
        );
        check_refused(
            |c| c.accounts = vec!["a".into(); TOKEN_ACCOUNTS_MAX + 1],
            "bad account restriction",
        );
        check_refused(
            |c| c.expires_at = c.issued_at,
            "expires before it is issued",
        );
        check_refused(
            |c| c.expires_at = c.issued_at + TOKEN_TTL_MAX + Duration::from_secs(1),
            "lifetime longer than the maximum",
        );
        check_refused(
            |c| c.expires_at += Duration::from_millis(500),
            "times must be whole seconds",
        );
    }

    #[test]
    fn payload_rules() {
        let decode = |json: &str| decode_payload(json.as_bytes(), "00112233aabbccdd".to_owned());
        let good = encode_payload(&claims());
        assert!(decode(&good).is_ok());
        assert_eq!(
            decode(&good.replace(r#""read""#, r#""root""#)),
            Err("unknown scope")
        );
        assert_eq!(
            decode(&good.replace(r#","ledgers":["usd"]"#, "")),
            Err("bad payload")
        );
        assert_eq!(
            decode(&good.replace("{", r#"{"nbf":"x","#)),
            Err("bad payload")
        );
        assert_eq!(
            decode(&good.replace("2023-11-14T22:13:20Z", "yesterday")),
            Err("bad iat")
        );
        assert_eq!(decode("[]"), Err("bad payload"));
        assert_eq!(decode(""), Err("bad payload"));
    }

    #[test]
    fn max_token_fits_the_byte_limit() {
        // Pairs with the estimate in limits.rs: the worst case encodes under TOKEN_BYTES_MAX.
        let worst = "\"".repeat(ID_BYTES_MAX);
        let mut c = claims();
        c.subject = worst.clone();
        c.scopes = Scope::ALL.to_vec();
        c.ledgers = vec![worst.clone(); TOKEN_LEDGERS_MAX];
        c.accounts = vec![worst; TOKEN_ACCOUNTS_MAX];
        let payload = encode_payload(&c);
        let token_bytes = "v4.public.".len()
            + (payload.len() + 64).div_ceil(3) * 4
            + 1
            + encode_footer(&c.key_id).len().div_ceil(3) * 4;
        assert!(token_bytes <= TOKEN_BYTES_MAX, "{token_bytes}");
    }

    #[test]
    fn hex() {
        assert_eq!(to_hex(&[0x00, 0xab, 0xff]), "00abff");
        assert!(is_lower_hex("00abff", 3));
        assert!(!is_lower_hex("00ABff", 3));
        assert!(!is_lower_hex("00abf", 3));
    }
}
