//! The signaling protocol: every JSON message that crosses the WebSocket.
//!
//! One socket per participant. Messages are JSON objects tagged by `type`
//! (snake_case); fields are camelCase for the browser. Event names follow the
//! reference backends where the meaning matches (`join_room`, `online_users`,
//! `send_message`/`receive_message`, `delete_message`/`message_deleted`,
//! `join_call`/`leave_call`, `call_notification`, `mute`/`unmute`).
//! This module is pure serde so the load tester and test clients can use it
//! without the server (`signaling` with `default-features = false`).
//! docs/PROTOCOL.md walks through a complete session.

use serde::{Deserialize, Serialize};

/// Numeric id of one connection's presence in a room (two tabs of one user are two
/// participants). Allocated by the server, unique for the server's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParticipantId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The room owner: may speak and moderate.
    Moderator,
    /// May publish audio.
    Speaker,
    /// Only subscribes; the server refuses its media.
    Listener,
}

impl Role {
    pub fn can_publish(self) -> bool {
        matches!(self, Role::Moderator | Role::Speaker)
    }
}

/// A participant as everyone in the room sees them (never a phone number).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    pub participant_id: ParticipantId,
    pub user_id: String,
    pub name: String,
    pub avatar: Option<String>,
    pub role: Role,
    /// Muted by themself or by a moderator; the server does not forward a muted
    /// participant's audio.
    pub muted: bool,
    pub hand_raised: bool,
    /// Has an audio connection (joined the call).
    pub in_call: bool,
}

/// A chat message as stored and broadcast. Field names keep the Chillout client's
/// (`_id`, `username`, `message`, `type`, `url`, `createdAt`) and add the rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    #[serde(rename = "_id")]
    pub underscore_id: String,
    pub id: String,
    pub room_id: String,
    pub user_id: String,
    pub username: String,
    pub message: String,
    /// text, voice, image, call_notification, call_ended
    #[serde(rename = "type")]
    pub kind: String,
    pub url: Option<String>,
    pub file_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Voice notes: playing time in seconds, measured by the server at upload.
    #[serde(default)]
    pub duration: Option<f64>,
}

/// Someone a moderator removed from a room, as the room's moderators see them in the
/// list of people they may let back in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemovedUser {
    pub user_id: String,
    pub name: String,
    pub avatar: Option<String>,
}

/// STUN/TURN server handed to the client for its RTCPeerConnection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpeakerLevel {
    pub participant_id: ParticipantId,
    /// Smoothed audio level, 0 (silence) to 1 (loudest).
    pub level: f32,
}

/// Client to server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ClientMessage {
    /// Enter a room (presence and chat). `resumeToken` from an earlier `joined` resumes
    /// that place if the server still holds it (reconnect within the grace period).
    JoinRoom {
        room_id: String,
        #[serde(default)]
        resume_token: Option<String>,
    },
    /// Leave the room; the socket stays open.
    LeaveRoom,
    /// Start audio: the server answers with an `offer`.
    JoinCall,
    /// Stop audio (stay in the room and chat).
    LeaveCall,
    /// SDP answer to the server's latest `offer`.
    Answer {
        sdp: String,
    },
    /// Trickled ICE candidate from the client. The server is ICE-lite and learns the
    /// client's address from its connectivity checks, so this is accepted and ignored.
    IceCandidate {
        #[serde(default)]
        candidate: serde_json::Value,
    },
    /// Ask for an ICE restart (network changed); the server replies with an `offer`.
    RestartIce,
    /// Mute / unmute oneself.
    Mute,
    Unmute,
    RaiseHand,
    LowerHand,
    /// Moderator: make a participant a speaker or a listener. The room owner may also
    /// make someone a moderator (a co-host) or a co-host a speaker again. Anyone on
    /// stage may set their own role to `listener` (step back to the audience).
    SetRole {
        participant_id: ParticipantId,
        role: Role,
    },
    /// Moderator: mute someone (they may unmute themself only if they are a speaker).
    MuteParticipant {
        participant_id: ParticipantId,
    },
    /// Moderator: remove someone from the room. Every tab of that user leaves, and the
    /// user stays out of the room until a moderator lets them back in.
    RemoveParticipant {
        participant_id: ParticipantId,
    },
    /// Moderator: let a removed user join the room again.
    LetBackIn {
        user_id: String,
    },
    SendMessage {
        message: String,
    },
    DeleteMessage {
        message_id: String,
    },
    Ping,
}

/// Server to client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage {
    /// Reply to `join_room`: who you are and the room as it is now.
    Joined {
        room_id: String,
        you: Participant,
        /// Present this in `join_room` after a reconnect to keep your place.
        resume_token: String,
        /// True when this join resumed an earlier place.
        resumed: bool,
        ice_servers: Vec<IceServer>,
        /// Number of audio slots the server forwards to you.
        slot_count: usize,
    },
    /// Full participant list (sent on join; deltas follow as participant_* events).
    OnlineUsers {
        participants: Vec<Participant>,
    },
    ParticipantJoined {
        participant: Participant,
    },
    ParticipantLeft {
        participant_id: ParticipantId,
    },
    /// Role, mute, hand or call state changed.
    ParticipantUpdated {
        participant: Participant,
    },
    /// SDP offer from the server (first call join, role change, ICE restart). Answer it.
    /// `publishMid` is your microphone's m-line (send on it only when your role may
    /// publish); `slotMids[i]` carries audio slot i.
    Offer {
        sdp: String,
        publish_mid: String,
        slot_mids: Vec<String>,
    },
    /// Which participant you currently hear in each slot (null = silent slot).
    Slots {
        slots: Vec<Option<ParticipantId>>,
    },
    /// The loudest current speakers, loudest first.
    ActiveSpeakers {
        speakers: Vec<SpeakerLevel>,
    },
    /// Audio connected / lost for you.
    CallState {
        connected: bool,
    },
    ReceiveMessage {
        message: ChatMessage,
    },
    MessageDeleted {
        message_id: String,
    },
    /// A stored system message about the call (someone joined or left it).
    CallNotification {
        message: ChatMessage,
    },
    /// You were removed by a moderator (`reason` "removed by a moderator"), or the host
    /// ended (deleted) the room (`reason` "room deleted"); the socket closes.
    Removed {
        reason: String,
    },
    /// To moderators: the people removed from this room, who may not come back until
    /// a moderator sends `let_back_in`. Sent on a moderator's join (when not empty)
    /// and whenever the list changes.
    RemovedUsers {
        users: Vec<RemovedUser>,
    },
    /// Something you sent was refused. The connection stays usable unless `fatal`.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default)]
        fatal: bool,
    },
    Pong,
}

/// Stable machine-readable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not valid JSON or not a known message.
    BadMessage,
    /// No or invalid token.
    Unauthorized,
    /// Authenticated but not allowed (private room, not a moderator, listener publishing).
    Forbidden,
    NotFound,
    /// The room reached its participant cap.
    RoomFull,
    /// A moderator removed you from this room and has not let you back in.
    Removed,
    /// The user already holds the most places allowed in this room, all of them live
    /// (open in other tabs); close one to join here.
    TooManyTabs,
    /// Too many messages per second.
    RateLimited,
    /// Message or frame over the limit.
    TooLarge,
    /// The request needs a state you are not in (e.g. `answer` before `join_call`).
    InvalidState,
    /// The server is momentarily overloaded; retry the same request in a moment.
    Busy,
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_use_snake_case_type_and_camel_case_fields() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"join_room","roomId":"abc"}"#).expect("parse");
        assert_eq!(
            m,
            ClientMessage::JoinRoom {
                room_id: "abc".into(),
                resume_token: None
            }
        );
        let s = serde_json::to_string(&ClientMessage::SetRole {
            participant_id: ParticipantId(7),
            role: Role::Speaker,
        })
        .expect("ser");
        assert_eq!(
            s,
            r#"{"type":"set_role","participantId":7,"role":"speaker"}"#
        );
        let unit: ClientMessage = serde_json::from_str(r#"{"type":"mute"}"#).expect("unit variant");
        assert_eq!(unit, ClientMessage::Mute);
    }

    #[test]
    fn unknown_type_and_missing_fields_are_errors_not_panics() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"answer"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>("[1,2]").is_err());
    }

    #[test]
    fn server_error_round_trips() {
        let e = ServerMessage::Error {
            code: ErrorCode::RoomFull,
            message: "room is full".into(),
            fatal: true,
        };
        let s = serde_json::to_string(&e).expect("ser");
        assert_eq!(
            s,
            r#"{"type":"error","code":"room_full","message":"room is full","fatal":true}"#
        );
        assert_eq!(serde_json::from_str::<ServerMessage>(&s).expect("de"), e);
    }
}
