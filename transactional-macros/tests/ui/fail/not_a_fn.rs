use transactional::transactional;

#[transactional]
struct OrderService {
    id: u64,
}

#[transactional(propagation = "REQUIRED")]
enum Mode {
    A,
}

#[transactional]
const LIMIT: u32 = 3;

#[transactional]
mod repository {}

fn main() {
    let _ = (OrderService { id: 1 }.id, Mode::A, LIMIT);
}
