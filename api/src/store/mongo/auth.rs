//! Users, login codes and refresh tokens in MongoDB.

use super::*;

#[async_trait]
impl UserStore for MongoStore {
    async fn find_or_create_user(&self, phone: &str, now: OffsetDateTime) -> StoreResult<User> {
        self.ensure_ready().await?;
        // Concurrent upserts of one new phone can both miss and both insert; the unique
        // index refuses the loser, who then finds the winner's document.
        for _ in 0..3 {
            let res = self
                .users
                .find_one_and_update(
                    doc! { "phone": phone },
                    // `phone` comes from the filter's equality on insert.
                    doc! { "$setOnInsert": {
                        "_id": new_id(),
                        "activated": false,
                        "createdAt": to_bson(now),
                    } },
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            match res {
                Ok(Some(d)) => return Ok(d.into()),
                Ok(None) => {}
                Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => {}
                Err(e) => return Err(backend(e)),
            }
            if let Some(d) = self
                .users
                .find_one(doc! { "phone": phone })
                .await
                .map_err(backend)?
            {
                return Ok(d.into());
            }
        }
        Err(StoreError::Backend(
            "mongodb: user upsert kept conflicting".into(),
        ))
    }

    async fn get_user(&self, id: &UserId) -> StoreResult<Option<User>> {
        self.ensure_ready().await?;
        self.users
            .find_one(doc! { "_id": id.as_str() })
            .await
            .map_err(backend)
            .map(|d| d.map(User::from))
    }

    async fn get_users(&self, ids: &[UserId]) -> StoreResult<Vec<User>> {
        self.ensure_ready().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = ids.iter().map(UserId::as_str).collect();
        let cursor = self
            .users
            .find(doc! { "_id": { "$in": ids } })
            .await
            .map_err(backend)?;
        collect_docs(cursor).await
    }

    async fn activate_user(
        &self,
        id: &UserId,
        name: &str,
        avatar: Option<FileId>,
    ) -> StoreResult<User> {
        self.ensure_ready().await?;
        let mut set = doc! { "name": name, "activated": true };
        if let Some(a) = &avatar {
            set.insert("avatar", a.as_str());
        }
        // Before-image: tells which avatar this update replaced, atomically.
        let before = self
            .users
            .find_one_and_update(doc! { "_id": id.as_str() }, doc! { "$set": set })
            .return_document(ReturnDocument::Before)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound)?;
        let before = User::from(before);
        if let (Some(old), Some(new)) = (&before.avatar, &avatar)
            && old != new
        {
            self.delete_blob(old).await?;
        }
        Ok(User {
            name: Some(name.to_owned()),
            avatar: avatar.or(before.avatar),
            activated: true,
            ..before
        })
    }
}

#[async_trait]
impl OtpStore for MongoStore {
    async fn put_otp(&self, c: OtpChallenge) -> StoreResult<()> {
        self.ensure_ready().await?;
        self.otps
            .insert_one(OtpDoc::from(&c))
            .await
            .map_err(map_write)?;
        Ok(())
    }

    async fn get_otp(&self, handle_hash: &[u8]) -> StoreResult<Option<OtpChallenge>> {
        self.ensure_ready().await?;
        self.otps
            .find_one(doc! { "_id": bin(handle_hash) })
            .await
            .map_err(backend)?
            .map(OtpChallenge::try_from)
            .transpose()
    }

    async fn spend_otp_attempt(&self, handle_hash: &[u8]) -> StoreResult<Option<u32>> {
        self.ensure_ready().await?;
        let after = self
            .otps
            .find_one_and_update(
                doc! { "_id": bin(handle_hash), "attemptsLeft": { "$gt": 0 } },
                doc! { "$inc": { "attemptsLeft": -1 } },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(backend)?;
        match after {
            Some(d) => Ok(Some(OtpChallenge::try_from(d)?.attempts_left)),
            None => Ok(None),
        }
    }

    async fn consume_otp(&self, handle_hash: &[u8]) -> StoreResult<bool> {
        self.ensure_ready().await?;
        let res = self
            .otps
            .delete_one(doc! { "_id": bin(handle_hash) })
            .await
            .map_err(backend)?;
        Ok(res.deleted_count == 1)
    }

    async fn purge_expired_otps(&self, now: OffsetDateTime) -> StoreResult<u64> {
        self.ensure_ready().await?;
        let res = self
            .otps
            .delete_many(doc! { "expiresAt": { "$lte": to_bson(now) } })
            .await
            .map_err(backend)?;
        Ok(res.deleted_count)
    }
}

#[async_trait]
impl SessionStore for MongoStore {
    async fn put_refresh_token(&self, t: RefreshToken) -> StoreResult<()> {
        self.ensure_ready().await?;
        self.tokens
            .insert_one(TokenDoc::from(&t))
            .await
            .map_err(map_write)?;
        Ok(())
    }

    async fn get_refresh_token(&self, token_hash: &[u8]) -> StoreResult<Option<RefreshToken>> {
        self.ensure_ready().await?;
        self.tokens
            .find_one(doc! { "_id": bin(token_hash) })
            .await
            .map_err(backend)?
            .map(RefreshToken::try_from)
            .transpose()
    }

    async fn mark_refresh_token_used(&self, token_hash: &[u8]) -> StoreResult<bool> {
        self.ensure_ready().await?;
        let res = self
            .tokens
            .update_one(
                doc! { "_id": bin(token_hash), "used": false },
                doc! { "$set": { "used": true } },
            )
            .await
            .map_err(backend)?;
        Ok(res.modified_count == 1)
    }

    async fn revoke_family(&self, family: &FamilyId) -> StoreResult<()> {
        self.ensure_ready().await?;
        self.tokens
            .update_many(
                doc! { "family": family.as_str() },
                doc! { "$set": { "used": true } },
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn purge_expired_refresh_tokens(&self, now: OffsetDateTime) -> StoreResult<u64> {
        self.ensure_ready().await?;
        let res = self
            .tokens
            .delete_many(doc! { "expiresAt": { "$lte": to_bson(now) } })
            .await
            .map_err(backend)?;
        Ok(res.deleted_count)
    }
}
