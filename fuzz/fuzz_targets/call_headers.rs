//! The headers of a call that the waypoint reads itself: `grpc-timeout`, W3C
//! `traceparent`, and B3 (single and multi-header). None may panic; what the tracer writes
//! back is a valid `traceparent`.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use weft_waypoint::{grpc, trace};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.split('\n');
    let mut headers = HeaderMap::new();
    for name in [
        grpc::TIMEOUT,
        trace::TRACEPARENT,
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
    ] {
        if let Some(value) = fields.next()
            && let Ok(value) = HeaderValue::from_str(value)
        {
            headers.insert(name, value);
        }
    }
    let _ = grpc::parse_timeout(&headers);
    let _ = trace::parse_traceparent(text);
    let tracer = trace::Tracer {
        sampling: 50.0,
        exporter: None,
    };
    let _span = tracer.start(&mut headers, "/fuzz");
    let written = headers[trace::TRACEPARENT].to_str().unwrap();
    assert!(trace::parse_traceparent(written).is_some(), "{written}");
});
