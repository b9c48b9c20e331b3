"""tiktoken's byte-pair encoding in plain Python, for where tiktoken itself cannot be imported: inside
PostgreSQL's PL/Python, whose interpreter is the server's own (`tokenledger sql install-counting` ships
this module's source into the database with the bundled rank files).

Standard library only; Python 3.11+ (the patterns use possessive quantifiers). Counts equal tiktoken's
`encode_ordinary` (tests/test_sql_counting.py checks it on the exactness corpus and on random text);
about 10-50x slower than tiktoken's Rust core, which a SQL user counting stored text can afford.

Two differences from tiktoken's regex engine are bridged by `python_pattern`: Python's `re` has no
`\\p{...}` classes (they become explicit code point ranges from `unicodedata`, so characters newer than
this Python's Unicode database are classed as unassigned), and its `\\s` and `$` differ from Rust's
(`\\s` becomes the Unicode White_Space set, `$` becomes `\\Z`).
"""

import base64
import heapq
import re
import unicodedata
from collections.abc import Iterator

# Unicode's White_Space property (PropList.txt): what `\s` matches in tiktoken's (Rust) regex engine.
# Python's `\s` also matches U+001C..U+001F, which are not white space there.
WHITE_SPACE = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_GENERAL_CATEGORIES = {
    "L": ("Lu", "Ll", "Lt", "Lm", "Lo"),
    "N": ("Nd", "Nl", "No"),
    "M": ("Mn", "Mc", "Me"),
}
_PROPERTY = re.compile(r"\\p\{(\w+)\}")
MAX_CACHED_PIECES = 100_000


def _escaped(code_point: int) -> str:
    return f"\\U{code_point:08x}" if code_point > 0xFFFF else f"\\u{code_point:04x}"


def category_ranges(categories: tuple[str, ...]) -> str:
    """The code points of these general categories as the inside of a regex character class."""
    wanted = set(categories)
    ranges: list[str] = []
    start = None
    for code_point, category in enumerate(_categories()):
        if category in wanted:
            if start is None:
                start = code_point
        elif start is not None:
            end = code_point - 1
            ranges.append(_escaped(start) if start == end else f"{_escaped(start)}-{_escaped(end)}")
            start = None
    return "".join(ranges)


_category_table: list[str] = []


def _categories() -> list[str]:
    """The general category of every code point, and one past the last (read once)."""
    if not _category_table:
        _category_table.extend(unicodedata.category(chr(c)) for c in range(0x110000))
        _category_table.append("")
    return _category_table


def python_pattern(pat_str: str) -> str:
    """tiktoken's pattern (Rust regex syntax) as an equivalent pattern for Python's `re`."""
    classes: dict[str, str] = {}

    def unicode_class(name: str) -> str:
        if name not in classes:
            classes[name] = category_ranges(_GENERAL_CATEGORIES.get(name, (name,)))
        return classes[name]

    out: list[str] = []
    in_class = False
    index = 0
    while index < len(pat_str):
        char = pat_str[index]
        if char == "\\":
            match = _PROPERTY.match(pat_str, index)
            if match:
                ranges = unicode_class(match.group(1))
                out.append(ranges if in_class else f"[{ranges}]")
                index = match.end()
                continue
            escape = pat_str[index : index + 2]
            if escape == "\\s":
                out.append(WHITE_SPACE if in_class else f"[{WHITE_SPACE}]")
            elif escape == "\\S" and not in_class:
                out.append(f"[^{WHITE_SPACE}]")
            else:
                out.append(escape)
            index += 2
            continue
        if char == "[" and not in_class:
            in_class = True
            out.append(char)
            if pat_str.startswith("[^", index):
                out.append("^")
                index += 1
        elif char == "]" and in_class:
            in_class = False
            out.append(char)
        elif char == "$" and not in_class:
            out.append("\\Z")  # Rust's `$` (without multi-line) is the end of the text only
        else:
            out.append(char)
        index += 1
    return "".join(out)


def read_ranks(contents: bytes) -> dict[bytes, int]:
    """The mergeable ranks of a `.tiktoken` file: one `base64-token rank` per line."""
    ranks: dict[bytes, int] = {}
    for line in contents.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _merged_parts(piece: bytes, ranks: dict[bytes, int]) -> Iterator[bytes]:
    """The parts a piece becomes: tiktoken's merge order (lowest rank first, leftmost on ties), kept
    in a heap so a long piece costs n log n, not n^2."""
    size = len(piece)
    following = list(range(1, size + 1))  # the start of the part after the part starting at i
    preceding = list(range(-1, size - 1))
    alive = [True] * size
    heap = [(rank, i) for i in range(size - 1) if (rank := ranks.get(piece[i : i + 2])) is not None]
    heapq.heapify(heap)
    while heap:
        rank, start = heapq.heappop(heap)
        right = following[start] if alive[start] else size
        if right >= size or ranks.get(piece[start : following[right]]) != rank:
            continue  # stale: this pair was changed by an earlier merge
        end = following[right]
        alive[right] = False
        following[start] = end
        if end < size:
            preceding[end] = start
            if (after := ranks.get(piece[start : following[end]])) is not None:
                heapq.heappush(heap, (after, start))
        before = preceding[start]
        if before >= 0 and (merged := ranks.get(piece[before:end])) is not None:
            heapq.heappush(heap, (merged, before))
    start = 0
    while start < size:
        yield piece[start : following[start]]
        start = following[start]


class Encoding:
    """One encoding: its ranks and its pattern (already translated by `python_pattern`)."""

    def __init__(self, ranks: dict[bytes, int], pattern: str) -> None:
        self.ranks = ranks
        self.regex = re.compile(pattern)
        self._pieces: dict[str, list[int]] = {}

    def encode_ordinary(self, text: str) -> list[int]:
        """The token ids of `text`, special-token strings encoded as plain text (tiktoken's
        `encode_ordinary`)."""
        tokens: list[int] = []
        for piece in self.regex.findall(text):
            ids = self._pieces.get(piece)
            if ids is None:
                encoded = piece.encode("utf-8")
                rank = self.ranks.get(encoded)
                if rank is not None:
                    ids = [rank]
                else:
                    ids = [self.ranks[part] for part in _merged_parts(encoded, self.ranks)]
                if len(self._pieces) >= MAX_CACHED_PIECES:
                    self._pieces.clear()
                self._pieces[piece] = ids
            tokens.extend(ids)
        return tokens

    def count(self, text: str) -> int:
        """The number of tokens in `text` (as `encode_ordinary`)."""
        return len(self.encode_ordinary(text))
