//! The version rule: which SDK versions load together.
//!
//! A host and an agent library each carry the version of `mta-agent-sdk` they were built
//! against. The host loads the library when [`compatible`] says so, and then `abi_stable` checks
//! the layout of every type that crosses the boundary. The rule is written once, in the crate's
//! README ("The version rule"), and this function is its only implementation: the host calls it
//! before the layout check so that a refusal names the versions instead of a layout difference.
//!
//! Why this rule: the boundary is made of `abi_stable` prefix types and trait objects, which let
//! a *later* version append fields and methods without breaking an earlier reader, but both
//! sides call each other (the host calls the agent's handlers, the agent calls the host's
//! callbacks), so neither side can use what the other lacks. Below 1.0 any minor release may
//! change the boundary, and `abi_stable` itself treats `0.y` as incompatible with `0.z`: the
//! minor must match. Patch releases never touch the boundary, so they load in both directions.
//! From 1.0, a minor release may only append (optional) items; a host then serves libraries
//! built against its own minor or an older one, never a newer one whose additions it lacks.

/// This SDK's version, `major.minor.patch`: what a library built against it records.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The rule in one sentence, for error messages.
pub const RULE: &str = "below 1.0 the same minor version, any patch; from 1.0 the same major version and a minor version not newer than the host's";

/// Whether a host built against SDK `host` loads a library built against SDK `library`
/// (`major.minor.patch` each; anything unparsable is incompatible).
pub fn compatible(host: &str, library: &str) -> bool {
    match (parse(host), parse(library)) {
        (Some(h), Some(l)) if h.0 == 0 => l.0 == 0 && l.1 == h.1,
        (Some(h), Some(l)) => l.0 == h.0 && l.1 <= h.1,
        _ => false,
    }
}

fn parse(version: &str) -> Option<(u64, u64, u64)> {
    // Pre-release and build suffixes (`0.2.0-rc.1`, `+meta`) do not change the ABI's number.
    let core = version.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn below_one_the_minor_must_match_and_patches_load_both_ways() {
        assert!(compatible("0.1.0", "0.1.0"));
        assert!(compatible("0.1.0", "0.1.7"));
        assert!(compatible("0.1.7", "0.1.0"));
        assert!(!compatible("0.1.0", "0.2.0"));
        assert!(!compatible("0.2.0", "0.1.9"));
        assert!(!compatible("0.1.0", "0.0.1"));
        assert!(!compatible("0.1.0", "1.1.0"));
    }

    #[test]
    fn from_one_the_major_must_match_and_the_library_minor_not_be_newer() {
        assert!(compatible("1.2.0", "1.2.5"));
        assert!(compatible("1.2.0", "1.0.0"));
        assert!(!compatible("1.2.0", "1.3.0"));
        assert!(!compatible("1.2.0", "2.0.0"));
        assert!(!compatible("2.0.0", "1.9.0"));
    }

    #[test]
    fn unparsable_versions_never_load() {
        assert!(!compatible("0.1.0", "0.1"));
        assert!(!compatible("0.1.0", "0.1.0.0"));
        assert!(!compatible("0.1.0", "x.1.0"));
        assert!(compatible("0.1.0", "0.1.1-rc.1"));
    }
}
