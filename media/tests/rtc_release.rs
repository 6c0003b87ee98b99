//! The `rtc` patch (PATCHES.md): `release_idle_buffers` drops the parsed form of the
//! applied local and remote descriptions, and every path that reads it parses the stored
//! text again first. Observable through JSEP's negotiation-needed check, which compares
//! the connection with its current descriptions: a data channel added to a connection
//! whose descriptions already carry one needs no new negotiation, before or after the
//! release. Without the re-parse, the check found no m-section in the released
//! descriptions and asked for a negotiation every time.

mod common;

use std::time::Instant;

use anyhow::Result;
use common::sdp_mids as mids;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::sansio::Protocol;

fn negotiation_needed_events(pc: &mut RTCPeerConnection) -> usize {
    let mut n = 0;
    while let Some(event) = pc.poll_event() {
        if matches!(event, RTCPeerConnectionEvent::OnNegotiationNeededEvent) {
            n += 1;
        }
    }
    n
}

#[test]
fn negotiation_state_survives_the_release_of_parsed_descriptions() -> Result<()> {
    let now = Instant::now();
    let mut offerer = RTCPeerConnectionBuilder::new().build(now)?;
    let mut answerer = RTCPeerConnectionBuilder::new().build(now)?;

    offerer.create_data_channel("first", None)?;
    assert_eq!(negotiation_needed_events(&mut offerer), 1);
    let offer = offerer.create_offer(None)?;
    offerer.set_local_description(now, offer.clone())?;
    answerer.set_remote_description(now, offer.clone())?;
    let answer = answerer.create_answer(None)?;
    answerer.set_local_description(now, answer.clone())?;
    offerer.set_remote_description(now, answer.clone())?;
    negotiation_needed_events(&mut offerer);
    negotiation_needed_events(&mut answerer);

    offerer.create_data_channel("second", None)?;
    assert_eq!(
        negotiation_needed_events(&mut offerer),
        0,
        "a second data channel over negotiated SCTP needs no negotiation"
    );

    offerer.release_idle_buffers();
    answerer.release_idle_buffers();
    offerer.create_data_channel("third", None)?;
    assert_eq!(
        negotiation_needed_events(&mut offerer),
        0,
        "after the release, the check still sees the negotiated data m-section"
    );
    answerer.create_data_channel("from-answerer", None)?;
    assert_eq!(negotiation_needed_events(&mut answerer), 0);

    // A new offer from either side, after the release, keeps the negotiated m-sections,
    // and the exchange completes.
    let reoffer = answerer.create_offer(None)?;
    assert_eq!(mids(&reoffer.sdp), mids(&offer.sdp), "{}", reoffer.sdp);
    answerer.set_local_description(now, reoffer.clone())?;
    offerer.set_remote_description(now, reoffer)?;
    let reanswer = offerer.create_answer(None)?;
    assert_eq!(mids(&reanswer.sdp), mids(&answer.sdp), "{}", reanswer.sdp);
    offerer.set_local_description(now, reanswer.clone())?;
    answerer.set_remote_description(now, reanswer)?;
    assert_eq!(negotiation_needed_events(&mut offerer), 0);
    assert_eq!(negotiation_needed_events(&mut answerer), 0);
    Ok(())
}
