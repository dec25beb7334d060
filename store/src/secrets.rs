//! Connection credentials, and the Docebo tokens the workers share, encrypted at rest with
//! AES-256-GCM. The key comes from the environment or a file, never from the database; the
//! connection id is the associated data, so a ciphertext copied to another row does not decrypt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use uuid::Uuid;

use crate::{Error, Result};

/// Everything needed to reach both ends of a connection. Never logged: `Debug` hides the values.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// How to reach Docebo.
    pub docebo: DoceboCredentials,
    /// How to reach Salesforce.
    pub salesforce: SalesforceCredentials,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

/// Docebo's base URL and OAuth2 client.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoceboCredentials {
    /// The platform's base URL, without a trailing slash.
    pub base_url: String,
    /// OAuth2 client id.
    pub client_id: String,
    /// OAuth2 client secret.
    pub client_secret: String,
    /// The grant.
    pub grant: DoceboGrant,
}

/// Docebo's OAuth2 grants.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DoceboGrant {
    /// As the API app itself.
    ClientCredentials,
    /// As a Docebo user.
    Password {
        /// The username.
        username: String,
        /// The password.
        password: String,
    },
}

impl DoceboGrant {
    /// The grant's name.
    pub fn name(&self) -> &'static str {
        match self {
            DoceboGrant::ClientCredentials => "client_credentials",
            DoceboGrant::Password { .. } => "password",
        }
    }
}

/// Salesforce's login URL and connected app.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalesforceCredentials {
    /// The login or My Domain URL, without a trailing slash.
    pub login_url: String,
    /// The connected app's consumer key.
    pub client_id: String,
    /// The flow.
    pub grant: SalesforceGrant,
}

/// Salesforce's OAuth2 flows.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SalesforceGrant {
    /// Client credentials.
    ClientCredentials {
        /// The consumer secret.
        client_secret: String,
    },
    /// JWT bearer.
    JwtBearer {
        /// The Salesforce username (`sub`).
        username: String,
        /// The PEM RSA private key.
        private_key_pem: String,
        /// The audience (`aud`).
        audience: String,
    },
}

impl SalesforceGrant {
    /// The flow's name.
    pub fn name(&self) -> &'static str {
        match self {
            SalesforceGrant::ClientCredentials { .. } => "client_credentials",
            SalesforceGrant::JwtBearer { .. } => "jwt_bearer",
        }
    }
}

impl Credentials {
    /// The key the Docebo call budget is shared under: one per platform, whatever the connection.
    /// A hash, so that the platform's URL is not readable in the budget table.
    pub fn docebo_platform(&self) -> String {
        let normalized = self
            .docebo
            .base_url
            .trim_end_matches('/')
            .to_ascii_lowercase();
        hex::encode(&sha2::Sha256::digest(normalized.as_bytes())[..16])
    }
}

/// Encrypts and decrypts credentials with one AES-256 key.
#[derive(Clone)]
pub struct Cipher {
    cipher: Aes256Gcm,
    key_id: String,
    /// Keys the HMAC that derives webhook secrets (itself derived from the key, so one secret to
    /// configure).
    webhook_key: [u8; 32],
    /// Keys the HMAC of a mutating request's bytes kept with its idempotency key.
    digest_key: [u8; 32],
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher")
            .field("key_id", &self.key_id)
            .finish()
    }
}

const NONCE_LEN: usize = 12;

impl Cipher {
    /// A cipher over a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Cipher {
        let key_id = hex::encode(&sha2::Sha256::digest(key)[..8]);
        let mut webhook = sha2::Sha256::new();
        webhook.update(b"learnsync webhook secrets\0");
        webhook.update(key);
        let mut digest = sha2::Sha256::new();
        digest.update(b"learnsync request digests\0");
        digest.update(key);
        Cipher {
            cipher: Aes256Gcm::new(key.into()),
            key_id,
            webhook_key: webhook.finalize().into(),
            digest_key: digest.finalize().into(),
        }
    }

    /// Reads a key given as base64 (standard or URL-safe) or 64 hex digits.
    pub fn from_encoded(text: &str) -> Result<Cipher> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|error| Error::Secrets(format!("key is not hex: {error}")))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
                .map_err(|_| Error::Secrets("key is neither base64 nor 64 hex digits".into()))?
        };
        let key: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            Error::Secrets(format!("key has {} bytes, 32 needed", bytes.len()))
        })?;
        Ok(Cipher::new(&key))
    }

    /// A cipher over a fresh random key (demo and tests only: what it encrypts is lost with it).
    pub fn random() -> Cipher {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Cipher::new(&key)
    }

    /// A fingerprint of the key (never the key), stored beside each ciphertext.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The secret of a connection's webhook URL for a generation: derived, never stored, so
    /// rotating it is bumping the generation.
    pub fn webhook_secret(&self, connection_id: Uuid, generation: i32) -> String {
        use hmac::Mac as _;
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.webhook_key)
            .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
        mac.update(connection_id.as_bytes());
        mac.update(&generation.to_be_bytes());
        hex::encode(&mac.finalize().into_bytes()[..20])
    }

    /// A keyed digest (HMAC-SHA-256) of a mutating request, stored with its idempotency key: the
    /// request may hold credentials, and a plain hash of a low-entropy secret could be guessed
    /// by whoever reads the table.
    pub fn request_digest(&self, parts: &[&[u8]]) -> Vec<u8> {
        use hmac::Mac as _;
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.digest_key)
            .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// A keyed fingerprint (HMAC-SHA-256, under the request digests' key) of a connection's Docebo
    /// credentials, stored beside its shared Docebo token: a token serves only the credentials it
    /// was asked for with, and the fingerprint tells which without storing them.
    pub fn docebo_fingerprint(&self, connection_id: Uuid, docebo: &DoceboCredentials) -> Vec<u8> {
        let (username, password) = match &docebo.grant {
            DoceboGrant::ClientCredentials => ("", ""),
            DoceboGrant::Password { username, password } => (username.as_str(), password.as_str()),
        };
        self.request_digest(&[
            b"docebo token credentials",
            connection_id.as_bytes(),
            docebo.base_url.as_bytes(),
            docebo.client_id.as_bytes(),
            docebo.client_secret.as_bytes(),
            docebo.grant.name().as_bytes(),
            username.as_bytes(),
            password.as_bytes(),
        ])
    }

    /// Encrypts credentials for one connection.
    pub fn seal(&self, connection_id: Uuid, credentials: &Credentials) -> Result<Vec<u8>> {
        let plaintext =
            serde_json::to_vec(credentials).map_err(|error| Error::Secrets(error.to_string()))?;
        self.seal_bytes(connection_id.as_bytes(), &plaintext)
    }

    /// Decrypts the credentials of one connection.
    pub fn open(&self, connection_id: Uuid, sealed: &[u8]) -> Result<Credentials> {
        let plaintext = self.open_bytes(connection_id.as_bytes(), sealed, "credentials")?;
        serde_json::from_slice(&plaintext)
            .map_err(|error| Error::Secrets(format!("credentials are malformed: {error}")))
    }

    /// Encrypts a connection's Docebo access token (shared by the workers through Postgres). The
    /// associated data names the connection and what this is, so a sealed token neither opens
    /// for another connection nor as credentials.
    pub fn seal_token(&self, connection_id: Uuid, token: &str) -> Result<Vec<u8>> {
        self.seal_bytes(&token_aad(connection_id), token.as_bytes())
    }

    /// Decrypts a connection's Docebo access token.
    pub fn open_token(&self, connection_id: Uuid, sealed: &[u8]) -> Result<String> {
        let plaintext = self.open_bytes(&token_aad(connection_id), sealed, "token")?;
        String::from_utf8(plaintext).map_err(|_| Error::Secrets("token is not UTF-8".into()))
    }

    /// Encrypts bytes under a fresh nonce, bound to `aad`: the nonce, then the ciphertext.
    fn seal_bytes(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| Error::Secrets("encryption failed".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Decrypts what [`Cipher::seal_bytes`] sealed with the same `aad`; `what` names it in errors.
    fn open_bytes(&self, aad: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>> {
        if sealed.len() <= NONCE_LEN {
            return Err(Error::Secrets(format!("sealed {what}: too short")));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| Error::Secrets(format!("sealed {what}: too short")))?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| {
                Error::Secrets(format!(
                    "sealed {what}: does not decrypt with this key (wrong key or tampered row)"
                ))
            })
    }
}

/// The associated data of a connection's sealed Docebo token.
fn token_aad(connection_id: Uuid) -> Vec<u8> {
    let mut aad = b"docebo token\0".to_vec();
    aad.extend_from_slice(connection_id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Credentials {
        Credentials {
            docebo: DoceboCredentials {
                base_url: "https://acme.docebosaas.com".into(),
                client_id: "id".into(),
                client_secret: "very-secret".into(),
                grant: DoceboGrant::ClientCredentials,
            },
            salesforce: SalesforceCredentials {
                login_url: "https://login.salesforce.com".into(),
                client_id: "app".into(),
                grant: SalesforceGrant::ClientCredentials {
                    client_secret: "also-secret".into(),
                },
            },
        }
    }

    #[test]
    fn seals_and_opens_for_the_same_connection_only() {
        let cipher = Cipher::random();
        let id = Uuid::new_v4();
        let sealed = cipher.seal(id, &sample()).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("very-secret"));
        assert_eq!(cipher.open(id, &sealed).unwrap(), sample());
        assert!(cipher.open(Uuid::new_v4(), &sealed).is_err());
        assert!(Cipher::random().open(id, &sealed).is_err());
    }

    #[test]
    fn webhook_secrets_differ_by_connection_generation_and_key() {
        let cipher = Cipher::new(&[7u8; 32]);
        let id = Uuid::new_v4();
        let secret = cipher.webhook_secret(id, 1);
        assert_eq!(secret.len(), 40);
        assert_eq!(secret, cipher.webhook_secret(id, 1));
        assert_ne!(secret, cipher.webhook_secret(id, 2));
        assert_ne!(secret, cipher.webhook_secret(Uuid::new_v4(), 1));
        assert_ne!(secret, Cipher::new(&[8u8; 32]).webhook_secret(id, 1));
    }

    #[test]
    fn request_digests_are_keyed_and_framed() {
        let cipher = Cipher::new(&[7u8; 32]);
        let digest = cipher.request_digest(&[b"Start", b"body"]);
        assert_eq!(digest, cipher.request_digest(&[b"Start", b"body"]));
        // Another key, or the same bytes cut elsewhere, give another digest; nor is it the plain
        // SHA-256 anyone could compute from a guessed request.
        assert_ne!(
            digest,
            Cipher::new(&[8u8; 32]).request_digest(&[b"Start", b"body"])
        );
        assert_ne!(digest, cipher.request_digest(&[b"Star", b"tbody"]));
        assert_ne!(digest, sha2::Sha256::digest(b"Startbody").to_vec());
    }

    #[test]
    fn tokens_seal_for_their_connection_only_and_never_open_as_credentials() {
        let cipher = Cipher::random();
        let id = Uuid::new_v4();
        let sealed = cipher.seal_token(id, "the-token").unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("the-token"));
        assert_eq!(cipher.open_token(id, &sealed).unwrap(), "the-token");
        assert!(cipher.open_token(Uuid::new_v4(), &sealed).is_err());
        assert!(cipher.open(id, &sealed).is_err());
        let credentials = cipher.seal(id, &sample()).unwrap();
        assert!(cipher.open_token(id, &credentials).is_err());
    }

    #[test]
    fn docebo_fingerprints_follow_the_credentials_and_the_key() {
        let cipher = Cipher::new(&[7u8; 32]);
        let id = Uuid::new_v4();
        let docebo = sample().docebo;
        let fingerprint = cipher.docebo_fingerprint(id, &docebo);
        assert_eq!(fingerprint, cipher.docebo_fingerprint(id, &docebo));
        let changed = DoceboCredentials {
            client_secret: "rotated".into(),
            ..docebo.clone()
        };
        assert_ne!(fingerprint, cipher.docebo_fingerprint(id, &changed));
        let password = DoceboCredentials {
            grant: DoceboGrant::Password {
                username: "u".into(),
                password: "p".into(),
            },
            ..docebo.clone()
        };
        assert_ne!(fingerprint, cipher.docebo_fingerprint(id, &password));
        assert_ne!(
            fingerprint,
            cipher.docebo_fingerprint(Uuid::new_v4(), &docebo)
        );
        assert_ne!(
            fingerprint,
            Cipher::new(&[8u8; 32]).docebo_fingerprint(id, &docebo)
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        assert!(!format!("{:?}", sample()).contains("secret"));
    }

    #[test]
    fn reads_keys_in_hex_and_base64() {
        let hex_key = "00".repeat(32);
        let b64_key = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
        assert_eq!(
            Cipher::from_encoded(&hex_key).unwrap().key_id(),
            Cipher::from_encoded(&b64_key).unwrap().key_id()
        );
        assert!(Cipher::from_encoded("short").is_err());
    }
}
