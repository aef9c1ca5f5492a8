//! `moat plugin new`: a plugin crate from the template in
//! `plugins/template`, with the SDK of this build beside it, that builds
//! for `wasm32-unknown-unknown` as is, offline.

use std::path::{Path, PathBuf};

/// The template's files: where each goes in the new crate, and its text.
const FILES: [(&str, &str); 7] = [
    (
        "Cargo.toml",
        include_str!("../../../plugins/template/Cargo.toml.in"),
    ),
    (
        ".cargo/config.toml",
        include_str!("../../../plugins/template/config.toml.in"),
    ),
    (
        "README.md",
        include_str!("../../../plugins/template/README.md.in"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/template/lib.rs.in"),
    ),
    (
        "src/exports.rs",
        include_str!("../../../plugins/template/exports.rs.in"),
    ),
    (
        "moat-plugin-abi/Cargo.toml",
        include_str!("../../../plugins/template/abi-Cargo.toml.in"),
    ),
    (
        "moat-plugin-abi/src/lib.rs",
        include_str!("../../../plugins/abi/src/lib.rs"),
    ),
];

/// Why a plugin crate could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The name is not a crate name a plugin can have.
    #[error("`{0}` is not a plugin crate name (a-z, 0-9, '-' and '_', starting with a letter)")]
    Name(String),
    /// The directory exists already.
    #[error("{0} exists already")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("{path}: {source}")]
    Io {
        /// What was being written.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Writes the plugin crate `name` into `dir/name`; gives its directory.
pub fn new_plugin(name: &str, dir: &Path) -> Result<PathBuf, TemplateError> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"-_".contains(&byte)
        });
    if !valid {
        return Err(TemplateError::Name(name.to_owned()));
    }
    let root = dir.join(name);
    if root.exists() {
        return Err(TemplateError::Exists(root));
    }
    let lib = name.replace('-', "_");
    for (path, text) in FILES {
        let path = root.join(path);
        let io = |source| TemplateError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let text = text.replace("{{name}}", name).replace("{{lib}}", &lib);
        std::fs::write(&path, text).map_err(io)?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_crate_once_and_refuses_bad_names() {
        let dir = std::env::temp_dir().join(format!("moat-template-{}", std::process::id()));
        let root = new_plugin("my-plugin", &dir).unwrap();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"my-plugin\""), "{manifest}");
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        assert!(readme.contains("release/my_plugin.wasm"), "{readme}");
        assert!(root.join("moat-plugin-abi/src/lib.rs").is_file());
        assert!(matches!(
            new_plugin("my-plugin", &dir),
            Err(TemplateError::Exists(_))
        ));
        for bad in ["", "My", "../x", "1st", "a b"] {
            assert!(
                matches!(new_plugin(bad, &dir), Err(TemplateError::Name(_))),
                "{bad}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
