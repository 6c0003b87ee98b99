//! Blobs in SQLite: metadata rows and fixed-size chunks.

use super::*;

#[async_trait]
impl BlobStore for SqliteStore {
    async fn put_blob(&self, meta: BlobMeta, bytes: Bytes) -> StoreResult<()> {
        self.write(move |tx| {
            if let Some(room) = &meta.room_id {
                require_room(tx, room.as_str())?;
            }
            tx.execute(
                &format!("INSERT INTO blobs ({BLOB_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    meta.id.as_str(),
                    meta.kind.as_str(),
                    meta.content_type,
                    bytes.len() as i64,
                    meta.room_id.as_ref().map(|r| r.as_str()),
                    to_millis(meta.created_at)
                ],
            )
            .map_err(map_write)?;
            let mut stmt = tx
                .prepare("INSERT INTO blob_chunks (blob_id, n, data) VALUES (?1, ?2, ?3)")
                .map_err(backend)?;
            for (n, chunk) in bytes.chunks(BLOB_CHUNK_SIZE).enumerate() {
                stmt.execute(params![meta.id.as_str(), n as i64, chunk])
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn get_blob_meta(&self, id: &FileId) -> StoreResult<Option<BlobMeta>> {
        let id = id.to_string();
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {BLOB_COLS} FROM blobs WHERE id = ?1"),
                [&id],
                blob_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn read_blob(&self, id: &FileId, range: Range<u64>) -> StoreResult<ByteStream> {
        let meta = self.get_blob_meta(id).await?.ok_or(StoreError::NotFound)?;
        let plan = crate::store::ChunkPlan::new(range, meta.len, BLOB_CHUNK_SIZE as u64)?;
        let store = self.clone();
        let id = id.to_string();
        // One chunk per step, each its own short trip to the blocking pool, so a slow
        // client never holds the connection and memory stays at one chunk.
        let stream = futures::stream::try_unfold(plan, move |mut plan| {
            let store = store.clone();
            let id = id.clone();
            async move {
                let Some((n, slice)) = plan.next_chunk() else {
                    return Ok(None);
                };
                let data = store
                    .run(move |conn| {
                        conn.query_row(
                            "SELECT substr(data, ?3, ?4) FROM blob_chunks WHERE blob_id = ?1 AND n = ?2",
                            params![id, n as i64, slice.start as i64 + 1, (slice.end - slice.start) as i64],
                            |r| r.get::<_, Vec<u8>>(0),
                        )
                        .optional()
                        .map_err(backend)
                    })
                    .await?
                    // Deleted while being streamed.
                    .ok_or(StoreError::NotFound)?;
                if data.len() as u64 != slice.end - slice.start {
                    return Err(StoreError::Backend(format!(
                        "blob chunk {n} is shorter than its recorded length"
                    )));
                }
                Ok(Some((Bytes::from(data), plan)))
            }
        });
        Ok(Box::pin(stream))
    }

    async fn delete_blob(&self, id: &FileId) -> StoreResult<bool> {
        let id = id.to_string();
        self.run(move |conn| delete_blob_conn(conn, &id)).await
    }
}
