//! Users, login codes and refresh tokens in SQLite.

use super::*;

#[async_trait]
impl UserStore for SqliteStore {
    async fn find_or_create_user(&self, phone: &str, now: OffsetDateTime) -> StoreResult<User> {
        let phone = phone.to_owned();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO users (id, phone, activated, created_at) VALUES (?1, ?2, 0, ?3)
                 ON CONFLICT (phone) DO NOTHING",
                params![new_id(), phone, to_millis(now)],
            )
            .map_err(map_write)?;
            tx.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE phone = ?1"),
                [&phone],
                user_row,
            )
            .map_err(backend)
        })
        .await
    }

    async fn get_user(&self, id: &UserId) -> StoreResult<Option<User>> {
        let id = id.to_string();
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                [&id],
                user_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn get_users(&self, ids: &[UserId]) -> StoreResult<Vec<User>> {
        let mut ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        ids.sort();
        ids.dedup();
        self.run(move |conn| {
            let mut out = Vec::with_capacity(ids.len());
            for batch in ids.chunks(MAX_IN_PARAMS) {
                let sql = format!(
                    "SELECT {USER_COLS} FROM users WHERE id IN ({})",
                    placeholders(batch.len())
                );
                let mut stmt = conn.prepare(&sql).map_err(backend)?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(batch), user_row)
                    .map_err(backend)?;
                for row in rows {
                    out.push(row.map_err(backend)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn activate_user(
        &self,
        id: &UserId,
        name: &str,
        avatar: Option<FileId>,
    ) -> StoreResult<User> {
        let id = id.to_string();
        let name = name.to_owned();
        self.write(move |tx| {
            let old_avatar: Option<String> = tx
                .query_row("SELECT avatar FROM users WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(backend)?
                .ok_or(StoreError::NotFound)?;
            let new_avatar = avatar
                .map(FileId::into_string)
                .or_else(|| old_avatar.clone());
            tx.execute(
                "UPDATE users SET name = ?2, avatar = ?3, activated = 1 WHERE id = ?1",
                params![id, name, new_avatar],
            )
            .map_err(backend)?;
            if let Some(old) = old_avatar.filter(|old| Some(old) != new_avatar.as_ref()) {
                delete_blob_conn(tx, &old)?;
            }
            tx.query_row(
                &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                [&id],
                user_row,
            )
            .map_err(backend)
        })
        .await
    }
}

#[async_trait]
impl OtpStore for SqliteStore {
    async fn put_otp(&self, c: OtpChallenge) -> StoreResult<()> {
        self.run(move |conn| {
            conn.execute(
                &format!("INSERT INTO otps ({OTP_COLS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
                params![
                    c.handle_hash,
                    c.phone,
                    c.code_hash,
                    to_millis(c.expires_at),
                    c.attempts_left
                ],
            )
            .map_err(map_write)?;
            Ok(())
        })
        .await
    }

    async fn get_otp(&self, handle_hash: &[u8]) -> StoreResult<Option<OtpChallenge>> {
        let h = handle_hash.to_vec();
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {OTP_COLS} FROM otps WHERE handle_hash = ?1"),
                [&h],
                otp_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn spend_otp_attempt(&self, handle_hash: &[u8]) -> StoreResult<Option<u32>> {
        let h = handle_hash.to_vec();
        self.run(move |conn| {
            // One statement: two concurrent verifiers can never both take the last try.
            conn.query_row(
                "UPDATE otps SET attempts_left = attempts_left - 1
                 WHERE handle_hash = ?1 AND attempts_left > 0
                 RETURNING attempts_left",
                [&h],
                |r| r.get::<_, u32>(0),
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn consume_otp(&self, handle_hash: &[u8]) -> StoreResult<bool> {
        let h = handle_hash.to_vec();
        self.run(move |conn| {
            let n = conn
                .execute("DELETE FROM otps WHERE handle_hash = ?1", [&h])
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn purge_expired_otps(&self, now: OffsetDateTime) -> StoreResult<u64> {
        self.run(move |conn| {
            let n = conn
                .execute("DELETE FROM otps WHERE expires_at <= ?1", [to_millis(now)])
                .map_err(backend)?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn put_refresh_token(&self, t: RefreshToken) -> StoreResult<()> {
        self.run(move |conn| {
            conn.execute(
                &format!("INSERT INTO refresh_tokens ({TOKEN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
                params![
                    t.token_hash,
                    t.family.as_str(),
                    t.user_id.as_str(),
                    to_millis(t.expires_at),
                    t.used
                ],
            )
            .map_err(map_write)?;
            Ok(())
        })
        .await
    }

    async fn get_refresh_token(&self, token_hash: &[u8]) -> StoreResult<Option<RefreshToken>> {
        let h = token_hash.to_vec();
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {TOKEN_COLS} FROM refresh_tokens WHERE token_hash = ?1"),
                [&h],
                token_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn mark_refresh_token_used(&self, token_hash: &[u8]) -> StoreResult<bool> {
        let h = token_hash.to_vec();
        self.run(move |conn| {
            let n = conn
                .execute(
                    "UPDATE refresh_tokens SET used = 1 WHERE token_hash = ?1 AND used = 0",
                    [&h],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn revoke_family(&self, family: &FamilyId) -> StoreResult<()> {
        let family = family.to_string();
        self.run(move |conn| {
            conn.execute(
                "UPDATE refresh_tokens SET used = 1 WHERE family = ?1",
                [&family],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn purge_expired_refresh_tokens(&self, now: OffsetDateTime) -> StoreResult<u64> {
        self.run(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM refresh_tokens WHERE expires_at <= ?1",
                    [to_millis(now)],
                )
                .map_err(backend)?;
            Ok(n as u64)
        })
        .await
    }
}
