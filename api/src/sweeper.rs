//! Periodic housekeeping: deletes rooms idle past the expiry (with their messages and
//! bytes, including what a MongoDB TTL index left behind), expired login codes and refresh
//! tokens, and idle rate-limiter keys. A room with people in it is active by definition:
//! each pass first marks the occupied rooms as active.

use std::future::Future;

use tokio::task::JoinHandle;

use crate::state::AppState;
use crate::store::StoreError;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub rooms_expired: u64,
    pub otps_purged: u64,
    pub refresh_tokens_purged: u64,
}

/// One pass, with the state's clock: rooms idle since before `now - room_expiry` go.
pub async fn sweep_once(state: &AppState) -> Result<SweepReport, StoreError> {
    let now = state.now();
    for room in state.live.occupied_rooms() {
        match state.store.touch_room(&room, now).await {
            // Deleted meanwhile (its owner, or a TTL index): nothing to keep alive.
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    let cutoff = now - state.config.room_expiry;
    let report = SweepReport {
        rooms_expired: state.store.expire_rooms(cutoff).await?,
        otps_purged: state.store.purge_expired_otps(now).await?,
        refresh_tokens_purged: state.store.purge_expired_refresh_tokens(now).await?,
    };
    state.limits.retain_recent();
    Ok(report)
}

/// Runs [`sweep_once`] every `sweep_interval` until `shutdown` completes.
pub fn spawn_sweeper(
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(state.config.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => match sweep_once(&state).await {
                    Ok(r) if r.rooms_expired > 0 => tracing::info!(rooms = r.rooms_expired, "expired idle rooms"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "sweep failed; will retry"),
                },
            }
        }
    })
}
