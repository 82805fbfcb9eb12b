//! Join tokens, Swarm-style: `drover-1-<ca sha256>-<id>-<secret>`.
//!
//! The CA fingerprint lets a joining agent check that the CA it was given is
//! the cluster's; the id finds the token's record; the cluster stores only the
//! SHA-256 of the secret, so a copy of the store (or a snapshot) lets nobody join.

use std::fmt;

use sha2::{Digest, Sha256};

use super::{hex, PkiError, Result};

const PREFIX: &str = "drover-1-";

/// A join token as typed on a command line or in the environment, before it
/// is parsed (a malformed one is reported without repeating it). Its Debug
/// never shows it, so a config struct that holds one can derive Debug.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenText(String);

impl TokenText {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for TokenText {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> std::result::Result<TokenText, Self::Err> {
        Ok(TokenText(s.to_string()))
    }
}

impl fmt::Debug for TokenText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenText(<redacted>)")
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: String,
    pub id: String,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A new random token for the cluster whose CA has `ca_fingerprint`.
    pub fn generate(ca_fingerprint: &str) -> JoinToken {
        let id: [u8; 4] = rand::random();
        let secret: [u8; 24] = rand::random();
        JoinToken {
            ca_fingerprint: ca_fingerprint.to_string(),
            id: hex(&id),
            secret: hex(&secret),
        }
    }

    /// Parse a token as typed; the error never repeats the token.
    pub fn parse(text: &str) -> Result<JoinToken> {
        let bad = || {
            PkiError::Invalid(
                "the join token is malformed: copy it whole from droverctl token create".into(),
            )
        };
        let rest = text.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let mut parts = rest.split('-');
        let (Some(fp), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let is_hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
        if !is_hex(fp, 64) || !is_hex(id, 8) || !is_hex(secret, 48) {
            return Err(bad());
        }
        Ok(JoinToken {
            ca_fingerprint: fp.to_ascii_lowercase(),
            id: id.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }

    /// What the cluster stores: the SHA-256 of the secret, hex.
    pub fn secret_hash(&self) -> String {
        hex(&Sha256::digest(self.secret.as_bytes()))
    }

    /// The token as the user types it (a secret: never log it).
    pub fn reveal(&self) -> String {
        format!(
            "{PREFIX}{}-{}-{}",
            self.ca_fingerprint, self.id, self.secret
        )
    }
}

/// Compare two hashes without an early exit.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_print_their_secret() {
        let fp = "a".repeat(64);
        let t = JoinToken::generate(&fp);
        let text = t.reveal();
        let back = JoinToken::parse(&text).expect("parses");
        assert_eq!(back, t);
        assert!(hashes_equal(&back.secret_hash(), &t.secret_hash()));
        assert!(!format!("{t:?}").contains(&t.secret));
        for bad in [
            "",
            "drover-1-",
            &text.replace("drover-1", "drover-2"),
            &format!("{text}-x"),
            &text[..text.len() - 1],
        ] {
            let e = JoinToken::parse(bad).expect_err("refused");
            assert!(!e.to_string().contains(&t.secret));
        }
    }
}
