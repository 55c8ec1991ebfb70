//! The key directory, `DATA_DIR/keys/`, and token issuing.
//!
//! Layout:
//!
//! - `<kid>.key`: the secret key as a PASERK `k4.secret.` line, mode 0600. Only needed where
//!   tokens are issued; the server never reads it.
//! - `<kid>.pub`: the public key as a PASERK `k4.public.` line. Every `.pub` file is trusted
//!   by the server, so copying one in trusts another issuer's key.
//! - `signing`: the kid of the key new tokens are signed with.
//!
//! A kid is 16 lowercase hex digits (8 random bytes). Every file is written to a temporary
//! name, fsynced, renamed into place and the directory fsynced, so a crash leaves either the
//! old file or the new one, never half a key. Key files are written before `signing` points
//! at them, so a crash mid-rotation leaves at worst an unused, trusted key.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::FormatAsPaserk;
use pasetors::version4::{PublicToken, V4};

use crate::claims::{self, is_lower_hex, to_hex};
use crate::error::io_error;
use crate::limits::{KEYS_MAX, KEY_FILE_BYTES_MAX, KEY_ID_BYTES, TOKEN_BYTES_MAX, TOKEN_ID_BYTES};
use crate::{AuthError, Claims, Scope};

/// Key management and token issuing over `DATA_DIR/keys/`. Every operation reads the
/// directory afresh, so the CLI and a running server can share it.
#[derive(Debug)]
pub struct KeyRing {
    _private: (),
}

/// A key's id: 16 lowercase hex digits, written in each token's footer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

/// One key of the directory, for `tally keys list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's id.
    pub id: KeyId,
    /// When the public key file was written (its modification time).
    pub created: SystemTime,
    /// Whether new tokens are signed with this key.
    pub signing: bool,
    /// Whether the secret key is here; a trusted key from another issuer has none.
    pub has_secret_key: bool,
}

/// What to put in a new token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssueRequest {
    /// Who the token is for, free text for logs and audit.
    pub subject: String,
    /// What the holder may do; at least one.
    pub scopes: Vec<Scope>,
    /// Restrict the token to these ledgers; empty means any.
    pub ledgers: Vec<String>,
    /// Restrict the token to these accounts; empty means any.
    pub accounts: Vec<String>,
    /// How long the token verifies; whole seconds, at most
    /// [`TOKEN_TTL_MAX`](crate::limits::TOKEN_TTL_MAX).
    pub ttl: Duration,
}

impl KeyRing {
    /// Creates `DATA_DIR/keys/` with a first key pair, which becomes the signing key.
    /// Refuses when the directory already holds keys.
    pub fn init(data_dir: &Path) -> Result<KeyId, AuthError> {
        let dir = keys_dir(data_dir);
        create_dir(data_dir, &dir)?;
        if read_signing(&dir)?.is_some() || !scan(&dir)?.is_empty() {
            return Err(AuthError::AlreadyInitialized { dir });
        }
        let key_id = generate(&dir)?;
        write_atomic(
            &dir,
            SIGNING_FILE,
            format!("{}\n", key_id.0).as_bytes(),
            0o644,
        )?;
        tracing::info!(key_id = %key_id, dir = %dir.display(), "created signing key");
        Ok(key_id)
    }

    /// Creates a new key pair and makes it the signing key. Older public keys stay trusted,
    /// so tokens they signed keep verifying until their keys are retired.
    pub fn rotate(data_dir: &Path) -> Result<KeyId, AuthError> {
        let dir = keys_dir(data_dir);
        let Some(previous) = read_signing(&dir)? else {
            return Err(AuthError::NotInitialized { dir });
        };
        if scan(&dir)?.len() >= KEYS_MAX {
            return Err(AuthError::TooManyKeys { dir, max: KEYS_MAX });
        }
        let key_id = generate(&dir)?;
        write_atomic(
            &dir,
            SIGNING_FILE,
            format!("{}\n", key_id.0).as_bytes(),
            0o644,
        )?;
        tracing::info!(key_id = %key_id, previous = %previous, "rotated signing key");
        Ok(key_id)
    }

    /// Deletes a key, public and secret: servers stop trusting it on their next reload, so
    /// every token it signed is refused. Refuses the signing key: rotate first.
    pub fn retire(data_dir: &Path, key_id: &str) -> Result<(), AuthError> {
        let key_id = KeyId::parse(key_id)?;
        let dir = keys_dir(data_dir);
        if read_signing(&dir)?.as_ref() == Some(&key_id) {
            return Err(AuthError::RetireSigningKey { key_id: key_id.0 });
        }
        let public = dir.join(format!("{key_id}.pub"));
        let secret = dir.join(format!("{key_id}.key"));
        if !exists(&public)? && !exists(&secret)? {
            return Err(AuthError::UnknownKey {
                key_id: key_id.0,
                dir,
            });
        }
        // The public key goes first: it is what grants trust. A crash between the two leaves
        // an orphan secret key, which signs nothing (it is not `signing`) and a retry removes.
        for path in [public, secret] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove", path)(e)),
            }
            sync_dir(&dir)?;
        }
        tracing::info!(key_id = %key_id, "retired key");
        Ok(())
    }

    /// Every key in the directory, sorted by id; empty when there is no key directory yet,
    /// so a server can tell a first start.
    pub fn list(data_dir: &Path) -> Result<Vec<KeyInfo>, AuthError> {
        let dir = keys_dir(data_dir);
        let files = match scan(&dir) {
            Ok(files) => files,
            Err(AuthError::NotInitialized { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let signing = read_signing(&dir)?;
        let mut infos = Vec::new();
        for (key_id, files) in files {
            let created = match files.public {
                Some(modified) => modified,
                None => continue, // An orphan secret key left by an interrupted retire.
            };
            infos.push(KeyInfo {
                signing: signing.as_ref() == Some(&key_id),
                has_secret_key: files.secret,
                id: key_id,
                created,
            });
        }
        infos.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(infos)
    }

    /// Signs a new token with the signing key. Returns the token and what it states; the
    /// token id is 128 random bits.
    pub fn issue(data_dir: &Path, request: IssueRequest) -> Result<(String, Claims), AuthError> {
        let dir = keys_dir(data_dir);
        let Some(key_id) = read_signing(&dir)? else {
            return Err(AuthError::NotInitialized { dir });
        };
        let claims = request_claims(request, key_id.0.clone(), SystemTime::now())?;
        let secret_key = read_secret_key(&dir, &key_id)?;
        let payload = claims::encode_payload(&claims);
        let footer = claims::encode_footer(&key_id.0);
        let token = PublicToken::sign(
            &secret_key,
            payload.as_bytes(),
            Some(footer.as_bytes()),
            None,
        )
        .map_err(|e| AuthError::Crypto {
            op: "sign token",
            reason: e.to_string(),
        })?;
        if token.len() > TOKEN_BYTES_MAX {
            // Unreachable by the estimate in limits.rs, but a token the server refuses must
            // never be handed out.
            return Err(AuthError::InvalidRequest {
                reason: "token too long".to_owned(),
            });
        }
        tracing::info!(token_id = %claims.token_id, subject = %claims.subject, key_id = %key_id, "issued token");
        Ok((token, claims))
    }
}

/// Writes a file only its owner can read or write (mode 0600), atomically: for secrets such as
/// the admin token a server writes on first start. Replaces an existing file.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(AuthError::Io {
            op: "write",
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        });
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    write_atomic(dir, name, bytes, 0o600)
}

impl KeyId {
    /// Checks that `text` is a key id.
    pub fn parse(text: &str) -> Result<KeyId, AuthError> {
        if is_lower_hex(text, KEY_ID_BYTES) {
            Ok(KeyId(text.to_owned()))
        } else {
            Err(AuthError::InvalidKeyId {
                key_id: text.to_owned(),
                expected: 2 * KEY_ID_BYTES,
            })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const KEYS_DIR: &str = "keys";
const SIGNING_FILE: &str = "signing";

pub(crate) fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(KEYS_DIR)
}

fn request_claims(
    request: IssueRequest,
    key_id: String,
    now: SystemTime,
) -> Result<Claims, AuthError> {
    let invalid = |reason: &str| AuthError::InvalidRequest {
        reason: reason.to_owned(),
    };
    if request.ttl.subsec_nanos() != 0 {
        return Err(invalid("ttl must be whole seconds"));
    }
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| invalid("clock before 1970"))?
        .as_secs();
    let issued_at = UNIX_EPOCH + Duration::from_secs(now_s);
    let claims = Claims {
        token_id: to_hex(&rand::random::<[u8; TOKEN_ID_BYTES]>()),
        subject: request.subject,
        scopes: request.scopes,
        ledgers: request.ledgers,
        accounts: request.accounts,
        issued_at,
        expires_at: issued_at + request.ttl,
        key_id,
    };
    claims::check(&claims).map_err(invalid)?;
    Ok(claims)
}

/// Creates a key pair under a fresh kid; returns the kid.
fn generate(dir: &Path) -> Result<KeyId, AuthError> {
    let crypto = |e: pasetors::errors::Error| AuthError::Crypto {
        op: "generate key",
        reason: e.to_string(),
    };
    let pair = AsymmetricKeyPair::<V4>::generate().map_err(crypto)?;
    let key_id = loop {
        let key_id = KeyId(to_hex(&rand::random::<[u8; KEY_ID_BYTES]>()));
        if !exists(&dir.join(format!("{key_id}.pub")))?
            && !exists(&dir.join(format!("{key_id}.key")))?
        {
            break key_id;
        }
    };
    let mut secret = String::new();
    pair.secret
        .fmt(&mut secret)
        .map_err(|_| crypto(pasetors::errors::Error::PaserkParsing))?;
    secret.push('\n');
    let mut secret = secret.into_bytes();
    let written = write_atomic(dir, &format!("{key_id}.key"), &secret, 0o600);
    wipe(&mut secret);
    written?;
    let mut public = String::new();
    pair.public
        .fmt(&mut public)
        .map_err(|_| crypto(pasetors::errors::Error::PaserkParsing))?;
    public.push('\n');
    write_atomic(dir, &format!("{key_id}.pub"), public.as_bytes(), 0o644)?;
    Ok(key_id)
}

/// The signing key's secret, checked against its public key so that a mixed-up pair can
/// never issue tokens the server refuses.
fn read_secret_key(dir: &Path, key_id: &KeyId) -> Result<AsymmetricSecretKey<V4>, AuthError> {
    let path = dir.join(format!("{key_id}.key"));
    let file = OpenOptions::new()
        .read(true)
        // A symlink could point the issuer at a key it should not use; key files are ours.
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_error("open", &path))?;
    let mode = file
        .metadata()
        .map_err(io_error("stat", &path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(AuthError::KeyFile {
            path,
            reason: format!(
                "secret key is accessible by other users (mode {:o}): run chmod 600",
                mode & 0o777
            ),
        });
    }
    let mut text = read_bounded(file, &path)?;
    let parsed = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| AsymmetricSecretKey::<V4>::try_from(t.trim_end()).ok());
    wipe(&mut text);
    let Some(secret_key) = parsed else {
        // Never include the content: it is a secret, even when malformed.
        return Err(AuthError::KeyFile {
            path,
            reason: "not a PASERK k4.secret key".to_owned(),
        });
    };
    let derived =
        AsymmetricPublicKey::<V4>::try_from(&secret_key).map_err(|e| AuthError::Crypto {
            op: "derive public key",
            reason: e.to_string(),
        })?;
    let public_path = dir.join(format!("{key_id}.pub"));
    let public_key = read_public_key(&public_path)?;
    if derived.as_bytes() != public_key.as_bytes() {
        return Err(AuthError::KeyFile {
            path,
            reason: format!("does not match {}", public_path.display()),
        });
    }
    Ok(secret_key)
}

pub(crate) fn read_public_key(path: &Path) -> Result<AsymmetricPublicKey<V4>, AuthError> {
    let file = File::open(path).map_err(io_error("open", path))?;
    let text = read_bounded(file, path)?;
    std::str::from_utf8(&text)
        .ok()
        .and_then(|t| AsymmetricPublicKey::<V4>::try_from(t.trim_end()).ok())
        .ok_or_else(|| AuthError::KeyFile {
            path: path.to_owned(),
            reason: "not a PASERK k4.public key".to_owned(),
        })
}

/// Every trusted public key of the directory, by kid.
pub(crate) fn read_public_keys(
    dir: &Path,
) -> Result<HashMap<String, AsymmetricPublicKey<V4>>, AuthError> {
    let mut keys = HashMap::new();
    for (key_id, files) in scan(dir)? {
        if files.public.is_some() {
            let key = read_public_key(&dir.join(format!("{key_id}.pub")))?;
            keys.insert(key_id.0, key);
        }
    }
    Ok(keys)
}

/// What the verifier compares to notice a change: each public key file's name, inode, size
/// and modification time. Files are replaced by rename, so any change moves the inode.
pub(crate) fn fingerprint(dir: &Path) -> Result<Vec<(String, u64, u64, SystemTime)>, AuthError> {
    let mut prints = Vec::new();
    for entry in read_dir(dir)? {
        let (name, path) = entry?;
        if key_file(&name).is_some_and(|(_, kind)| kind == KeyFileKind::Public) {
            let meta = fs::metadata(&path).map_err(io_error("stat", &path))?;
            let modified = meta.modified().map_err(io_error("stat", &path))?;
            prints.push((name, meta.ino(), meta.len(), modified));
        }
    }
    prints.sort();
    Ok(prints)
}

#[derive(Default)]
struct KeyFiles {
    /// The public key file's modification time, when it exists.
    public: Option<SystemTime>,
    secret: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyFileKind {
    Public,
    Secret,
}

/// The key files of the directory, grouped by kid; other files (temporaries, `signing`,
/// an operator's notes) are ignored. Fails above [`KEYS_MAX`] keys.
fn scan(dir: &Path) -> Result<HashMap<KeyId, KeyFiles>, AuthError> {
    let mut keys: HashMap<KeyId, KeyFiles> = HashMap::new();
    for entry in read_dir(dir)? {
        let (name, path) = entry?;
        let Some((key_id, kind)) = key_file(&name) else {
            continue;
        };
        let files = keys.entry(key_id).or_default();
        match kind {
            KeyFileKind::Public => {
                let meta = fs::metadata(&path).map_err(io_error("stat", &path))?;
                files.public = Some(meta.modified().map_err(io_error("stat", &path))?);
            }
            KeyFileKind::Secret => files.secret = true,
        }
        if keys.len() > KEYS_MAX {
            return Err(AuthError::TooManyKeys {
                dir: dir.to_owned(),
                max: KEYS_MAX,
            });
        }
    }
    Ok(keys)
}

fn key_file(name: &str) -> Option<(KeyId, KeyFileKind)> {
    let (stem, extension) = name.split_once('.')?;
    let kind = match extension {
        "pub" => KeyFileKind::Public,
        "key" => KeyFileKind::Secret,
        _ => return None,
    };
    is_lower_hex(stem, KEY_ID_BYTES).then(|| (KeyId(stem.to_owned()), kind))
}

/// Directory entries as (name, path); a missing directory reads as not initialised.
fn read_dir(
    dir: &Path,
) -> Result<impl Iterator<Item = Result<(String, PathBuf), AuthError>> + '_, AuthError> {
    let entries = fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AuthError::NotInitialized {
            dir: dir.to_owned(),
        },
        _ => io_error("read directory", dir)(e),
    })?;
    Ok(entries.filter_map(move |entry| match entry {
        Ok(entry) => entry
            .file_name()
            .into_string()
            .ok()
            .map(|name| Ok((name, entry.path()))),
        Err(e) => Some(Err(io_error("read directory", dir)(e))),
    }))
}

fn read_signing(dir: &Path) -> Result<Option<KeyId>, AuthError> {
    let path = dir.join(SIGNING_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("open", path)(e)),
    };
    let text = read_bounded(file, &path)?;
    let text = String::from_utf8_lossy(&text);
    let key_id = KeyId::parse(text.trim_end()).map_err(|_| AuthError::KeyFile {
        path: path.clone(),
        reason: "not a key id".to_owned(),
    })?;
    if !exists(&dir.join(format!("{key_id}.key")))? {
        return Err(AuthError::KeyFile {
            path,
            reason: format!("names key {key_id}, which has no secret key file"),
        });
    }
    Ok(Some(key_id))
}

fn read_bounded(file: File, path: &Path) -> Result<Vec<u8>, AuthError> {
    let mut bytes = Vec::new();
    file.take(KEY_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    if bytes.len() as u64 > KEY_FILE_BYTES_MAX {
        return Err(AuthError::KeyFile {
            path: path.to_owned(),
            reason: format!("larger than {KEY_FILE_BYTES_MAX} bytes"),
        });
    }
    Ok(bytes)
}

fn create_dir(data_dir: &Path, dir: &Path) -> Result<(), AuthError> {
    fs::create_dir_all(data_dir).map_err(io_error("create directory", data_dir))?;
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => sync_dir(data_dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error("create directory", dir)(e)),
    }
}

/// Writes `name` in `dir` so that a crash leaves the old content or the new, never a mix.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), AuthError> {
    let temp = dir.join(format!(
        ".tmp-{}-{name}",
        to_hex(&rand::random::<[u8; 8]>())
    ));
    let result = (|| {
        // `create_new` refuses an existing file or symlink; `mode` applies at creation, so a
        // secret is never readable by others, not even for an instant.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(io_error("create", &temp))?;
        file.write_all(bytes).map_err(io_error("write", &temp))?;
        file.sync_all().map_err(io_error("fsync", &temp))?;
        let target = dir.join(name);
        fs::rename(&temp, &target).map_err(io_error("rename", &target))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: the temporary has a dot name the key scan ignores, so a leftover is
        // harmless; the original error is the one worth reporting.
        let _ = fs::remove_file(&temp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), AuthError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync", dir))
}

fn exists(path: &Path) -> Result<bool, AuthError> {
    path.try_exists().map_err(io_error("stat", path))
}

/// Overwrites a buffer that held secret key text before it is freed. Best effort: copies
/// made by the allocator or the PASERK parser are out of reach, but the key file's text
/// does not linger in freed heap memory.
fn wipe(bytes: &mut Vec<u8>) {
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_names() {
        assert!(key_file("0011223344556677.pub").is_some_and(|(_, k)| k == KeyFileKind::Public));
        assert!(key_file("0011223344556677.key").is_some_and(|(_, k)| k == KeyFileKind::Secret));
        for ignored in [
            "signing",
            ".tmp-00-0011223344556677.key",
            "0011223344556677.pub.bak",
            "001122.pub",
            "0011223344556677",
        ] {
            assert!(key_file(ignored).is_none(), "{ignored}");
        }
    }

    #[test]
    fn request_rules() {
        let request = IssueRequest {
            subject: "ci".to_owned(),
            scopes: vec![Scope::Read],
            ledgers: vec![],
            accounts: vec![],
            ttl: Duration::from_secs(60),
        };
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        let claims = request_claims(request.clone(), "0011223344556677".to_owned(), now).unwrap();
        assert_eq!(
            claims.issued_at,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        assert_eq!(
            claims.expires_at,
            claims.issued_at + Duration::from_secs(60)
        );
        assert!(is_lower_hex(&claims.token_id, TOKEN_ID_BYTES));

        let refused = |edit: fn(&mut IssueRequest)| {
            let mut r = request.clone();
            edit(&mut r);
            request_claims(r, "0011223344556677".to_owned(), now)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused(|r| r.scopes.clear()),
            "invalid token request: no scopes"
        );
        assert_eq!(
            refused(|r| r.ttl = Duration::ZERO),
            "invalid token request: expires before it is issued"
        );
        assert_eq!(
            refused(|r| r.ttl = Duration::from_millis(1500)),
            "invalid token request: ttl must be whole seconds"
        );
        assert_eq!(
            refused(|r| r.ttl = crate::limits::TOKEN_TTL_MAX + Duration::from_secs(1)),
            "invalid token request: lifetime longer than the maximum"
        );
    }
}
