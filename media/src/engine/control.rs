//! The control half of the engine: commands from the `Sfu` handles (join, answer, role
//! change, ICE restart, mute, leave, slot map, relay subscriptions), and removing a
//! connection with everything that refers to it.

use super::*;

impl Engine {
    /// One request from an [`crate::Sfu`] handle; the reply goes out on its channel.
    pub(crate) fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Join {
                room,
                pid,
                can_publish,
                ticket,
                reply,
            } => {
                let result = self.join(room, pid, can_publish, ticket, now);
                let _ = reply.send(result);
            }
            Command::Answer { pid, sdp, reply } => {
                let result = self.with_peer(pid, |p| p.apply_answer(sdp, now));
                if let Some(&idx) = self.by_pid.get(&pid) {
                    self.after_io(idx, now);
                    self.replay_early_checks(idx, now);
                }
                let _ = reply.send(result);
            }
            Command::SetCanPublish {
                pid,
                can_publish,
                reply,
            } => {
                let result = self.set_can_publish(pid, can_publish, now);
                let _ = reply.send(result);
            }
            Command::RestartIce { pid, reply } => {
                let result = self.restart_ice(pid, now);
                let _ = reply.send(result);
            }
            Command::SetMuted { pid, muted, ticket } => {
                let current = self.with_peer(pid, |p| Ok(p.ticket == ticket));
                if current.unwrap_or(false) {
                    let _ = self.router.set_muted(pid, muted, now);
                    self.forward_router_events(now);
                }
            }
            Command::SlotMap { room, reply } => {
                let map = self
                    .router
                    .slot_map(room)
                    .map(|(slots, spare)| (slots.to_vec(), spare));
                let _ = reply.send(Ok(map));
            }
            Command::Leave { pid } => {
                if let Some(&idx) = self.by_pid.get(&pid) {
                    self.remove_peer(idx, None, now);
                }
            }
            Command::RelayAddSubscriber { room, node } => self.relay_subscribe(room, node, true),
            Command::RelayRemoveSubscriber { room, node } => {
                self.relay_subscribe(room, node, false);
            }
        }
    }

    pub(super) fn with_peer<T>(
        &mut self,
        pid: ParticipantId,
        f: impl FnOnce(&mut Peer) -> Result<T, MediaError>,
    ) -> Result<T, MediaError> {
        let idx = *self
            .by_pid
            .get(&pid)
            .ok_or(MediaError::UnknownParticipant(pid))?;
        let peer = self
            .peer_mut(idx)
            .ok_or(MediaError::UnknownParticipant(pid))?;
        f(peer)
    }

    pub(super) fn join(
        &mut self,
        room: RoomKey,
        pid: ParticipantId,
        can_publish: bool,
        ticket: u64,
        now: Instant,
    ) -> Result<Offer, MediaError> {
        if self.by_pid.contains_key(&pid) {
            return Err(MediaError::AlreadyJoined(pid));
        }
        if self.by_pid.len() >= MAX_PEERS {
            return Err(MediaError::Full);
        }
        // A participant that was heard from another node until now (it moved here) is
        // local from now on.
        self.drop_remote_source(pid, now);
        let params = PeerParams {
            certificate: &self.certificate,
            announce_ips: &self.announce_ips,
            port: self.ice_local_addr.port(),
            slots: self.cfg.slots,
            connect_timeout: self.cfg.connect_timeout,
        };
        // SSRCs only need to be unique within one connection; random ones also keep a
        // client from inferring anything across connections.
        let ssrcs = std::iter::repeat_with(rand::random::<u32>).filter(|s| *s != 0);
        let (mut peer, offer) = Peer::new(pid, can_publish, &params, ssrcs, now)?;
        peer.ticket = ticket;
        if self.by_ufrag.contains_key(&peer.ufrag) {
            return Err(MediaError::Rtc("ICE ufrag collision, retry".into()));
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.peers.push(None);
                (self.peers.len() - 1) as u32
            }
        };
        if self
            .router
            .add_participant(pid, room, can_publish, idx, now)
            .is_err()
        {
            self.free.push(idx);
            return Err(MediaError::AlreadyJoined(pid));
        }
        self.by_ufrag.insert(peer.ufrag.clone(), idx);
        self.by_pid.insert(pid, idx);
        if can_publish {
            self.publishers += 1;
        }
        self.peers[idx as usize] = Some(Box::new(peer));
        self.forward_router_events(now);
        self.after_io(idx, now);
        self.update_gauges();
        Ok(offer)
    }

    pub(super) fn set_can_publish(
        &mut self,
        pid: ParticipantId,
        can_publish: bool,
        now: Instant,
    ) -> Result<Offer, MediaError> {
        let was = self.with_peer(pid, |p| Ok(p.can_publish))?;
        let offer = self.with_peer(pid, |p| {
            p.set_can_publish(can_publish);
            p.make_offer(now)
        })?;
        let _ = self.router.set_can_publish(pid, can_publish, now);
        self.forward_router_events(now);
        if was && !can_publish {
            self.publishers -= 1;
        } else if !was && can_publish {
            self.publishers += 1;
        }
        if let Some(&idx) = self.by_pid.get(&pid) {
            self.after_io(idx, now);
        }
        self.update_gauges();
        Ok(offer)
    }

    pub(super) fn restart_ice(
        &mut self,
        pid: ParticipantId,
        now: Instant,
    ) -> Result<Offer, MediaError> {
        let idx = *self
            .by_pid
            .get(&pid)
            .ok_or(MediaError::UnknownParticipant(pid))?;
        let old = self.with_peer(pid, |p| Ok(p.ufrag.clone()))?;
        let offer = self.with_peer(pid, |p| {
            p.pc.restart_ice();
            let offer = p.make_offer(now)?;
            // Checks with the new credentials can arrive before the client's answer.
            p.remote_ice_known = false;
            Ok(offer)
        })?;
        let new = self.with_peer(pid, |p| Ok(p.ufrag.clone()))?;
        if self.by_ufrag.get(&old) == Some(&idx) {
            self.by_ufrag.remove(&old);
        }
        self.by_ufrag.insert(new, idx);
        self.after_io(idx, now);
        self.update_gauges();
        Ok(offer)
    }

    /// Removes a connection and everything that refers to it.
    pub(super) fn remove_peer(&mut self, idx: u32, reason: Option<DisconnectReason>, now: Instant) {
        // Say goodbye (DTLS close_notify) while the connection can still send.
        if let Some(peer) = self.peer_mut(idx) {
            let _ = peer.pc.close();
        }
        self.flush(idx);
        let Some(peer) = self.peers.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(idx);
        if self.by_pid.get(&peer.pid) == Some(&idx) {
            self.by_pid.remove(&peer.pid);
            self.owners.release(peer.pid, peer.ticket);
        }
        for a in &peer.addrs {
            if self.by_addr.get(a) == Some(&idx) {
                self.by_addr.remove(a);
            }
        }
        if self.by_ufrag.get(&peer.ufrag) == Some(&idx) {
            self.by_ufrag.remove(&peer.ufrag);
        }
        if peer.can_publish {
            self.publishers -= 1;
        }
        if peer.connected {
            self.connected -= 1;
        }
        self.router.remove_participant(peer.pid, now);
        self.forward_router_events(now);
        if let Some(reason) = reason {
            self.counters.disconnects.fetch_add(1, Relaxed);
            self.events.send(SfuEvent::Disconnected {
                pid: peer.pid,
                reason,
            });
        }
        self.update_gauges();
    }

    pub(super) fn update_gauges(&self) {
        let c = &self.counters;
        c.participants.store(self.by_pid.len() as u64, Relaxed);
        c.publishers.store(self.publishers, Relaxed);
        c.rooms.store(self.router.room_count() as u64, Relaxed);
        c.remote_addrs.store(self.by_addr.len() as u64, Relaxed);
        c.ufrags.store(self.by_ufrag.len() as u64, Relaxed);
        c.timer_entries.store(self.timers.len() as u64, Relaxed);
        c.connected.store(self.connected, Relaxed);
        c.subscriptions
            .store(self.router.subscription_count() as u64, Relaxed);
    }
}
