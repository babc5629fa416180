//! The runtime's [`ConnectionSource`] over the encrypted store: a recipe's
//! connection name is resolved through the environment's bindings, then the
//! stored value is decrypted with the workspace key.

use std::sync::{Arc, Mutex};

use wrun_runtime::{Connection, ConnectionSource};

use crate::keys::MasterKey;
use crate::store_sqlite::Store;

/// Connections of one workspace and environment.
pub(crate) struct StoreConnections {
    store: Arc<Mutex<Store>>,
    workspace: String,
    environment: String,
    key: MasterKey,
}

impl StoreConnections {
    pub(crate) fn new(
        store: Arc<Mutex<Store>>,
        workspace: &str,
        environment: &str,
        key: MasterKey,
    ) -> StoreConnections {
        StoreConnections {
            store,
            workspace: workspace.into(),
            environment: environment.into(),
            key,
        }
    }
}

#[async_trait::async_trait]
impl ConnectionSource for StoreConnections {
    async fn connection(&self, name: &str) -> Result<Option<Connection>, String> {
        let store = self
            .store
            .lock()
            .map_err(|_| "the store lock is poisoned".to_string())?;
        store
            .bound_connection(&self.workspace, &self.environment, name, &self.key)
            .map_err(|e| e.to_string())
    }
}
