"""The minimal Python tool, and the template in plugins/README.md: it echoes
its input with the call context, or returns the error it is asked for, so
the tests can check that every `tool-error` case and the context cross the
boundary intact from Python."""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "say": {"type": "string"},
        "fail": {"type": "string"},
        "message": {"type": "string"},
        "retry_after_ms": {"type": "integer", "minimum": 0},
        "until_attempt": {"type": "integer", "minimum": 1},
        "raise": {"type": "string"},
    },
}

# `fail` names the case; the value is how to build it from a message.
ERRORS = {
    "invalid-input": types.ToolError_InvalidInput,
    "transient": types.ToolError_Transient,
    "unavailable": types.ToolError_Unavailable,
    "permanent": types.ToolError_Permanent,
    "needs-human": types.ToolError_NeedsHuman,
}


def explode(message: str) -> None:
    raise ValueError(message)


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.ToolInfo:
        return types.ToolInfo(
            name="echo-py",
            description="Echoes `say` with the call context, or fails with the tool-error case named by `fail` (before attempt `until_attempt`, when given).",
            input_schema=json.dumps(INPUT_SCHEMA),
            output_schema=None,
            effect=types.Effect.READ_ONLY,
        )

    def invoke(self, input: str) -> types.Output:
        try:
            args = json.loads(input)
        except ValueError as e:
            raise Err(types.ToolError_InvalidInput(f"input is not JSON: {e}"))
        if not isinstance(args, dict):
            raise Err(types.ToolError_InvalidInput("input is not a JSON object"))

        # `raise` raises an unexpected exception: how a Python tool's bug
        # looks to the host.
        if "raise" in args:
            explode(args["raise"])
        ctx = host.context()
        kind = args.get("fail")
        # With `until_attempt`, fail only on earlier attempts: the success
        # then shows which attempt the host says this is.
        if kind is not None and ctx.attempt < args.get("until_attempt", 2**32):
            message = args.get("message", "failed as asked")
            if kind == "rate-limited":
                wait = args.get("retry_after_ms")
                raise Err(types.ToolError_RateLimited(types.RateLimit(message, wait)))
            if kind not in ERRORS:
                raise Err(types.ToolError_InvalidInput("`fail` names no tool-error case"))
            raise Err(ERRORS[kind](message))

        host.log(host.Level.INFO, "echo called", [])
        value = {
            "said": args.get("say"),
            "key": ctx.idempotency_key,
            "attempt": ctx.attempt,
            "deadline_ms": ctx.deadline_ms,
            "tool": ctx.tool_name,
            "language": "python",
        }
        return types.Output(json.dumps(value), 1.0)
