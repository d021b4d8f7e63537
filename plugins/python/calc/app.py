"""calc: evaluates arithmetic for an agent, exactly where integers allow.

Models are poor at arithmetic; this tool is not. It parses the expression
with Python's `ast` and evaluates only numbers, arithmetic operators, named
variables and a fixed set of math functions: no names, attributes or calls
outside that set, so an expression cannot reach anything else."""

import ast
import json
import math
import operator

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

INPUT_SCHEMA = {
    "type": "object",
    "required": ["expression"],
    "properties": {
        "expression": {"type": "string", "description": "for example `(2 + 3) * sqrt(x)`"},
        "variables": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}
OUTPUT_SCHEMA = {
    "type": "object",
    "required": ["value", "exact"],
    "properties": {"value": {"type": "number"}, "exact": {"type": "boolean"}},
}

MAX_EXPRESSION = 10_000
# Integers stay exact, so their size must be bounded: 2 ** 10 ** 9 would
# otherwise run the sandbox out of time or memory instead of failing clearly.
MAX_INT_BITS = 4096

BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
FUNCTIONS = {
    name: getattr(math, name)
    for name in ("sqrt", "exp", "log", "log2", "log10", "sin", "cos", "tan",
                 "asin", "acos", "atan", "floor", "ceil", "factorial", "gcd", "hypot")
}
FUNCTIONS.update(abs=abs, round=round, min=min, max=max)
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


class Invalid(Exception):
    pass


def check_size(value):
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise Invalid(f"an intermediate integer exceeds {MAX_INT_BITS} bits")
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid("the result is not a finite number")
    return value


def evaluate(node, names, source):
    if isinstance(node, ast.Expression):
        return evaluate(node.body, names, source)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise Invalid(f"unknown name `{node.id}`")
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return check_size(UNARY[type(node.op)](evaluate(node.operand, names, source)))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = evaluate(node.left, names, source), evaluate(node.right, names, source)
        if isinstance(node.op, ast.Pow) and isinstance(right, int) and isinstance(left, int):
            if abs(right) > MAX_INT_BITS or left.bit_length() * abs(right) > MAX_INT_BITS:
                raise Invalid(f"the power exceeds {MAX_INT_BITS} bits")
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise Invalid(f"the product exceeds {MAX_INT_BITS} bits")
        return check_size(BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        fn = FUNCTIONS.get(node.func.id)
        if fn is None:
            raise Invalid(f"unknown function `{node.func.id}`")
        args = [evaluate(a, names, source) for a in node.args]
        if fn is math.factorial and args and isinstance(args[0], int) and args[0] > 1000:
            raise Invalid("factorial is limited to 1000")
        return check_size(fn(*args))
    what = ast.get_source_segment(source, node) or type(node).__name__
    raise Invalid(f"`{what}` is not arithmetic")


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.ToolInfo:
        return types.ToolInfo(
            name="calc",
            description=(
                "Evaluates an arithmetic expression exactly (integers of any size up to 4096 bits, "
                "floats otherwise): + - * / // % **, parentheses, pi, e, tau, variables, and "
                + ", ".join(sorted(FUNCTIONS)) + "."
            ),
            input_schema=json.dumps(INPUT_SCHEMA),
            output_schema=json.dumps(OUTPUT_SCHEMA),
            effect=types.Effect.READ_ONLY,
        )

    def invoke(self, input: str) -> types.Output:
        try:
            args = json.loads(input)
        except ValueError as e:
            raise Err(types.ToolError_InvalidInput(f"input is not JSON: {e}"))
        expression = args.get("expression") if isinstance(args, dict) else None
        if not isinstance(expression, str):
            raise Err(types.ToolError_InvalidInput("`expression` (a string) is required"))
        if len(expression) > MAX_EXPRESSION:
            raise Err(types.ToolError_InvalidInput(f"`expression` is over {MAX_EXPRESSION} characters"))
        variables = args.get("variables", {})
        if not isinstance(variables, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in variables.values()
        ):
            raise Err(types.ToolError_InvalidInput("`variables` must map names to numbers"))
        names = {**CONSTANTS, **variables}
        try:
            tree = ast.parse(expression, mode="eval")
            value = evaluate(tree, names, expression)
        except SyntaxError as e:
            raise Err(types.ToolError_InvalidInput(f"syntax error at column {e.offset}: {e.msg}"))
        except (Invalid, ZeroDivisionError, ValueError, TypeError, OverflowError) as e:
            raise Err(types.ToolError_InvalidInput(str(e) or type(e).__name__))
        except RecursionError:
            raise Err(types.ToolError_InvalidInput("the expression is nested too deeply"))
        exact = isinstance(value, int)
        if exact and value.bit_length() > 53:
            # JSON readers parse numbers as doubles: send big integers as text.
            return types.Output(json.dumps({"value": float(value), "exact": False, "integer": str(value)}), None)
        return types.Output(json.dumps({"value": value, "exact": exact}), None)
