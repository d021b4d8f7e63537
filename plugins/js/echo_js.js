// The minimal JavaScript tool, and the template in plugins/README.md: it
// echoes its input with the call context, or returns the error it is asked
// for, so the tests can check that every `tool-error` case and the context
// cross the boundary intact from JavaScript.
import { context, log } from "backstop:tool/host@0.1.0";

const CASES = ["invalid-input", "transient", "rate-limited", "unavailable", "permanent", "needs-human"];

export function describe() {
  return {
    name: "echo-js",
    description: "Echoes `say` with the call context, or fails with the tool-error case named by `fail` (before attempt `until_attempt`, when given).",
    inputSchema: JSON.stringify({
      type: "object",
      properties: {
        say: { type: "string" },
        fail: { type: "string" },
        message: { type: "string" },
        retry_after_ms: { type: "integer", minimum: 0 },
        until_attempt: { type: "integer", minimum: 1 },
        raise: { type: "string" },
      },
    }),
    outputSchema: undefined,
    effect: "read-only",
  };
}

// A thrown `{ tag, val }` becomes the `err` of the result; a return is `ok`.
function fail(tag, val) {
  throw { tag, val };
}

function explode(message) {
  throw new Error(message);
}

export function invoke(input) {
  let args;
  try {
    args = JSON.parse(input);
  } catch (e) {
    fail("invalid-input", `input is not JSON: ${e.message}`);
  }
  if (args === null || typeof args !== "object" || Array.isArray(args)) {
    fail("invalid-input", "input is not a JSON object");
  }
  // `raise` throws an Error: how a JavaScript tool's bug looks to the host.
  if (args.raise !== undefined) explode(String(args.raise));
  const ctx = context();
  // With `until_attempt`, fail only on earlier attempts: the success then
  // shows which attempt the host says this is.
  if (args.fail !== undefined && ctx.attempt < (args.until_attempt ?? Infinity)) {
    const message = args.message ?? "failed as asked";
    if (!CASES.includes(args.fail)) fail("invalid-input", "`fail` names no tool-error case");
    if (args.fail === "rate-limited") {
      // u64 crosses the boundary as a BigInt.
      const wait = args.retry_after_ms === undefined ? undefined : BigInt(args.retry_after_ms);
      fail("rate-limited", { message, retryAfterMs: wait });
    }
    fail(args.fail, message);
  }
  log("info", "echo called", []);
  return {
    value: JSON.stringify({
      said: args.say ?? null,
      key: ctx.idempotencyKey,
      attempt: ctx.attempt,
      deadline_ms: Number(ctx.deadlineMs),
      tool: ctx.toolName,
      language: "javascript",
    }),
    confidence: 1.0,
  };
}
