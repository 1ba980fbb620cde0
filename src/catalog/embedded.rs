//! Embedded catalog: one redb file under VM_BASE_DIR. Every write is one ACID
//! transaction, so a read-modify-write inside it cannot lose another task's update.
use super::{decode, encode, Catalog, CatalogError, Mutator, Result};
use crate::model::{now, VmRecord};
use futures::future::BoxFuture;
use futures::FutureExt;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;

const VMS: TableDefinition<&str, &[u8]> = TableDefinition::new("vms");

pub struct EmbeddedCatalog {
    db: Arc<Database>,
}

fn io<E: std::fmt::Display>(e: E) -> CatalogError {
    CatalogError::Io(e.to_string())
}

impl EmbeddedCatalog {
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(|e| CatalogError::Io(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(io)?;
        tx.open_table(VMS).map_err(io)?;
        tx.commit().map_err(io)?;
        Ok(EmbeddedCatalog { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Database) -> Result<T> + Send + 'static) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(io)?
    }
}

impl Catalog for EmbeddedCatalog {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<VmRecord>>> {
        let id = id.to_string();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(io)?;
            let t = tx.open_table(VMS).map_err(io)?;
            match t.get(id.as_str()).map_err(io)? {
                Some(v) => Ok(Some(decode(&id, v.value())?)),
                None => Ok(None),
            }
        })
        .boxed()
    }

    fn get_many<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<VmRecord>>> {
        let ids = ids.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(io)?;
            let t = tx.open_table(VMS).map_err(io)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(v) = t.get(id.as_str()).map_err(io)? {
                    out.push(decode(id, v.value())?);
                }
            }
            Ok(out)
        })
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VmRecord>>> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(io)?;
            let t = tx.open_table(VMS).map_err(io)?;
            let mut out = Vec::new();
            for item in t.iter().map_err(io)? {
                let (k, v) = item.map_err(io)?;
                match decode(k.value(), v.value()) {
                    Ok(r) => out.push(r),
                    Err(e) => tracing::warn!(error = %e, "skipping unreadable catalog record"),
                }
            }
            Ok(out)
        })
        .boxed()
    }

    fn put(&self, mut rec: VmRecord) -> BoxFuture<'_, Result<()>> {
        self.blocking(move |db| {
            rec.updated_at = now();
            let tx = db.begin_write().map_err(io)?;
            {
                let mut t = tx.open_table(VMS).map_err(io)?;
                t.insert(rec.id.as_str(), encode(&rec).as_slice()).map_err(io)?;
            }
            tx.commit().map_err(io)
        })
        .boxed()
    }

    fn update<'a>(&'a self, id: &'a str, f: Mutator) -> BoxFuture<'a, Result<Option<VmRecord>>> {
        let id = id.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(io)?;
            let rec = {
                let mut t = tx.open_table(VMS).map_err(io)?;
                let current = match t.get(id.as_str()).map_err(io)? {
                    Some(v) => decode(&id, v.value())?,
                    None => return Ok(None),
                };
                let mut rec = current;
                f(&mut rec);
                rec.updated_at = now();
                t.insert(id.as_str(), encode(&rec).as_slice()).map_err(io)?;
                rec
            };
            tx.commit().map_err(io)?;
            Ok(Some(rec))
        })
        .boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        let id = id.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(io)?;
            {
                let mut t = tx.open_table(VMS).map_err(io)?;
                t.remove(id.as_str()).map_err(io)?;
            }
            tx.commit().map_err(io)
        })
        .boxed()
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}
