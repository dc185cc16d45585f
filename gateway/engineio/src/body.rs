//! The body of every HTTP answer: bytes known in full, and, for an answer
//! forwarded from another node, a receipt that tells that node once hyper
//! has taken the bytes for the client's connection.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use thiserror::Error;

/// Tells, once, whether an answer was handed to the client's connection:
/// `true` when hyper took its bytes, `false` when it was dropped before
/// (the connection went away first, or whoever held it gave up).
pub struct Receipt {
    settle: Option<Box<dyn FnOnce(bool) + Send>>,
    /// Past this the answer is no longer the client's to get (its owner
    /// has taken the packets back): the body fails instead.
    expires: Option<Instant>,
}

impl Receipt {
    pub fn new(settle: impl FnOnce(bool) + Send + 'static) -> Self {
        Receipt {
            settle: Some(Box::new(settle)),
            expires: None,
        }
    }

    pub fn expiring(mut self, at: Instant) -> Self {
        self.expires = Some(at);
        self
    }

    fn expired(&self) -> bool {
        self.expires.is_some_and(|at| Instant::now() >= at)
    }

    pub fn settle(mut self, delivered: bool) {
        if let Some(settle) = self.settle.take() {
            settle(delivered)
        }
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle(false)
        }
    }
}

/// A forwarded answer taken too late: the connection is dropped rather
/// than the client given packets its owner already took back.
#[derive(Debug, Error)]
#[error("the forwarded answer expired before it could be written")]
pub struct AnswerExpired;

impl std::fmt::Debug for Receipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Receipt")
    }
}

#[derive(Debug, Default)]
pub struct Body {
    data: Bytes,
    receipt: Option<Receipt>,
}

impl Body {
    pub fn new(data: Bytes) -> Self {
        Body {
            data,
            receipt: None,
        }
    }

    /// A body whose receipt is settled when hyper takes its bytes.
    pub fn with_receipt(data: Bytes, receipt: Option<Receipt>) -> Self {
        Body { data, receipt }
    }

    /// The bytes, and the receipt still to settle (an answer relayed on
    /// to another node passes its receipt along).
    pub fn into_parts(self) -> (Bytes, Option<Receipt>) {
        (self.data, self.receipt)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = AnswerExpired;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AnswerExpired>>> {
        let this = self.get_mut();
        if let Some(receipt) = this.receipt.take() {
            if receipt.expired() {
                receipt.settle(false);
                return Poll::Ready(Some(Err(AnswerExpired)));
            }
            receipt.settle(true);
        }
        if this.data.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut this.data)))))
    }

    fn is_end_stream(&self) -> bool {
        // With a receipt pending, hyper must poll once more to fire it.
        self.data.is_empty() && self.receipt.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    fn recorded() -> (Receipt, Arc<Mutex<Vec<bool>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let receipt = Receipt::new(move |delivered| log.lock().unwrap().push(delivered));
        (receipt, seen)
    }

    #[tokio::test]
    async fn a_receipt_is_settled_once_delivered_when_the_bytes_are_taken() {
        let (receipt, seen) = recorded();
        let body = Body::with_receipt(Bytes::from_static(b"4hello"), Some(receipt));
        assert!(seen.lock().unwrap().is_empty());
        let bytes = body.collect().await.map(|c| c.to_bytes());
        assert_eq!(bytes.ok().as_deref(), Some(&b"4hello"[..]));
        assert_eq!(*seen.lock().unwrap(), [true]);
    }

    #[test]
    fn a_body_dropped_unread_settles_its_receipt_as_not_delivered() {
        let (receipt, seen) = recorded();
        drop(Body::with_receipt(Bytes::from_static(b"4x"), Some(receipt)));
        assert_eq!(*seen.lock().unwrap(), [false]);
        let (receipt, seen) = recorded();
        receipt.settle(true);
        assert_eq!(
            *seen.lock().unwrap(),
            [true],
            "settled once, not again on drop"
        );
    }

    #[tokio::test]
    async fn a_body_taken_after_its_receipt_expired_fails_and_delivers_nothing() {
        let (receipt, seen) = recorded();
        let receipt = receipt.expiring(Instant::now());
        let body = Body::with_receipt(Bytes::from_static(b"4late"), Some(receipt));
        assert!(body.collect().await.is_err());
        assert_eq!(*seen.lock().unwrap(), [false]);
    }
}
