//! `otlp-sink`: a minimal OTLP/gRPC trace collector for the tests. It accepts
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` and prints one JSON line
//! per span it receives (`{"span":{"trace_id":"..","span_id":"..","parent_span_id":"..",
//! "name":"..","service":"..","attributes":{..}}}`), after its `{"listen":".."}` line.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Parser;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value},
};
use tonic::transport::{Server, server::TcpIncoming};
use weft_lab_apps::{net, print_json};

#[derive(Parser)]
#[command(name = "otlp-sink", about = "Prints the spans an OTLP exporter sends")]
struct Cli {
    #[arg(long)]
    listen: SocketAddr,
}

struct Sink;

fn value(kv: &KeyValue) -> serde_json::Value {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone().into(),
        Some(any_value::Value::IntValue(i)) => (*i).into(),
        Some(any_value::Value::BoolValue(b)) => (*b).into(),
        Some(any_value::Value::DoubleValue(d)) => (*d).into(),
        _ => serde_json::Value::Null,
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(value)
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let attributes: serde_json::Map<_, _> = span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), value(kv)))
                        .collect();
                    let line = serde_json::json!({"span": {
                        "trace_id": hex::encode(&span.trace_id),
                        "span_id": hex::encode(&span.span_id),
                        "parent_span_id": hex::encode(&span.parent_span_id),
                        "name": span.name,
                        "service": service,
                        "attributes": attributes,
                    }});
                    print_json(&line).map_err(|e| tonic::Status::internal(e.to_string()))?;
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let listener = net::listen(cli.listen).context("otlp-sink: listen")?;
    print_json(&net::listen_report(&listener)?)?;
    Server::builder()
        .add_service(TraceServiceServer::new(Sink))
        .serve_with_incoming(TcpIncoming::from(listener))
        .await
        .context("otlp-sink: serve")
}
