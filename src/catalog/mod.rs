//! The VM catalog: one trait, two stores — an embedded redb file (default) and Redis
//! (the original's key layout, so a node can take over a Redis the original wrote).
use crate::model::VmRecord;
use futures::future::BoxFuture;

pub mod embedded;
pub mod link;
pub mod redis;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog unavailable: {0}")]
    Unavailable(String),
    #[error("catalog record for {id} is corrupt: {source}")]
    Corrupt { id: String, source: serde_json::Error },
    #[error("catalog I/O: {0}")]
    Io(String),
}

pub type Result<T> = std::result::Result<T, CatalogError>;

/// A read-modify-write step applied atomically to one record.
pub type Mutator = Box<dyn FnOnce(&mut VmRecord) + Send>;

pub trait Catalog: Send + Sync {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<VmRecord>>>;
    /// Records for these ids, in the given order; unknown ids are skipped.
    fn get_many<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<VmRecord>>>;
    /// Every record, sorted by id.
    fn list(&self) -> BoxFuture<'_, Result<Vec<VmRecord>>>;
    /// Insert or replace a whole record (sets updated_at).
    fn put(&self, rec: VmRecord) -> BoxFuture<'_, Result<()>>;
    /// Apply `f` to the current record with no lost update against other writers of
    /// this service; returns the new record, or None when the id is unknown.
    fn update<'a>(&'a self, id: &'a str, f: Mutator) -> BoxFuture<'a, Result<Option<VmRecord>>>;
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    fn kind(&self) -> &'static str;
}

pub(crate) fn decode(id: &str, raw: &[u8]) -> Result<VmRecord> {
    serde_json::from_slice(raw).map_err(|source| CatalogError::Corrupt { id: id.to_string(), source })
}

pub(crate) fn encode(rec: &VmRecord) -> Vec<u8> {
    // Serializing a plain struct of strings and numbers cannot fail.
    serde_json::to_vec(rec).unwrap_or_default()
}
