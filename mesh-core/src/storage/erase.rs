//! [`EraseStoreError`]: a store whose errors are [`StoreError`]. TODO(helper).

use super::Store;

/// Wraps a store so its errors become [`super::StoreError`].
#[derive(Debug)]
pub struct EraseStoreError<S: Store>(pub S);
