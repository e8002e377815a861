//! Reading a body whole within a bound, and giving it back as a stream when it is over the bound.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tern_http::{Body, BoxError};

/// A body read up to a bound.
pub(crate) enum Bounded {
    /// The whole body, within the bound.
    Whole(Bytes),
    /// Over the bound: what was read, and the rest still to come.
    Over {
        /// Chunks read so far.
        head: Vec<Bytes>,
        /// The rest of the body.
        rest: Body,
    },
    /// The body failed (cut off, idle too long).
    Failed(BoxError),
}

/// Reads `body` whole if it holds at most `max` bytes.
pub(crate) async fn read_bounded(mut body: Body, max: usize) -> Bounded {
    let mut head: Vec<Bytes> = Vec::new();
    let mut read = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(error)) => return Bounded::Failed(error),
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                read = read.saturating_add(data.len());
                head.push(data);
                if read > max {
                    return Bounded::Over { head, rest: body };
                }
            }
        }
    }
    if head.len() == 1 {
        return Bounded::Whole(head.remove(0));
    }
    let mut whole = BytesMut::with_capacity(read);
    for chunk in head {
        whole.extend_from_slice(&chunk);
    }
    Bounded::Whole(whole.freeze())
}

/// `head` followed by `rest`, as one streaming body (a task copies; an error of `rest` cuts it).
pub(crate) fn chain(head: Vec<Bytes>, mut rest: Body) -> Body {
    let (sender, body) = tern_http::channel(8, None);
    tokio::spawn(async move {
        for chunk in head {
            if sender.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        while let Some(frame) = rest.frame().await {
            let chunk = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => Ok(data),
                    Err(_) => continue,
                },
                Err(error) => Err(error),
            };
            let failed = chunk.is_err();
            if sender.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    body
}
