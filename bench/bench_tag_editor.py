"""The tag editor on 10,000 captions: load, table, filter, select, batch edits, undo, save.

    .venv/bin/python bench/bench_tag_editor.py [--files 10000] [--tags 25] [--runs 3]

A folder of ``--files`` tiny PNGs, each with a caption of ``--tags`` tags drawn from a Zipf-like
vocabulary of 3000 (as tagger output is: a few tags everywhere, a long tail of rare ones).
Each operation is timed (median of ``--runs``) against the plain Python a script would write for
the same work (``open().read().split(",")``, a Counter, list comprehensions, ``write_text``),
which has no backup, no atomic writes, no tolerant decoding and no undo. Goal: every Kiln
operation under one second at 10,000 captions, and the ratio near 1.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.dataset.tag_editor import TagEditor  # noqa: E402

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8ffff3f0005fe02fe"
    "a7356c0e0000000049454e44ae426082")


def make_folder(root: Path, files: int, tags: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab = [f"tag {i}" for i in range(3000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    root.mkdir(parents=True)
    for n in range(files):
        (root / f"{n:05d}.png").write_bytes(PNG_1x1)
        chosen = list(dict.fromkeys(rng.choices(vocab, weights, k=tags)))
        (root / f"{n:05d}.txt").write_text(", ".join(["1girl", *chosen]), encoding="utf-8")


def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_load(folder: Path) -> list[list[str]]:
    return [[t.strip() for t in p.with_suffix(".txt").read_text(encoding="utf-8").split(",") if t.strip()]
            for p in sorted(folder.glob("*.png"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--tags", type=int, default=25)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-tags-"))
    try:
        folder = work / "set"
        make_folder(folder, args.files, args.tags)
        rows: list[tuple[str, float, float]] = []
        editor = TagEditor.load(folder)
        plain = plain_load(folder)
        rows.append(("load folder", timed(lambda: TagEditor.load(folder), args.runs),
                     timed(lambda: plain_load(folder), args.runs)))

        def plain_table():
            c = Counter()
            for tags in plain:
                c.update(set(tags))
            return sorted(c.items(), key=lambda r: (-r[1], r[0]))
        rows.append(("tag table (by frequency)", timed(lambda: editor.tag_table(), args.runs),
                     timed(plain_table, args.runs)))
        rows.append(("filter table 'tag 1'", timed(lambda: editor.tag_table(filter_text="tag 1"), args.runs),
                     timed(lambda: [r for r in plain_table() if "tag 1" in r[0]], args.runs)))
        rows.append(("select AND 2 tags, NOT 1",
                     timed(lambda: editor.select(["tag 0", "tag 1"], exclude=["tag 2"]), args.runs),
                     timed(lambda: [i for i, t in enumerate(plain) if {"tag 0", "tag 1"} <= set(t)
                                    and "tag 2" not in t], args.runs)))

        def kiln_edits():
            editor.remove_by_frequency(below=5)
            editor.replace_tags({"tag 3": "Smith"})
            editor.put_trigger_first("shengcai")
            while editor.undo():
                pass

        def plain_edits():
            counts = plain_table()
            rare = {t for t, n in counts if n < 5}
            edited = [[t for t in tags if t not in rare] for tags in plain]
            edited = [["Smith" if t == "tag 3" else t for t in tags] for tags in edited]
            return [["shengcai", *[t for t in tags if t != "shengcai"]] for tags in edited]
        rows.append(("3 batch edits on all + undo", timed(kiln_edits, args.runs), timed(plain_edits, args.runs)))

        def kiln_save():
            fresh = TagEditor.load(folder)
            fresh.put_trigger_first(f"trigger{time.perf_counter_ns()}")
            start = time.perf_counter()
            fresh.save()
            return time.perf_counter() - start

        def plain_save():
            word = f"trigger{time.perf_counter_ns()}"
            start = time.perf_counter()
            for p, tags in zip(sorted(folder.glob("*.png")), plain):
                p.with_suffix(".txt").write_text(", ".join([word, *tags]), encoding="utf-8")
            return time.perf_counter() - start
        kiln_s = statistics.median(kiln_save() for _ in range(args.runs))
        plain_s = statistics.median(plain_save() for _ in range(args.runs))
        rows.append(("save all (backup + atomic)", kiln_s, plain_s))

        print(f"{args.files} captions, {args.tags} tags each, median of {args.runs}")
        print("| operation | Kiln | plain Python | ratio |\n|---|---|---|---|")
        for name, kiln, base in rows:
            print(f"| {name} | {kiln * 1000:.0f} ms | {base * 1000:.0f} ms | {kiln / base:.2f}× |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
