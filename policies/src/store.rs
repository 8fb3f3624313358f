//! The version store: every policy set that becomes active is kept under its version (content
//! hash), so that any past decision can be replayed against exactly the policies that made it.
//! A version is written once (to a temporary directory, then renamed) and never changed.

use std::path::{Path, PathBuf};

use crate::load::{load_dir, LoadError, PolicyBundle};
use crate::version::Version;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("policy version store {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy version {0} is not in the store")]
    Missing(Version),
    #[error("stored policy version {expected} no longer matches its content (found {found})")]
    Corrupt { expected: Version, found: Version },
    #[error(transparent)]
    Load(#[from] LoadError),
}

pub struct VersionStore {
    root: PathBuf,
}

impl VersionStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| StoreError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(VersionStore { root })
    }

    fn dir(&self, version: &Version) -> PathBuf {
        self.root.join(version.as_str())
    }

    /// Keeps `bundle`'s files under its version (a no-op if already stored).
    pub fn save(&self, bundle: &PolicyBundle) -> Result<PathBuf, StoreError> {
        let target = self.dir(&bundle.version);
        if target.is_dir() {
            return Ok(target);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        let tmp = self.root.join(format!(
            ".tmp-{}-{}",
            bundle.version.short(),
            std::process::id()
        ));
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        for f in &bundle.files {
            let path = tmp.join(&f.name);
            std::fs::write(&path, &f.text).map_err(io(&path))?;
        }
        match std::fs::rename(&tmp, &target) {
            Ok(()) => Ok(target),
            // Another process stored the same version first: same content, keep theirs.
            Err(_) if target.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(target)
            }
            Err(source) => Err(StoreError::Io {
                path: target,
                source,
            }),
        }
    }

    /// Loads a stored version, checking that its content still hashes to it.
    pub fn load(&self, version: &Version) -> Result<PolicyBundle, StoreError> {
        let dir = self.dir(version);
        if !dir.is_dir() {
            return Err(StoreError::Missing(version.clone()));
        }
        let bundle = load_dir(&dir)?;
        if &bundle.version != version {
            return Err(StoreError::Corrupt {
                expected: version.clone(),
                found: bundle.version,
            });
        }
        Ok(bundle)
    }

    /// Every stored version.
    pub fn versions(&self) -> Result<Vec<Version>, StoreError> {
        let entries = std::fs::read_dir(&self.root).map_err(|source| StoreError::Io {
            path: self.root.clone(),
            source,
        })?;
        let mut out: Vec<Version> = entries
            .filter_map(|e| e.ok()?.file_name().to_str().and_then(Version::parse))
            .collect();
        out.sort();
        Ok(out)
    }
}
