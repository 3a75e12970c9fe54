use transactional::transactional;

#[transactional]
async fn save(id: u64) {
    let _ = id;
}

fn main() {
    let _ = save(1);
}
