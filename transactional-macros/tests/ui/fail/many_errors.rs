//! Every problem is reported at once: option errors and fn errors together.
use transactional::transactional;

#[transactional(propagation = "REQUIRE_NEW", timeout = 0, isolaton = "SERIALIZABLE")]
fn save(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {
    let _ = save(1);
}
