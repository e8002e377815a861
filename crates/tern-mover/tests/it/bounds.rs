//! The job API refuses numbers no one means (a due time centuries ahead, a period of half a million
//! years), saying the allowed range, instead of scheduling them.

use crate::jobs::Fleet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_times_and_periods_are_refused_with_the_allowed_range() {
    let fleet = Fleet::new(0, None).await;
    let staging = fleet.area.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let staging = staging.display().to_string();
    let cases = [
        (
            serde_json::json!({ "at_ms": 33_324_134_400_000_u64 }),
            "the start time 3026-01-01T00:00:00Z is more than a year ahead: give a time up to ",
        ),
        (serde_json::json!({ "at_ms": u64::MAX }), "more than a year ahead"),
        // The admin UI's form takes any date: a past one is refused as the command line refuses it.
        (
            serde_json::json!({ "at_ms": 946_684_800_000_u64 }),
            "the start time 2000-01-01T00:00:00Z is in the past",
        ),
        (
            serde_json::json!({ "every_s": u64::MAX }),
            "the repeat period must be from 1 s to 366 days (1 to 31622400 seconds)",
        ),
        (serde_json::json!({ "every_s": 0 }), "1 to 31622400 seconds"),
        (
            serde_json::json!({ "retry_delay_s": u64::MAX }),
            "the retry delay must be from 0 s to a day (0 to 86400 seconds)",
        ),
        (serde_json::json!({ "retries": u32::MAX }), "0 to 100"),
    ];
    for (fields, range) in cases {
        let mut body = serde_json::json!({ "kind": "publish", "site": "www", "staging": staging });
        for (name, value) in fields.as_object().expect("fields") {
            body[name] = value.clone();
        }
        let answer = fleet.api("POST", "/api/jobs", Some(body.clone())).await;
        assert!(answer.get("id").is_none(), "{body} was accepted: {answer}");
        assert!(
            answer.to_string().contains(range),
            "{body}: the answer says the range: {answer}"
        );
        for field in ["at_ms", "every_s", "retry_delay_s", "since the epoch"] {
            assert!(!answer.to_string().contains(field), "{body}: operator words: {answer}");
        }
    }
    let jobs = fleet.api("GET", "/api/jobs", None).await;
    assert_eq!(jobs.as_array().map(Vec::len), Some(0), "nothing was scheduled: {jobs}");
    // Within the bounds: a yearly job, a year ahead less a minute.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let body = serde_json::json!({ "kind": "publish", "site": "www", "staging": staging,
        "at_ms": now_ms + 365 * 24 * 3600 * 1000, "every_s": 366 * 24 * 3600 });
    let answer = fleet.api("POST", "/api/jobs", Some(body)).await;
    assert!(answer["id"].is_string(), "{answer}");
}
