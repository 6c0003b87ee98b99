//! The shared state every handler receives: the store, settings, token service, SMS
//! sender, live-room view, clock and rate limiters. Cheap to clone (all `Arc`s).

use std::sync::Arc;

use time::OffsetDateTime;

use crate::auth::{JwtSecrets, TokenService, TokenVerifier};
use crate::avatar::DecodeGate;
use crate::clock::{Clock, SystemClock};
use crate::config::ApiConfig;
use crate::live::{LiveRooms, NoLiveRooms};
use crate::ratelimit::RateLimiters;
use crate::sms::{DevSmsSender, SmsSender};
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub config: Arc<ApiConfig>,
    pub tokens: TokenService,
    pub sms: Arc<dyn SmsSender>,
    pub live: Arc<dyn LiveRooms>,
    pub clock: Arc<dyn Clock>,
    pub limits: Arc<RateLimiters>,
    /// Bounds concurrent avatar decodes (memory: ~70 MB each at the largest size).
    pub avatar_gate: Arc<DecodeGate>,
    /// Kept so [`AppState::with_clock`] can rebuild the token service on the new clock.
    secrets: Arc<JwtSecrets>,
}

impl AppState {
    /// State with the development SMS sender, no live rooms, and the system clock;
    /// replace those with the `with_*` methods.
    pub fn new(store: Arc<dyn Store>, config: ApiConfig, secrets: JwtSecrets) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Self {
            store,
            tokens: TokenService::new(&secrets, clock.clone()),
            limits: Arc::new(RateLimiters::new(&config.rate_limits)),
            avatar_gate: Arc::new(DecodeGate::new(
                config.avatar_decode_concurrency,
                config.avatar_decode_wait,
            )),
            config: Arc::new(config),
            sms: Arc::new(DevSmsSender),
            live: Arc::new(NoLiveRooms),
            clock,
            secrets: Arc::new(secrets),
        }
    }

    pub fn with_sms(mut self, sms: Arc<dyn SmsSender>) -> Self {
        self.sms = sms;
        self
    }

    pub fn with_live_rooms(mut self, live: Arc<dyn LiveRooms>) -> Self {
        self.live = live;
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.tokens = TokenService::new(&self.secrets, clock.clone());
        self.clock = clock;
        self
    }

    /// The verifier the signaling server uses to authenticate sockets.
    pub fn token_verifier(&self) -> TokenVerifier {
        self.tokens.verifier().clone()
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }
}
