//! The conformance suite on the embedded backend. Every instance the factory
//! builds opens the same data directory, as separate processes would.

use openhqm_core::backends::embedded::EmbeddedBackend;
use openhqm_core::backends::embedded::EmbeddedStore;
use openhqm_core::conformance::{Options, QueueFactory, StoreFactory};
use openhqm_core::queue::QueueBackend;
use openhqm_core::store::ResultStore;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

const MAX_MESSAGE_BYTES: usize = 256 * 1024;

fn data_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("openhqm-conformance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("data dir");
        dir
    })
    .clone()
}

fn queues() -> QueueFactory {
    Arc::new(|_identity| {
        Box::pin(async {
            Arc::new(
                EmbeddedBackend::open(&data_dir(), MAX_MESSAGE_BYTES)
                    .expect("open embedded backend"),
            ) as Arc<dyn QueueBackend>
        })
    })
}

fn stores() -> StoreFactory {
    Arc::new(|| {
        Box::pin(async {
            Arc::new(EmbeddedStore::open(&data_dir()).expect("open store")) as Arc<dyn ResultStore>
        })
    })
}

fn options() -> Options {
    Options {
        max_message_bytes: MAX_MESSAGE_BYTES,
        ..Options::default()
    }
}

openhqm_core::queue_conformance_tests!(true, queues(), options());
openhqm_core::store_conformance_tests!(true, stores());
