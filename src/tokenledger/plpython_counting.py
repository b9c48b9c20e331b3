"""The PL/Python source of `tiktoken_count` and `tiktoken_encode`: counting inside PostgreSQL where the
pg_tiktoken extension is not installed (`tokenledger sql install-counting`; the SQL is in the store).

The server runs its own python3, which cannot be assumed to import tiktoken (another Python version, or
another machine), so the functions carry `tokenizers.pure_bpe` as source and read the bundled rank files
from a table (`tiktoken_rank_file`) that the installer fills: each file's SHA-256 is checked against the
value pinned here (the same as `tokens`) before it is used. The patterns are translated for Python's `re`
here, once, so every server classes characters alike.
"""

from __future__ import annotations

import importlib.resources
from functools import cache

from tokenledger import tokens
from tokenledger.tokenizers import pure_bpe

# The functions' pinned self-test: tokenledger's own count of this text must come back from SQL.
SELF_TEST = "It's 2 + 2 = 4, isn't it? 東京 🎉 <|endoftext|>"

_BODY = """\
# tokenledger: pg_tiktoken's {name} over tokenledger's bundled, hash-verified encodings (pure-Python BPE)
import sys
if sys.version_info < (3, 11):
    plpy.error("tokenledger's {name} needs PL/Python on Python 3.11 or later; this server runs "
               + sys.version.split()[0])
state = GD.get("tokenledger_counting")
if state is None:
    import types
    module = types.ModuleType("tokenledger_pure_bpe")
    exec(compile({source!r}, "tokenledger_pure_bpe", "exec"), module.__dict__)
    state = GD["tokenledger_counting"] = {{"module": module, "encodings": {{}}}}
encoding = state["encodings"].get(encoding_selector)
if encoding is None:
    specs = {specs!r}
    pinned = {pinned!r}
    if encoding_selector not in specs:
        plpy.error(repr(encoding_selector) + ": unknown encoding; one of " + ", ".join(sorted(specs)))
    rank_file, pattern = specs[encoding_selector]
    import hashlib
    plan = plpy.prepare("select contents from {table} where rank_file = $1", ["text"])
    rows = plpy.execute(plan, [rank_file])
    contents = bytes(rows[0]["contents"]) if rows else b""
    if hashlib.sha256(contents).hexdigest() != pinned[rank_file]:
        plpy.error(rank_file + ": the stored rank file does not match its pinned SHA-256; "
                   + "run `tokenledger sql install-counting` again")
    module = state["module"]
    encoding = module.Encoding(module.read_ranks(contents), pattern)
    state["encodings"][encoding_selector] = encoding
return encoding.{call}(input)
"""


@cache
def _specs() -> dict[str, tuple[str, str]]:
    """Encoding name -> (rank file, its pattern for Python's `re`)."""
    sources = {name: tokens.encoding_source(name) for name in tokens.ENCODINGS}
    return {
        name: (rank_file, pure_bpe.python_pattern(pattern)) for name, (rank_file, pattern) in sources.items()
    }


def function_body(name: str, table: str) -> str:
    """The PL/Python body of `tiktoken_count` or `tiktoken_encode`, reading ranks from `table`."""
    source = (importlib.resources.files("tokenledger.tokenizers") / "pure_bpe.py").read_text(encoding="utf-8")
    return _BODY.format(
        name=name,
        source=source,
        specs=_specs(),
        pinned=tokens.pinned_rank_files(),
        table=table,
        call="count" if name == "tiktoken_count" else "encode_ordinary",
    )


def rank_files() -> dict[str, bytes]:
    """Every bundled rank file, hash-verified, by name."""
    return {name: tokens.rank_file_bytes(name) for name in tokens.pinned_rank_files()}
