//! Chat over the socket: stored through `ChatStore` (the control plane's rules), then
//! broadcast to the room.

use crate::error::SignalingError;
use crate::ports::DeleteOutcome;
use crate::protocol::{ErrorCode, ServerMessage};

use super::{Handled, Refusal, Session};

impl Session {
    pub(super) async fn send_message(&mut self, text: String) -> Handled {
        let (_, room_id) = self.current()?;
        // The chat rules (trimming, length, who may post) are the control plane's, the
        // same for this socket as for HTTP: the store applies them.
        let stored = self
            .inner
            .ports
            .chat
            .store_message(&room_id, &self.user, &text)
            .await
            .map_err(|e| match e {
                SignalingError::Refused { code, message } => Refusal::new(code, message),
                e => Refusal::internal("storing the message", &e),
            })?;
        self.inner
            .state
            .lock()
            .announce(&room_id, ServerMessage::ReceiveMessage { message: stored });
        Ok(())
    }

    pub(super) async fn delete_message(&mut self, message_id: String) -> Handled {
        let (_, room_id) = self.current()?;
        if message_id.is_empty() || message_id.len() > 128 {
            return Err(Refusal::new(ErrorCode::BadMessage, "invalid messageId"));
        }
        let outcome = self
            .inner
            .ports
            .chat
            .delete_message(&room_id, &message_id, &self.user.user_id)
            .await
            .map_err(|e| Refusal::internal("deleting the message", &e))?;
        match outcome {
            DeleteOutcome::Deleted => {
                self.inner
                    .state
                    .lock()
                    .announce(&room_id, ServerMessage::MessageDeleted { message_id });
                Ok(())
            }
            DeleteOutcome::NotFound => Err(Refusal::new(ErrorCode::NotFound, "no such message")),
            DeleteOutcome::Forbidden => Err(Refusal::new(
                ErrorCode::Forbidden,
                "only the author or the room owner may delete a message",
            )),
        }
    }
}
