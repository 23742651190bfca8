//! The engine suite against both engines, and what `open` promises about engine kinds.

use std::path::Path;
use std::sync::Arc;

use tern_store::suite::TempDir;
use tern_store::{Engine, EngineKind, StoreError};

fn open(kind: EngineKind) -> impl Fn(&Path) -> Arc<dyn Engine> {
    move |dir| tern_store::open(kind, dir).unwrap_or_else(|e| panic!("open {kind}: {e}"))
}

mod redb {
    tern_store::engine_suite!(super::open(tern_store::EngineKind::Redb));
}

mod sled {
    tern_store::engine_suite!(super::open(tern_store::EngineKind::Sled));
}

mod log {
    tern_store::engine_suite!(super::open(tern_store::EngineKind::Log));
}

/// The suite again on tiny segments, so sealing and compaction run inside every case.
mod log_small_segments {
    tern_store::engine_suite!(
        |dir: &std::path::Path| -> std::sync::Arc<dyn tern_store::Engine> {
            std::sync::Arc::new(tern_store::LogEngine::open_with(dir, 4096).expect("open"))
        }
    );
}

#[test]
fn engine_kind_round_trips_through_its_name() {
    for kind in EngineKind::ALL {
        assert_eq!(kind.to_string().parse::<EngineKind>(), Ok(kind));
    }
    assert_eq!("redb".parse::<EngineKind>(), Ok(EngineKind::Redb));
    assert_eq!("sled".parse::<EngineKind>(), Ok(EngineKind::Sled));
    assert_eq!("log".parse::<EngineKind>(), Ok(EngineKind::Log));
    assert!("rocksdb".parse::<EngineKind>().is_err());
    assert!("Redb".parse::<EngineKind>().is_err());
}

#[test]
fn open_refuses_a_directory_of_the_other_engine() {
    for (kind, other) in [
        (EngineKind::Redb, EngineKind::Sled),
        (EngineKind::Sled, EngineKind::Redb),
        (EngineKind::Log, EngineKind::Redb),
        (EngineKind::Redb, EngineKind::Log),
    ] {
        let dir = TempDir::new("wrong-engine");
        drop(tern_store::open(kind, dir.path()).expect("open"));
        match tern_store::open(other, dir.path()) {
            Err(StoreError::WrongEngine { found, wanted, .. }) => {
                assert_eq!((found, wanted), (kind, other));
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("{other} opened a {kind} directory"),
        }
        drop(tern_store::open(kind, dir.path()).expect("the right engine still opens"));
    }
}
