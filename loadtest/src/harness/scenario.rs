//! What a run does: rooms, speakers and listeners per room, how fast they join, how
//! long the measured window lasts, speaker turns, churn; and the named presets that
//! BENCHMARKS.md needs (`smoke`, `ramp`, `rooms`, `big`).

use super::HarnessError;
use crate::session::Engine;
use serde::Serialize;
use std::time::Duration;

/// Only `count` speakers of a room talk at a time; the set rotates every `period`.
/// The others send silence, which the Opus encoder turns into DTX (nothing sent).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Turns {
    pub count: usize,
    #[serde(with = "secs")]
    pub period: Duration,
}

/// Listener counts grow by `step` from `start` up to `max`; each step is measured for
/// the scenario's `duration`. The ramp stops at the first step whose delivery is below
/// `min_delivery` or whose latency p99 exceeds `max_p99`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Ramp {
    pub start: usize,
    pub step: usize,
    pub max: usize,
    pub min_delivery: f64,
    #[serde(with = "secs")]
    pub max_p99: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub rooms: usize,
    /// Per room; the first is the room's owner (a moderator), the others are promoted.
    pub speakers: usize,
    /// Per room (the ramp's starting count when `ramp` is set).
    pub listeners: usize,
    /// Measured window (per ramp step), after everyone joined and `settle`.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Joins per second across the whole run (token bucket).
    pub join_rate: f64,
    /// Time between the last join and the start of measurement.
    #[serde(with = "secs")]
    pub settle: Duration,
    pub turns: Option<Turns>,
    /// Fraction (0..=1) of listeners that leave and rejoin during the window.
    pub churn: f64,
    pub ramp: Option<Ramp>,
    /// Fraction of time each speaker's voice-like signal pauses (0 = talks nonstop).
    pub pause_ratio: f64,
    /// Run the NACK/RTCP-report interceptors in every client, as a browser does (costs
    /// harness CPU).
    pub interceptors: bool,
    /// The client listeners run on: the sans-I/O `rtc` listener (default, a fraction of
    /// the CPU per packet) or the async `webrtc` peer. Speakers always use the latter.
    pub listener_engine: Engine,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Scenario {
    fn base(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            rooms: 1,
            speakers: 1,
            listeners: 10,
            duration: Duration::from_secs(10),
            join_rate: 20.0,
            settle: Duration::from_secs(2),
            turns: None,
            churn: 0.0,
            ramp: None,
            pause_ratio: 0.0,
            interceptors: false,
            listener_engine: Engine::Rtc,
        }
    }

    /// 1 room, 2 speakers, 10 listeners, 10 s: the test suite's smoke run.
    pub fn smoke() -> Self {
        Self {
            speakers: 2,
            ..Self::base("smoke")
        }
    }

    /// 1 room, 1 speaker, listeners growing by 50 from 50 (up to 1000) until delivery
    /// drops below 99% or latency p99 passes 100 ms; 10 s per step.
    pub fn ramp() -> Self {
        Self {
            listeners: 50,
            join_rate: 50.0,
            ramp: Some(Ramp {
                start: 50,
                step: 50,
                max: 1000,
                min_delivery: 0.99,
                max_p99: Duration::from_millis(100),
            }),
            ..Self::base("ramp")
        }
    }

    /// 10 rooms x (2 speakers + 20 listeners), 30 s.
    pub fn rooms() -> Self {
        Self {
            rooms: 10,
            speakers: 2,
            listeners: 20,
            duration: Duration::from_secs(30),
            join_rate: 40.0,
            ..Self::base("rooms")
        }
    }

    /// 1 room, 10 speakers, 100 listeners, 30 s. Every speaker talks (with pauses);
    /// the server forwards the loudest three (its slots) to each listener.
    pub fn big() -> Self {
        Self {
            speakers: 10,
            listeners: 100,
            duration: Duration::from_secs(30),
            join_rate: 40.0,
            pause_ratio: 0.3,
            ..Self::base("big")
        }
    }

    pub fn preset(name: &str) -> Result<Self, HarnessError> {
        match name {
            "smoke" => Ok(Self::smoke()),
            "ramp" => Ok(Self::ramp()),
            "rooms" => Ok(Self::rooms()),
            "big" => Ok(Self::big()),
            "custom" => Ok(Self::base("custom")),
            other => Err(HarnessError::Config(format!(
                "unknown preset {other:?} (smoke, ramp, rooms, big, custom)"
            ))),
        }
    }

    /// Refuses scenarios that cannot run or would not stop.
    pub fn validate(&self) -> Result<(), HarnessError> {
        let bad = |m: String| Err(HarnessError::Config(m));
        if self.rooms == 0 || self.rooms > 10_000 {
            return bad(format!("rooms must be 1..=10000, got {}", self.rooms));
        }
        if self.speakers == 0 || self.speakers > 1000 {
            return bad(format!("speakers must be 1..=1000, got {}", self.speakers));
        }
        if self.listeners > 100_000 {
            return bad(format!(
                "listeners must be at most 100000, got {}",
                self.listeners
            ));
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(24 * 3600) {
            return bad("duration must be between 1 s and 24 h".into());
        }
        if !(self.join_rate > 0.0 && self.join_rate <= 10_000.0) {
            return bad(format!(
                "join rate must be in (0, 10000], got {}",
                self.join_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.churn) {
            return bad(format!("churn must be within 0..=1, got {}", self.churn));
        }
        if !(0.0..=0.9).contains(&self.pause_ratio) {
            return bad("pause ratio must be within 0..=0.9".into());
        }
        if let Some(t) = self.turns
            && (t.count == 0 || t.period.is_zero())
        {
            return bad("speaker turns need a count >= 1 and a period > 0".into());
        }
        if let Some(r) = self.ramp {
            if self.rooms != 1 {
                return bad("a ramp runs in one room".into());
            }
            if r.step == 0 || r.max < r.start {
                return bad("ramp needs step >= 1 and max >= start".into());
            }
        }
        Ok(())
    }

    /// Participants at full size (per ramp step: at the current step).
    pub fn participants(&self) -> usize {
        self.rooms * (self.speakers + self.listeners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_benchmark_scenarios_and_validate() {
        let s = Scenario::smoke();
        assert_eq!((s.rooms, s.speakers, s.listeners), (1, 2, 10));
        assert_eq!(s.duration, Duration::from_secs(10));
        let r = Scenario::rooms();
        assert_eq!((r.rooms, r.speakers, r.listeners), (10, 2, 20));
        let b = Scenario::big();
        assert_eq!((b.rooms, b.speakers, b.listeners), (1, 10, 100));
        let ramp = Scenario::ramp();
        assert_eq!((ramp.rooms, ramp.speakers), (1, 1));
        assert!(
            ramp.ramp
                .is_some_and(|r| r.min_delivery == 0.99 && r.max_p99 == Duration::from_millis(100))
        );
        for name in ["smoke", "ramp", "rooms", "big", "custom"] {
            let p = Scenario::preset(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(p.validate().is_ok(), "{name}");
        }
        assert!(Scenario::preset("nope").is_err());
    }

    #[test]
    fn nonsense_scenarios_are_refused() {
        let ok = Scenario::smoke();
        for broken in [
            Scenario {
                rooms: 0,
                ..ok.clone()
            },
            Scenario {
                speakers: 0,
                ..ok.clone()
            },
            Scenario {
                join_rate: 0.0,
                ..ok.clone()
            },
            Scenario {
                join_rate: f64::NAN,
                ..ok.clone()
            },
            Scenario {
                churn: 1.5,
                ..ok.clone()
            },
            Scenario {
                duration: Duration::ZERO,
                ..ok.clone()
            },
            Scenario {
                turns: Some(Turns {
                    count: 0,
                    period: Duration::from_secs(1),
                }),
                ..ok.clone()
            },
            Scenario {
                rooms: 2,
                ..Scenario::ramp()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
    }
}
