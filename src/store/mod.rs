//! Where lake files go: a local folder (`file:///dir`, or a plain path) or an
//! S3 prefix (`s3://bucket/prefix/`). Readers never see half an object: the
//! file store renames a fsynced temp file into place, S3 makes an object
//! visible only when its PUT or multipart upload completes.

pub mod file;
mod s3;

pub use file::FileStore;
pub use s3::{S3Options, S3Store};

use crate::error::{Error, Result};

/// A parsed destination or source URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    File(std::path::PathBuf),
    /// An S3 bucket and key prefix (empty, or ending in `/` when given so).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix.
        prefix: String,
    },
}

impl Location {
    /// The bytes this location adds in front of every key that count
    /// against [`MAX_KEY_BYTES`]: an S3 prefix (a folder's own path is not
    /// part of the key).
    pub fn key_prefix_bytes(&self) -> usize {
        match self {
            Location::File(_) => 0,
            Location::S3 { prefix, .. } => prefix.len() + usize::from(!prefix.is_empty() && !prefix.ends_with('/')),
        }
    }

    /// Parses `file:///abs/dir`, `s3://bucket/prefix/`, or a plain local path.
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(fix) = scheme_mistake(url, &["s3", "file"]) {
            return Err(Error::Config(format!(
                "`{url}` looks like a URL with a mistyped scheme: {fix} (for a local folder whose name has a colon, \
                 write ./{url})"
            )));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Config(format!("`{url}` has no bucket; write s3://bucket/prefix/")));
            }
            return Ok(Location::S3 { bucket: bucket.to_string(), prefix: prefix.to_string() });
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if rest.is_empty() {
                return Err(Error::Config(format!("`{url}` has no path; write file:///absolute/dir")));
            }
            return Ok(Location::File(rest.into()));
        }
        if url.contains("://") {
            return Err(Error::Config(format!("`{url}`: only file:// and s3:// locations are supported")));
        }
        if url.is_empty() {
            return Err(Error::Config("empty location; give a directory, file:///dir or s3://bucket/prefix/".into()));
        }
        Ok(Location::File(url.into()))
    }
}

/// A key prefix as a folder: no leading `/`, one trailing `/` (or empty).
pub fn folder_prefix(prefix: &str) -> String {
    let mut out = prefix.trim_start_matches('/').to_string();
    if !out.is_empty() && !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// Why `url` starts like a URL of none of the `known` schemes, with the fix:
/// a known scheme in another case (`S3://b`), with one slash (`s3:/b`,
/// `dynamodb:/table`), or an unknown scheme with `//` (`gs://b`). `None`
/// for a known URL and for a plain path (even one with a colon, like
/// `data:2026`), which is taken as it is.
pub fn scheme_mistake(url: &str, known: &[&str]) -> Option<String> {
    let (scheme, rest) = url.split_once(':')?;
    let b = scheme.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphabetic() || !b.iter().all(|c| c.is_ascii_alphanumeric() || b"+.-".contains(c))
    {
        return None;
    }
    if known.contains(&scheme) && rest.starts_with("//") {
        return None;
    }
    let schemes = known.iter().map(|k| format!("{k}://")).collect::<Vec<_>>().join(" or ");
    match known.iter().find(|k| k.eq_ignore_ascii_case(scheme)) {
        Some(&"file") => Some(format!("write file:///{}", rest.trim_start_matches('/'))),
        Some(k) => Some(format!("write {k}://{}", rest.trim_start_matches('/'))),
        None if rest.starts_with("//") => Some(format!("`{scheme}://` is not supported here; use {schemes}")),
        None => None,
    }
}

/// The longest file or directory name of common local filesystems (ext4,
/// XFS, APFS, NTFS): no level of a key may be longer, so that a lake can be
/// written to, or copied to, a folder.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// The longest S3 object key, prefix included.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why `key` (with the destination prefix, for S3) cannot be stored: a level
/// longer than [`MAX_SEGMENT_BYTES`] or the whole longer than [`MAX_KEY_BYTES`].
pub fn key_length_problem(key: &str) -> Option<String> {
    if let Some(long) = key.split('/').find(|s| s.len() > MAX_SEGMENT_BYTES) {
        let start: String = long.chars().take(40).collect();
        return Some(format!(
            "level `{start}...` is {} bytes, over the {MAX_SEGMENT_BYTES}-byte limit of file names",
            long.len()
        ));
    }
    (key.len() > MAX_KEY_BYTES)
        .then(|| format!("key is {} bytes, over S3's {MAX_KEY_BYTES}-byte limit for object keys", key.len()))
}

/// Rejects keys that could leave the store's root, confuse readers, or
/// exceed the stores' length limits.
pub fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\\')
        || key.chars().any(char::is_control)
        || key.split('/').any(|s| s == "." || s == "..");
    if bad {
        return Err(Error::Store { op: "put", url: key.to_string(), message: "unsafe object key".into() });
    }
    if let Some(why) = key_length_problem(key) {
        return Err(Error::Store { op: "put", url: key.to_string(), message: why });
    }
    Ok(())
}

/// Shown each failed attempt of a store call that is retried (the call's
/// own result comes after), so that a caller counts and reports failures as
/// they happen instead of after the store's retries ran out.
pub type Retried<'a> = &'a (dyn Fn(&Error) + Sync);

/// What the probe objects of [`ObjectStore::probe`] hold.
const PROBE_BODY: &[u8] = b"shardlake start-up check; deleted at once, safe to delete\n";

/// Why a store failed [`ObjectStore::probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    /// The step that failed: `put`, `delete` or `list`.
    pub step: &'static str,
    /// The probe object's URL.
    pub url: String,
    /// The service's error code (`NoSuchBucket`, `AccessDenied`), if any.
    pub code: Option<String>,
    /// What failed, on one line.
    pub message: String,
    /// Worth retrying (a throttle, a 5xx, a timeout, a lost connection).
    pub transient: bool,
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.step, self.url, self.message)
    }
}

/// A stored object: its key (relative to the store root), size and last
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key under the store root.
    pub key: String,
    /// Bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: std::time::SystemTime,
}

/// A destination for lake objects.
#[derive(Debug, Clone)]
pub enum ObjectStore {
    /// Local directory.
    File(FileStore),
    /// S3 (or an S3-compatible endpoint).
    S3(S3Store),
}

impl ObjectStore {
    /// Opens the store at `url`; S3 clients come from the shared AWS config.
    pub async fn open(url: &str, s3: &S3Options) -> Result<Self> {
        Ok(match Location::parse(url)? {
            Location::File(dir) => ObjectStore::File(FileStore::new(dir)),
            Location::S3 { bucket, prefix } => {
                let config = crate::aws::sdk_config().await;
                // A store's URL names a folder: `s3://b/lake` holds `lake/…`, not `lake…`.
                let prefix = folder_prefix(&prefix);
                ObjectStore::S3(S3Store::new(
                    crate::aws::s3_client_with(&config, &s3.timeouts),
                    bucket,
                    prefix,
                    s3.clone(),
                ))
            }
        })
    }

    /// Writes an object atomically, replacing any object at `key`.
    pub async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        self.put_watched(key, data, &|_| {}).await
    }

    /// [`ObjectStore::put`] that shows each failed attempt it retries to
    /// `retried` as it happens.
    pub async fn put_watched(&self, key: &str, data: Vec<u8>, retried: Retried<'_>) -> Result<()> {
        check_key(key)?;
        match self {
            ObjectStore::File(s) => s.put(key, data).await,
            ObjectStore::S3(s) => s.put(key, data, retried).await,
        }
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        match self {
            ObjectStore::File(s) => s.get(key).await,
            ObjectStore::S3(s) => s.get(key).await,
        }
    }

    /// Keys (relative to the store root) that start with `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        match self {
            ObjectStore::File(s) => s.list(prefix).await,
            ObjectStore::S3(s) => s.list(prefix).await,
        }
    }

    /// The size of the object at `key`, or `None` when there is none.
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        match self {
            ObjectStore::File(s) => s.head(key).await,
            ObjectStore::S3(s) => s.head(key).await,
        }
    }

    /// Bytes `range` of the object at `key`.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        match self {
            ObjectStore::File(s) => s.get_range(key, range).await,
            ObjectStore::S3(s) => s.get_range(key, range).await,
        }
    }

    /// Deletes the object at `key`; none there is no error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self {
            ObjectStore::File(s) => s.delete(key).await,
            ObjectStore::S3(s) => s.remove(key).await,
        }
    }

    /// [`ObjectStore::list`] with each object's size and last change.
    pub async fn list_info(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        match self {
            ObjectStore::File(s) => s.list_info(prefix).await,
            ObjectStore::S3(s) => s.list_info(prefix).await,
        }
    }

    /// Checks at start that the store takes a write, a delete and (when
    /// `list`) a listing, by writing and deleting a small object at `key`;
    /// one attempt of each call, no retries. See [`ProbeError`].
    pub async fn probe(&self, key: &str, list: bool) -> std::result::Result<(), ProbeError> {
        check_key(key).map_err(|e| ProbeError {
            step: "put",
            url: self.url(key),
            code: None,
            message: e.to_string(),
            transient: false,
        })?;
        match self {
            ObjectStore::File(s) => s.probe(key, list).await,
            ObjectStore::S3(s) => s.probe(key, list).await,
        }
    }

    /// The full URL of `key`, for messages.
    pub fn url(&self, key: &str) -> String {
        match self {
            ObjectStore::File(s) => s.url(key),
            ObjectStore::S3(s) => s.url(key),
        }
    }
}

#[cfg(test)]
mod scheme_tests {
    use super::*;

    #[test]
    fn mistyped_schemes_are_refused_with_the_fix() {
        let known = ["s3", "file"];
        assert_eq!(scheme_mistake("s3:/bucket/lake", &known).as_deref(), Some("write s3://bucket/lake"));
        assert_eq!(scheme_mistake("S3://bucket", &known).as_deref(), Some("write s3://bucket"));
        assert_eq!(scheme_mistake("file:/tmp/x", &known).as_deref(), Some("write file:///tmp/x"));
        assert!(scheme_mistake("gs://bucket", &known).unwrap().contains("use s3:// or file://"));
        for fine in ["s3://b/p", "file:///tmp/x", "./lake", "lake", "/abs/lake", "data:2026", "./s3:/bucket"] {
            assert_eq!(scheme_mistake(fine, &known), None, "{fine}");
        }
        let err = Location::parse("s3:/bucket").unwrap_err().to_string();
        assert!(err.contains("write s3://bucket") && err.contains("./s3:/bucket"), "{err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert_eq!(Location::parse("s3://b/p/q/").unwrap(), Location::S3 { bucket: "b".into(), prefix: "p/q/".into() });
        assert_eq!(Location::parse("s3://b").unwrap(), Location::S3 { bucket: "b".into(), prefix: String::new() });
    }

    #[tokio::test]
    async fn an_s3_store_url_names_a_folder_with_or_without_its_slash() {
        for url in ["s3://b/lake", "s3://b/lake/"] {
            let store = ObjectStore::open(url, &S3Options::default()).await.unwrap();
            assert_eq!(store.url("year=2026/a.parquet"), "s3://b/lake/year=2026/a.parquet");
        }
        let root = ObjectStore::open("s3://b", &S3Options::default()).await.unwrap();
        assert_eq!(root.url("a.parquet"), "s3://b/a.parquet");
        assert_eq!(Location::parse("file:///tmp/x").unwrap(), Location::File("/tmp/x".into()));
        assert_eq!(Location::parse("./lake").unwrap(), Location::File("./lake".into()));
        assert!(Location::parse("gs://x").unwrap_err().to_string().contains("use s3:// or file://"));
        assert!(Location::parse("s3:///x").is_err());
    }

    #[test]
    fn rejects_unsafe_keys() {
        for k in ["", "/abs", "a/../b", "./a", "a\\b", "a\nb"] {
            assert!(check_key(k).is_err(), "{k:?}");
        }
        assert!(check_key("year=2024/x-1-2.snappy.parquet").is_ok());
        let long = "x".repeat(MAX_SEGMENT_BYTES + 1);
        assert!(check_key(&format!("a={long}/f.parquet")).unwrap_err().to_string().contains("258 bytes"));
        assert!(check_key(&format!("a={}/f", "x".repeat(MAX_SEGMENT_BYTES - 2))).is_ok());
        let deep = "y/".repeat(MAX_KEY_BYTES / 2) + "f";
        assert!(check_key(&deep).unwrap_err().to_string().contains("1024-byte"));
    }
}
