//! `ferry inject`: adds ferry's init container, sidecar and volumes to a Pod, Job or pod template.

use crate::cli::InjectArgs;
use crate::error::{Error, Result};

pub async fn run(_args: &InjectArgs) -> Result<String> {
    Err(Error::Yaml("inject is not implemented yet".into()))
}
