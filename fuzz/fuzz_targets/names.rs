//! Demo names from raw webhook input: never a panic, and every name is one DNS label and one
//! folder name, as `common/src/names.rs` promises.
//!
//! Input: `<repo>\n<owner>\n<pr number>`; a number that does not parse counts its bytes.
#![no_main]

use demofleet_common::names::{self, NameError, MAX_LABEL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let repo = parts.next().unwrap_or_default();
    let owner = parts.next().unwrap_or_default();
    let number = parts.next().unwrap_or_default();
    let pr = number.trim().parse::<u64>().unwrap_or(number.len() as u64);

    for raw in [repo, owner, number] {
        let part = names::sanitize(raw);
        assert!(part.bytes().all(allowed), "{raw:?} → {part:?}");
        // Every run of other characters became one `-`, none at the ends.
        assert!(!part.starts_with('-') && !part.ends_with('-') && !part.contains("--"), "{raw:?} → {part:?}");
        assert_eq!(names::sanitize(&part), part, "{raw:?}");
        assert_eq!(names::is_valid_name(raw), is_label(raw), "{raw:?}");
    }

    let (repo_part, owner_part) = (names::sanitize(repo), names::sanitize(owner));
    match names::demo_name(repo, owner, pr) {
        Ok(name) => {
            assert!(is_label(&name) && names::is_valid_name(&name), "{name:?}");
            // `--` would also make `xn--…` names, which browsers read as punycode.
            assert!(!name.contains("--"), "{name:?}");
            assert!(name.ends_with(&format!("-pr-{pr}")), "{name:?}");
            let full = format!("{repo_part}-{owner_part}-pr-{pr}");
            if full.len() <= MAX_LABEL {
                assert_eq!(name, full);
            } else {
                // Cut to the limit, keeping a hash of the raw input before the number.
                assert!(name.len() <= MAX_LABEL, "{name:?}");
                let suffix_len = "-01234567-pr-".len() + pr.to_string().len();
                let hash = &name[name.len() - suffix_len + 1..][..8];
                assert!(hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{name:?}");
                assert!(full.starts_with(&name[..name.len() - suffix_len]), "{name:?} from {full:?}");
            }
            assert_eq!(names::demo_name(repo, owner, pr).as_ref(), Ok(&name), "not stable");
            if let Some(next) = pr.checked_add(1) {
                assert_ne!(names::demo_name(repo, owner, next).as_ref(), Ok(&name));
            }
        }
        Err(NameError::BadNumber) => assert_eq!(pr, 0),
        Err(NameError::Empty { field: "repository name" }) => assert!(pr != 0 && repo_part.is_empty()),
        Err(NameError::Empty { field: "owner name" }) => assert!(!repo_part.is_empty() && owner_part.is_empty()),
        Err(err) => panic!("unexpected {err:?}"),
    }

    // What the intake accepts from GitHub.
    if names::validate_owner(owner).is_ok() {
        assert!((1..=39).contains(&owner.len()) && !owner_part.is_empty(), "{owner:?}");
        assert!(owner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{owner:?}");
    }
    if names::validate_repo(repo).is_ok() {
        assert!((1..=100).contains(&repo.len()) && repo != "." && repo != "..", "{repo:?}");
        assert!(!repo.contains('/') && repo.is_ascii(), "{repo:?}");
    }
});

fn allowed(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

/// One DNS label (RFC 1035, lowercase) that is also a plain folder name.
fn is_label(name: &str) -> bool {
    (1..=MAX_LABEL).contains(&name.len()) && name.bytes().all(allowed) && !name.starts_with('-') && !name.ends_with('-')
}
