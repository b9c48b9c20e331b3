"""Benchmark: our counts against raw tiktoken, as medians and ratios. Run: python bench/counting.py

`--section catalog` prints only the model catalog's size, load time and peak memory (load against a
bare `json.loads` of the same file, in the same run).

Every "miss" sample uses freshly built strings and a fresh TokenCounter, so neither our cache nor
Python's per-string hash cache flatters our side. The raw chat formula is the cookbook's, with
`encode_ordinary` (what we use; the cookbook's `encode` is slower and raises on `<|endoftext|>`).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from tokenledger import tokens
from tokenledger.catalog import Catalog
from tokenledger.tokens import TokenCounter

ENCODING = "o200k_base"
# Prose, code, CJK and emoji, joined by spaces; the last "word" is a newline.
_VOCABULARY = "the ledger reserves tokens before each call and settles them after usage arrives " + (
    "def return import async await budget 東京 数据 🎉 = + { } ( ) 42 1999 \n"
)
WORDS = _VOCABULARY.split(" ")


def make_text(chars: int, seed: int) -> str:
    """Return a new string of about `chars` characters of mixed prose, code, CJK and emoji."""
    rng = random.Random(seed)
    words: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars]


def median_seconds(
    run: Callable[[Any], object],
    make_input: Callable[[int], Any],
    samples: int,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Return the median time of `run(input)` over samples, each with an input built outside the timing."""
    times = []
    for sample in range(samples):
        prepared = make_input(sample)
        started = clock()
        run(prepared)
        times.append(clock() - started)
    return statistics.median(times)


def compare(
    raw: Callable[[Any], object],
    ours: Callable[[Any], object],
    make_input: Callable[[int], Any],
    samples: int,
) -> tuple[float, float]:
    """Return the median seconds of raw and ours on equal inputs, alternating which runs first."""
    raw_times: list[float] = []
    our_times: list[float] = []
    for sample in range(samples):
        runs = [(raw, raw_times), (ours, our_times)]
        for run, times in runs if sample % 2 else runs[::-1]:
            # make_input builds new string objects on every call: equal texts, no hash cached on them.
            prepared = make_input(sample)
            started = time.perf_counter()
            run(prepared)
            times.append(time.perf_counter() - started)
    return statistics.median(raw_times), statistics.median(our_times)


def peak_bytes(run: Callable[[], object]) -> tuple[int, object]:
    """Return the peak traced memory while `run()` runs, and what it returned (kept alive by the caller)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result


def catalog_section(samples: int) -> None:
    """Print the catalog file's size, its load time against a bare json.loads, and peak memory."""
    path = Path(str(resources.files("tokenledger") / "data" / "catalog.json"))
    size = path.stat().st_size

    def parse() -> object:
        return json.loads(path.read_text(encoding="utf-8"))

    def first_resolve() -> object:
        fresh = Catalog(path)  # parse and index; an entry is built when first asked for
        return fresh, fresh.resolve("claude-sonnet-4-5")

    def first_cheapest() -> object:
        fresh = Catalog(path)  # builds every first-party entry listed today, to price it
        return fresh, fresh.cheapest(10_000, 1_000)

    def every_entry() -> object:
        fresh = Catalog(path)
        return fresh, [fresh.resolve(model) for model in fresh.context_windows()]

    # CPU time of this process: the catalog's own cost, whatever else the machine runs.
    cpu = time.process_time
    rows = []
    for case, run, runs in [
        ("json.loads of the file (baseline)", parse, samples),
        ("first resolve (load + 1 entry)", first_resolve, samples),
        ("first cheapest (load + first-party)", first_cheapest, max(3, samples // 3)),
        ("every entry built", every_entry, 3),
    ]:
        seconds = median_seconds(lambda _, run=run: run(), lambda _: None, runs, cpu)
        peak, kept = peak_bytes(run)
        rows.append((case, seconds, peak))
        del kept
    warm = Catalog(path)
    warm.resolve("claude-sonnet-4-5")
    at = datetime(2025, 1, 15, tzinfo=UTC)
    repeat = 100  # calls per sample: one call is below the CPU clock's resolution

    def per_call(call: Callable[[], object]) -> float:
        return (
            median_seconds(lambda _: [call() for _ in range(repeat)], lambda _: None, samples, cpu) / repeat
        )

    resolve_s = per_call(lambda: warm.resolve("claude-sonnet-4-5"))
    hosted_s = per_call(lambda: warm.resolve("bedrock/us.anthropic.claude-3-5-haiku-20241022-v1:0"))
    price_at_s = per_call(lambda: warm.price_at("gpt-3.5-turbo", at))
    snapshot = warm.snapshot
    print(
        f"catalog.json: {size:,} bytes, {snapshot.models:,} models ({snapshot.retired:,} retired), "
        f"{len(snapshot.releases)} litellm releases"
    )
    print(f"{'case (CPU time)':38} {'median':>10} {'peak MiB':>9} {'vs parse':>9}")
    for case, seconds, peak in rows:
        print(f"{case:38} {seconds * 1e3:8.2f}ms {peak / 2**20:9.1f} {seconds / rows[0][1]:8.2f}x")
    print(f"{'resolve, warm':38} {resolve_s * 1e6:8.1f}us")
    print(f"{'resolve a Bedrock inference profile':38} {hosted_s * 1e6:8.1f}us")
    print(f"{'price_at 2025-01-15, warm':38} {price_at_s * 1e6:8.1f}us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=21)
    parser.add_argument("--section", choices=["all", "counting", "catalog"], default="all")
    options = parser.parse_args()
    if options.section in {"all", "catalog"}:
        catalog_section(options.samples)
        if options.section == "catalog":
            return
        print()
    enc = tokens.get_encoding(ENCODING)
    enc.encode_ordinary("warm up")
    rows: list[tuple[str, float, float, str]] = []

    # A 200-character chat message, 200 distinct messages per sample.
    def chat_input(seed: int) -> tuple[TokenCounter, list[list[dict[str, str]]]]:
        batch = [[{"role": "user", "content": make_text(200, seed * 1000 + i)}] for i in range(200)]
        return TokenCounter(), batch

    def raw_chat(prepared: tuple[TokenCounter, list[list[dict[str, str]]]]) -> None:
        for messages in prepared[1]:
            total = 0
            for message in messages:
                total += 3
                for key, value in message.items():
                    total += len(enc.encode_ordinary(value))
                    if key == "name":
                        total += 1
            total += 3

    def our_chat(prepared: tuple[TokenCounter, list[list[dict[str, str]]]]) -> None:
        counter, batch = prepared
        for messages in batch:
            counter.count_messages(messages, encoding=ENCODING)

    raw, ours = compare(raw_chat, our_chat, chat_input, options.samples)
    rows.append(("chat message, 200 chars (x200)", raw, ours, "<= 1.50x"))

    # An 8 kB text, 20 distinct texts per sample: every one a cache miss.
    def text_input(chars: int, count: int) -> Callable[[int], tuple[TokenCounter, list[str]]]:
        return lambda seed: (TokenCounter(), [make_text(chars, seed * 1000 + i) for i in range(count)])

    def raw_texts(prepared: tuple[TokenCounter, list[str]]) -> None:
        for text in prepared[1]:
            len(enc.encode_ordinary(text))

    def our_texts(prepared: tuple[TokenCounter, list[str]]) -> None:
        counter, texts = prepared
        for text in texts:
            counter.count_text(text, encoding=ENCODING)

    raw, ours = compare(raw_texts, our_texts, text_input(8192, 20), options.samples)
    rows.append(("text, 8 kB miss (x20)", raw, ours, "<= 1.15x"))

    samples_1mb = max(5, options.samples // 3)
    raw, ours = compare(raw_texts, our_texts, text_input(1 << 20, 1), samples_1mb)
    rows.append(("text, 1 MB", raw, ours, "<= 1.15x"))

    # A 1 MB batch: 128 texts of 8 kB, count_texts against encode_ordinary_batch.
    def raw_batch(prepared: tuple[TokenCounter, list[str]]) -> None:
        [
            len(encoded)
            for encoded in enc.encode_ordinary_batch(prepared[1], num_threads=prepared[0].batch_threads)
        ]

    def our_batch(prepared: tuple[TokenCounter, list[str]]) -> None:
        prepared[0].count_texts(prepared[1], encoding=ENCODING)

    raw, ours = compare(raw_batch, our_batch, text_input(8192, 128), samples_1mb)
    rows.append(("batch, 128 x 8 kB = 1 MB", raw, ours, "<= 1.15x"))

    # A cache hit on an 8 kB text against encoding it raw.
    warm = TokenCounter()
    hit_text = make_text(8192, 424242)
    warm.count_text(hit_text, encoding=ENCODING)
    raw = median_seconds(lambda _: len(enc.encode_ordinary(hit_text)), lambda _: None, options.samples * 10)
    ours = median_seconds(
        lambda _: warm.count_text(hit_text, encoding=ENCODING), lambda _: None, options.samples * 10
    )
    rows.append(("cache hit, 8 kB", raw, ours, ">= 5x faster"))

    rows += mistral_rows(options.samples)
    rows += provider_rows(options.samples)

    print(f"{'case':34} {'raw':>11} {'ours':>11} {'ours/raw':>9}  goal")
    for case, raw_s, our_s, goal in rows:
        ratio = f"{our_s / raw_s:.2f}x" if "hit" not in case else f"1/{raw_s / our_s:.0f}"
        print(f"{case:34} {raw_s * 1e3:9.3f}ms {our_s * 1e3:9.3f}ms {ratio:>9}  {goal}")


def mistral_rows(samples: int) -> list[tuple[str, float, float, str]]:
    """Mistral's Tekken (open-mistral-nemo) through our counter against mistral-common's own encode."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from tokenledger.catalog import resolve

    model = resolve("open-mistral-nemo")
    own = MistralTokenizer.from_file(str(_mistral_data() / "tekken_240718.json")).instruct_tokenizer.tokenizer
    own.encode("warm up", bos=False, eos=False)
    tokens.TokenCounter().count_text("warm up", model=model)
    rows = []
    for chars, count, label in (
        (200, 200, "Mistral text, 200 chars (x200)"),
        (8192, 20, "Mistral text, 8 kB miss (x20)"),
    ):

        def raw(prepared: tuple[TokenCounter, list[str]]) -> None:
            for text in prepared[1]:
                len(own.encode(text, bos=False, eos=False))

        def ours(prepared: tuple[TokenCounter, list[str]]) -> None:
            counter, texts = prepared
            for text in texts:
                counter.count_text(text, model=model)

        def make(seed: int, chars: int = chars, count: int = count) -> tuple[TokenCounter, list[str]]:
            return TokenCounter(), [make_text(chars, seed * 1000 + i) for i in range(count)]

        raw_s, our_s = compare(raw, ours, make, samples)
        rows.append((label, raw_s, our_s, "<= 1.15x"))
    return rows


def _mistral_data() -> Any:
    from pathlib import Path

    import mistral_common

    return Path(mistral_common.__file__).parent / "data"


def provider_rows(samples: int) -> list[tuple[str, float, float, str]]:
    """Provider counting: a cache hit against a count over loopback (the stand-in of the tests)."""
    import sys
    from pathlib import Path

    import anyio

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.provider_standin import ProviderStandin

    from tokenledger.catalog import resolve
    from tokenledger.provider_count import ProviderCounter
    from tokenledger.settings import ProviderCounting

    model = resolve("claude-sonnet-4-5")
    text = make_text(2000, 7)

    async def measure() -> tuple[float, float]:
        with ProviderStandin() as standin:
            config = ProviderCounting(
                anthropic_api_key="bench", anthropic_base_url=standin.anthropic_base_url
            )
            counter = ProviderCounter(config, max_entries=100_000)
            await counter.count(tenant="bench", model=model, text="warm up")
            misses, hits = [], []
            for sample in range(samples * 5):
                fresh = f"{sample} {text}"
                started = time.perf_counter()
                await counter.count(tenant="bench", model=model, text=fresh)
                misses.append(time.perf_counter() - started)
                started = time.perf_counter()
                await counter.count(tenant="bench", model=model, text=fresh)
                hits.append(time.perf_counter() - started)
            await counter.aclose()
            return statistics.median(misses), statistics.median(hits)

    miss, hit = anyio.run(measure)
    return [("provider count hit vs loopback call", miss, hit, ">= 5x faster")]


if __name__ == "__main__":
    main()
