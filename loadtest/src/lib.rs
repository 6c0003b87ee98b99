//! Chorus load-test harness and WebRTC test client.
