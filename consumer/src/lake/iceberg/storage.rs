//! iceberg-rust's file access (table metadata, manifest lists, manifests)
//! for a table on S3, through shardlake's own S3 client: the credential
//! chain, endpoint, time limits and retries of the rest of the worker,
//! instead of a second S3 stack (iceberg-rust's default, OpenDAL) set up
//! apart from them. The data files are shardlake's own uploads.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig, StorageFactory};
use iceberg::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use shardlake::store::{ObjectStore, S3Options, S3Store};

/// Files at `s3://bucket/key` paths. (iceberg-rust requires a storage to
/// be serializable, to ship it to other processes; shardlake never does,
/// and a deserialized one answers every call with an error.)
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct S3TableFiles {
    /// The table's store; a path's bucket gets one like it (the same
    /// client and settings, rooted at the bucket).
    #[serde(skip)]
    s3: Option<S3Store>,
}

impl S3TableFiles {
    /// Files of the table at `location` (`s3://...`), read and written with
    /// the shared AWS config and `options`.
    pub async fn new(location: &str, options: &S3Options) -> std::result::Result<Self, String> {
        match ObjectStore::open(location, options).await.map_err(|e| e.to_string())? {
            ObjectStore::S3(table) => Ok(S3TableFiles { s3: Some(table) }),
            ObjectStore::File(_) => Err(format!("{location} is not on S3")),
        }
    }

    /// The bucket's store and the key of `path`.
    fn locate(&self, path: &str) -> Result<(ObjectStore, String)> {
        let s3 = self.s3.as_ref().ok_or_else(|| {
            Error::new(ErrorKind::Unexpected, "shardlake's S3 table files cannot be used after deserialization")
        })?;
        let (bucket, key) = path
            .strip_prefix("s3://")
            .or_else(|| path.strip_prefix("s3a://"))
            .and_then(|rest| rest.split_once('/'))
            .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
            .ok_or_else(|| Error::new(ErrorKind::DataInvalid, format!("`{path}` is not an s3://BUCKET/KEY path")))?;
        Ok((ObjectStore::S3(s3.at_bucket(bucket)), key.to_string()))
    }
}

/// A store error as iceberg-rust's, its one line kept.
fn failed(e: shardlake::Error) -> Error {
    Error::new(ErrorKind::Unexpected, e.to_string())
}

#[async_trait]
#[typetag::serde]
impl Storage for S3TableFiles {
    async fn exists(&self, path: &str) -> Result<bool> {
        let (store, key) = self.locate(path)?;
        Ok(store.head(&key).await.map_err(failed)?.is_some())
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        let (store, key) = self.locate(path)?;
        match store.head(&key).await.map_err(failed)? {
            Some(size) => Ok(FileMetadata { size }),
            None => Err(Error::new(ErrorKind::DataInvalid, format!("{path}: no such object"))),
        }
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        let (store, key) = self.locate(path)?;
        Ok(Bytes::from(store.get(&key).await.map_err(failed)?))
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        let (store, key) = self.locate(path)?;
        Ok(Box::new(RangeReader { store, key }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        let (store, key) = self.locate(path)?;
        store.put(&key, bs.to_vec()).await.map_err(failed)
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        let (store, key) = self.locate(path)?;
        Ok(Box::new(BufferedWriter { store, key, buffer: Some(Vec::new()) }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let (store, key) = self.locate(path)?;
        store.delete(&key).await.map_err(failed)
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        let (store, prefix) = self.locate(path)?;
        let prefix = shardlake::store::folder_prefix(&prefix);
        for key in store.list(&prefix).await.map_err(failed)? {
            store.delete(&key).await.map_err(failed)?;
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Ranged reads of one object.
#[derive(Debug)]
struct RangeReader {
    store: ObjectStore,
    key: String,
}

#[async_trait]
impl FileRead for RangeReader {
    async fn read(&self, range: Range<u64>) -> Result<Bytes> {
        Ok(Bytes::from(self.store.get_range(&self.key, range).await.map_err(failed)?))
    }
}

/// A metadata file or manifest (kilobytes to a few megabytes), put whole
/// on close, so a reader never sees part of one.
#[derive(Debug)]
struct BufferedWriter {
    store: ObjectStore,
    key: String,
    buffer: Option<Vec<u8>>,
}

#[async_trait]
impl FileWrite for BufferedWriter {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        let buffer = self.buffer.as_mut().ok_or_else(|| Error::new(ErrorKind::DataInvalid, "write after close"))?;
        buffer.extend_from_slice(&bs);
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        let buffer = self.buffer.take().ok_or_else(|| Error::new(ErrorKind::DataInvalid, "closed twice"))?;
        self.store.put(&self.key, buffer).await.map_err(failed)
    }
}

/// Builds [`S3TableFiles`] for a catalog.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct S3TableFilesFactory {
    #[serde(skip)]
    files: S3TableFiles,
}

impl S3TableFilesFactory {
    /// A factory handing out `files`.
    pub fn new(files: S3TableFiles) -> Self {
        S3TableFilesFactory { files }
    }
}

#[typetag::serde]
impl StorageFactory for S3TableFilesFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(self.files.clone()))
    }
}
