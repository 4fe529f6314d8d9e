//! When the webhook certificates change, decided from what the Secret holds
//! and what the webhook configurations trust, without I/O: one step at a
//! time, for the Lease holder to carry out and then ask again.
//!
//! The schedule (see [`RotationPolicy::default`]):
//! - the CA lives a year and is replaced two thirds into its life (about
//!   four months before it expires), so a leader outage of weeks, or a
//!   rotation that keeps failing, is noticed long before anything expires;
//! - the serving certificate lives 90 days and is renewed two thirds in,
//!   never outliving the CA that signs it;
//! - both are backdated a little, for clocks that disagree.
//!
//! A CA rotation, in the order this function asks for it:
//! 0. unless the served certificate is fresh (less than a third through
//!    its life), it is renewed by the old CA first, so that the rotation
//!    has two months to publish the new CA before anything lapses;
//! 1. a new CA is made and trusted beside the old one (`CreateCa`): from now
//!    on it signs, but the served certificate is still the old CA's;
//! 2. the Secret's bundle, old and new CA together, is published to every
//!    webhook configuration's `caBundle` (`PublishBundle`);
//! 3. once every configuration trusts the new CA, and the new CA is old
//!    enough for API servers to have seen it, a serving certificate signed
//!    by it is issued (`IssueLeaf`); replicas load it from the Secret;
//! 4. once that certificate has been out long enough for every replica to
//!    serve it, the old CA is dropped (`DropCa`) and the bundle published
//!    again.
//!
//! So the API server always trusts the CA of every certificate a replica
//! may be serving: the overlap that the multi-replica race of other
//! self-managed rotators lacks.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::certificate::CertInfo;

/// How long certificates live and how early they are replaced.
#[derive(Clone, Debug, PartialEq)]
pub struct RotationPolicy {
    /// How long a CA is valid.
    pub ca_lifetime: SignedDuration,
    /// The fraction of its life after which a CA is replaced.
    pub ca_renew_at: f64,
    /// How long a serving certificate is valid (at most; never beyond its
    /// CA).
    pub leaf_lifetime: SignedDuration,
    /// The fraction of its life after which a serving certificate is
    /// renewed.
    pub leaf_renew_at: f64,
    /// How far before "now" a new certificate's validity starts, for a
    /// verifier whose clock is behind.
    pub backdate: SignedDuration,
    /// How long a change is given to reach every API server and every
    /// replica: a new CA must be trusted this long before it signs the
    /// served certificate, and a new served certificate out this long
    /// before the old CA goes.
    pub propagation: SignedDuration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            ca_lifetime: SignedDuration::from_hours(365 * 24),
            ca_renew_at: 2.0 / 3.0,
            leaf_lifetime: SignedDuration::from_hours(90 * 24),
            leaf_renew_at: 2.0 / 3.0,
            backdate: SignedDuration::from_mins(5),
            // Webhook configurations reach API servers through a watch
            // (seconds) and Secrets reach replicas the same way; minutes
            // leave room for a slow watch without stretching a rotation.
            propagation: SignedDuration::from_mins(10),
        }
    }
}

/// Before a CA rotation, a serving certificate less than this far through
/// its life is kept; an older one is renewed first.
const FRESH: f64 = 1.0 / 3.0;

/// What the certificate Secret holds, read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredCertificates {
    /// The CA that signs new serving certificates (its key is stored too).
    pub signing_ca: Option<CertInfo>,
    /// The CAs to trust: what the `caBundle`s must hold.
    pub trusted: Vec<CertInfo>,
    /// The serving certificate every replica serves.
    pub leaf: Option<CertInfo>,
}

/// The next thing the Lease holder does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Make a new CA: it signs from now on and is added to the trusted CAs.
    CreateCa,
    /// Add the signing CA to the trusted CAs (they lost it somehow).
    TrustSigningCa,
    /// Remove this CA (by subject) from the trusted CAs.
    DropCa {
        /// The CA's subject name, DER.
        subject: Vec<u8>,
    },
    /// Write the trusted CAs into every webhook configuration's `caBundle`.
    PublishBundle,
    /// Issue a serving certificate signed by the signing CA, valid from
    /// `now - backdate` for the leaf lifetime but never beyond the CA.
    IssueLeaf,
    /// Nothing to do before this time (or before something changes).
    Wait {
        /// When to look again.
        until: Timestamp,
    },
}

/// The next step, given the Secret's contents, the CA subjects each
/// existing webhook configuration's `caBundle` holds (one entry per
/// configuration; a configuration that does not exist yet is left out),
/// the DNS names the serving certificate must carry, and the time.
pub fn next_step(
    stored: &StoredCertificates,
    published: &[Vec<Vec<u8>>],
    dns_names: &[String],
    now: Timestamp,
    policy: &RotationPolicy,
) -> Step {
    let signing = match &stored.signing_ca {
        Some(ca) if now < ca.not_after => ca,
        // No CA, or an expired one: nothing it signs can be trusted.
        _ => return Step::CreateCa,
    };
    if !contains(&stored.trusted, &signing.subject) {
        return Step::TrustSigningCa;
    }
    let mut wake = vec![signing.fraction_of_life(policy.ca_renew_at)];

    let leaf = stored.leaf.as_ref();
    let leaf_by_signing = leaf.filter(|leaf| leaf.issuer == signing.subject);
    for ca in &stored.trusted {
        if ca.subject == signing.subject {
            continue;
        }
        if now >= ca.not_after {
            return Step::DropCa {
                subject: ca.subject.clone(),
            };
        }
        // An older CA goes only once the served certificate is the signing
        // CA's and has been out long enough for every replica to load it.
        if let Some(leaf) = leaf_by_signing {
            let served_everywhere = leaf.not_before + policy.backdate + policy.propagation;
            if now >= served_everywhere {
                return Step::DropCa {
                    subject: ca.subject.clone(),
                };
            }
            wake.push(served_everywhere);
        }
        wake.push(ca.not_after);
    }

    if now >= signing.fraction_of_life(policy.ca_renew_at) {
        // While the new CA propagates, the served certificate cannot be
        // renewed (nothing trusts its next signer yet); a fresh one first
        // gives a rotation that keeps failing to publish two months.
        let leaf_is_fresh = leaf_by_signing
            .is_some_and(|leaf| leaf.valid_at(now) && now < leaf.fraction_of_life(FRESH));
        if leaf_by_signing.is_some() && !leaf_is_fresh {
            return Step::IssueLeaf;
        }
        return Step::CreateCa;
    }

    if published
        .iter()
        .any(|bundle| !same_subjects(bundle, &stored.trusted))
    {
        return Step::PublishBundle;
    }

    match leaf {
        // Nothing valid is served (a first start, or a lapse): a leaf now
        // cannot make anything worse.
        None => return Step::IssueLeaf,
        Some(leaf) if !leaf.valid_at(now) || !contains(&stored.trusted, &leaf.issuer) => {
            return Step::IssueLeaf;
        }
        Some(leaf) => {
            let renew_at = leaf.fraction_of_life(policy.leaf_renew_at);
            let wrong_names = !same_names(&leaf.alt_names, dns_names);
            let wrong_issuer = leaf.issuer != signing.subject;
            if now >= renew_at || wrong_names || wrong_issuer {
                // A valid leaf is served: replace it only with one whose CA
                // the API servers have had time to learn.
                let ca_known = signing.not_before + policy.backdate + policy.propagation;
                if now >= ca_known {
                    return Step::IssueLeaf;
                }
                wake.push(ca_known);
            } else {
                wake.push(renew_at);
            }
        }
    }

    let until = wake
        .into_iter()
        .filter(|at| *at > now)
        .min()
        .unwrap_or(signing.not_after);
    Step::Wait { until }
}

/// The validity of a serving certificate issued at `now` by `ca`.
pub fn leaf_validity(
    ca: &CertInfo,
    now: Timestamp,
    policy: &RotationPolicy,
) -> (Timestamp, Timestamp) {
    let not_before = now - policy.backdate;
    let not_after = (not_before + policy.leaf_lifetime).min(ca.not_after);
    (not_before, not_after)
}

/// The validity of a CA made at `now`.
pub fn ca_validity(now: Timestamp, policy: &RotationPolicy) -> (Timestamp, Timestamp) {
    let not_before = now - policy.backdate;
    (not_before, not_before + policy.ca_lifetime)
}

fn contains(cas: &[CertInfo], subject: &[u8]) -> bool {
    cas.iter().any(|ca| ca.subject == subject)
}

fn same_subjects(published: &[Vec<u8>], trusted: &[CertInfo]) -> bool {
    published.iter().all(|s| contains(trusted, s))
        && trusted.iter().all(|ca| published.contains(&ca.subject))
}

fn same_names(have: &[String], want: &[String]) -> bool {
    have.iter().all(|h| want.contains(h)) && want.iter().all(|w| have.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap_or_default()
    }

    fn days(n: i64) -> SignedDuration {
        SignedDuration::from_hours(24 * n)
    }

    fn names() -> Vec<String> {
        vec!["hooks.ops.svc".into(), "hooks.ops".into()]
    }

    fn ca(name: &str, made: Timestamp) -> CertInfo {
        let policy = RotationPolicy::default();
        let (not_before, not_after) = ca_validity(made, &policy);
        CertInfo {
            subject: name.as_bytes().to_vec(),
            issuer: name.as_bytes().to_vec(),
            not_before,
            not_after,
            alt_names: vec![],
            is_ca: true,
        }
    }

    fn leaf(by: &CertInfo, made: Timestamp) -> CertInfo {
        let (not_before, not_after) = leaf_validity(by, made, &RotationPolicy::default());
        CertInfo {
            subject: b"leaf".to_vec(),
            issuer: by.subject.clone(),
            not_before,
            not_after,
            alt_names: names(),
            is_ca: false,
        }
    }

    fn subjects(cas: &[&CertInfo]) -> Vec<Vec<u8>> {
        cas.iter().map(|ca| ca.subject.clone()).collect()
    }

    fn step(stored: &StoredCertificates, published: &[Vec<Vec<u8>>], now: Timestamp) -> Step {
        next_step(stored, published, &names(), now, &RotationPolicy::default())
    }

    #[test]
    fn an_empty_secret_gets_a_ca_then_a_leaf() {
        let now = at("2026-01-01T00:00:00Z");
        assert_eq!(
            step(&StoredCertificates::default(), &[], now),
            Step::CreateCa
        );
        let one = ca("one", now);
        let stored = StoredCertificates {
            signing_ca: Some(one.clone()),
            trusted: vec![one.clone()],
            leaf: None,
        };
        assert_eq!(
            step(&stored, &[vec![]], now),
            Step::PublishBundle,
            "bundle before leaf"
        );
        assert_eq!(step(&stored, &[subjects(&[&one])], now), Step::IssueLeaf);
        assert_eq!(
            step(&stored, &[], now),
            Step::IssueLeaf,
            "no configuration yet"
        );
    }

    #[test]
    fn a_settled_secret_waits_for_the_leaf_renewal() {
        let now = at("2026-01-01T00:00:00Z");
        let one = ca("one", now);
        let stored = StoredCertificates {
            signing_ca: Some(one.clone()),
            trusted: vec![one.clone()],
            leaf: Some(leaf(&one, now)),
        };
        let Step::Wait { until } = step(&stored, &[subjects(&[&one])], now + days(1)) else {
            panic!("nothing to do");
        };
        assert_eq!(until, now - SignedDuration::from_mins(5) + days(60));
        assert_eq!(step(&stored, &[subjects(&[&one])], until), Step::IssueLeaf);
    }

    #[test]
    fn a_leaf_with_other_names_is_replaced() {
        let now = at("2026-01-01T00:00:00Z");
        let one = ca("one", now - days(1));
        let mut served = leaf(&one, now);
        served.alt_names = vec!["old.ops.svc".into()];
        let stored = StoredCertificates {
            signing_ca: Some(one.clone()),
            trusted: vec![one.clone()],
            leaf: Some(served),
        };
        assert_eq!(step(&stored, &[subjects(&[&one])], now), Step::IssueLeaf);
    }

    #[test]
    fn a_ca_rotation_overlaps_old_and_new_until_the_new_leaf_is_out() {
        let made = at("2026-01-01T00:00:00Z");
        let old = ca("old", made);
        let rotate_at = made + days(244);
        // Two thirds into the CA's life (~243 days): first a fresh leaf,
        // then a new CA.
        let stale = StoredCertificates {
            signing_ca: Some(old.clone()),
            trusted: vec![old.clone()],
            leaf: Some(leaf(&old, made + days(200))),
        };
        assert_eq!(
            step(&stale, &[subjects(&[&old])], rotate_at),
            Step::IssueLeaf
        );
        let served = leaf(&old, made + days(240));
        let stored = StoredCertificates {
            signing_ca: Some(old.clone()),
            trusted: vec![old.clone()],
            leaf: Some(served.clone()),
        };
        assert_eq!(
            step(&stored, &[subjects(&[&old])], rotate_at),
            Step::CreateCa
        );

        let new = ca("new", rotate_at);
        let stored = StoredCertificates {
            signing_ca: Some(new.clone()),
            trusted: vec![old.clone(), new.clone()],
            leaf: Some(served.clone()),
        };
        // The served leaf is the old CA's and must stay trusted: publish
        // both, and keep the old leaf until the new CA has propagated.
        assert_eq!(
            step(&stored, &[subjects(&[&old])], rotate_at),
            Step::PublishBundle
        );
        let both = [subjects(&[&old, &new])];
        let Step::Wait { until } = step(&stored, &both, rotate_at) else {
            panic!("waits for the new CA to propagate");
        };
        assert_eq!(until, new.not_before + SignedDuration::from_mins(15));
        assert_eq!(step(&stored, &both, until), Step::IssueLeaf);

        let issued = until;
        let stored = StoredCertificates {
            leaf: Some(leaf(&new, issued)),
            ..stored
        };
        // The old CA stays while replicas may still serve its leaf.
        let Step::Wait { until } = step(&stored, &both, issued) else {
            panic!("keeps the old CA for a while");
        };
        assert_eq!(until, issued + SignedDuration::from_mins(10));
        assert_eq!(
            step(&stored, &both, until),
            Step::DropCa {
                subject: old.subject.clone()
            }
        );
    }

    #[test]
    fn the_new_ca_signs_only_once_every_configuration_trusts_it() {
        let made = at("2026-01-01T00:00:00Z");
        let old = ca("old", made);
        let new = ca("new", made + days(244));
        let stored = StoredCertificates {
            signing_ca: Some(new.clone()),
            trusted: vec![old.clone(), new.clone()],
            leaf: Some(leaf(&old, made + days(240))),
        };
        let later = made + days(250);
        let one_behind = [subjects(&[&old, &new]), subjects(&[&old])];
        assert_eq!(step(&stored, &one_behind, later), Step::PublishBundle);
    }

    #[test]
    fn an_expired_ca_is_replaced_and_old_expired_cas_dropped() {
        let made = at("2026-01-01T00:00:00Z");
        let old = ca("old", made);
        let after_expiry = old.not_after + days(1);
        let stored = StoredCertificates {
            signing_ca: Some(old.clone()),
            trusted: vec![old.clone()],
            leaf: Some(leaf(&old, made)),
        };
        assert_eq!(step(&stored, &[], after_expiry), Step::CreateCa);
        let new = ca("new", after_expiry);
        let stored = StoredCertificates {
            signing_ca: Some(new.clone()),
            trusted: vec![old.clone(), new.clone()],
            ..stored
        };
        assert_eq!(
            step(&stored, &[], after_expiry),
            Step::DropCa {
                subject: old.subject.clone()
            }
        );
    }

    #[test]
    fn a_lapsed_leaf_is_replaced_at_once() {
        let made = at("2026-01-01T00:00:00Z");
        let one = ca("one", made);
        let stored = StoredCertificates {
            signing_ca: Some(one.clone()),
            trusted: vec![one.clone()],
            leaf: Some(leaf(&one, made)),
        };
        assert_eq!(
            step(&stored, &[subjects(&[&one])], made + days(100)),
            Step::IssueLeaf
        );
    }

    #[test]
    fn a_signing_ca_missing_from_the_bundle_is_trusted_again() {
        let made = at("2026-01-01T00:00:00Z");
        let one = ca("one", made);
        let stored = StoredCertificates {
            signing_ca: Some(one.clone()),
            trusted: vec![],
            leaf: None,
        };
        assert_eq!(step(&stored, &[], made), Step::TrustSigningCa);
    }

    #[test]
    fn a_leaf_never_outlives_its_ca() {
        let policy = RotationPolicy::default();
        let made = at("2026-01-01T00:00:00Z");
        let one = ca("one", made);
        let (_, not_after) = leaf_validity(&one, one.not_after - days(10), &policy);
        assert_eq!(not_after, one.not_after);
    }

    /// A run of the leader loop over simulated months: the leader carries
    /// out each step (publishing sometimes fails), replicas load a new leaf
    /// some time after it was written, and at every instant looked at,
    /// every replica serves a valid leaf whose CA every configuration
    /// trusts.
    mod simulated {
        use super::*;
        use proptest::prelude::*;

        /// A replica: what it serves and the leaf it will load, with when.
        #[derive(Clone)]
        struct Replica {
            served: Option<CertInfo>,
            loading: Option<(CertInfo, Timestamp)>,
            lag: SignedDuration,
        }

        struct World {
            stored: StoredCertificates,
            published: Vec<Vec<u8>>,
            replicas: Vec<Replica>,
            cas_made: u32,
            leaves_made: u32,
        }

        impl World {
            fn apply(&mut self, step: &Step, now: Timestamp, publish_fails: bool) -> bool {
                let policy = RotationPolicy::default();
                match step {
                    Step::CreateCa => {
                        self.cas_made += 1;
                        let new = ca(&format!("ca-{}", self.cas_made), now);
                        self.stored.trusted.push(new.clone());
                        self.stored.signing_ca = Some(new);
                    }
                    Step::TrustSigningCa => {
                        if let Some(ca) = self.stored.signing_ca.clone() {
                            self.stored.trusted.push(ca);
                        }
                    }
                    Step::DropCa { subject } => {
                        self.stored.trusted.retain(|c| c.subject != *subject)
                    }
                    Step::PublishBundle => {
                        if publish_fails {
                            return false;
                        }
                        self.published = self
                            .stored
                            .trusted
                            .iter()
                            .map(|c| c.subject.clone())
                            .collect();
                    }
                    Step::IssueLeaf => {
                        let Some(by) = self.stored.signing_ca.clone() else {
                            return false;
                        };
                        self.leaves_made += 1;
                        let (not_before, not_after) = leaf_validity(&by, now, &policy);
                        let new = CertInfo {
                            subject: format!("leaf-{}", self.leaves_made).into_bytes(),
                            issuer: by.subject.clone(),
                            not_before,
                            not_after,
                            alt_names: names(),
                            is_ca: false,
                        };
                        self.stored.leaf = Some(new.clone());
                        for replica in &mut self.replicas {
                            replica.loading = Some((new.clone(), now + replica.lag));
                        }
                    }
                    Step::Wait { .. } => return false,
                }
                true
            }

            fn replicas_load(&mut self, now: Timestamp) {
                for replica in &mut self.replicas {
                    if let Some((leaf, when)) = replica.loading.clone()
                        && now >= when
                    {
                        replica.served = Some(leaf);
                        replica.loading = None;
                    }
                }
            }

            fn check(&self, now: Timestamp) -> Result<(), String> {
                for (i, replica) in self.replicas.iter().enumerate() {
                    let Some(leaf) = &replica.served else {
                        return Err(format!("replica {i} serves nothing at {now}"));
                    };
                    if !leaf.valid_at(now) {
                        return Err(format!("replica {i} serves an invalid leaf at {now}"));
                    }
                    if !self.published.contains(&leaf.issuer) {
                        return Err(format!(
                            "replica {i} serves a leaf of {:?}, not in the bundle, at {now}",
                            String::from_utf8_lossy(&leaf.issuer)
                        ));
                    }
                }
                Ok(())
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn every_served_leaf_stays_trusted(
                // Minutes between two looks of the leader: from a minute to
                // three weeks (an outage shorter than a leaf's last third).
                gaps in proptest::collection::vec(1i64..(21 * 24 * 60), 20..200),
                lags in proptest::collection::vec(0i64..300, 1..4),
                failures in proptest::collection::vec(any::<bool>(), 200),
            ) {
                let mut now = at("2026-01-01T00:00:00Z");
                let mut world = World {
                    stored: StoredCertificates::default(),
                    published: Vec::new(),
                    replicas: lags.iter().map(|secs| Replica {
                        served: None,
                        loading: None,
                        lag: SignedDuration::from_secs(*secs),
                    }).collect(),
                    cas_made: 0,
                    leaves_made: 0,
                };
                // Bootstrap: the leader works until it waits, and the
                // replicas load the first leaf.
                for _ in 0..20 {
                    let step = next_step(&world.stored, std::slice::from_ref(&world.published), &names(), now, &RotationPolicy::default());
                    if !world.apply(&step, now, false) { break; }
                }
                now += SignedDuration::from_mins(6);
                world.replicas_load(now);
                prop_assert!(world.check(now).is_ok(), "{:?}", world.check(now));

                let mut failed_before = false;
                for (gap, fail) in gaps.iter().zip(failures.iter().cycle()) {
                    // Publishing fails at some looks, never at two in a row
                    // (weeks apart): a failure that lasts months is an
                    // outage no schedule outlives.
                    let fail = &(*fail && !failed_before);
                    failed_before = *fail;
                    // Propagation waits are short: the leader looks again
                    // a minute later when it asked to, like a requeue.
                    for _ in 0..30 {
                        let step = next_step(&world.stored, std::slice::from_ref(&world.published), &names(), now, &RotationPolicy::default());
                        let progressed = world.apply(&step, now, *fail);
                        world.replicas_load(now);
                        prop_assert!(world.check(now).is_ok(), "{:?} after {step:?}", world.check(now));
                        if !progressed {
                            match step {
                                Step::Wait { until } if now.duration_until(until) <= SignedDuration::from_mins(20) => {
                                    now = until;
                                    world.replicas_load(now);
                                    prop_assert!(world.check(now).is_ok(), "{:?}", world.check(now));
                                }
                                _ => break,
                            }
                        }
                    }
                    now += SignedDuration::from_mins(*gap);
                    world.replicas_load(now);
                    prop_assert!(world.check(now).is_ok(), "{:?} after a gap of {gap} min", world.check(now));
                }
                prop_assert!(world.published.len() <= 2, "at most old and new CA");
                let simulated = at("2026-01-01T00:00:00Z").duration_until(now);
                if simulated > days(400) {
                    prop_assert!(world.cas_made >= 2, "a year on, the CA was rotated");
                }
            }
        }
    }
}
