//! The JWS algorithms this filter can verify. The set is closed: a name that is not here
//! (`none` included, in any spelling) is never accepted, in configuration or in a token.

use std::fmt;

/// A JWS signature algorithm (RFC 7518 §3, RFC 8037).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256, MGF1 SHA-256, salt length 32.
    PS256,
    /// RSASSA-PSS with SHA-384, MGF1 SHA-384, salt length 48.
    PS384,
    /// RSASSA-PSS with SHA-512, MGF1 SHA-512, salt length 64.
    PS512,
    /// ECDSA on P-256 with SHA-256, signature `R‖S` (64 bytes).
    ES256,
    /// ECDSA on P-384 with SHA-384, signature `R‖S` (96 bytes).
    ES384,
    /// ECDSA on P-521 with SHA-512, signature `R‖S` (132 bytes).
    ES512,
    /// EdDSA on Ed25519 (RFC 8037).
    EdDSA,
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
}

impl Alg {
    /// Every supported algorithm.
    pub const ALL: [Alg; 13] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::ES512,
        Alg::EdDSA,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
    ];

    /// The algorithm with exactly this JOSE name (case-sensitive).
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|alg| alg.name() == name)
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
        }
    }

    /// Whether this is an HMAC algorithm (a shared secret, `oct` key).
    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    /// The hash output length in bytes (the minimum HMAC key length, RFC 7518 §3.2).
    pub fn hash_len(self) -> usize {
        match self {
            Alg::RS256 | Alg::PS256 | Alg::ES256 | Alg::HS256 => 32,
            Alg::RS384 | Alg::PS384 | Alg::ES384 | Alg::HS384 => 48,
            Alg::RS512 | Alg::PS512 | Alg::ES512 | Alg::HS512 | Alg::EdDSA => 64,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_none_is_not_an_algorithm() {
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
        }
        for bad in [
            "none", "None", "nOnE", "none ", "rs256", "es512", "ES521", "HS1", "",
        ] {
            assert_eq!(Alg::from_name(bad), None, "{bad:?}");
        }
    }
}
