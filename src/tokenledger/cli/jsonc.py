"""JSON with comments (JSONC: `//` and `/* */` comments, trailing commas), read and edited in place.

Client config files are JSON or JSONC that people edit by hand. An edit here replaces or inserts the
text of one member or item and leaves every other byte as it was: comments, order, spacing, the other
servers. (No library on PyPI that round-trips JSONC is both maintained and safe to depend on:
json-five installs a top-level `json5` module that clashes with the widely used `json5` package.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from tokenledger.errors import TokenLedgerError

_PUNCTUATION = "{}[]:,"
_LITERAL = re.compile(r"[^\s{}\[\]:,\"/]+")


class JsoncError(TokenLedgerError):
    """The text is not JSON (with comments); the message names the line."""


@dataclass
class _Token:
    kind: str  # one of _PUNCTUATION, "string" or "literal"
    start: int
    end: int


@dataclass
class Node:
    """A value in the text: its span [start, end), and for objects and arrays their parts."""

    kind: str  # "object", "array" or "value"
    start: int
    end: int
    members: dict[str, tuple[int, Node]] = field(default_factory=dict)  # key -> (key start, value)
    items: list[Node] = field(default_factory=list)
    trailing_comma: int | None = None  # where the comma after the last member or item is


def parse(text: str) -> Any:
    """The value of a JSONC text; None for a text with nothing but whitespace and comments."""
    root = _Parser(text).document()
    return None if root is None else _value(text, root)


def set_member(text: str, path: Sequence[str], value: Any) -> str:
    """`text` with the member at `path` (object keys from the root) set to `value`, objects on the way
    created as needed; the rest of the text unchanged."""
    root = _Parser(text).document()
    if root is None:
        return _dumps(_nest(path, value), "", _indent_unit(text)) + "\n"
    node = root
    for depth, key in enumerate(path):
        if node.kind != "object":
            where = ".".join(path[:depth]) or "the top level"
            raise JsoncError(f"{where} is not a JSON object, so {key!r} cannot be added to it")
        if key not in node.members:
            return _insert_member(text, node, key, _nest(path[depth + 1 :], value))
        node = node.members[key][1]
    indent = _line_indent(text, node.start)
    return text[: node.start] + _dumps(value, indent, _indent_unit(text)) + text[node.end :]


def append_item(text: str, path: Sequence[str], value: Any) -> str:
    """`text` with `value` appended to the array at `path` (created if missing)."""
    root = _Parser(text).document()
    node = root
    for key in path:
        if node is None or node.kind != "object" or key not in node.members:
            return set_member(text, path, [value])
        node = node.members[key][1]
    if node is None or node.kind != "array":
        raise JsoncError(f"{'.'.join(path)} is not a JSON array")
    unit = _indent_unit(text)
    if node.items:
        last = node.items[-1]
        indent = _line_indent(text, last.start)
        return _after(text, last.end, node.trailing_comma, f"{indent}{_dumps(value, indent, unit)}")
    indent = _line_indent(text, node.start)
    rendered = _dumps(value, indent + unit, unit)
    return _splice(text, node.start + 1, f"\n{indent}{unit}{rendered}\n{indent}")


# --- editing ---------------------------------------------------------------------------------------


def _insert_member(text: str, node: Node, key: str, value: Any) -> str:
    unit = _indent_unit(text)
    if node.members:
        key_start, last = max(node.members.values(), key=lambda member: member[1].end)
        indent = _line_indent(text, key_start)
        member = f"{json.dumps(key)}: {_dumps(value, indent, unit)}"
        return _after(text, last.end, node.trailing_comma, f"{indent}{member}")
    indent = _line_indent(text, node.start)
    member = f"{json.dumps(key)}: {_dumps(value, indent + unit, unit)}"
    closing = text.rfind("}", node.start, node.end)
    if text[node.start + 1 : closing].strip():  # comments only: they follow the new member
        return _splice(text, node.start + 1, f"\n{indent}{unit}{member}")
    return text[: node.start + 1] + f"\n{indent}{unit}{member}\n{indent}" + text[closing:]


def _after(text: str, last_end: int, trailing_comma: int | None, line: str) -> str:
    """`text` with `line` added as the next member or item after the one ending at `last_end`: on a
    line of its own after any comment that ends the previous line, keeping a trailing comma style."""
    if trailing_comma is not None:
        at = _line_end_after_comment(text, trailing_comma + 1)
        return _splice(text, at, f"\n{line},")
    at = _line_end_after_comment(text, last_end)
    return text[:last_end] + "," + text[last_end:at] + f"\n{line}" + text[at:]


def _line_end_after_comment(text: str, at: int) -> int:
    """The end of the line from `at` if only spaces and a `//` comment follow there, else `at`."""
    end = text.find("\n", at)
    end = len(text) if end < 0 else end
    rest = text[at:end].strip()
    return end if not rest or rest.startswith("//") else at


def _nest(path: Sequence[str], value: Any) -> Any:
    for key in reversed(path):
        value = {key: value}
    return value


def _dumps(value: Any, indent: str, unit: str) -> str:
    """`value` as indented JSON whose continuation lines start at `indent`."""
    return json.dumps(value, indent=unit, ensure_ascii=False).replace("\n", "\n" + indent)


def _splice(text: str, at: int, insertion: str) -> str:
    return text[:at] + insertion + text[at:]


def _line_indent(text: str, offset: int) -> str:
    line_start = text.rfind("\n", 0, offset) + 1
    line = text[line_start:offset]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _indent_unit(text: str) -> str:
    """The file's indentation step: the first indented line's leading whitespace, else two spaces."""
    match = re.search(r"\n([ \t]+)\S", text)
    return match[1] if match else "  "


# --- reading ---------------------------------------------------------------------------------------


def _value(text: str, node: Node) -> Any:
    if node.kind == "object":
        return {key: _value(text, child) for key, (_, child) in node.members.items()}
    if node.kind == "array":
        return [_value(text, child) for child in node.items]
    return json.loads(text[node.start : node.end])


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = list(self._scan())
        self.position = 0

    def document(self) -> Node | None:
        if not self.tokens:
            return None
        root = self._node()
        if self.position < len(self.tokens):
            self._fail(self.tokens[self.position].start, "more text after the end of the document")
        return root

    def _node(self) -> Node:
        token = self._next("a value")
        if token.kind == "{":
            return self._object(token)
        if token.kind == "[":
            return self._array(token)
        if token.kind in ("string", "literal"):
            node = Node("value", token.start, token.end)
            try:
                json.loads(self.text[token.start : token.end])
            except ValueError:
                self._fail(token.start, f"not a JSON value: {self.text[token.start : token.end]!r}")
            return node
        self._fail(token.start, f"a value was expected, not {token.kind!r}")

    def _object(self, opening: _Token) -> Node:
        node = Node("object", opening.start, opening.end)
        while True:
            token = self._next("a key or '}'")
            if token.kind == "}":
                node.end = token.end
                return node
            if token.kind != "string":
                self._fail(token.start, "an object key in double quotes was expected")
            key = json.loads(self.text[token.start : token.end])
            if self._next("':'").kind != ":":
                self._fail(token.end, "':' was expected after the key")
            node.members[key] = (token.start, self._node())
            node.trailing_comma = None
            separator = self._next("',' or '}'")
            if separator.kind == "}":
                node.end = separator.end
                return node
            if separator.kind != ",":
                self._fail(separator.start, "',' or '}' was expected")
            node.trailing_comma = separator.start

    def _array(self, opening: _Token) -> Node:
        node = Node("array", opening.start, opening.end)
        while True:
            if self._peek() == "]":
                node.end = self._next("']'").end
                return node
            node.items.append(self._node())
            node.trailing_comma = None
            separator = self._next("',' or ']'")
            if separator.kind == "]":
                node.end = separator.end
                return node
            if separator.kind != ",":
                self._fail(separator.start, "',' or ']' was expected")
            node.trailing_comma = separator.start

    def _peek(self) -> str | None:
        return self.tokens[self.position].kind if self.position < len(self.tokens) else None

    def _next(self, expected: str) -> _Token:
        if self.position >= len(self.tokens):
            self._fail(len(self.text), f"the text ends where {expected} was expected")
        token = self.tokens[self.position]
        self.position += 1
        return token

    def _scan(self) -> Iterator[_Token]:
        text, at = self.text, 0
        while at < len(text):
            char = text[at]
            if char.isspace():
                at += 1
            elif text.startswith("//", at):
                end = text.find("\n", at)
                at = len(text) if end < 0 else end
            elif text.startswith("/*", at):
                end = text.find("*/", at + 2)
                if end < 0:
                    self._fail(at, "a /* comment is never closed")
                at = end + 2
            elif char in _PUNCTUATION:
                yield _Token(char, at, at + 1)
                at += 1
            elif char == '"':
                end = at + 1
                while end < len(text) and text[end] != '"':
                    end += 2 if text[end] == "\\" else 1
                if end >= len(text):
                    self._fail(at, "a string is never closed")
                yield _Token("string", at, end + 1)
                at = end + 1
            elif match := _LITERAL.match(text, at):
                yield _Token("literal", at, match.end())
                at = match.end()
            else:
                self._fail(at, f"unexpected {char!r}")

    def _fail(self, offset: int, message: str) -> NoReturn:
        line = self.text.count("\n", 0, offset) + 1
        raise JsoncError(f"line {line}: {message}")
