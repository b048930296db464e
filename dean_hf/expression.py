"""Set expressions over named score sets, for selection: `(unsafe_fairness & unsafe_privacy) - (fairness | general)`.

A tiny tokenizer and a recursive-descent parser (never `eval`): names, `&` (intersection), `|` (union), `-`
(difference), parentheses; `&` binds tighter than `|` and `-`, which are left-associative. The parsed program is
postfix and evaluated over boolean flag tensors with one stack.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Optional

import torch

from .errors import DeanError, quote

MAX_EXPRESSION_DEPTH = 64  # nested parentheses


def _tokens(expression: str) -> list[tuple[str, str, int]]:
    """(kind, text, position) of each token: kind is "name" or the operator itself."""
    out, i = [], 0
    while i < len(expression):
        ch = expression[i]
        if ch.isspace():
            i += 1
        elif ch in "&|-()":
            out.append((ch, ch, i))
            i += 1
        elif ch.isalnum() or ch in "_.":
            j = i
            while j < len(expression) and (expression[j].isalnum() or expression[j] in "_."):
                j += 1
            out.append(("name", expression[i:j], i))
            i = j
        else:
            hint = {"∩": "'&'", "∪": "'|'", "\\": "'-'", "+": "'|'", "~": "'-'", "!": "'-'", ",": "'|' or '&'",
                    "*": "'&'"}.get(ch)
            raise syntax_error(expression, i, f"unexpected character {ch!r}" + (f" (write {hint})" if hint else "") +
                          "; an expression holds score set names (letters, digits, '_', '.'), '&', '|', '-' and "
                          "parentheses")
    return out


def syntax_error(expression: str, position: int, what: str) -> DeanError:
    return DeanError(f"selection expression {quote(expression)}, position {position}: {what}.")


def parse(expression: Any) -> list[tuple[str, Any, int]]:
    """The expression in postfix order: ("name", name, position) and ("&" | "|" | "-", None, position) items.

    Grammar (recursive descent): expr := term (('|' | '-') term)*; term := atom ('&' atom)*;
    atom := NAME | '(' expr ')'. So '&' binds tighter than '|' and '-', which are left-associative."""
    if not isinstance(expression, str):
        raise DeanError(f"selection expression {quote(expression)}: expected a string such as "
                        "'fairness & privacy - general'.")
    tokens = _tokens(expression)
    if not tokens:
        raise DeanError(f"selection expression {quote(expression)} is empty: write one such as "
                        "'fairness & privacy - general'.")
    program: list[tuple[str, Any, int]] = []
    at = 0

    def peek() -> Optional[tuple[str, str, int]]:
        return tokens[at] if at < len(tokens) else None

    def atom(depth: int) -> None:
        nonlocal at
        token = peek()
        if token is None:
            after = f" after {tokens[-1][1]!r}" if tokens else ""
            raise syntax_error(expression, len(expression), f"the expression ends{after}: expected a name or '('")
        kind, text, position = token
        at += 1
        if kind == "name":
            program.append(("name", text, position))
        elif kind == "(":
            if depth >= MAX_EXPRESSION_DEPTH:
                raise syntax_error(expression, position, f"parentheses nested over {MAX_EXPRESSION_DEPTH} deep")
            expr(depth + 1)
            closing = peek()
            if closing is None or closing[0] != ")":
                raise syntax_error(expression, position, "unbalanced parentheses: this '(' is never closed")
            at += 1
        else:
            raise syntax_error(expression, position, f"expected a name or '(', found {text!r}")

    def term(depth: int) -> None:
        nonlocal at
        atom(depth)
        while (token := peek()) is not None and token[0] == "&":
            at += 1
            atom(depth)
            program.append(("&", None, token[2]))

    def expr(depth: int) -> None:
        nonlocal at
        term(depth)
        while (token := peek()) is not None and token[0] in "|-":
            at += 1
            term(depth)
            program.append((token[0], None, token[2]))

    expr(0)
    if at < len(tokens):
        kind, text, position = tokens[at]
        if kind == ")":
            raise syntax_error(expression, position, "unbalanced parentheses: no '(' opens this ')'")
        raise syntax_error(expression, position, f"expected '&', '|', '-' or the end, found {text!r}")
    return program


def expression_names(expression: str) -> list[str]:
    """The score set names of a selection expression, in order of first use (DeanError if it does not parse)."""
    return list(dict.fromkeys(item[1] for item in parse(expression) if item[0] == "name"))


def run(program: list[tuple[str, Any, int]], leaf: Callable[[Hashable], torch.Tensor]) -> torch.Tensor:
    """Evaluate a postfix program over boolean flag tensors (one stack, no recursion)."""
    stack: list[torch.Tensor] = []
    for kind, key, _ in program:
        if kind == "name":
            stack.append(leaf(key))
            continue
        right = stack.pop()
        left = stack.pop()
        right = right.to(left.device)
        stack.append(left & right if kind == "&" else left | right if kind == "|" else left & ~right)
    return stack.pop()
