//! Chat messages in MongoDB.

use super::*;

#[async_trait]
impl MessageStore for MongoStore {
    async fn insert_message(&self, m: Message) -> StoreResult<()> {
        self.ensure_ready().await?;
        // Bumping the room's activity doubles as the existence check.
        let res = self
            .rooms
            .update_one(
                doc! { "_id": m.room_id.as_str() },
                doc! { "$max": { "lastActivity": to_bson(m.created_at) } },
            )
            .await
            .map_err(backend)?;
        if res.matched_count == 0 {
            return Err(StoreError::NotFound);
        }
        self.messages
            .insert_one(MessageDoc::from(m))
            .await
            .map_err(map_write)?;
        Ok(())
    }

    async fn get_message(&self, id: &MessageId) -> StoreResult<Option<Message>> {
        self.ensure_ready().await?;
        self.messages
            .find_one(doc! { "_id": id.as_str() })
            .await
            .map_err(backend)
            .map(|d| d.map(Message::from))
    }

    async fn list_messages(
        &self,
        room: &RoomId,
        before: Option<&MessageCursor>,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        self.ensure_ready().await?;
        let filter = match before {
            None => doc! { "roomId": room.as_str() },
            Some(c) => {
                let at = to_bson(c.created_at);
                doc! {
                    "roomId": room.as_str(),
                    "$or": [
                        { "createdAt": { "$lt": at } },
                        { "createdAt": at, "_id": { "$lt": c.id.as_str() } },
                    ],
                }
            }
        };
        let cursor = self
            .messages
            .find(filter)
            .sort(doc! { "createdAt": -1, "_id": -1 })
            .limit(i64::from(limit))
            .await
            .map_err(backend)?;
        collect_docs(cursor).await
    }

    async fn delete_message(&self, id: &MessageId) -> StoreResult<Option<Message>> {
        self.ensure_ready().await?;
        let Some(d) = self
            .messages
            .find_one_and_delete(doc! { "_id": id.as_str() })
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let msg = Message::from(d);
        if let Some(file) = &msg.attachment {
            self.delete_blob(file).await?;
        }
        Ok(Some(msg))
    }
}
