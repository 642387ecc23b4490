use super::*;

fn response(id: u64) -> NetEvent {
    NetEvent::Response { id, bytes: vec![] }
}

fn gossip(token: u64) -> NetEvent {
    NetEvent::Gossip { from: PeerId::random(), token, bytes: vec![] }
}

#[test]
fn peer_scoring_is_valid_and_a_peer_over_its_rate_is_held_to_it() {
    let (params, thresholds) = peer_score();
    assert!(params.validate().is_ok() && thresholds.validate().is_ok());
    let topic = &params.topics[&IdentTopic::new(TOPIC).hash()];
    assert!(topic.invalid_message_deliveries_weight < 0.0, "rejected messages count against their forwarder");
    let limit = limiter(REQUESTS_PER_SEC, REQUESTS_BURST);
    let (flooder, other) = (PeerId::random(), PeerId::random());
    let allowed = (0..REQUESTS_BURST * 2).filter(|_| limit.check_key(&flooder).is_ok()).count();
    assert!(allowed >= REQUESTS_BURST as usize && allowed < 2 * REQUESTS_BURST as usize, "{allowed}");
    assert!(limit.check_key(&other).is_ok(), "one peer's flood does not limit another");
}

#[test]
fn awaiting_gives_up_the_oldest_beyond_its_cap() {
    let mut a = Awaiting::new(2);
    assert_eq!(a.hold("x"), (1, None));
    assert_eq!(a.hold("y"), (2, None));
    assert_eq!(a.hold("z"), (3, Some("x")));
    assert_eq!(a.take(1), None);
    assert_eq!(a.take(3), Some("z"));
    assert_eq!(a.len(), 1);
    a.retain(|v| *v != "y");
    assert_eq!(a.len(), 0);
}

#[test]
fn drop_count_warns_at_the_first_drop_then_at_most_once_per_interval() {
    let t0 = Instant::now();
    let mut d = DropCount::default();
    assert_eq!(d.note(t0), Some(1));
    assert_eq!(d.note(t0 + Duration::from_secs(1)), None);
    assert_eq!(d.note(t0 + DROP_WARN_EVERY - Duration::from_millis(1)), None);
    assert_eq!(d.note(t0 + DROP_WARN_EVERY), Some(3));
    assert_eq!(d.total, 4);
}

#[tokio::test]
async fn a_full_channel_sheds_what_the_core_may_miss_and_holds_what_it_must_see() {
    let (tx, mut rx) = mpsc::channel(2);
    let mut to_core = ToCore::new(tx);
    assert!(to_core.offer(gossip(1)).is_ok());
    assert!(to_core.offer(gossip(2)).is_ok());
    assert!(matches!(to_core.offer(gossip(3)), Err(NetEvent::Gossip { token: 3, .. })));
    to_core.deliver(response(10));
    to_core.deliver(response(11));
    assert!(to_core.has_backlog());
    // Room again: held events go first, in order, and a lossy one no longer has to be shed.
    assert!(matches!(rx.recv().await, Some(NetEvent::Gossip { token: 1, .. })));
    assert!(matches!(rx.recv().await, Some(NetEvent::Gossip { token: 2, .. })));
    let permit = to_core.tx.clone().reserve_owned().await;
    to_core.flush(permit);
    assert!(!to_core.has_backlog());
    assert!(matches!(rx.recv().await, Some(NetEvent::Response { id: 10, .. })));
    assert!(matches!(rx.recv().await, Some(NetEvent::Response { id: 11, .. })));
    assert!(to_core.offer(gossip(4)).is_ok());
}

#[tokio::test]
async fn a_held_event_is_not_overtaken_by_a_later_one_the_core_must_see() {
    let (tx, mut rx) = mpsc::channel(1);
    let mut to_core = ToCore::new(tx);
    to_core.deliver(response(1));
    to_core.deliver(response(2));
    assert!(matches!(rx.recv().await, Some(NetEvent::Response { id: 1, .. })));
    // The channel has room, but 2 is held: 3 must queue behind it.
    to_core.deliver(response(3));
    let permit = to_core.tx.clone().reserve_owned().await;
    to_core.flush(permit);
    assert!(matches!(rx.recv().await, Some(NetEvent::Response { id: 2, .. })));
    let permit = to_core.tx.clone().reserve_owned().await;
    to_core.flush(permit);
    assert!(matches!(rx.recv().await, Some(NetEvent::Response { id: 3, .. })));
}

#[test]
fn the_swarm_is_not_polled_while_the_backlog_is_full_and_a_gone_core_clears_it() {
    let (tx, rx) = mpsc::channel(1);
    let mut to_core = ToCore::new(tx);
    for id in 0..=MAX_EVENT_BACKLOG as u64 {
        assert!(to_core.has_room());
        to_core.deliver(response(id));
    }
    assert!(!to_core.has_room());
    drop(rx);
    to_core.flush(Err(mpsc::error::SendError(())));
    assert!(!to_core.has_backlog() && to_core.has_room());
}
