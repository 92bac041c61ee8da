"""Megatron conversion as OpenSeek's users hold their data: many parts, against the same characters from one part.

Layouts, each the same total of text, Qwen-tokenized (OpenSeek's <|extra_203|> ... <|extra_204|> around each
document), converted with a `max_chars` budget of half of it:

- `1 part`: the baseline, one large part;
- `config, 38 parts`: the shared OpenSeek training config, its data_path's parts named as it names them, sizes
  following its weights, read through `openseek_config` + `dataset_base_dir`;
- `84 parts`: as many parts as OpenSeek-Pretrain-100B has, sizes skewed like a real blend, as a data_path weighting
  each by its size;
- `1000 parts`: many small ones, as a data_path too (a `prefixes` glob reads its parts one after the other, so
  only a blend holds many parts open at once).

Each conversion runs in a fresh process that reports its own wall time and peak RSS; runs alternate across layouts
(--repeat), the best wall time and the highest peak counting. Ratios are against `1 part`, measured in the same run.

    .venv/bin/python benchmarks/convert_scale.py [--mb 500] [--repeat 2] [--workdir bench-data/scale]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CONFIG = SHARED / "openseek-configs" / "train_deepseek_v3_3b_1330B.yaml"
BEGIN, END = 151849, 151850
DOC_CHARS = 3000


def document_pool() -> tuple[list[np.ndarray], np.ndarray]:
    """~3 KB documents of Shakespeare and of Chinese (from the shared fixtures), Qwen-tokenized once: the parts are
    drawn from them, so building 500 MB of parts costs no tokenizing of 500 MB."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_detok import qwen_reference

    _, qwen = qwen_reference(SHARED / "qwen.tiktoken")
    text = (SHARED / "tinyshakespeare.txt").read_text()
    chinese = "".join(
        json.loads(line)["text"]
        for line in (SHARED / "megatron" / "cmath_text_document.expected.jsonl").read_text().splitlines()
    )
    texts = [text[i : i + DOC_CHARS] for i in range(0, len(text), DOC_CHARS)]
    texts += [chinese[i : i + DOC_CHARS // 3] for i in range(0, len(chinese), DOC_CHARS // 3)]
    docs = [np.array([BEGIN, *qwen.encode(t), END], np.int32) for t in texts]
    return docs, np.array([len(t) for t in texts])


def write_layout(folder: Path, sizes: dict[str, int], pool, seed: int) -> None:
    """Parts named by `sizes` (part name -> characters), each drawn from the pool until it holds its characters."""
    from openseek_nanochat.convert.sources.megatron_index import write_megatron

    docs, chars = pool
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        count = max(1, int(size / chars.mean()))
        picks = rng.integers(0, len(docs), count)
        write_megatron(folder / name, [[docs[i]] for i in picks])


def layouts(total_chars: int) -> dict[str, tuple[dict[str, int], dict]]:
    """name -> (part sizes, the megatron source that reads them, with {dir} for the layout's folder)."""
    import yaml

    data_path = yaml.safe_load(CONFIG.read_text())["data"]["data_path"]
    weights = np.array([float(w) for w in data_path[::2]])
    names = [p.split("/")[-1] for p in data_path[1::2]]
    skew = np.random.default_rng(0).lognormal(0, 1, 84)  # a real blend: a few big parts, many small
    tokenizer = {"type": "qwen", "path": str(SHARED / "qwen.tiktoken")}

    def blend(sizes: dict[str, int]) -> tuple[dict[str, int], dict]:
        data_path = [x for name, size in sizes.items() for x in (size, "{dir}/" + name)]
        return sizes, {"data_path": data_path, "tokenizer": tokenizer}

    out = {
        "1 part": (
            {"all_text_document": total_chars},
            {"prefixes": ["{dir}/all_text_document"], "tokenizer": tokenizer},
        ),
        "config, 38 parts": (
            {n: int(total_chars * w / weights.sum()) for n, w in zip(names, weights)},
            {"openseek_config": str(CONFIG), "dataset_base_dir": "{dir}", "tokenizer": tokenizer},
        ),
        "84 parts": blend(
            {f"part_{i:03d}_text_document": int(total_chars * s / skew.sum()) for i, s in enumerate(skew)}
        ),
        "1000 parts": blend({f"p{i:04d}_text_document": total_chars // 1000 for i in range(1000)}),
    }
    return out


def child(spec_file: str) -> None:
    # Imports before the clock starts: the benchmark compares conversions, not interpreter start-up.
    from openseek_nanochat.convert.run import convert
    from openseek_nanochat.convert.sources import megatron  # noqa: F401
    from openseek_nanochat.convert.spec import ConvertSpec

    spec = ConvertSpec.model_validate_json(Path(spec_file).read_text())
    start = time.perf_counter()
    manifest = convert(spec)
    wall = time.perf_counter() - start
    print(
        json.dumps(
            {
                "wall_s": wall,
                "chars": manifest["totals"]["chars"],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def measure(work: Path, name: str, source: dict, budget: int) -> dict:
    folder = work / slug(name)
    out = work / "data" / "datasets" / "out"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    source = json.loads(json.dumps(source).replace("{dir}", str(folder)))
    spec = {
        "sources": [{"type": "megatron", **source}],
        "output_dir": str(out),
        "max_chars": budget,
        "chars_per_shard": 50_000_000,
    }
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "OPENSEEK_NANOCHAT_DATA_DIR": str(work / "data"),
        "OPENSEEK_NANOCHAT_INPUT_ROOTS": os.pathsep.join([str(work), str(SHARED)]),
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(spec_file)], env=env, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"{name}: the conversion failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def slug(name: str) -> str:
    return name.replace(",", "").replace(" ", "_")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=500, help="characters of text in each layout, in millions")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, alternating; the best wall time counts")
    parser.add_argument("--only", nargs="*", help="layouts to run (default: all)")
    parser.add_argument("--workdir", default=str(REPO / "bench-data" / "scale"))
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    work = Path(args.workdir).resolve()
    total = args.mb * 1_000_000
    chosen = {k: v for k, v in layouts(total).items() if not args.only or k in args.only or k == "1 part"}
    pool = None
    for i, (name, (sizes, _)) in enumerate(chosen.items()):
        stamp = work / slug(name) / f".built-{args.mb}"
        if not stamp.exists():
            pool = pool or document_pool()
            subprocess.run(["rm", "-rf", str(work / slug(name))], check=True)
            started = time.perf_counter()
            write_layout(work / slug(name), sizes, pool, seed=i)
            stamp.touch()
            print(f"built {name}: {len(sizes)} parts in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    runs = {name: [] for name in chosen}
    for _ in range(args.repeat):  # alternate, so a burst of load on this shared machine hits all alike
        for name, (_, source) in chosen.items():
            runs[name].append(measure(work, name, source, total // 2))
    results = {
        name: {
            "wall_s": min(r["wall_s"] for r in rs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "chars": rs[0]["chars"],
        }
        for name, rs in runs.items()
    }
    base = results["1 part"]
    print(
        f"{total / 1e6:,.0f}M characters in each layout, max_chars {total // 2 / 1e6:,.0f}M, best of {args.repeat}, "
        f"{os.cpu_count()} cores"
    )
    print("| layout | parts | wall s | MB/s | vs 1 part | peak RSS MB | vs 1 part |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        parts = len(chosen[name][0])
        print(
            f"| {name} | {parts} | {r['wall_s']:.2f} | {r['chars'] / 1e6 / r['wall_s']:.0f} | "
            f"{base['wall_s'] / r['wall_s']:.2f}x | {r['peak_rss_mb']:,.0f} | "
            f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x |"
        )
    print("target: every layout >= 0.9x the throughput of one part, peak RSS within 1.2x")


if __name__ == "__main__":
    main()
