pub use transactional_macros::transactional;
pub use transactional_runtime::*;
