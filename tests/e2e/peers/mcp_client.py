"""Drives Backstop's MCP server with the official MCP Python SDK (PyPI `mcp`).

Usage: mcp_client.py stdio BACKSTOP CONFIG MODE
       mcp_client.py http URL TOKEN MODE

MODE is the SDK's `mode=`: `auto` (server/discover, the 2026-07-28 revision) or
`legacy` (the initialize handshake). Prints one JSON object: what each
scenario saw, for the Rust test to assert on.
"""

import asyncio
import json
import sys
import time

import httpx2
from mcp import Client, StdioServerParameters


def result(r):
    return {
        "is_error": bool(r.is_error),
        "structured": r.structured_content,
        "meta": r.meta,
        "text": [c.text for c in r.content if getattr(c, "text", None) is not None],
    }


async def scenarios(client):
    out = {"protocol": client.protocol_version}
    tools = await client.list_tools()
    out["tools"] = [t.name for t in tools.tools]
    out["schemas"] = {t.name: t.input_schema for t in tools.tools}
    out["output_schemas"] = {t.name: t.output_schema for t in tools.tools}

    out["call"] = result(await client.call_tool("echo_rs", {"say": "from python"}))

    progress = []

    async def on_progress(value, total, message):
        progress.append({"progress": value, "message": message})

    out["fallback"] = result(
        await client.call_tool(
            "main",
            {"flaky": {"mode": "fail", "class": "unavailable"}, "backup": {"mode": "echo"}},
            progress_callback=on_progress,
        )
    )
    out["fallback"]["progress"] = list(progress)
    progress.clear()
    out["retry"] = result(
        await client.call_tool(
            "solo", {"mode": "fail", "class": "transient", "times": 1}, progress_callback=on_progress
        )
    )
    out["retry"]["progress"] = list(progress)

    out["error"] = result(await client.call_tool("solo", {"mode": "fail", "class": "permanent"}))
    out["invalid"] = result(await client.call_tool("echo_rs", {"say": 5}))
    try:
        await client.call_tool("nope", {})
        out["unknown"] = None
    except Exception as e:  # the SDK raises MCPError for a protocol error
        out["unknown"] = {"type": type(e).__name__, "message": str(e), "code": getattr(getattr(e, "error", None), "code", None)}

    # Cancellation: the slow tool holds its only bulkhead slot for 8 s
    # unless the cancelled call's store is dropped.
    started = time.monotonic()
    task = asyncio.create_task(client.call_tool("wait", {"mode": "sleep", "ms": 8000}))
    await asyncio.sleep(0.7)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    tries = []
    second = None
    while time.monotonic() - started < 4.0:
        r = result(await client.call_tool("wait", {"mode": "sleep", "ms": 10}))
        tries.append(r["is_error"])
        if not r["is_error"]:
            second = r
            break
        await asyncio.sleep(0.1)
    out["cancel"] = {
        "second": second,
        "tries": tries,
        "freed_after_ms": int((time.monotonic() - started) * 1000),
    }
    return out


async def main():
    kind = sys.argv[1]
    if kind == "stdio":
        params = StdioServerParameters(
            command=sys.argv[2], args=["-c", sys.argv[3], "mcp"], env={"BACKSTOP_LOG": "warn"}
        )
        async with Client(params, mode=sys.argv[4]) as client:
            out = await scenarios(client)
    else:
        url, token, mode = sys.argv[2], sys.argv[3], sys.argv[4]
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            out = await scenarios(client)
    print(json.dumps(out))


asyncio.run(main())
