//! Blobs in MongoDB GridFS buckets.

use super::*;

#[async_trait]
impl BlobStore for MongoStore {
    async fn put_blob(&self, meta: BlobMeta, bytes: Bytes) -> StoreResult<()> {
        self.ensure_ready().await?;
        let oid = file_oid(&meta.id).ok_or_else(|| {
            StoreError::Backend(format!(
                "file id {:?} is not 24 lowercase hex digits",
                meta.id.as_str()
            ))
        })?;
        if let Some(room) = &meta.room_id
            && !self.room_exists(room.as_str()).await?
        {
            return Err(StoreError::NotFound);
        }
        // The driver cleans up a failed upload by deleting every chunk with this id,
        // which would destroy an existing file's bytes: refuse a taken id up front.
        if self.find_file(&meta.id).await?.is_some() {
            return Err(StoreError::Conflict);
        }
        let metadata = mongodb::bson::to_document(&BlobMetadata {
            room_id: meta.room_id.clone(),
            content_type: Some(meta.content_type.clone()),
            kind: Some(meta.kind),
            created_at: Some(meta.created_at),
        })
        .map_err(|e| StoreError::Backend(format!("mongodb: file metadata: {e}")))?;
        let mut upload = self
            .bucket(meta.kind)
            .open_upload_stream(meta.id.as_str())
            .id(Bson::ObjectId(oid))
            .metadata(metadata)
            .await
            .map_err(backend)?;
        let written = async {
            upload.write_all(&bytes).await?;
            upload.close().await
        }
        .await;
        if let Err(e) = written {
            // A duplicate key here means another upload took the id between the check
            // and now.
            let duplicate = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<mongodb::error::Error>())
                .is_some_and(|me| error_code(me) == Some(DUPLICATE_KEY));
            return Err(if duplicate {
                StoreError::Conflict
            } else {
                StoreError::Backend(format!("mongodb: gridfs upload: {e}"))
            });
        }
        Ok(())
    }

    async fn get_blob_meta(&self, id: &FileId) -> StoreResult<Option<BlobMeta>> {
        self.ensure_ready().await?;
        match self.find_file(id).await? {
            Some((kind, f)) => Ok(Some(blob_from(kind, &f)?)),
            None => Ok(None),
        }
    }

    async fn read_blob(&self, id: &FileId, range: Range<u64>) -> StoreResult<ByteStream> {
        self.ensure_ready().await?;
        let (kind, file) = self.find_file(id).await?.ok_or(StoreError::NotFound)?;
        let chunk_size = u64::from(file.chunk_size_bytes);
        let plan = ChunkPlan::new(range.clone(), file.length, chunk_size)?;
        if range.is_empty() {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let first = range.start / chunk_size;
        let last = (range.end - 1) / chunk_size;
        // One cursor over exactly the chunks the range touches, fetched a couple at a
        // time: memory stays at a few chunks however large the file.
        let cursor = self
            .chunks(kind)
            .find(doc! {
                "files_id": file.id.clone(),
                "n": { "$gte": first as i64, "$lte": last as i64 },
            })
            .sort(doc! { "n": 1 })
            .batch_size(CHUNK_BATCH)
            .await
            .map_err(backend)?;
        let stream =
            futures::stream::try_unfold((cursor, plan), |(mut cursor, mut plan)| async move {
                let Some((n, slice)) = plan.next_chunk() else {
                    return Ok(None);
                };
                let chunk = cursor
                    .try_next()
                    .await
                    .map_err(backend)?
                    .ok_or_else(|| StoreError::Backend(format!("gridfs chunk {n} missing")))?;
                if u64::try_from(chunk.n).ok() != Some(n) {
                    return Err(StoreError::Backend(format!("gridfs chunk {n} missing")));
                }
                let data = chunk.into_bytes()?;
                let part = data
                    .get(slice.start as usize..slice.end as usize)
                    .ok_or_else(|| StoreError::Backend(format!("gridfs chunk {n} is too short")))?;
                Ok(Some((Bytes::copy_from_slice(part), (cursor, plan))))
            });
        Ok(Box::pin(stream))
    }

    async fn delete_blob(&self, id: &FileId) -> StoreResult<bool> {
        self.ensure_ready().await?;
        match self.find_file(id).await? {
            Some((kind, f)) => self.delete_file(kind, f.id).await,
            None => Ok(false),
        }
    }
}
