//! Rules and requirements: which tokens a request needs, and whether it has them.
//!
//! The first rule whose `match` fits decides; no matching rule, or a rule without `requires`,
//! lets the request through unauthenticated. Each provider's token is looked for and verified
//! at most once per request, however often the requirement tree names the provider.

use crate::cache::TokenCache;
use crate::claims;
use crate::config::{Compiled, Requirement};
use crate::extract::{self, Found};
use crate::jwks::KeySet;
use crate::verify::Failure;
use crate::verify::{self, Verified};
use filter_core::request::RequestView;
use filter_core::signature::NativeVerifier;
use filter_core::time::Time;
use std::rc::Rc;

/// Why a request is refused; [`crate::reply`] turns each into a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No token where one is required.
    Missing,
    /// Tokens in several places, or a credential that is not one token (RFC 6750 §2).
    InvalidRequest,
    /// A token that failed verification.
    InvalidToken(TokenFailure),
    /// A valid token without the required scopes or claims.
    InsufficientScope {
        /// The scopes the requirement asked for (may be empty when claims failed).
        scopes: Vec<String>,
        /// What was missing, for the log.
        detail: String,
    },
    /// A token arrived but the provider has no keys yet (its key server has not answered):
    /// not the client's fault, so not a 401.
    KeysUnavailable {
        /// Why, for the debug log.
        detail: String,
        /// When the keys may be there: the provider's next fetch after a failure.
        retry_after: std::time::Duration,
    },
}

impl Denial {
    /// When several alternatives (`any`) all fail, the answer is the most telling failure: a
    /// malformed request first, then a valid token lacking rights, then a bad token, then none.
    fn rank(&self) -> u8 {
        match self {
            Denial::InvalidRequest => 5,
            Denial::KeysUnavailable { .. } => 4,
            Denial::InsufficientScope { .. } => 3,
            Denial::InvalidToken(_) => 2,
            Denial::Missing => 1,
        }
    }
}

/// Why a token failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFailure {
    /// A fixed code for the access log ([`Failure::reason`]).
    pub reason: &'static str,
    /// What failed, for the debug log only.
    pub detail: String,
}

impl TokenFailure {
    /// A failure with this code and detail.
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// A provider's verified token and where it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Passed {
    /// Index of the provider.
    pub provider: usize,
    /// The verified token.
    pub verified: Rc<Verified>,
    /// Where the token was (to remove it when not forwarded): the index of the provider's
    /// source.
    pub source: usize,
}

#[derive(Debug, Clone)]
enum Outcome {
    Missing,
    Malformed,
    Invalid(TokenFailure),
    NoKeys(String, std::time::Duration),
    Valid(Rc<Verified>, usize),
}

/// The keys each provider has right now, with their generation (which changes whenever they
/// do); `None` for a remote provider whose keys have not arrived yet.
pub type KeySnapshot = Vec<Option<(Rc<KeySet>, u64)>>;

/// What a decision noticed on the way, besides its result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    /// Tokens whose signature check the cache saved.
    pub hits: u32,
    /// Tokens whose signature was checked.
    pub misses: u32,
    /// Providers that had a token to check but no keys.
    pub needs_keys: Vec<usize>,
    /// Providers that had no key for a token's `kid`/`alg` (a rotation may be under way).
    pub unknown_key: Vec<usize>,
}

struct Evaluation<'a> {
    compiled: &'a Compiled,
    request: &'a dyn RequestView,
    now: Time,
    outcomes: Vec<Option<Outcome>>,
    keys: &'a KeySnapshot,
    /// One cache per provider.
    cache: &'a mut [TokenCache],
    native: &'a dyn NativeVerifier,
    notes: Notes,
}

impl Evaluation<'_> {
    fn outcome(&mut self, provider: usize) -> Outcome {
        if let Some(Some(known)) = self.outcomes.get(provider) {
            return known.clone();
        }
        let Some(p) = self.compiled.providers.get(provider) else {
            return Outcome::Invalid(TokenFailure::new("internal", "unknown provider"));
        };
        let generation = match self.keys.get(provider) {
            Some(Some((_, generation))) => Some(*generation),
            _ => None,
        };
        // The cache is asked while the token is found: a token it holds passed the checks of
        // its form when it was verified, and the hit is kept for below (one lookup per token).
        let cache = std::cell::RefCell::new(self.cache.get_mut(provider));
        let hit: std::cell::Cell<Option<Rc<Verified>>> = std::cell::Cell::new(None);
        let known = |token: &str| {
            let cached = match (cache.try_borrow_mut(), generation) {
                (Ok(mut cache), Some(generation)) => {
                    cache.as_deref_mut().and_then(|c| c.get(token, generation))
                }
                _ => None,
            };
            let known = cached.is_some();
            hit.set(cached);
            known
        };
        let found = extract::find_known(self.request, &p.sources, &known);
        let (hit, cache) = (hit.take(), cache.into_inner());
        let outcome = match found {
            Found::Nothing => Outcome::Missing,
            Found::Malformed => Outcome::Malformed,
            Found::Token { token, source } => match self.keys.get(provider) {
                Some(Some((keys, generation))) => {
                    let signed = match hit {
                        Some(verified) => {
                            self.notes.hits += 1;
                            Ok(verified)
                        }
                        None => {
                            self.notes.misses += 1;
                            let result =
                                verify::verify_signature(p, keys, &token, self.native).map(Rc::new);
                            if let (Ok(verified), Some(cache)) = (&result, cache) {
                                cache.put(&token, verified.clone(), *generation);
                            }
                            result
                        }
                    };
                    match signed.and_then(|v| verify::check_claims(p, &v, self.now).map(|()| v)) {
                        Ok(verified) => Outcome::Valid(verified, source),
                        Err(failure) => {
                            if failure == Failure::NoKey {
                                self.notes.unknown_key.push(provider);
                            }
                            Outcome::Invalid(TokenFailure::new(
                                failure.reason(),
                                format!("provider {}: {failure}", p.name),
                            ))
                        }
                    }
                }
                _ => {
                    self.notes.needs_keys.push(provider);
                    let retry_after = match &p.keys {
                        crate::config::KeySource::Remote(remote) => remote.failed_refetch_duration,
                        crate::config::KeySource::Local(_) => std::time::Duration::from_secs(1),
                    };
                    Outcome::NoKeys(format!("provider {}: no keys yet", p.name), retry_after)
                }
            },
        };
        if let Some(slot) = self.outcomes.get_mut(provider) {
            *slot = Some(outcome.clone());
        }
        outcome
    }

    fn eval(&mut self, requirement: &Requirement, passed: &mut Vec<Passed>) -> Result<(), Denial> {
        match requirement {
            Requirement::Provider {
                provider,
                scopes,
                claims: required_claims,
                allow_missing,
            } => match self.outcome(*provider) {
                Outcome::Missing if *allow_missing => Ok(()),
                Outcome::Missing => Err(Denial::Missing),
                Outcome::Malformed => Err(Denial::InvalidRequest),
                Outcome::Invalid(detail) => Err(Denial::InvalidToken(detail)),
                Outcome::NoKeys(detail, retry_after) => Err(Denial::KeysUnavailable {
                    detail,
                    retry_after,
                }),
                Outcome::Valid(verified, source) => {
                    if !claims::has_scopes(&verified.claims, scopes) {
                        return Err(Denial::InsufficientScope {
                            scopes: scopes.clone(),
                            detail: format!("missing scopes (need {})", scopes.join(" ")),
                        });
                    }
                    for (claim, accepted) in required_claims {
                        if !claims::claim_matches(&verified.claims, claim, accepted) {
                            return Err(Denial::InsufficientScope {
                                scopes: scopes.clone(),
                                detail: format!("claim {claim} not one of the accepted values"),
                            });
                        }
                    }
                    if !passed.iter().any(|p| p.provider == *provider) {
                        passed.push(Passed {
                            provider: *provider,
                            verified,
                            source,
                        });
                    }
                    Ok(())
                }
            },
            Requirement::All(items) => {
                for item in items {
                    self.eval(item, passed)?;
                }
                Ok(())
            }
            Requirement::Any(items) => {
                let mut worst: Option<Denial> = None;
                for item in items {
                    let mut branch = Vec::new();
                    match self.eval(item, &mut branch) {
                        Ok(()) => {
                            passed.extend(branch);
                            return Ok(());
                        }
                        Err(denial) => {
                            if worst.as_ref().is_none_or(|w| denial.rank() > w.rank()) {
                                worst = Some(denial);
                            }
                        }
                    }
                }
                Err(worst.unwrap_or(Denial::Missing))
            }
        }
    }
}

/// Decides a request: the tokens that passed (possibly none), or why it is refused.
///
/// `keys` are the providers' current keys. Verified tokens are looked up in, and added to,
/// `cache`; signatures go to the host's `native` verifier when it has one; `notes` says how
/// that went and what was missing.
pub fn decide(
    compiled: &Compiled,
    request: &dyn RequestView,
    now: Time,
    keys: &KeySnapshot,
    cache: &mut [TokenCache],
    native: &dyn NativeVerifier,
    notes: &mut Notes,
) -> Result<Vec<Passed>, Denial> {
    let Some(rule) = compiled.rules.iter().find(|r| r.matcher.matches(request)) else {
        return Ok(Vec::new());
    };
    let Some(requirement) = &rule.requires else {
        return Ok(Vec::new());
    };
    let mut evaluation = Evaluation {
        compiled,
        request,
        now,
        outcomes: vec![None; compiled.providers.len()],
        keys,
        cache,
        native,
        notes: Notes::default(),
    };
    let mut passed = Vec::new();
    let result = evaluation.eval(requirement, &mut passed);
    *notes = evaluation.notes;
    result.map(|()| passed)
}
