//! One file, several spellings of its URL, through agent → sync → edge (issue 9, fault 3): after a change,
//! no spelling an edge holds serves the old content.

use crate::World;

#[tokio::test]
async fn every_spelling_of_a_changed_file_is_purged() {
    let world = World::new(2).await;
    std::fs::write(world.site().join("~x.html"), "tilde 1").expect("write");
    std::fs::write(world.site().join("a+b.html"), "plus 1").expect("write");
    world.scan().await;
    world.settled().await;
    let spellings = [
        ("/~x.html", "tilde"),
        ("/%7Ex.html", "tilde"),
        ("/%7ex.html", "tilde"),
        ("/a+b.html", "plus"),
        ("/a%2Bb.html", "plus"),
        ("/a%2bb.html", "plus"),
    ];
    // Clients fill each edge under every spelling.
    for edge in 0..2 {
        for (path, name) in spellings {
            let got = world.get(edge, path).await;
            assert_eq!(
                String::from_utf8_lossy(&got.body),
                format!("{name} 1"),
                "edge {edge} {path}"
            );
        }
    }
    std::fs::write(world.site().join("~x.html"), "tilde 2").expect("write");
    std::fs::write(world.site().join("a+b.html"), "plus 2").expect("write");
    world.scan().await;
    world.settled().await;
    for edge in 0..2 {
        for (path, name) in spellings {
            let got = world.get(edge, path).await;
            assert_eq!(
                String::from_utf8_lossy(&got.body),
                format!("{name} 2"),
                "edge {edge} still served the old content under {path}"
            );
        }
    }
}
