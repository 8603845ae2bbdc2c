//! Path confinement for a run's workspace.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("path '{0}' leaves the workspace")]
    Escapes(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// A run's workspace directory (created on first use).
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    pub fn for_run(data_dir: &Path, run_id: &str) -> Result<Workspace, WorkspaceError> {
        // Run ids are uuids here; anything path-like is refused rather than mapped.
        if run_id.is_empty() || run_id.contains(['/', '\\']) || run_id.starts_with('.') {
            return Err(WorkspaceError::Escapes(run_id.to_string()));
        }
        Workspace::at(&data_dir.join("workspaces").join(run_id))
    }

    pub fn at(root: &Path) -> Result<Workspace, WorkspaceError> {
        std::fs::create_dir_all(root).map_err(|e| WorkspaceError::Io(root.display().to_string(), e))?;
        let root = root.canonicalize().map_err(|e| WorkspaceError::Io(root.display().to_string(), e))?;
        Ok(Workspace { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The real path for `rel`, guaranteed inside the workspace: lexically (no component climbs
    /// above the root) and physically (the deepest existing ancestor, symlinks resolved, is inside
    /// the root). The target itself need not exist yet.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, WorkspaceError> {
        let escapes = || WorkspaceError::Escapes(rel.to_string());
        let mut out = self.root.clone();
        for c in Path::new(rel.trim()).components() {
            match c {
                Component::CurDir => {}
                Component::Normal(p) => out.push(p),
                Component::ParentDir => {
                    if out == self.root || !out.pop() || !out.starts_with(&self.root) {
                        return Err(escapes());
                    }
                }
                // An absolute path is accepted only if it already points inside the workspace.
                Component::RootDir | Component::Prefix(_) => {
                    let abs = Path::new(rel.trim());
                    if !abs.starts_with(&self.root) {
                        return Err(escapes());
                    }
                    return self.resolve(&abs.strip_prefix(&self.root).map_err(|_| escapes())?.to_string_lossy());
                }
            }
        }
        // Symlinks: the deepest existing ancestor, resolved, must stay inside.
        let mut probe = out.as_path();
        loop {
            if probe.exists() || probe.symlink_metadata().is_ok() {
                let real = probe.canonicalize().map_err(|_| escapes())?;
                if !real.starts_with(&self.root) {
                    return Err(escapes());
                }
                break;
            }
            match probe.parent() {
                Some(p) => probe = p,
                None => return Err(escapes()),
            }
        }
        Ok(out)
    }

    /// `path` shown relative to the workspace root.
    pub fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .map(|p| {
                if p.as_os_str().is_empty() {
                    ".".to_string()
                } else {
                    p.display().to_string()
                }
            })
            .unwrap_or_else(|_| path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> (Workspace, PathBuf) {
        let base = std::env::temp_dir().join(format!("agw-ws-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&base);
        let ws = Workspace::for_run(&base, "run-1").unwrap();
        (ws, base)
    }

    #[test]
    fn paths_stay_inside() {
        let (ws, base) = ws();
        let root = ws.root().to_path_buf();
        assert_eq!(ws.resolve("a/b.txt").unwrap(), root.join("a/b.txt"));
        assert_eq!(ws.resolve("./a/../b").unwrap(), root.join("b"));
        assert_eq!(ws.resolve(&root.join("x").to_string_lossy()).unwrap(), root.join("x"));
        for bad in ["..", "../x", "a/../../x", "/etc/passwd", "a/../../../etc"] {
            assert!(matches!(ws.resolve(bad), Err(WorkspaceError::Escapes(_))), "{bad}");
        }
        assert!(Workspace::for_run(&base, "../other").is_err());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_workspace_are_refused() {
        let (ws, base) = ws();
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, ws.root().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), ws.root().join("file")).unwrap();
        for bad in ["link", "link/secret.txt", "link/new.txt", "file"] {
            assert!(matches!(ws.resolve(bad), Err(WorkspaceError::Escapes(_))), "{bad}");
        }
        // A link that stays inside is fine.
        std::fs::create_dir_all(ws.root().join("real")).unwrap();
        std::os::unix::fs::symlink(ws.root().join("real"), ws.root().join("alias")).unwrap();
        assert!(ws.resolve("alias/x.txt").is_ok());
        let _ = std::fs::remove_dir_all(&base);
    }
}
