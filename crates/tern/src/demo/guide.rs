//! What the running demo prints: where each role is, the admin web UI's address and token, and the command
//! lines to paste into another terminal (publish a change, roll it back, look at the edges).

use anyhow::Result;

use super::community::COMMUNITY;
use super::site;
use super::system::System;

/// Prints the guide to the running system.
pub fn print(system: &System) -> Result<()> {
    let paths = &system.paths;
    println!("tern demo is running: one site, published by the mover to three nodes, served by three edges.");
    println!("Its logs go to {}\n", paths.log.display());
    println!(
        "  staging   {}   (the site as its authors edit it)",
        paths.staging.display()
    );
    println!(
        "  mover     http://{}   tern mover: publishes staging to the nodes",
        system.mover.listen
    );
    if let Some(ui) = system.ui_url() {
        println!("  admin UI  {ui}   log in with the token {}", system.admin_token);
        println!(
            "            (the token is the last line of {})",
            paths.admin_key.display()
        );
    }
    for (index, origin) in system.origins.iter().enumerate() {
        println!(
            "  node {}    tern serve http://{}/ of {}",
            index + 1,
            origin.listen,
            paths.node_live(index + 1).display()
        );
    }
    for (index, edge) in system.edges.iter().enumerate() {
        let admin = edge
            .admin
            .map(|a| format!("   admin http://{a}/status"))
            .unwrap_or_default();
        println!(
            "  edge {}    http://{}/   in front of node {}{admin}",
            index + 1,
            edge.listen,
            index + 1
        );
    }
    println!(
        "  registry  {}   tern registry: the edges' community `{COMMUNITY}` (cluster key {})",
        system.registry_url(),
        paths.cluster_key.display()
    );
    if let Some(admin) = system.sync.admin {
        println!("  sync      http://{admin}/status   purges and prefetches every edge after each commit");
    }
    let community = &system.community;
    println!(
        "\nThe three edges are one cache community, `{COMMUNITY}` (registry {}): master {} at epoch {}, peers {}.\n\
         Each page is stored once, by the edge that owns it by the community's allocation table; the other edges \
         fetch it from the owner\n(their Cache-Status says detail=community-owner), so the nodes see each page once. \
         Each edge's /status shows the community:",
        system.registry_url(),
        community.master,
        community.epoch,
        community.peers.join(", ")
    );
    for admin in system.edge_admins()? {
        println!("  curl -s http://{admin}/status");
    }

    let edges: Vec<String> = system.edges.iter().map(|edge| edge.listen.to_string()).collect();
    let first = edges.first().cloned().unwrap_or_default();
    println!(
        "\nThe site is http://{host}/: ask any edge for it with -H 'Host: {host}' (what DNS pointing {host} at the edges \
         would do).\nThe nodes let the edges keep every page for an hour ({cc}); only the mover's purge brings a change \
         sooner.",
        host = site::HOST,
        cc = site::CACHE_CONTROL
    );
    println!("\nFrom another terminal, change the page and publish it; every edge serves the new page at once:");
    println!(
        "  echo '<p>published at '\"$(date +%T)\"'</p>' >> {}",
        shell_word(&paths.staging.join("index.html").display().to_string())
    );
    println!("  {}", shell_line(&system.publish_command()?));
    println!(
        "  for edge in {}; do curl -s -H 'Host: {}' http://$edge/ | tail -1; done",
        edges.join(" "),
        site::HOST
    );
    println!("Bring the previous page back everywhere:");
    println!("  {}", shell_line(&system.rollback_command()?));
    println!(
        "  for edge in {}; do curl -s -H 'Host: {}' http://$edge/ | tail -1; done",
        edges.join(" "),
        site::HOST
    );
    if let Some(ui) = system.ui_url() {
        println!("The admin UI ({ui}) shows each job, its nodes and when the edges were fresh.");
    }

    let purge = &system.purge_token;
    let first_admin = system
        .edges
        .first()
        .and_then(|edge| edge.admin)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let host = site::HOST;
    println!("\nThe edges:");
    println!(
        "  for edge in {}; do curl -si -H 'Host: {host}' http://$edge/news.html | grep -i cache-status; done",
        edges.join(" ")
    );
    println!("    # the page's owner misses once (fwd=miss; stored), then hits; the others: detail=community-owner");
    println!(
        "  curl -si -H 'Host: {host}' -H 'Range: bytes=0-15' http://{first}/index.html  # ranges come from the cache"
    );
    println!("  curl -s -X PURGE -H 'Host: {host}' -H 'Authorization: Bearer {purge}' http://{first}/news.html");
    println!(
        "  curl -s -H 'Authorization: Bearer {purge}' -d '{{\"keys\":[\"static\"]}}' http://{first_admin}/purge   # by surrogate key"
    );
    println!("  curl -s http://{first_admin}/metrics | grep tern_edge_requests");
    Ok(())
}

/// A command line as a shell reads it.
fn shell_line(words: &[String]) -> String {
    words.iter().map(|word| shell_word(word)).collect::<Vec<_>>().join(" ")
}

/// `word` as one shell word: as it is when it holds nothing the shell treats specially, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_survive_the_shell() {
        assert_eq!(shell_word("/tmp/tern-demo-1/staging"), "/tmp/tern-demo-1/staging");
        assert_eq!(shell_word("/tmp/my demo"), "'/tmp/my demo'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(
            shell_line(&["tern".into(), "--site".into(), "a b".into()]),
            "tern --site 'a b'"
        );
    }
}
