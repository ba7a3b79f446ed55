//! Workspace paths as a step's configuration gives them: relative to the
//! workspace root (or `/workspace/…`), normalised, and never outside it.

/// Where the workspace appears to the guest.
pub const WORKSPACE: &str = "/workspace";

/// Normalises a path given relative to the workspace root (or as `/workspace/…`)
/// into a relative path without `.`/`..` (empty for the root); `None` when it
/// climbs out of the workspace or is absolute elsewhere.
pub fn relative_path(path: &str) -> Option<String> {
    let relative = if path == WORKSPACE {
        ""
    } else if let Some(rest) = path.strip_prefix("/workspace/") {
        rest
    } else if path.starts_with('/') {
        return None;
    } else {
        path
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The guest path of a normalised relative path.
pub fn guest_path(relative: &str) -> String {
    if relative.is_empty() {
        WORKSPACE.to_owned()
    } else {
        format!("{WORKSPACE}/{relative}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_in_the_workspace() {
        assert_eq!(relative_path("src/app").as_deref(), Some("src/app"));
        assert_eq!(relative_path("./a/../b/").as_deref(), Some("b"));
        assert_eq!(relative_path("/workspace/x").as_deref(), Some("x"));
        assert_eq!(relative_path(".").as_deref(), Some(""));
        assert_eq!(relative_path("../etc"), None);
        assert_eq!(relative_path("/etc"), None);
        assert_eq!(relative_path("/workspacex"), None);
        assert_eq!(guest_path(""), "/workspace");
        assert_eq!(guest_path("a/b"), "/workspace/a/b");
    }
}
