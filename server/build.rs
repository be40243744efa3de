// sqlx::migrate! embeds the SQL of `migrations/` (at the workspace root) at compile time, and
// stable Rust cannot tell cargo that a proc macro read those files: without this, an edited or
// added migration would not rebuild the server.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
