//! Property tests of the WebSocket protocol's parser: any frame a client can send,
//! bytes or text, JSON-shaped or not, parses to a `ClientMessage` or to an error, never
//! a panic; and every message the protocol can express round-trips.
//!
//! A short run is part of the suite; `FUZZ_CASES=<n>` runs `n` inputs per property
//! (the long run recorded in BENCHMARKS.md).

use proptest::prelude::*;
use signaling::protocol::{ClientMessage, ParticipantId, Role, ServerMessage};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Integration tests have no lib.rs for proptest's regression files; a failure
        // prints its minimal input instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const TYPES: &[&str] = &[
    "join_room",
    "leave_room",
    "join_call",
    "leave_call",
    "answer",
    "ice_candidate",
    "restart_ice",
    "mute",
    "unmute",
    "raise_hand",
    "lower_hand",
    "set_role",
    "mute_participant",
    "remove_participant",
    "send_message",
    "delete_message",
    "ping",
    "",
    "JOIN_ROOM",
];

const FIELDS: &[&str] = &[
    "roomId",
    "resumeToken",
    "sdp",
    "candidate",
    "participantId",
    "role",
    "message",
    "messageId",
    "type",
];

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        prop::sample::select(&["speaker", "listener", "moderator", "boss"][..])
            .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like client messages: a known (or almost known) `type` and a random
/// selection of the protocol's field names with random values.
fn message_like() -> impl Strategy<Value = String> {
    (
        prop::sample::select(TYPES),
        prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..5),
    )
        .prop_map(|(t, fields)| {
            let mut obj = serde_json::Map::new();
            obj.insert("type".into(), t.into());
            for (k, v) in fields {
                obj.insert(k.to_owned(), v);
            }
            serde_json::Value::Object(obj).to_string()
        })
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    let pid = any::<u64>().prop_map(ParticipantId);
    let role = prop::sample::select(&[Role::Moderator, Role::Speaker, Role::Listener][..]);
    prop_oneof![
        (".{0,64}", proptest::option::of(".{0,64}")).prop_map(|(room_id, resume_token)| {
            ClientMessage::JoinRoom {
                room_id,
                resume_token,
            }
        }),
        Just(ClientMessage::LeaveRoom),
        Just(ClientMessage::JoinCall),
        ".{0,200}".prop_map(|sdp| ClientMessage::Answer { sdp }),
        (pid.clone(), role).prop_map(|(participant_id, role)| ClientMessage::SetRole {
            participant_id,
            role
        }),
        pid.prop_map(|participant_id| ClientMessage::RemoveParticipant { participant_id }),
        ".{0,300}".prop_map(|message| ClientMessage::SendMessage { message }),
        ".{0,64}".prop_map(|message_id| ClientMessage::DeleteMessage { message_id }),
        Just(ClientMessage::Ping),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<ClientMessage>(&bytes);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = serde_json::from_str::<ClientMessage>(text);
        }
    }

    #[test]
    fn message_shaped_frames_parse_or_are_refused_and_parsed_ones_round_trip(text in message_like()) {
        // `iceCandidate.candidate` is kept as an opaque JSON value (and ignored): serde_json
        // does not promise exact float round trips, so it is left out of the comparison.
        if let Ok(m) = serde_json::from_str::<ClientMessage>(&text)
            && !matches!(m, ClientMessage::IceCandidate { .. })
        {
            let again = serde_json::to_string(&m).expect("a parsed message serialises");
            prop_assert_eq!(serde_json::from_str::<ClientMessage>(&again).ok(), Some(m));
        }
    }

    #[test]
    fn every_client_message_round_trips(m in client_message()) {
        let text = serde_json::to_string(&m).expect("serialises");
        prop_assert_eq!(serde_json::from_str::<ClientMessage>(&text).ok(), Some(m));
    }

    #[test]
    fn arbitrary_text_never_panics_the_server_message_parser(text in ".{0,300}") {
        // The load tester and test clients parse what the server sends.
        let _ = serde_json::from_str::<ServerMessage>(&text);
    }
}
