pub use transactional_runtime::*;
pub use transactional_macros::transactional;
