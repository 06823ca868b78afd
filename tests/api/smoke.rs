use contact_discovery::protocol::Format;

use crate::helpers::spawn_app;

#[tokio::test]
async fn registered_numbers_are_found_in_both_encodings() {
    let app = spawn_app().await;
    app.change(
        &["+4915112345678", "+15550001111", "+447700900001"],
        &[],
        &[],
    )
    .await;
    app.change(&[], &[], &["+447700900001"]).await;
    let asked = [
        "+15550009999",
        "+4915112345678",
        "+447700900001",
        "+15550001111",
    ];
    for format in [Format::Binary, Format::Json] {
        assert_eq!(app.discover(format, "alice", &asked).await, vec![1, 3]);
    }
    app.stop().await;
}
