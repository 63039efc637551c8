//! Demo names: `<repo>-<owner>-pr-<n>`, safe as one DNS label and as one folder name.
//!
//! Raw repository and owner names come from webhooks and are never trusted: the result
//! contains only `[a-z0-9-]`, never starts or ends with `-`, and is at most 63 characters.
//! Names that would be longer are cut and given a stable hash suffix so two different
//! pull requests never share a name.

use sha2::{Digest, Sha256};

/// The longest DNS label (RFC 1035).
pub const MAX_LABEL: usize = 63;

/// Why a name cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{field} is empty after removing characters other than letters, digits and '-'")]
    Empty { field: &'static str },
    #[error("pull request number must be at least 1")]
    BadNumber,
}

/// The demo name for pull request `pr` of `owner/repo`.
pub fn demo_name(repo: &str, owner: &str, pr: u64) -> Result<String, NameError> {
    if pr == 0 {
        return Err(NameError::BadNumber);
    }
    let repo_part = sanitize(repo);
    let owner_part = sanitize(owner);
    if repo_part.is_empty() {
        return Err(NameError::Empty { field: "repository name" });
    }
    if owner_part.is_empty() {
        return Err(NameError::Empty { field: "owner name" });
    }
    let full = format!("{repo_part}-{owner_part}-pr-{pr}");
    if full.len() <= MAX_LABEL {
        return Ok(full);
    }
    // Keep the PR number readable and make the cut part unique with a hash of the raw input.
    let digest = Sha256::digest(format!("{owner}/{repo}#{pr}").as_bytes());
    let suffix = format!("-{}-pr-{pr}", &hex::encode(digest)[..8]);
    let keep = MAX_LABEL - suffix.len();
    let head = full[..keep].trim_end_matches('-');
    Ok(format!("{head}{suffix}"))
}

/// Lowercase, map every run of characters outside `[a-z0-9]` to one `-`, trim `-` at the ends.
pub fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// True when `name` could have come from [`demo_name`]: a safe label and folder name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LABEL
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_read_naturally() {
        assert_eq!(demo_name("Hello-World", "Codertocat", 2).unwrap(), "hello-world-codertocat-pr-2");
        assert_eq!(demo_name("ubuntu.com", "canonical", 1234).unwrap(), "ubuntu-com-canonical-pr-1234");
    }

    #[test]
    fn hostile_input_cannot_escape_a_folder_or_label() {
        for (repo, owner) in [("../../etc", "x"), ("a/b", "c"), ("ünïcødé", "o"), ("x", "a b\tc")] {
            let name = demo_name(repo, owner, 7).unwrap();
            assert!(is_valid_name(&name), "{name}");
            assert!(!name.contains(".."));
        }
        assert_eq!(demo_name("..", "x", 1), Err(NameError::Empty { field: "repository name" }));
        assert_eq!(demo_name("x", "", 1), Err(NameError::Empty { field: "owner name" }));
        assert_eq!(demo_name("x", "y", 0), Err(NameError::BadNumber));
    }

    #[test]
    fn long_names_are_cut_with_a_stable_distinct_suffix() {
        let repo = "r".repeat(100);
        let a = demo_name(&repo, "owner", u64::MAX).unwrap();
        let b = demo_name(&repo, "owner2", u64::MAX).unwrap();
        assert!(a.len() <= MAX_LABEL && is_valid_name(&a), "{a}");
        assert!(a.ends_with(&format!("-pr-{}", u64::MAX)));
        assert_ne!(a, b);
        assert_eq!(a, demo_name(&repo, "owner", u64::MAX).unwrap());
    }
}

/// Check a GitHub login (owner): 1–39 ASCII letters, digits or single hyphens inside.
pub fn validate_owner(owner: &str) -> Result<(), String> {
    let ok = (1..=39).contains(&owner.len())
        && owner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !owner.starts_with('-')
        && !owner.ends_with('-')
        && !owner.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!("owner {owner:?} is not a GitHub login (1-39 ASCII letters, digits or inner single hyphens)"))
    }
}

/// Check a GitHub repository name: 1–100 ASCII letters, digits, `.`, `_` or `-`; not `.` or `..`.
pub fn validate_repo(repo: &str) -> Result<(), String> {
    let ok = (1..=100).contains(&repo.len())
        && repo.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && repo != "."
        && repo != "..";
    if ok {
        Ok(())
    } else {
        Err(format!("repository name {repo:?} is not a GitHub repository name (1-100 of A-Z a-z 0-9 . _ -)"))
    }
}

/// Check a GitHub login as webhooks name people: an account's login, or an App's
/// `<login>[bot]`.
pub fn validate_login(login: &str) -> Result<(), String> {
    validate_owner(login.strip_suffix("[bot]").unwrap_or(login))
        .map_err(|_| format!("login {login:?} is not a GitHub login (1-39 ASCII letters, digits or inner single hyphens, or an App's <login>[bot])"))
}

#[cfg(test)]
mod validation_tests {
    use super::*;

    #[test]
    fn github_names_pass_and_hostile_ones_do_not() {
        assert!(validate_owner("Codertocat").is_ok());
        assert!(validate_repo("Hello-World").is_ok());
        assert!(validate_repo("ubuntu.com").is_ok());
        assert!(validate_login("dependabot[bot]").is_ok() && validate_login("x/../y").is_err());
        for owner in ["", "-x", "a/b", "..", "ünï", &"o".repeat(40), "a--b"] {
            assert!(validate_owner(owner).is_err(), "{owner}");
        }
        for repo in ["", ".", "..", "a/b", "a b", "ünï", &"r".repeat(101)] {
            assert!(validate_repo(repo).is_err(), "{repo}");
        }
    }
}
