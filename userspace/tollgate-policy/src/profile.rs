//! Mask profiles: named sets of mask directives a rule pulls in with
//! `mask: [{ profile: <name> }]`, expanded when the policy is compiled.
//!
//! The one profile is `safe_harbor`: the 18 identifiers of the HIPAA Safe Harbor
//! de-identification method (45 CFR 164.514(b)(2)), each mapped to one or more tags of a fixed
//! vocabulary ([`SAFE_HARBOR_TAGS`]). Geographic subdivisions (ZIP → first three digits) and
//! dates (→ year; ages over 89 → `90+`) are generalised, everything else is redacted (see
//! [`safe_harbor_method`]).
//!
//! An explicit entry of the same rule that names one of these tags (`{ tags: [phi.mrn],
//! method: token }`) overrides the profile for that tag, wherever it is listed: the profile's
//! directive for the tag is left out. Entries by `columns` do not remove anything from the
//! profile; where both match a column the strictest method wins, as always.

use crate::schema::MaskMethod;

/// The mask profiles a `mask` entry may name (`{ profile: safe_harbor }`).
pub const MASK_PROFILES: &[&str] = &["safe_harbor"];

/// The `safe_harbor` profile's tag vocabulary: `(tag, the Safe Harbor identifier it stands
/// for)`, in the order of 45 CFR 164.514(b)(2)(i)(A)–(R). Some identifiers have several tags
/// (ZIP codes apart from other geography; birth dates and ages apart from other dates).
pub const SAFE_HARBOR_TAGS: &[(&str, &str)] = &[
    ("phi.name", "(1) names"),
    (
        "phi.address",
        "(2) geographic subdivisions smaller than a state: street address, city, county, \
         precinct and their equivalent geocodes",
    ),
    (
        "phi.zip",
        "(2) ZIP codes (the first three digits may stay, except where that area holds 20,000 \
         people or fewer)",
    ),
    (
        "phi.date",
        "(3) all elements of dates (except year) directly related to an individual: \
         admission, discharge, service, death",
    ),
    ("phi.dob", "(3) birth dates"),
    (
        "phi.age",
        "(3) ages over 89 (aggregated into a single category of 90 or older)",
    ),
    ("phi.phone", "(4) telephone numbers"),
    ("phi.fax", "(5) fax numbers"),
    ("phi.email", "(6) email addresses"),
    ("phi.ssn", "(7) Social Security numbers"),
    ("phi.mrn", "(8) medical record numbers"),
    ("phi.health_plan", "(9) health plan beneficiary numbers"),
    ("phi.account", "(10) account numbers"),
    ("phi.license", "(11) certificate/license numbers"),
    (
        "phi.vehicle",
        "(12) vehicle identifiers and serial numbers, including license plate numbers",
    ),
    ("phi.device", "(13) device identifiers and serial numbers"),
    ("phi.url", "(14) web universal resource locators (URLs)"),
    ("phi.ip", "(15) Internet Protocol (IP) address numbers"),
    (
        "phi.biometric",
        "(16) biometric identifiers, including finger and voice prints",
    ),
    (
        "phi.photo",
        "(17) full-face photographic images and any comparable images",
    ),
    (
        "phi.other_id",
        "(18) any other unique identifying number, characteristic, or code",
    ),
];

/// Tags of [`SAFE_HARBOR_TAGS`] the profile generalises rather than redacts.
const SAFE_HARBOR_GENERALIZED: &[&str] =
    &["phi.address", "phi.zip", "phi.date", "phi.dob", "phi.age"];

/// The method the `safe_harbor` profile applies to `tag`: `generalize` for geography and
/// dates (`phi.address`, `phi.zip`, `phi.date`, `phi.dob`, `phi.age`), `redact` for the other
/// tags of [`SAFE_HARBOR_TAGS`], `None` for a tag outside the vocabulary.
pub fn safe_harbor_method(tag: &str) -> Option<MaskMethod> {
    if SAFE_HARBOR_GENERALIZED.contains(&tag) {
        Some(MaskMethod::Generalize)
    } else if SAFE_HARBOR_TAGS.iter().any(|(t, _)| *t == tag) {
        Some(MaskMethod::Redact)
    } else {
        None
    }
}

/// The `(tags, method)` groups profile `name` expands to, leaving out the tags in `overridden`
/// (named by explicit entries of the same rule) and empty groups; `None` for an unknown
/// profile.
pub(crate) fn expand(name: &str, overridden: &[&str]) -> Option<Vec<(Vec<String>, MaskMethod)>> {
    if name != "safe_harbor" {
        return None;
    }
    let mut groups: Vec<(Vec<String>, MaskMethod)> = Vec::new();
    for (tag, _) in SAFE_HARBOR_TAGS {
        if overridden.contains(tag) {
            continue;
        }
        let method = safe_harbor_method(tag)?;
        match groups.iter_mut().find(|(_, m)| *m == method) {
            Some((tags, _)) => tags.push((*tag).to_owned()),
            None => groups.push((vec![(*tag).to_owned()], method)),
        }
    }
    Some(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_is_unique_and_every_generalized_tag_is_in_it() {
        for (i, (tag, _)) in SAFE_HARBOR_TAGS.iter().enumerate() {
            assert!(
                SAFE_HARBOR_TAGS[i + 1..].iter().all(|(t, _)| t != tag),
                "{tag} twice"
            );
        }
        for tag in SAFE_HARBOR_GENERALIZED {
            assert!(SAFE_HARBOR_TAGS.iter().any(|(t, _)| t == tag), "{tag}");
        }
        // Every one of the 18 identifiers has a tag.
        for n in 1..=18 {
            assert!(
                SAFE_HARBOR_TAGS
                    .iter()
                    .any(|(_, text)| text.starts_with(&format!("({n}) "))),
                "identifier {n}"
            );
        }
    }

    #[test]
    fn expansion_leaves_out_overridden_tags_and_empty_groups() {
        let all = expand("safe_harbor", &[]).unwrap();
        assert_eq!(
            all.iter().map(|(t, _)| t.len()).sum::<usize>(),
            SAFE_HARBOR_TAGS.len()
        );
        let some = expand("safe_harbor", &["phi.mrn", "phi.dob"]).unwrap();
        assert!(some
            .iter()
            .all(|(tags, _)| !tags.iter().any(|t| t == "phi.mrn" || t == "phi.dob")));
        let generalized: Vec<&str> = SAFE_HARBOR_GENERALIZED.to_vec();
        let only_redact = expand("safe_harbor", &generalized).unwrap();
        assert_eq!(only_redact.len(), 1);
        assert_eq!(only_redact[0].1, MaskMethod::Redact);
        assert!(expand("safe_harbour", &[]).is_none());
    }
}
