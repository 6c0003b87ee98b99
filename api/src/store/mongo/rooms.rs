//! Rooms in MongoDB.

use super::*;

#[async_trait]
impl RoomStore for MongoStore {
    async fn create_room(&self, mut room: Room) -> StoreResult<()> {
        self.ensure_ready().await?;
        room.invited.sort();
        room.invited.dedup();
        self.rooms
            .insert_one(RoomDoc::from(room))
            .await
            .map_err(map_write)?;
        Ok(())
    }

    async fn get_room(&self, id: &RoomId) -> StoreResult<Option<Room>> {
        self.ensure_ready().await?;
        self.rooms
            .find_one(doc! { "_id": id.as_str() })
            .await
            .map_err(backend)
            .map(|d| d.map(Room::from))
    }

    async fn list_open_rooms(
        &self,
        after: Option<&RoomCursor>,
        limit: u32,
    ) -> StoreResult<Vec<Room>> {
        self.ensure_ready().await?;
        let open = RoomType::Open.as_str();
        let filter = match after {
            None => doc! { "roomType": open },
            Some(after) => {
                let at = to_bson(after.created_at);
                doc! {
                    "roomType": open,
                    "$or": [
                        { "createdAt": { "$lt": at } },
                        { "createdAt": at, "_id": { "$lt": after.id.as_str() } },
                    ],
                }
            }
        };
        let cursor = self
            .rooms
            .find(filter)
            .sort(doc! { "createdAt": -1, "_id": -1 })
            .limit(i64::from(limit))
            .await
            .map_err(backend)?;
        collect_docs(cursor).await
    }

    async fn update_room_topic(&self, id: &RoomId, topic: &str) -> StoreResult<Option<Room>> {
        self.ensure_ready().await?;
        self.rooms
            .find_one_and_update(
                doc! { "_id": id.as_str() },
                doc! { "$set": { "topic": topic } },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(backend)
            .map(|d| d.map(Room::from))
    }

    async fn add_room_invite(&self, id: &RoomId, user: &UserId) -> StoreResult<()> {
        self.ensure_ready().await?;
        let res = self
            .rooms
            .update_one(
                doc! { "_id": id.as_str() },
                doc! { "$addToSet": { "invited": user.as_str() } },
            )
            .await
            .map_err(backend)?;
        if res.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn set_invite_code(&self, id: &RoomId, code: Option<&str>) -> StoreResult<()> {
        self.ensure_ready().await?;
        let res = self
            .rooms
            .update_one(
                doc! { "_id": id.as_str() },
                doc! { "$set": { "inviteCode": code } },
            )
            .await
            .map_err(backend)?;
        if res.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn touch_room(&self, id: &RoomId, now: OffsetDateTime) -> StoreResult<()> {
        self.ensure_ready().await?;
        // $max: a late, out-of-order touch never moves the clock back.
        let res = self
            .rooms
            .update_one(
                doc! { "_id": id.as_str() },
                doc! { "$max": { "lastActivity": to_bson(now) } },
            )
            .await
            .map_err(backend)?;
        if res.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn delete_room(&self, id: &RoomId) -> StoreResult<bool> {
        self.ensure_ready().await?;
        // Room first: from then on its content is an orphan the sweeper would also find.
        let res = self
            .rooms
            .delete_one(doc! { "_id": id.as_str() })
            .await
            .map_err(backend)?;
        self.delete_room_content(&[id.to_string()]).await?;
        Ok(res.deleted_count == 1)
    }

    async fn expire_rooms(&self, cutoff: OffsetDateTime) -> StoreResult<u64> {
        self.ensure_ready().await?;
        let res = self
            .rooms
            .delete_many(doc! { "lastActivity": { "$lt": to_bson(cutoff) } })
            .await
            .map_err(backend)?;
        // Whatever those rooms (or the TTL index, or an interrupted delete) left behind.
        let mut orphans = self.orphaned_rooms(&self.messages, "roomId").await?;
        for kind in [BlobKind::Voice, BlobKind::Image, BlobKind::Avatar] {
            let files = self
                .db
                .collection::<Document>(&format!("{}.files", bucket_name(kind)));
            orphans.extend(self.orphaned_rooms(&files, "metadata.roomId").await?);
        }
        orphans.sort();
        orphans.dedup();
        for batch in orphans.chunks(1000) {
            self.delete_room_content(batch).await?;
        }
        Ok(res.deleted_count)
    }
}
