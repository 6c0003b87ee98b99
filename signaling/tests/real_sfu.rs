//! Signaling driving the real `media::Sfu` (no WebRTC client): the offers a client
//! gets come from the SFU and follow its fixed layout.

#![cfg(feature = "server")]

mod common;

use std::sync::Arc;

use common::*;
use signaling::protocol::{ClientMessage, ErrorCode, ServerMessage};
use signaling::{Signaling, SignalingPorts, sfu_events};

#[tokio::test]
async fn join_call_returns_the_sfus_offer_with_one_mic_line_and_one_line_per_slot()
-> anyhow::Result<()> {
    let (sfu, events) = media::Sfu::start(media::SfuConfig {
        bind: "127.0.0.1:0".parse()?,
        ..media::SfuConfig::default()
    })?;
    let signaling = Signaling::new(
        test_config(),
        SignalingPorts {
            auth: Arc::new(FakeAuth),
            directory: Arc::new(FakeDirectory),
            chat: Arc::new(FakeChat::default()),
            media: Arc::new(sfu.clone()),
        },
        sfu_events(events),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = signaling.routes();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let h = Harness::for_addr(addr, signaling.clone());

    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, _) = h.join("bob", "open").await?;
    for c in [&mut alice, &mut bob] {
        c.send(&ClientMessage::JoinCall).await?;
        let ServerMessage::Offer {
            sdp,
            publish_mid,
            slot_mids,
        } = c
            .expect("offer", |m| matches!(m, ServerMessage::Offer { .. }))
            .await?
        else {
            unreachable!()
        };
        assert_eq!(slot_mids.len(), signaling.config().slot_count);
        assert_eq!(sdp.matches("m=audio").count(), 1 + slot_mids.len());
        for mid in std::iter::once(&publish_mid).chain(&slot_mids) {
            assert!(sdp.contains(&format!("a=mid:{mid}")), "mid {mid} in {sdp}");
        }
        assert!(
            sfu.local_addrs()
                .iter()
                .any(|a| sdp.contains(&a.port().to_string()))
        );
    }
    // A non-SDP answer is refused by the SFU; the socket stays usable.
    bob.send(&ClientMessage::Answer {
        sdp: "not an sdp".into(),
    })
    .await?;
    bob.expect_error(ErrorCode::BadMessage).await?;
    bob.send(&ClientMessage::LeaveCall).await?;
    bob.sync().await?;
    // After leaving, joining the call again gets a fresh offer (media forgot the peer).
    bob.send(&ClientMessage::JoinCall).await?;
    bob.expect("second offer", |m| matches!(m, ServerMessage::Offer { .. }))
        .await?;
    Ok(())
}
