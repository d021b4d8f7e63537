// jsonpath: picks values out of a JSON document with a JSONPath expression,
// so an agent can keep the three fields it needs from a large API response
// instead of feeding the whole response to a model.
//
// Supported: `$`, `.name`, `['name']`, `[n]` (negative counts from the end),
// `[a:b]` slices, `[*]` and `.*` wildcards, `..name` / `..*` recursive descent.

const MAX_MATCHES = 10000;

export function describe() {
  return {
    name: "jsonpath",
    description:
      "Selects values from a JSON document with a JSONPath expression ($, .name, ['name'], [n], [a:b], [*], .*, ..name). " +
      "Give `document` (any JSON value) or `document_text` (JSON as a string), and `path`.",
    inputSchema: JSON.stringify({
      type: "object",
      required: ["path"],
      properties: {
        path: { type: "string" },
        document: {},
        document_text: { type: "string" },
        limit: { type: "integer", minimum: 1, maximum: MAX_MATCHES },
      },
    }),
    outputSchema: JSON.stringify({
      type: "object",
      required: ["matches", "count", "truncated"],
      properties: {
        matches: { type: "array" },
        count: { type: "integer" },
        truncated: { type: "boolean" },
      },
    }),
    effect: "read-only",
  };
}

function invalid(message) {
  throw { tag: "invalid-input", val: message };
}

// Parses a path into steps: {kind: "key"|"index"|"slice"|"all", ...} with
// `deep` set for recursive descent.
function parse(path) {
  if (path[0] !== "$") invalid("`path` must start with `$`");
  const steps = [];
  let i = 1;
  const at = () => `at column ${i + 1} of \`${path}\``;
  while (i < path.length) {
    let deep = false;
    if (path.startsWith("..", i)) {
      deep = true;
      i += 2;
    } else if (path[i] === ".") {
      i += 1;
    } else if (path[i] !== "[") {
      invalid(`expected \`.\` or \`[\` ${at()}`);
    }
    if (path[i] === "*") {
      steps.push({ kind: "all", deep });
      i += 1;
    } else if (path[i] === "[") {
      const end = bracketEnd(path, i);
      if (end < 0) invalid(`unclosed \`[\` ${at()}`);
      steps.push({ ...bracket(path.slice(i + 1, end).trim(), at), deep });
      i = end + 1;
    } else {
      const m = /^[A-Za-z_$][\w$-]*/.exec(path.slice(i));
      if (!m) invalid(`expected a name ${at()}`);
      steps.push({ kind: "key", key: m[0], deep });
      i += m[0].length;
    }
  }
  return steps;
}

function bracketEnd(path, start) {
  let quote = null;
  for (let j = start + 1; j < path.length; j++) {
    const c = path[j];
    if (quote) {
      if (c === "\\") j++;
      else if (c === quote) quote = null;
    } else if (c === "'" || c === '"') quote = c;
    else if (c === "]") return j;
  }
  return -1;
}

function bracket(body, at) {
  if (body === "*") return { kind: "all" };
  const quoted = /^(['"])((?:\\.|(?!\1).)*)\1$/.exec(body);
  if (quoted) return { kind: "key", key: quoted[2].replace(/\\(.)/g, "$1") };
  if (/^-?\d+$/.test(body)) return { kind: "index", index: Number(body) };
  const slice = /^(-?\d+)?:(-?\d+)?$/.exec(body);
  if (slice) {
    return {
      kind: "slice",
      start: slice[1] === undefined ? undefined : Number(slice[1]),
      end: slice[2] === undefined ? undefined : Number(slice[2]),
    };
  }
  invalid(`\`[${body}]\` is not a name, index, slice or \`*\` ${at()}`);
}

function children(value) {
  if (Array.isArray(value)) return value;
  if (value !== null && typeof value === "object") return Object.values(value);
  return [];
}

function descendants(value, out) {
  out.push(value);
  for (const child of children(value)) descendants(child, out);
  return out;
}

function apply(step, value, out) {
  if (step.kind === "all") {
    out.push(...children(value));
  } else if (step.kind === "key") {
    if (value !== null && typeof value === "object" && !Array.isArray(value) && Object.hasOwn(value, step.key)) {
      out.push(value[step.key]);
    }
  } else if (Array.isArray(value)) {
    if (step.kind === "index") {
      const k = step.index < 0 ? value.length + step.index : step.index;
      if (k >= 0 && k < value.length) out.push(value[k]);
    } else {
      out.push(...value.slice(step.start, step.end));
    }
  }
}

function select(document, steps, limit) {
  let current = [document];
  for (const step of steps) {
    const next = [];
    const from = step.deep ? current.flatMap((v) => descendants(v, [])) : current;
    for (const value of from) {
      apply(step, value, next);
      // Bounded as we go: a `..*` on a large document must not build a
      // result list that runs the sandbox out of memory.
      if (next.length > MAX_MATCHES * 4) break;
    }
    current = next;
  }
  return { matches: current.slice(0, limit), count: current.length, truncated: current.length > limit };
}

export function invoke(input) {
  let args;
  try {
    args = JSON.parse(input);
  } catch (e) {
    invalid(`input is not JSON: ${e.message}`);
  }
  if (args === null || typeof args !== "object" || typeof args.path !== "string") {
    invalid("`path` (a string) is required");
  }
  let document = args.document;
  if (typeof args.document_text === "string") {
    try {
      document = JSON.parse(args.document_text);
    } catch (e) {
      invalid(`\`document_text\` is not JSON: ${e.message}`);
    }
  }
  if (document === undefined) invalid("give `document` or `document_text`");
  const limit = args.limit ?? 100;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_MATCHES) {
    invalid(`\`limit\` must be an integer from 1 to ${MAX_MATCHES}`);
  }
  const result = select(document, parse(args.path), limit);
  return { value: JSON.stringify(result), confidence: undefined };
}
