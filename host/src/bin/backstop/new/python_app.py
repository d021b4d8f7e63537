"""__NAME__: a Backstop tool (made by `backstop new`). It returns the text
it is given and its length; replace `invoke` with the tool's own work."""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

# The host checks every call's input against this schema before the tool
# runs: declare what `invoke` really accepts.
INPUT_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
}


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.ToolInfo:
        return types.ToolInfo(
            name="__NAME__",
            description="Returns `text` and its length in characters.",
            input_schema=json.dumps(INPUT_SCHEMA),
            output_schema=None,
            effect=types.Effect.READ_ONLY,
        )

    def invoke(self, input: str) -> types.Output:
        try:
            args = json.loads(input)
        except ValueError as e:
            raise Err(types.ToolError_InvalidInput(f"input is not JSON: {e}"))
        text = args.get("text") if isinstance(args, dict) else None
        if not isinstance(text, str):
            raise Err(types.ToolError_InvalidInput("`text` (a string) is required"))
        ctx = host.context()
        host.log(host.Level.INFO, "called", [("attempt", str(ctx.attempt))])
        return types.Output(json.dumps({"text": text, "length": len(text)}), None)
