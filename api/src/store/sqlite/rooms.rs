//! Rooms and their invites in SQLite.

use super::*;

#[async_trait]
impl RoomStore for SqliteStore {
    async fn create_room(&self, room: Room) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute(
                &format!("INSERT INTO rooms ({ROOM_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![
                    room.id.as_str(),
                    room.topic,
                    room.room_type.as_str(),
                    room.owner_id.as_str(),
                    room.invite_code,
                    to_millis(room.created_at),
                    to_millis(room.last_activity)
                ],
            )
            .map_err(map_write)?;
            let mut stmt = tx
                .prepare("INSERT OR IGNORE INTO room_invites (room_id, user_id) VALUES (?1, ?2)")
                .map_err(backend)?;
            for user in &room.invited {
                stmt.execute(params![room.id.as_str(), user.as_str()])
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn get_room(&self, id: &RoomId) -> StoreResult<Option<Room>> {
        let id = id.to_string();
        self.run(move |conn| get_room_conn(conn, &id)).await
    }

    async fn list_open_rooms(
        &self,
        after: Option<&RoomCursor>,
        limit: u32,
    ) -> StoreResult<Vec<Room>> {
        let after = after.map(|a| (to_millis(a.created_at), a.id.to_string()));
        self.run(move |conn| {
            let open = RoomType::Open.as_str();
            let mut rooms = match after {
                None => {
                    let mut stmt = conn
                        .prepare_cached(&format!(
                            "SELECT {ROOM_COLS} FROM rooms WHERE room_type = ?1
                             ORDER BY created_at DESC, id DESC LIMIT ?2"
                        ))
                        .map_err(backend)?;
                    stmt.query_map(params![open, limit], room_row)
                        .map_err(backend)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(backend)?
                }
                Some((at, id)) => {
                    // Keyset paging from the cursor's position, whether or not the
                    // room it came from still exists.
                    let mut stmt = conn
                        .prepare_cached(&format!(
                            "SELECT {ROOM_COLS} FROM rooms
                             WHERE room_type = ?1
                               AND (created_at < ?2 OR (created_at = ?2 AND id < ?3))
                             ORDER BY created_at DESC, id DESC LIMIT ?4"
                        ))
                        .map_err(backend)?;
                    stmt.query_map(params![open, at, id, limit], room_row)
                        .map_err(backend)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map_err(backend)?
                }
            };
            load_invites(conn, &mut rooms)?;
            Ok(rooms)
        })
        .await
    }

    async fn update_room_topic(&self, id: &RoomId, topic: &str) -> StoreResult<Option<Room>> {
        let id = id.to_string();
        let topic = topic.to_owned();
        self.write(move |tx| {
            let n = tx
                .execute(
                    "UPDATE rooms SET topic = ?2 WHERE id = ?1",
                    params![id, topic],
                )
                .map_err(backend)?;
            if n == 0 {
                return Ok(None);
            }
            get_room_conn(tx, &id)
        })
        .await
    }

    async fn add_room_invite(&self, id: &RoomId, user: &UserId) -> StoreResult<()> {
        let id = id.to_string();
        let user = user.to_string();
        self.run(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO room_invites (room_id, user_id) VALUES (?1, ?2)",
                params![id, user],
            )
            .map_err(map_write)?;
            Ok(())
        })
        .await
    }

    async fn set_invite_code(&self, id: &RoomId, code: Option<&str>) -> StoreResult<()> {
        let id = id.to_string();
        let code = code.map(str::to_owned);
        self.run(move |conn| {
            let n = conn
                .execute(
                    "UPDATE rooms SET invite_code = ?2 WHERE id = ?1",
                    params![id, code],
                )
                .map_err(backend)?;
            if n == 0 {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn touch_room(&self, id: &RoomId, now: OffsetDateTime) -> StoreResult<()> {
        let id = id.to_string();
        self.run(move |conn| {
            // max(): a late, out-of-order touch never moves the clock back.
            let n = conn
                .execute(
                    "UPDATE rooms SET last_activity = max(last_activity, ?2) WHERE id = ?1",
                    params![id, to_millis(now)],
                )
                .map_err(backend)?;
            if n == 0 {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn delete_room(&self, id: &RoomId) -> StoreResult<bool> {
        let id = id.to_string();
        self.write(move |tx| {
            // Messages, blobs (and their chunks) and invites cascade.
            let n = tx
                .execute("DELETE FROM rooms WHERE id = ?1", [&id])
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn expire_rooms(&self, cutoff: OffsetDateTime) -> StoreResult<u64> {
        self.write(move |tx| {
            let n = tx
                .execute(
                    "DELETE FROM rooms WHERE last_activity < ?1",
                    [to_millis(cutoff)],
                )
                .map_err(backend)?;
            // Messages, blobs and chunks cascade. Orphans cannot exist here (foreign keys
            // are always on), so unlike MongoDB there is nothing else to sweep.
            Ok(n as u64)
        })
        .await
    }
}
