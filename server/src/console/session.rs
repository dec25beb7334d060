//! The console's sessions: a signed cookie, verified statelessly, so any server accepts a session
//! another one opened. The cookie holds the principal's name, an expiry and an HMAC keyed with the
//! SHA-256 digest of the token that signed in: never the token, nothing that works as one over
//! gRPC, and a session ends when its token is removed from the configuration.

use base64::Engine as _;
use hmac::Mac as _;
use subtle::ConstantTimeEq as _;

use crate::auth::{Principal, Tokens};

/// The cookie's name.
pub const COOKIE: &str = "learnsync_session";

/// How long a session lasts.
pub const LIFETIME_SECONDS: i64 = 8 * 3600;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn mac(digest: &[u8; 32], principal: &str, expiry: i64) -> Vec<u8> {
    let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(digest)
        .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
    mac.update(b"learnsync console session v1\0");
    mac.update(principal.as_bytes());
    mac.update(b"\0");
    mac.update(expiry.to_string().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// Signs a session for the holder of `token`, valid until `expiry` (Unix seconds); `None` when the
/// token is not valid.
pub fn open(tokens: &Tokens, token: &str, expiry: i64) -> Option<(Principal, String)> {
    let principal = tokens.authenticate(token)?;
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()).into();
    let name = principal.name();
    let value = format!(
        "v1.{expiry}.{}.{}",
        b64().encode(name.as_bytes()),
        b64().encode(mac(&digest, &name, expiry))
    );
    Some((principal, value))
}

/// Verifies a session cookie's value at `now` (Unix seconds): the principal it was opened for,
/// while the session has not expired and one of that principal's tokens signed it.
pub fn verify(tokens: &Tokens, value: &str, now: i64) -> Option<Principal> {
    let mut parts = value.split('.');
    let (Some("v1"), Some(expiry), Some(name), Some(signature), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let expiry: i64 = expiry.parse().ok()?;
    if expiry <= now || expiry > now + LIFETIME_SECONDS {
        return None;
    }
    let name = String::from_utf8(b64().decode(name).ok()?).ok()?;
    let signature = b64().decode(signature).ok()?;
    let mut found = None;
    for (digest, principal) in tokens.digests() {
        if principal.name() == name && bool::from(mac(digest, &name, expiry).ct_eq(&signature)) {
            found = Some(principal.clone());
        }
    }
    found
}

/// The `Set-Cookie` value of an open session. `Secure`: browsers send it over HTTPS only, and over
/// plain HTTP to localhost (which is how the tests and the demo reach it).
pub fn set_cookie(value: &str) -> String {
    format!(
        "{COOKIE}={value}; Path=/; Max-Age={LIFETIME_SECONDS}; HttpOnly; Secure; SameSite=Strict"
    )
}

/// The `Set-Cookie` value that ends a session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

/// The session cookie's value among a request's `Cookie` headers.
pub fn from_headers(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tokens() -> Tokens {
        let mut tokens = Tokens::default();
        tokens.add("operator-token-0123456789", Principal::Operator);
        tokens.add("acme-token-0123456789", Principal::Tenant("acme".into()));
        tokens
    }

    #[test]
    fn a_session_names_its_principal_until_it_expires_and_never_holds_the_token() {
        let tokens = tokens();
        let (principal, value) = open(&tokens, "acme-token-0123456789", 1_000).unwrap();
        assert_eq!(principal, Principal::Tenant("acme".into()));
        assert!(!value.contains("acme-token"));
        assert_eq!(verify(&tokens, &value, 999), Some(principal));
        assert_eq!(verify(&tokens, &value, 1_000), None);
        assert!(open(&tokens, "wrong-token-0123456789", 1_000).is_none());
    }

    #[test]
    fn a_forged_or_revoked_session_is_refused() {
        let tokens = tokens();
        let (_, value) = open(&tokens, "acme-token-0123456789", 1_000).unwrap();
        // Claiming another principal with acme's signature.
        let parts: Vec<&str> = value.split('.').collect();
        let forged = format!("v1.1000.{}.{}", b64().encode("operator"), parts[3]);
        assert_eq!(verify(&tokens, &forged, 10), None);
        // Extending the expiry.
        let extended = format!("v1.2000.{}.{}", parts[2], parts[3]);
        assert_eq!(verify(&tokens, &extended, 10), None);
        // The token is gone from the configuration.
        let mut rotated = Tokens::default();
        rotated.add("acme-token-9876543210", Principal::Tenant("acme".into()));
        assert_eq!(verify(&rotated, &value, 10), None);
        assert_eq!(verify(&tokens, "garbage", 10), None);
    }
}
