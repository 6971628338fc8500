//! Local directory store: write to a hidden temp name, fsync, rename, fsync
//! the directory, so a reader or a crash never leaves half a file visible.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A local directory holding lake objects.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

fn store_err(op: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Store { op, url: format!("file://{}", path.display()), message: e.to_string() }
}

impl FileStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        FileStore { root }
    }

    /// `file://` URL of a key.
    pub fn url(&self, key: &str) -> String {
        format!("file://{}", self.root.join(key).display())
    }

    /// Atomically writes `data` at `key`.
    pub async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let path = self.root.join(key);
        tokio::task::spawn_blocking(move || write_atomic(&path, &data)).await.expect("file write task panicked")
    }

    /// Writes `data` at `key` unless an object is there: `false` when one
    /// was. Atomic between processes (a hard link fails on an existing
    /// name), so of writers racing on one key exactly one wins.
    pub async fn put_new(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        let path = self.root.join(key);
        tokio::task::spawn_blocking(move || write_new(&path, &data)).await.expect("file write task panicked")
    }

    /// The folder objects are kept in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads the object at `key`.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.root.join(key);
        tokio::fs::read(&path).await.map_err(|e| store_err("get", &path, e))
    }

    /// Whether an object exists at `key`.
    pub fn exists(&self, key: &str) -> bool {
        self.root.join(key).is_file()
    }

    /// Keys under the root starting with `prefix`, sorted; temp files are skipped.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &root, &mut out)?;
            out.retain(|k| k.starts_with(&prefix));
            out.sort();
            Ok(out)
        })
        .await
        .expect("file list task panicked")
    }
}

impl FileStore {
    /// The size of the object at `key`, or `None` when there is none.
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = self.root.join(key);
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(store_err("head", &path, e)),
        }
    }

    /// Bytes `range` of the object at `key`.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        use std::io::{Read, Seek};
        let path = self.root.join(key);
        tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(&path).map_err(|e| store_err("get", &path, e))?;
            file.seek(std::io::SeekFrom::Start(range.start)).map_err(|e| store_err("get", &path, e))?;
            let mut out = vec![0; range.end.saturating_sub(range.start) as usize];
            file.read_exact(&mut out).map_err(|e| store_err("get", &path, e))?;
            Ok(out)
        })
        .await
        .expect("file read task panicked")
    }

    /// Deletes the object at `key` (none there is no error).
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = self.root.join(key);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(store_err("delete", &path, e)),
            _ => Ok(()),
        }
    }

    /// [`FileStore::list`] with each object's size and last change.
    pub async fn list_info(&self, prefix: &str) -> Result<Vec<super::ObjectInfo>> {
        let mut out = Vec::new();
        for key in self.list(prefix).await? {
            let path = self.root.join(&key);
            // Deleted since the listing: not there.
            let Ok(meta) = tokio::fs::metadata(&path).await else { continue };
            let modified = meta.modified().map_err(|e| store_err("list", &path, e))?;
            out.push(super::ObjectInfo { key, size: meta.len(), modified });
        }
        Ok(out)
    }

    /// The start-up probe: writes `key` as every lake file is written
    /// (temp file, fsync, rename), deletes it and the folders it made, and
    /// reads the root's listing when `list`.
    pub async fn probe(&self, key: &str, list: bool) -> std::result::Result<(), super::ProbeError> {
        let (root, path) = (self.root.clone(), self.root.join(key));
        let url = self.url(key);
        tokio::task::spawn_blocking(move || {
            let fail = |step, message: String| super::ProbeError {
                step,
                url: url.clone(),
                code: None,
                message,
                transient: false,
            };
            let made_root = !root.exists();
            write_atomic(&path, super::PROBE_BODY).map_err(|e| fail("put", e.to_string()))?;
            std::fs::remove_file(&path).map_err(|e| fail("delete", format!("delete {}: {e}", path.display())))?;
            // The probe's folders go too (they are empty unless another
            // worker probes at the same moment, which keeps them).
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| *d != root) {
                if std::fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            if list {
                std::fs::read_dir(&root).map_err(|e| fail("list", format!("list {}: {e}", root.display())))?;
            }
            if made_root {
                // Left as it was: the first write makes it again.
                let _ = std::fs::remove_dir(&root);
            }
            Ok(())
        })
        .await
        .expect("file probe task panicked")
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(store_err("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| store_err("list", dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        if is_temp_name(&name.to_string_lossy()) {
            continue;
        }
        if entry.file_type().map_err(|e| store_err("list", &path, e))?.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/"));
        }
    }
    Ok(())
}

fn temp_name(name: &str) -> String {
    format!(".{name}.tmp")
}

fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().expect("keys have a parent directory");
    std::fs::create_dir_all(dir).map_err(|e| store_err("put", dir, e))?;
    let name = path.file_name().expect("keys name a file").to_string_lossy();
    // A hidden name that does not end in `.parquet`, so no reader (DuckDB
    // globs dot files) ever sees a half-written or crash-orphaned file. It is
    // fixed per key, so the retry or replay that rewrites the key replaces it.
    let tmp = dir.join(temp_name(&name));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself must survive a crash too.
        std::fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        store_err("put", path, e)
    })
}

fn write_new(path: &Path, data: &[u8]) -> Result<bool> {
    let dir = path.parent().expect("keys have a parent directory");
    std::fs::create_dir_all(dir).map_err(|e| store_err("put", dir, e))?;
    let name = path.file_name().expect("keys name a file").to_string_lossy();
    // A temp name of this writer's own: racing writers never share it.
    let unique = format!("{}.{}.{}", std::process::id(), rand::random::<u64>(), name);
    let tmp = dir.join(temp_name(&unique));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        let linked = match std::fs::hard_link(&tmp, path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        std::fs::remove_file(&tmp)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(linked)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        store_err("put", path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path().join("lake"));
        s.put("a=1/x.parquet", b"one".to_vec()).await.unwrap();
        s.put("a=1/x.parquet", b"two".to_vec()).await.unwrap();
        s.put("b/y.jsonl", b"y".to_vec()).await.unwrap();
        assert_eq!(s.get("a=1/x.parquet").await.unwrap(), b"two");
        assert_eq!(s.list("").await.unwrap(), ["a=1/x.parquet", "b/y.jsonl"]);
        assert_eq!(s.list("b/").await.unwrap(), ["b/y.jsonl"]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("lake/a=1")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
        // A crash-orphaned temp file is hidden from listings and replaced by the next write.
        std::fs::write(dir.path().join("lake/a=1").join(temp_name("z.parquet")), b"half").unwrap();
        assert_eq!(s.list("a=1/").await.unwrap(), ["a=1/x.parquet"]);
        s.put("a=1/z.parquet", b"whole".to_vec()).await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("lake/a=1")).unwrap().count(), 2);
    }

    #[tokio::test]
    async fn of_writers_racing_on_a_new_key_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path().join("cp"));
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..8 {
            let s = s.clone();
            writes.spawn(async move { (i, s.put_new("schema-v2.toml", format!("w{i}").into_bytes()).await.unwrap()) });
        }
        let mut won = writes.join_all().await;
        won.sort();
        let won: Vec<bool> = won.into_iter().map(|(_, w)| w).collect();
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        let winner = won.iter().position(|w| *w).unwrap();
        assert_eq!(s.get("schema-v2.toml").await.unwrap(), format!("w{winner}").into_bytes());
        assert_eq!(s.list("").await.unwrap(), ["schema-v2.toml"], "no temp file left behind");
    }

    #[tokio::test]
    async fn the_probe_writes_deletes_and_leaves_the_folder_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path().join("lake"));
        s.probe("_probe/1", true).await.unwrap();
        assert!(!dir.path().join("lake").exists(), "a folder the probe made is removed again");
        s.put("a/x.parquet", b"x".to_vec()).await.unwrap();
        s.probe("_probe/2", true).await.unwrap();
        assert_eq!(s.list("").await.unwrap(), ["a/x.parquet"]);
        assert!(!dir.path().join("lake/_probe").exists());
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let err = FileStore::new(dir.path().join("file")).probe("_probe/3", false).await.unwrap_err();
        assert_eq!((err.step, err.transient), ("put", false));
    }

    #[tokio::test]
    async fn put_into_unwritable_root_says_where() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let s = FileStore::new(dir.path().join("file"));
        let err = s.put("x/y", b"z".to_vec()).await.unwrap_err().to_string();
        assert!(err.starts_with("put file://") && err.contains("file/x"), "{err}");
    }
}
