"""Drives Backstop's MCP server with the official MCP Python SDK (PyPI `mcp`).

Usage: mcp_client.py stdio BACKSTOP CONFIG MODE [approvals|people API TOKEN]
       mcp_client.py http URL TOKEN MODE [approvals|people API TOKEN]

MODE is the SDK's `mode=`: `auto` (server/discover, the 2026-07-28 revision) or
`legacy` (the initialize handshake). Prints one JSON object: what each
scenario saw, for the Rust test to assert on.
"""

import asyncio
import json
import sys
import time

import httpx2
import mcp_types as types
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


ME = types.Implementation(name="approval-test", version="1")


async def approvals(connect, mode, api, token):
    """An irreversible tool (`pay`): approved and refused through the client,
    an answer sent twice, and a client that cannot answer."""
    out = {}
    asked = []

    async def approve(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": True})

    async def refuse(context, params):
        return types.ElicitResult(action="accept", content={"approve": False})

    async with Client(connect(), mode=mode, elicitation_callback=approve, client_info=ME) as c:
        out["approved"] = result(await c.call_tool("pay", {"entry": "approve-1"}))
        out["asked"] = asked
        esc = out["approved"]["meta"]["escalation"]
        # The same call again, naming its escalation: the journaled result.
        out["again"] = result(
            await c.call_tool("pay", {"entry": "approve-1"}, meta={"escalation": esc})
        )
        if mode != "legacy":
            # Driving the rounds by hand: the answer sent twice.
            first = await c.session.call_tool("pay", {"entry": "mrtr-1"}, allow_input_required=True)
            out["input_required"] = {
                "result_type": getattr(first, "result_type", None),
                "request_state": first.request_state,
                "keys": sorted((first.input_requests or {}).keys()),
            }
            yes = {"approval": {"action": "accept", "content": {"approve": True}}}
            rounds = []
            for _ in range(2):
                r = await c.session.call_tool(
                    "pay", {"entry": "mrtr-1"}, input_responses=yes,
                    request_state=first.request_state, allow_input_required=True,
                )
                rounds.append(result(r))
            out["rounds"] = rounds
    async with Client(connect(), mode=mode, elicitation_callback=refuse, client_info=ME) as c:
        out["refused"] = result(await c.call_tool("pay", {"entry": "reject-1"}))
    async with Client(connect(), mode=mode, client_info=ME) as c:
        later = result(await c.call_tool("pay", {"entry": "later-1"}))
        out["cannot_answer"] = later
        esc = later["meta"]["escalation"]
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
            r = await http.post(
                f"{api}/v1/escalations/{esc}/resolve",
                json={"resolution": {"kind": "approve"}, "by": "ops"},
            )
            out["resolved_status"] = r.status_code
        out["after_resolve"] = result(
            await c.call_tool("pay", {"entry": "later-1"}, meta={"escalation": esc})
        )
        out["after_again"] = result(
            await c.call_tool("pay", {"entry": "later-1"}, meta={"escalation": esc})
        )
    return out


PEOPLE = types.Implementation(name="people-test", version="1")


async def people(connect, mode, api, token):
    """Calls that stop for a person after they ran: a tool that says
    `needs-human` (retried, then given a result; refused), a side effect cut
    off half way (`ambiguous-state`: given a result; approved to run again),
    and a client that cannot answer, served once resolved over the API."""
    out = {}
    asked = []
    script = []

    async def answer(context, params):
        asked.append(params.message)
        return types.ElicitResult(action="accept", content=script.pop(0))

    async with Client(connect(), mode=mode, elicitation_callback=answer, client_info=PEOPLE) as c:
        script[:] = [{"action": "retry"}, {"action": "result", "result": '{"said": "by a person"}'}]
        args = {"mode": "fail", "class": "needs-human", "message": "which account?"}
        out["supplied"] = result(await c.call_tool("solo", args))
        out["supplied_asked"] = list(asked)
        esc = out["supplied"]["meta"]["escalation"]
        out["supplied_again"] = result(await c.call_tool("solo", args, meta={"escalation": esc}))
        asked.clear()

        script[:] = [{"action": "reject", "comment": "no such account"}]
        out["refused"] = result(await c.call_tool("solo", args))
        asked.clear()

        script[:] = [{"action": "result", "result": '{"recorded": "by hand", "entry": "amb-1"}'}]
        out["ambiguous"] = result(await c.call_tool("jot", {"entry": "amb-1", "sleep_after_ms": 3000}))
        out["ambiguous_asked"] = list(asked)
        esc = out["ambiguous"]["meta"]["escalation"]
        out["ambiguous_again"] = result(
            await c.call_tool("jot", {"entry": "amb-1", "sleep_after_ms": 3000}, meta={"escalation": esc})
        )
        asked.clear()

        # Approved to run again: it runs once more, stops half way again,
        # and the second question is refused.
        script[:] = [{"action": "approve"}, {"action": "reject"}]
        out["rerun"] = result(await c.call_tool("jot", {"entry": "amb-2", "sleep_after_ms": 3000}))
        out["rerun_asked"] = list(asked)
        asked.clear()

        # An answer that is not one of the choices: the escalation stays open.
        script[:] = [{"action": "explode"}]
        out["bad_answer"] = result(await c.call_tool("solo", args))

    async with Client(connect(), mode=mode, client_info=PEOPLE) as c:
        later = result(await c.call_tool("solo", args))
        out["cannot_answer"] = later
        esc = later["meta"]["escalation"]
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
            # `resume` has no run to resume: the answer says so.
            r = await http.post(
                f"{api}/v1/escalations/{esc}/resolve",
                json={"resolution": {"kind": "result", "value": {"said": "ops"}}, "by": "ops",
                      "resume": True},
            )
            out["resolved_status"] = r.status_code
            out["resolved_note"] = r.json().get("note")
        out["after_resolve"] = result(await c.call_tool("solo", args, meta={"escalation": esc}))
    return out


async def main():
    kind, mode = sys.argv[1], sys.argv[4]
    if kind == "stdio":
        params = StdioServerParameters(
            command=sys.argv[2], args=["-c", sys.argv[3], "mcp"], env={"BACKSTOP_LOG": "warn"}
        )
        connect = lambda: params  # noqa: E731
        token = None
    else:
        url, token = sys.argv[2], sys.argv[3]
        from mcp.client.streamable_http import streamable_http_client

        def connect():
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
            return streamable_http_client(url, http_client=http)

    if len(sys.argv) > 5 and sys.argv[5] in ("approvals", "people"):
        run = approvals if sys.argv[5] == "approvals" else people
        out = await run(connect, mode, sys.argv[6], sys.argv[7] if len(sys.argv) > 7 else token)
    else:
        async with Client(connect(), mode=mode) as client:
            out = await scenarios(client)
    print(json.dumps(out))


asyncio.run(main())
