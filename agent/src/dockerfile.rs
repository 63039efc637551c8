//! A demo's Dockerfile read for one thing: images it names with `FROM`, `COPY --from=`,
//! `ADD --from=` or `RUN --mount=…from=` that are demo images (`demofleet/<name>:g<n>…`,
//! the agent's own tags), which no demo may build from.
//!
//! This check gives the plain attack a clear refusal; it is not the defence. A reference
//! built from `ARG`s is not resolved here, and demo images are tagged with a random token
//! per build ([`crate::docker`]) so that no Dockerfile can name another demo's image.

/// Refuse a Dockerfile naming a demo image, with its line and instruction.
pub fn check(text: &str) -> Result<(), String> {
    for (line, instruction) in instructions(text) {
        let mut words = instruction.split_whitespace();
        let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
        let mut named = Vec::new();
        let mut image_next = keyword == "FROM";
        for word in words {
            if let Some(flag) = word.strip_prefix("--") {
                if let Some(from) = flag.strip_prefix("from=") {
                    named.push(from);
                } else if let Some(mount) = flag.strip_prefix("mount=") {
                    named.extend(mount.split(',').filter_map(|part| part.strip_prefix("from=")));
                }
            } else if image_next {
                named.push(word);
                image_next = false;
            }
        }
        if let Some(image) = named.into_iter().find(|image| is_demo_image(image)) {
            return Err(format!(
                "line {line}: `{}` names the demo image {image:?}; demos build only from base images",
                instruction.trim()
            ));
        }
    }
    Ok(())
}

/// `demofleet/<name>:g<digits>…`, also written with Docker Hub's own names for it.
fn is_demo_image(reference: &str) -> bool {
    let reference = reference.trim_matches(['"', '\'']).to_ascii_lowercase();
    let local = ["docker.io/", "index.docker.io/"]
        .iter()
        .find_map(|registry| reference.strip_prefix(registry))
        .unwrap_or(&reference);
    let Some(rest) = local.strip_prefix("demofleet/") else { return false };
    rest.rsplit_once(':')
        .is_some_and(|(_, tag)| tag.strip_prefix('g').is_some_and(|g| g.starts_with(|c: char| c.is_ascii_digit())))
}

/// The Dockerfile's instructions with their first line numbers: comments dropped and
/// continued lines joined (the escape character is `\`, or `` ` `` by parser directive).
fn instructions(text: &str) -> Vec<(usize, String)> {
    let escape = if text.lines().take_while(|l| l.trim_start().starts_with('#')).any(|l| {
        let directive: String = l.trim_start_matches('#').chars().filter(|c| !c.is_whitespace()).collect();
        directive.eq_ignore_ascii_case("escape=`")
    }) {
        '`'
    } else {
        '\\'
    };
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let (body, continued) = match line.trim_end().strip_suffix(escape) {
            Some(body) => (body, true),
            None => (line, false),
        };
        let (_, joined) = current.get_or_insert_with(|| (index + 1, String::new()));
        joined.push(' ');
        joined.push_str(body);
        if !continued {
            out.extend(current.take().filter(|(_, s)| !s.trim().is_empty()));
        }
    }
    out.extend(current.filter(|(_, s)| !s.trim().is_empty()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_images_pass() {
        let text = "# syntax=docker/dockerfile:1\nFROM demofleet/base:busybox AS base\nFROM python:3.12\n\
                    COPY --from=base /bin/busybox /bin/\nRUN --mount=type=cache,target=/root/.cache pip install x\n";
        assert_eq!(check(text), Ok(()));
    }

    #[test]
    fn demo_images_are_refused_wherever_they_are_named() {
        for (text, line) in [
            ("FROM demofleet/site-o-pr-1:g3\n", 1),
            ("FROM --platform=linux/amd64 docker.io/demofleet/site-o-pr-1:g3-0a1b AS x\n", 1),
            ("FROM demofleet/base:busybox\nCOPY --chown=1:1 --from=demofleet/site-o-pr-1:g2 /app /app\n", 2),
            ("FROM demofleet/base:busybox\nRUN echo a && \\\n  true\nADD \\\n  --from=DemoFleet/x-o-pr-2:g7 / /\n", 4),
            ("FROM demofleet/base:busybox\nRUN --mount=type=bind,from=demofleet/x-o-pr-2:g1,target=/x cat /x/secret\n", 2),
            ("# escape=`\nFROM demofleet/base:busybox\nCOPY `\n --from=demofleet/x-o-pr-2:g1 / /\n", 3),
        ] {
            let err = check(text).unwrap_err();
            assert!(err.starts_with(&format!("line {line}: ")) && err.contains("demo image"), "{text}: {err}");
        }
    }
}
