//! Listener places and their joins: a listener's position (whose session changes when it
//! churns), what a session that left had received, and the log of join times, phases and
//! failures the report is made from.

use super::pacer::Pacer;
use crate::harness::HarnessError;
use crate::protocol::ParticipantId;
use crate::session::{Session, SessionConfig};
use crate::signal::Auth;
use crate::stats::StreamStats;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for a listener's first audio packet after it connected.
const FIRST_AUDIO_WAIT: Duration = Duration::from_secs(15);
/// Join errors kept verbatim in the report.
const MAX_ERRORS_KEPT: usize = 10;

/// One listener position; the session in it changes when it churns.
pub(super) struct ListenerPos {
    pub(super) room: usize,
    /// The target's node it joins through (a rejoin after churn too).
    pub(super) node: usize,
    pub(super) session: Mutex<Option<Arc<Session>>>,
    /// Bumped on every leave and join, so the sampler skips intervals that span one.
    pub(super) generation: AtomicU64,
}

/// Final statistics of a listener session that left (churn).
pub(super) struct Harvest {
    pub(super) pos: usize,
    pub(super) generation: u64,
    pub(super) sources: HashMap<ParticipantId, StreamStats>,
}

/// The joins of one step: times to first audio, their milestones, and failures.
#[derive(Default)]
pub(super) struct JoinLog {
    pub(super) times_ms: Vec<f64>,
    /// Milestones of each successful join, ms after its start: WebSocket open, `joined`,
    /// first `offer`, media connected.
    pub(super) phases_ms: [Vec<f64>; 4],
    pub(super) failures: u64,
    pub(super) no_audio: u64,
    pub(super) errors: Vec<String>,
}

impl JoinLog {
    pub(super) fn fail(&mut self, e: impl std::fmt::Display) {
        self.failures += 1;
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(e.to_string());
        }
    }
}

/// What a listener join needs beyond its place and configuration: the shared pacer and
/// the step's join log.
pub(super) struct JoinCtx {
    pub(super) pacer: Arc<Pacer>,
    pub(super) joins: Arc<Mutex<JoinLog>>,
}

impl JoinCtx {
    /// Connects a listener into `pos` and waits for its first audio (the join time).
    pub(super) async fn join(
        &self,
        pos: Arc<ListenerPos>,
        mut cfg: SessionConfig,
        token: Result<String, HarnessError>,
        paced: bool,
    ) {
        if paced {
            self.pacer.wait().await;
        }
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                self.joins.lock().fail(e);
                return;
            }
        };
        cfg.auth = Auth::Bearer(token);
        let session = match Session::connect(cfg).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                self.joins.lock().fail(format!("listener join: {e}"));
                return;
            }
        };
        *pos.session.lock() = Some(session.clone());
        pos.generation.fetch_add(1, Ordering::Relaxed);
        match session.wait_first_audio(FIRST_AUDIO_WAIT).await {
            Ok(t) => {
                let tm = session.timings();
                let since = |i: Option<Instant>| {
                    i.map(|i| i.saturating_duration_since(tm.started).as_secs_f64() * 1e3)
                };
                let mut j = self.joins.lock();
                j.times_ms.push(t.as_secs_f64() * 1e3);
                let phases = [
                    tm.ws_connected,
                    tm.joined_room,
                    tm.offer_received,
                    tm.media_connected,
                ];
                for (k, p) in phases.into_iter().enumerate() {
                    if let Some(ms) = since(p) {
                        j.phases_ms[k].push(ms);
                    }
                }
            }
            Err(_) => self.joins.lock().no_audio += 1,
        }
    }
}
