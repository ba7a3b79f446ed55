//! What `POST /hooks/{engine}/{pipeline}` does with a delivery before it looks
//! anything up or starts an execution (`arkline_cli::serve::hooks`): the
//! credential header (GitHub's `X-Hub-Signature-256`, parsed and checked as
//! an HMAC-SHA256 of the body; GitLab's `X-Gitlab-Token`, compared in constant
//! time), the JSON body, and reading it as a GitHub or GitLab event
//! (`delivery::github` / `delivery::gitlab`), then matching the event's branch
//! against a trigger's glob filters (`Filter::matches`).
//!
//! Input: one byte choosing the forge (even: GitHub, odd: GitLab), the event
//! header value up to the first newline, the credential header value up to
//! the next, then the body. Nothing panics; a signature made for the body with
//! the secret verifies and no other does; a run names a known event.

#![no_main]

use arkline::model::Filter;
use arkline_cli::serve::hooks::delivery::{self, Delivery};
use arkline_cli::serve::hooks::signature::{
    GithubSignature, github_signature, gitlab_token_matches,
};
use libfuzzer_sys::fuzz_target;

/// The webhook secret of the seeds (their signatures are made with it).
const SECRET: &str = "It's a Secret to Everybody";

fn line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let gitlab = selector & 1 == 1;
    let (event, rest) = line(rest);
    let (credential, body) = line(rest);
    // Header values reach the handler only as visible ASCII (`to_str()`).
    let (Ok(event), Ok(credential)) = (std::str::from_utf8(event), std::str::from_utf8(credential))
    else {
        return;
    };

    // Authentication.
    if gitlab {
        let _ = gitlab_token_matches(credential, SECRET);
        assert!(gitlab_token_matches(credential, credential));
    } else if let Ok(sig) = GithubSignature::parse(credential) {
        let _ = sig.verifies(SECRET.as_bytes(), body);
    }
    let good = github_signature(SECRET.as_bytes(), body);
    let sig = GithubSignature::parse(&good).expect("a signature github_signature makes parses");
    assert!(
        sig.verifies(SECRET.as_bytes(), body),
        "the body's own signature does not verify"
    );
    assert!(
        !sig.verifies(b"another secret", body),
        "a signature verifies under another secret"
    );

    // The delivery.
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let delivery = if gitlab {
        delivery::gitlab(event, &payload)
    } else {
        delivery::github(event, &payload)
    };
    match delivery {
        Ok(Delivery::Run(run)) => {
            assert!(
                matches!(run.event, "push" | "tag" | "pull_request"),
                "{run:?}"
            );
            let filters = [
                Filter::default(),
                Filter {
                    include: vec!["main".into(), "release/*".into(), "v*".into()],
                    exclude: vec!["**/wip".into()],
                },
                Filter {
                    include: vec![run.branch.clone()],
                    exclude: Vec::new(),
                },
            ];
            for f in &filters {
                let _ = f.matches(&run.branch);
            }
            assert!(filters[0].matches(&run.branch));
            for (name, value) in &run.labels {
                assert!(name.starts_with("arkline.dev/"), "{name}={value}");
            }
        }
        Ok(Delivery::Ping | Delivery::Ignored(_)) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
