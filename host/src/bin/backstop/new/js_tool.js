// __NAME__: a Backstop tool (made by `backstop new`). It returns the text
// it is given and its length; replace `invoke` with the tool's own work.
import { context, log } from "backstop:tool/host@0.1.0";

export function describe() {
  return {
    name: "__NAME__",
    description: "Returns `text` and its length in characters.",
    // The host checks every call's input against this schema before the
    // tool runs: declare what `invoke` really accepts.
    inputSchema: JSON.stringify({
      type: "object",
      properties: { text: { type: "string" } },
      required: ["text"],
    }),
    outputSchema: undefined,
    effect: "read-only",
  };
}

// A thrown `{ tag, val }` is the tool's error; anything else thrown is a trap.
export function invoke(input) {
  let args;
  try {
    args = JSON.parse(input);
  } catch (e) {
    throw { tag: "invalid-input", val: `input is not JSON: ${e.message}` };
  }
  if (args === null || typeof args !== "object" || typeof args.text !== "string") {
    throw { tag: "invalid-input", val: "`text` (a string) is required" };
  }
  const ctx = context();
  log("info", "called", [["attempt", String(ctx.attempt)]]);
  return {
    value: JSON.stringify({ text: args.text, length: [...args.text].length }),
    confidence: undefined,
  };
}
