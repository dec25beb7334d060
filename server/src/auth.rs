//! Bearer tokens and what they may see. Tokens are configured (environment or file), kept only as
//! SHA-256 digests, and compared in constant time against every configured digest.

use sha2::Digest as _;
use subtle::ConstantTimeEq as _;
use tonic::{Request, Status};

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// Sees and manages every connection.
    Operator,
    /// Sees and manages only its tenant's connections.
    Tenant(String),
}

impl Principal {
    /// The principal's name, for idempotency keys and logs (never the token).
    pub fn name(&self) -> String {
        match self {
            Principal::Operator => "operator".to_string(),
            Principal::Tenant(tenant) => format!("tenant:{tenant}"),
        }
    }

    /// The tenant filter of listings (`None`: everything).
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Principal::Operator => None,
            Principal::Tenant(tenant) => Some(tenant),
        }
    }

    /// Whether the principal may see a connection of `tenant`.
    pub fn may_see(&self, tenant: &str) -> bool {
        match self {
            Principal::Operator => true,
            Principal::Tenant(own) => own == tenant,
        }
    }
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Principal)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let principals: Vec<String> = self.entries.iter().map(|(_, p)| p.name()).collect();
        f.debug_struct("Tokens")
            .field("principals", &principals)
            .finish()
    }
}

/// A token specification that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid token entry {entry}: {reason}")]
pub struct TokenSpecError {
    /// Which entry (1-based), never its text: it holds a secret.
    pub entry: usize,
    /// What is wrong.
    pub reason: &'static str,
}

fn digest(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Reads entries `operator=<token>` or `tenant:<name>=<token>`, separated by commas or new
    /// lines; blank lines and lines starting with `#` are ignored.
    pub fn parse(spec: &str) -> Result<Tokens, TokenSpecError> {
        let mut tokens = Tokens::default();
        let entries = spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|entry| !entry.is_empty() && !entry.starts_with('#'));
        for (index, entry) in entries.enumerate() {
            let error = |reason| TokenSpecError {
                entry: index + 1,
                reason,
            };
            let (scope, token) = entry.split_once('=').ok_or(error("expected scope=token"))?;
            if token.len() < 16 {
                return Err(error("tokens must have at least 16 characters"));
            }
            let principal = match scope.trim() {
                "operator" => Principal::Operator,
                other => match other.strip_prefix("tenant:") {
                    Some(tenant) if !tenant.is_empty() => Principal::Tenant(tenant.to_string()),
                    _ => return Err(error("scope must be operator or tenant:<name>")),
                },
            };
            tokens.add(token, principal);
        }
        Ok(tokens)
    }

    /// Adds a token.
    pub fn add(&mut self, token: &str, principal: Principal) {
        self.entries.push((digest(token), principal));
    }

    /// The principals with the SHA-256 digest of each of their tokens: the console keys its
    /// session cookies with a digest, so a session ends when its token is removed.
    pub(crate) fn digests(&self) -> impl Iterator<Item = (&[u8; 32], &Principal)> {
        self.entries
            .iter()
            .map(|(digest, principal)| (digest, principal))
    }

    /// Whether no token is configured (then every call is refused).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Finds the principal of a presented token. Every entry is compared, in constant time, so the
    /// time taken says nothing about which entry (if any) matched.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let presented = digest(token);
        let mut found = None;
        for (expected, principal) in &self.entries {
            if bool::from(expected.ct_eq(&presented)) {
                found = Some(principal.clone());
            }
        }
        found
    }

    /// A tonic interceptor that puts the caller's [`Principal`] into the request's extensions, or
    /// refuses the call with `UNAUTHENTICATED`.
    pub fn interceptor(self) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
        move |mut request: Request<()>| {
            let header = request
                .metadata()
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .ok_or_else(|| {
                    crate::error::unauthenticated("missing authorization: Bearer <token> metadata")
                })?;
            let token = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .ok_or_else(|| {
                    crate::error::unauthenticated("authorization metadata must be Bearer <token>")
                })?;
            let principal = self
                .authenticate(token.trim())
                .ok_or_else(|| crate::error::unauthenticated("the bearer token is not valid"))?;
            request.extensions_mut().insert(principal);
            Ok(request)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_scopes_and_authenticates() {
        let tokens =
            Tokens::parse("operator=op-token-0123456789\ntenant:acme=acme-token-0123456789, stray")
                .unwrap_err();
        assert_eq!(tokens.entry, 3);
        let tokens = Tokens::parse(
            "operator=op-token-0123456789\ntenant:acme=acme-token-01234=89\n# comment",
        )
        .unwrap();
        assert_eq!(
            tokens.authenticate("op-token-0123456789"),
            Some(Principal::Operator)
        );
        assert_eq!(
            tokens.authenticate("acme-token-01234=89"),
            Some(Principal::Tenant("acme".into()))
        );
        assert_eq!(tokens.authenticate("nope"), None);
    }

    #[test]
    fn refuses_short_tokens_and_unknown_scopes_without_echoing_them() {
        let error = Tokens::parse("operator=short").unwrap_err();
        assert!(!error.to_string().contains("short="));
        assert!(Tokens::parse("admin=0123456789abcdef").is_err());
        assert!(Tokens::parse("tenant:=0123456789abcdef").is_err());
    }
}
