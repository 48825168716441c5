//! The rules for caching what a read from Redis found, driven step by step: a read begins, local
//! writes happen, the read settles with what Redis answered. (The Redis round trip itself is
//! what `tests/shared_state.rs` runs against a real server.)

use std::sync::Mutex;

use super::*;

type Heard = Arc<Mutex<Vec<(String, Digest, SpecChange)>>>;

fn stored(base: &str) -> StoredSpec {
    parse_spec(format!(r#"{{"baseRef": "{base}"}}"#).as_bytes()).unwrap()
}

fn key(base: &str) -> Digest {
    stored(base).spec.key
}

/// A store with no Redis (reads are settled by hand) and a listener that records what it hears.
fn store() -> (Arc<RemoteSpecs>, Heard) {
    let heard: Heard = Arc::default();
    let record = Arc::clone(&heard);
    let listener: SpecListener = Arc::new(move |id, spec, change| {
        record.lock().unwrap().push((id.to_owned(), spec.spec.key.clone(), change));
    });
    (RemoteSpecs::new(None, None, Some(listener), crate::clock::Clock::adjustable()), heard)
}

fn put(specs: &RemoteSpecs, id: &str, base: &str) -> bool {
    futures_lite::future::block_on(specs.put(id, stored(base))).unwrap()
}

fn delete(specs: &RemoteSpecs, id: &str) -> bool {
    futures_lite::future::block_on(specs.delete(id)).unwrap()
}

fn held_key(specs: &RemoteSpecs, id: &str) -> Option<Digest> {
    specs.held(id).map(|spec| spec.spec.key.clone())
}

/// What `get` does for a stale entry: flags it and begins its re-read.
fn begin_refresh(specs: &RemoteSpecs, id: &str) -> (Read, Arc<Cached>) {
    let cached = specs.memory.get(id).unwrap();
    assert!(!cached.refreshing.swap(true, Ordering::AcqRel), "no re-read under way yet");
    (specs.begin_read(id, Some(Arc::clone(&cached))), cached)
}

#[test]
fn a_re_read_is_cached_though_other_specs_were_written_meanwhile() {
    let (specs, heard) = store();
    put(&specs, "x", "a:1");
    let (read, entry) = begin_refresh(&specs, "x");
    let others = (0..).map(|n| format!("ws-{n}")).filter(|id| stripe_of(id) != stripe_of("x"));
    for (n, other) in others.take(8).enumerate() {
        put(&specs, &other, &format!("other:{n}"));
    }
    specs.settle("x", read, Some(Arc::new(stored("a:2"))));
    assert_eq!(held_key(&specs, "x"), Some(key("a:2")), "what an orchestrator wrote to Redis is seen");
    assert!(!entry.refreshing.load(Ordering::Acquire));
    assert!(!specs.memory.get("x").unwrap().refreshing.load(Ordering::Acquire), "the next stale lookup re-reads again");
    assert_eq!(heard.lock().unwrap().as_slice(), &[("x".to_owned(), key("a:1"), SpecChange::Replaced)]);
}

#[test]
fn a_re_read_a_write_of_its_stripe_overlapped_is_dropped_and_can_run_again() {
    let (specs, _) = store();
    put(&specs, "x", "a:1");
    let neighbour = (0..).map(|n| format!("ws-{n}")).find(|id| stripe_of(id) == stripe_of("x")).unwrap();
    let (read, entry) = begin_refresh(&specs, "x");
    put(&specs, &neighbour, "b:1");
    specs.settle("x", read, Some(Arc::new(stored("a:2"))));
    assert_eq!(held_key(&specs, "x"), Some(key("a:1")), "a read that may be older than a write is not cached");
    assert!(!entry.refreshing.load(Ordering::Acquire), "and the entry is re-read at its next lookup");
    let (read, _) = begin_refresh(&specs, "x");
    specs.settle("x", read, Some(Arc::new(stored("a:2"))));
    assert_eq!(held_key(&specs, "x"), Some(key("a:2")));
}

#[test]
fn a_failed_or_abandoned_re_read_can_run_again() {
    let (specs, _) = store();
    put(&specs, "x", "a:1");
    let (read, entry) = begin_refresh(&specs, "x");
    drop(read);
    assert!(!entry.refreshing.load(Ordering::Acquire));
}

#[test]
fn a_read_never_overwrites_or_brings_back_a_newer_local_write() {
    let (specs, _) = store();
    put(&specs, "x", "a:1");
    let (read, _) = begin_refresh(&specs, "x");
    put(&specs, "x", "a:3");
    specs.settle("x", read, Some(Arc::new(stored("a:2"))));
    assert_eq!(held_key(&specs, "x"), Some(key("a:3")), "replaced meanwhile");

    let (read, _) = begin_refresh(&specs, "x");
    assert!(delete(&specs, "x"));
    specs.settle("x", read, Some(Arc::new(stored("a:2"))));
    assert_eq!(held_key(&specs, "x"), None, "deleted meanwhile");

    let read = specs.begin_read("y", None);
    put(&specs, "y", "b:3");
    specs.settle("y", read, Some(Arc::new(stored("b:2"))));
    assert_eq!(held_key(&specs, "y"), Some(key("b:3")), "a first read that a write overtook");

    let read = specs.begin_read("z", None);
    specs.settle("z", read, Some(Arc::new(stored("c:1"))));
    assert_eq!(held_key(&specs, "z"), Some(key("c:1")), "a first read with nothing in its way is cached");
}

#[test]
fn a_spec_gone_from_redis_is_forgotten_when_re_read() {
    let (specs, heard) = store();
    put(&specs, "x", "a:1");
    let (read, _) = begin_refresh(&specs, "x");
    specs.settle("x", read, None);
    assert_eq!(held_key(&specs, "x"), None);
    assert_eq!(heard.lock().unwrap().as_slice(), &[("x".to_owned(), key("a:1"), SpecChange::Removed)]);
}

#[test]
fn the_listener_hears_each_replacement_and_removal_once() {
    let (specs, heard) = store();
    assert!(!put(&specs, "x", "a:1"));
    assert!(put(&specs, "x", "a:1"), "the same spec again: nothing to tell");
    assert!(put(&specs, "x", "a:2"));
    assert!(delete(&specs, "x"));
    assert!(!delete(&specs, "x"));
    let expected = [("x".to_owned(), key("a:1"), SpecChange::Replaced), ("x".to_owned(), key("a:2"), SpecChange::Removed)];
    assert_eq!(heard.lock().unwrap().as_slice(), &expected);
}

#[test]
fn specs_no_lookup_asked_for_are_dropped_and_what_was_built_from_them_is_told() {
    let (specs, heard) = store();
    put(&specs, "idle", "a:1");
    put(&specs, "used", "b:1");
    put(&specs, "rereading", "c:1");
    heard.lock().unwrap().clear();
    let later = specs.memory.get("idle").unwrap().used_at_ms.load(Ordering::Relaxed) + IDLE_MS;
    specs.memory.get("used").unwrap().touch(later - 1);
    let (read, _) = begin_refresh(&specs, "rereading");
    specs.forget_idle(later);
    assert_eq!(held_key(&specs, "idle"), None, "asked for by no lookup for IDLE_MS");
    assert_eq!(held_key(&specs, "used"), Some(key("b:1")), "a lookup asked for it within IDLE_MS");
    assert_eq!(held_key(&specs, "rereading"), Some(key("c:1")), "a re-read under way settles it");
    assert_eq!(heard.lock().unwrap().as_slice(), &[("idle".to_owned(), key("a:1"), SpecChange::Replaced)]);
    drop(read);
}

#[test]
fn memory_is_searched_for_idle_specs_once_a_sweep_interval() {
    let (specs, _) = store();
    put(&specs, "x", "a:1");
    let start = specs.swept_at_ms.load(Ordering::Relaxed).max(specs.memory.get("x").unwrap().used_at_ms.load(Ordering::Relaxed));
    specs.sweep_if_due(start + IDLE_MS);
    assert_eq!(held_key(&specs, "x"), None, "the first sweep that is due drops an idle spec");
    put(&specs, "x", "a:1");
    specs.sweep_if_due(start + IDLE_MS + SWEEP_EVERY_MS - 1);
    assert_eq!(held_key(&specs, "x"), Some(key("a:1")), "idle again, but the next sweep is not due");
    specs.sweep_if_due(start + IDLE_MS + SWEEP_EVERY_MS);
    assert_eq!(held_key(&specs, "x"), None);
}

#[test]
fn without_redis_memory_is_the_truth_and_nothing_is_dropped_for_idleness() {
    let (specs, _) = store();
    put(&specs, "x", "a:1");
    specs.swept_at_ms.store(0, Ordering::Relaxed);
    specs.memory.get("x").unwrap().used_at_ms.store(0, Ordering::Relaxed);
    let found = futures_lite::future::block_on(specs.get("x")).unwrap();
    assert_eq!(found.map(|spec| spec.spec.key.clone()), Some(key("a:1")));
    assert_eq!(held_key(&specs, "x"), Some(key("a:1")), "a lookup without Redis sweeps nothing");
}
