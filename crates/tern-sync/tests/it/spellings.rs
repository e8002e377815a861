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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_reached_through_a_link_is_fresh_under_the_links_name_too() {
    let world = World::new(2).await;
    let site = world.site();
    for (release, body) in [("1", "release one"), ("2", "release two")] {
        std::fs::create_dir_all(site.join("releases").join(release)).expect("mkdir");
        std::fs::write(site.join("releases").join(release).join("index.html"), body).expect("write");
    }
    std::fs::write(site.join("target.txt"), "t1").expect("write");
    std::os::unix::fs::symlink("target.txt", site.join("alias.txt")).expect("link");
    std::os::unix::fs::symlink("releases/1", site.join("current")).expect("link");
    world.scan().await;
    world.settled().await;
    for edge in 0..2 {
        assert_eq!(&world.get(edge, "/alias.txt").await.body[..], b"t1");
        assert_eq!(&world.get(edge, "/current/index.html").await.body[..], b"release one");
    }
    // The file behind a link changes, and the deploy's "current" link is swapped atomically.
    std::fs::write(site.join("target.txt"), "t2").expect("write");
    std::os::unix::fs::symlink("releases/2", site.join("current.new")).expect("link");
    std::fs::rename(site.join("current.new"), site.join("current")).expect("swap");
    world.scan().await;
    world.settled().await;
    for edge in 0..2 {
        assert_eq!(
            &world.get(edge, "/alias.txt").await.body[..],
            b"t2",
            "edge {edge}: the link's name kept the old file"
        );
        assert_eq!(
            &world.get(edge, "/current/index.html").await.body[..],
            b"release two",
            "edge {edge}: the swapped link kept the old release"
        );
    }
}
