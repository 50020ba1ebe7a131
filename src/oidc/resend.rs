//! Requests to the provider's token endpoint (code exchange, refresh, the
//! credentials probe of `billguard check`) and userinfo, sent once more
//! when their connection broke before any answer came.
//!
//! Keep-alive connections to the provider are reused, and a provider closes
//! the ones it thinks idle (Node.js servers after 5 s). A request that
//! leaves on a connection at the moment the provider closes it meets a
//! reset or an early end of the connection, though the provider is well.
//! The request is sent once more, on another connection. That is safe for
//! these requests: a code or refresh token that the provider did redeem the
//! first time is refused the second time (`invalid_grant`), which is what
//! the user would have got anyway, and userinfo is only read. Timeouts and
//! answers, errors included, are never sent again.

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::pin::Pin;

use openidconnect::reqwest;
use openidconnect::{AsyncHttpClient, HttpClientError, HttpRequest, HttpResponse};

use crate::errors::chain;

/// The provider's client, for openidconnect's token requests.
pub(super) struct Resending<'a>(pub(super) &'a reqwest::Client);

type Answer = Result<HttpResponse, HttpClientError<reqwest::Error>>;

impl<'c> AsyncHttpClient<'c> for Resending<'_> {
    type Error = HttpClientError<reqwest::Error>;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(send(self.0, request))
    }
}

/// Sends `request`, and once more if its connection broke unanswered.
async fn send(http: &reqwest::Client, request: HttpRequest) -> Answer {
    let again = copy(&request);
    match http.call(request).await {
        Err(HttpClientError::Reqwest(error)) if broke_unanswered(&error) => {
            sending_again(&error);
            http.call(again).await
        }
        result => result,
    }
}

/// Sends a request built on the provider's client (userinfo), and once
/// more if its connection broke unanswered.
pub(super) async fn send_built(
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, reqwest::Error> {
    let again = request.try_clone();
    match (request.send().await, again) {
        (Err(error), Some(again)) if broke_unanswered(&error) => {
            sending_again(&error);
            again.send().await
        }
        (result, _) => result,
    }
}

fn sending_again(error: &reqwest::Error) {
    tracing::debug!(
        error = %chain(error),
        "Provider connection broke before an answer; sending the request again"
    );
}

fn copy(request: &HttpRequest) -> HttpRequest {
    let mut copy = HttpRequest::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Whether the connection was reset or closed while the request waited for
/// its answer.
fn broke_unanswered(error: &reqwest::Error) -> bool {
    if error.is_timeout() || error.is_status() || !error.is_request() {
        return false;
    }
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>()
            && hyper.is_incomplete_message()
        {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        source = cause.source();
    }
    false
}
