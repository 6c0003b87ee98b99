//! Chat messages in SQLite.

use super::*;

#[async_trait]
impl MessageStore for SqliteStore {
    async fn insert_message(&self, m: Message) -> StoreResult<()> {
        self.write(move |tx| {
            require_room(tx, m.room_id.as_str())?;
            tx.execute(
                &format!(
                    "INSERT INTO messages ({MESSAGE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    m.id.as_str(),
                    m.room_id.as_str(),
                    m.author_id.as_str(),
                    m.author_name,
                    m.kind.as_str(),
                    m.text,
                    m.attachment.as_ref().map(|a| a.as_str()),
                    to_millis(m.created_at)
                ],
            )
            .map_err(map_write)?;
            // A message is activity: keep the room alive without a second call.
            tx.execute(
                "UPDATE rooms SET last_activity = max(last_activity, ?2) WHERE id = ?1",
                params![m.room_id.as_str(), to_millis(m.created_at)],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn get_message(&self, id: &MessageId) -> StoreResult<Option<Message>> {
        let id = id.to_string();
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {MESSAGE_COLS} FROM messages WHERE id = ?1"),
                [&id],
                message_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn list_messages(
        &self,
        room: &RoomId,
        before: Option<&MessageCursor>,
        limit: u32,
    ) -> StoreResult<Vec<Message>> {
        let room = room.to_string();
        let before = before.map(|c| (to_millis(c.created_at), c.id.to_string()));
        self.run(move |conn| {
            let rows = match before {
                None => {
                    let mut stmt = conn
                        .prepare_cached(&format!(
                            "SELECT {MESSAGE_COLS} FROM messages WHERE room_id = ?1
                             ORDER BY created_at DESC, id DESC LIMIT ?2"
                        ))
                        .map_err(backend)?;
                    stmt.query_map(params![room, limit], message_row)
                        .map_err(backend)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                }
                Some((at, id)) => {
                    let mut stmt = conn
                        .prepare_cached(&format!(
                            "SELECT {MESSAGE_COLS} FROM messages WHERE room_id = ?1
                               AND (created_at < ?2 OR (created_at = ?2 AND id < ?3))
                             ORDER BY created_at DESC, id DESC LIMIT ?4"
                        ))
                        .map_err(backend)?;
                    stmt.query_map(params![room, at, id, limit], message_row)
                        .map_err(backend)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                }
            };
            rows.map_err(backend)
        })
        .await
    }

    async fn delete_message(&self, id: &MessageId) -> StoreResult<Option<Message>> {
        let id = id.to_string();
        self.write(move |tx| {
            let msg = tx
                .query_row(
                    &format!("DELETE FROM messages WHERE id = ?1 RETURNING {MESSAGE_COLS}"),
                    [&id],
                    message_row,
                )
                .optional()
                .map_err(backend)?;
            if let Some(file) = msg.as_ref().and_then(|m| m.attachment.as_ref()) {
                delete_blob_conn(tx, file.as_str())?;
            }
            Ok(msg)
        })
        .await
    }
}
