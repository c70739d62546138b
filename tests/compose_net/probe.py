"""The test's own client, run inside a namespace of the compose network (`ComposeNet.client`).

    python -m tests.compose_net.probe grpc TARGET /pkg.Service/Method [--key K] [--request JSON]
    python -m tests.compose_net.probe mcp URL [--key K] < calls.json

`grpc` makes one unary call (any method of the fleet's protos, request given as JSON) and prints
{"code", "details", "response"}. `mcp` opens one session of the official MCP SDK client over
streamable HTTP (sending `Authorization: Bearer K`), makes the calls read from stdin
([{"tool": name, "arguments": {...}}, ...]) and prints one {"isError", "structured", "text"} per
call. Exit 0 whenever the calls were made, whatever they returned; the test judges the output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor_pool import Default as default_pool
from google.protobuf.json_format import MessageToDict, ParseDict

# Importing the generated modules registers their services in the default descriptor pool.
from mcp_services.gen.tori.episodic.v1 import episodic_pb2  # noqa: F401
from mcp_services.gen.tori.koopman.v1 import koopman_pb2  # noqa: F401
from mcp_services.gen.tori.pruner.v1 import pruner_pb2  # noqa: F401
from mcp_services.gen.tori.sleep.v1 import sleep_pb2  # noqa: F401


def grpc_call(target: str, method: str, key: str, request: dict[str, Any]) -> dict[str, Any]:
    service_name, _, method_name = method.strip("/").rpartition("/")
    desc = default_pool().FindServiceByName(service_name).FindMethodByName(method_name)
    req_cls = message_factory.GetMessageClass(desc.input_type)
    resp_cls = message_factory.GetMessageClass(desc.output_type)
    metadata = [("authorization", f"Bearer {key}")] if key else []
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=resp_cls.FromString,
        )
        try:
            resp = call(ParseDict(request, req_cls()), timeout=30, metadata=metadata)
        except grpc.RpcError as exc:
            return {"code": exc.code().name, "details": exc.details(), "response": None}
    return {
        "code": "OK",
        "details": "",
        "response": MessageToDict(resp, preserving_proto_field_name=True),
    }


async def mcp_calls(url: str, key: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    out = []
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        for c in calls:
            r = await client.call_tool(c["tool"], c.get("arguments", {}))
            out.append(
                {
                    "isError": bool(r.is_error),
                    "structured": r.structured_content,
                    "text": "".join(getattr(part, "text", "") for part in r.content),
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.compose_net.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grpc")
    g.add_argument("target")
    g.add_argument("method", help="/package.Service/Method")
    g.add_argument("--key", default="")
    g.add_argument("--request", default="{}", help="the request message as JSON")
    m = sub.add_parser("mcp")
    m.add_argument("url")
    m.add_argument("--key", default="")
    args = parser.parse_args(argv)
    if args.cmd == "grpc":
        result: Any = grpc_call(args.target, args.method, args.key, json.loads(args.request))
    else:
        result = asyncio.run(mcp_calls(args.url, args.key, json.load(sys.stdin)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
