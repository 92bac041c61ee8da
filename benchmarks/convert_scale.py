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

Each conversion runs in a fresh process (on every core: `processes` left to its default) that reports its own wall
time and peak RSS; runs alternate across layouts (--repeat), the best wall time and the highest peak counting. Ratios
are against `1 part`, measured in the same run.

--processes compares instead conversions on 1 core and on more (`processes` in the spec: --cores, default 1 and every
usable core), and as many one-core conversions at once (what the machine itself gives in parallel), on a JSONL corpus
of --jsonl-mb (benchmarks/convert.py's) and on the `config, 38 parts` miniature of --mb, and the JSONL ones with two
peers on the same file: the Arrow-native ceiling (pyarrow.json's streaming reader straight into a zstd ParquetWriter,
no shuffle, no provenance, no manifest) and datatrove (JsonlReader -> ParquetWriter with zstd, as its documentation
sets up a local pipeline: one task, since the corpus is one file).

    .venv/bin/python benchmarks/convert_scale.py [--mb 500] [--repeat 2] [--workdir bench-data/scale]
    .venv/bin/python benchmarks/convert_scale.py --processes [--cores 1 2] [--jsonl-mb 200] [--mb 500] [--repeat 5]
"""

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from openseek_nanochat.capacity import cpu_count

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
    # Imports before the clock starts: the benchmark compares conversions, not interpreter start-up. pandas too:
    # pyarrow imports it when it first builds an array, in every case alike (0.2 s here).
    import pandas  # noqa: F401

    from openseek_nanochat.convert.run import convert
    from openseek_nanochat.convert.sources import megatron  # noqa: F401
    from openseek_nanochat.convert.spec import ConvertSpec

    spec = json.loads(Path(spec_file).read_text())
    peer = {"ceiling": jsonl_bench().ceiling, "datatrove": run_datatrove}.get(spec.get("peer"))
    if peer is run_datatrove:
        import datatrove.executor  # noqa: F401  (imported before the clock, as the project's modules are)
        import datatrove.pipeline.writers  # noqa: F401
    start, cpu_before = time.perf_counter(), cpu_seconds()
    if peer is not None:
        peer(spec["corpus"], spec["output_dir"])
        chars = None
    else:
        chars = convert(ConvertSpec.model_validate(spec))["totals"]["chars"]
    wall = time.perf_counter() - start
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": cpu_seconds() - cpu_before,
                "chars": chars,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def run_datatrove(corpus: str, out: str) -> None:
    """datatrove's own local pipeline: its JSONL reader into its parquet writer (zstd), the text column only."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import ParquetWriter

    corpus = Path(corpus)
    pipeline = [
        JsonlReader(str(corpus.parent), glob_pattern=corpus.name, recursive=False),
        ParquetWriter(out, compression="zstd", adapter=lambda self, document: {"text": document.text}),
    ]
    LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=f"{out}/.logs").run()


def cpu_seconds() -> float:
    """CPU time of this process's threads and of its finished children (datatrove's task), user and system."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def jsonl_bench():
    """benchmarks/convert.py, for its corpus and its ceiling (a script beside this one, not a package)."""
    spec = importlib.util.spec_from_file_location("convert_bench", Path(__file__).with_name("convert.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def megatron_spec(work: Path, name: str, source: dict, budget: int) -> dict:
    source = json.loads(json.dumps(source).replace("{dir}", str(work / slug(name))))
    return {"sources": [{"type": "megatron", **source}], "max_chars": budget, "chars_per_shard": 50_000_000}


def measure(work: Path, name: str, spec: dict, copies: int = 1) -> dict:
    """One conversion (or a peer: {"peer": "ceiling" | "datatrove", "corpus": path}) in a fresh process, into a
    fresh output dir; with `copies`, that many at once, each into its own (wall: the slowest, cpu: all of them)."""
    env = {
        **os.environ,
        "OPENSEEK_NANOCHAT_DATA_DIR": str(work / "data"),
        "OPENSEEK_NANOCHAT_INPUT_ROOTS": os.pathsep.join([str(work), str(SHARED)]),
    }
    children = []
    for copy in range(copies):
        out = work / "data" / "datasets" / f"out{copy}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        spec_file = work / f"spec{copy}.json"
        spec_file.write_text(json.dumps({**spec, "output_dir": str(out)}))
        command = [sys.executable, __file__, "--child", str(spec_file)]
        children.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for child in children:
        stdout, stderr = child.communicate()
        if child.returncode:
            raise SystemExit(f"{name}: the conversion failed:\n{stderr[-3000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return {
        "wall_s": max(r["wall_s"] for r in results),
        "cpu_s": sum(r["cpu_s"] for r in results),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "chars": results[0]["chars"],
        "copies": copies,
    }


def best(runs: list[dict]) -> dict:
    return {
        "wall_s": min(r["wall_s"] for r in runs),
        "cpu_s": min(r["cpu_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "copies": runs[0]["copies"],
    }


def processes_table(work: Path, args) -> None:
    """The project on 1 core and on more, on JSONL and on Megatron parts; on JSONL beside the ceiling and datatrove."""
    corpus = work / f"corpus_{args.jsonl_mb}mb.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    jsonl_bench().make_corpus(corpus, args.jsonl_mb)
    name = "config, 38 parts"
    sizes, source = layouts(args.mb * 1_000_000)[name]
    build(work, {name: (sizes, source)}, args.mb)
    jsonl = {"sources": [{"type": "files", "paths": [str(corpus)]}], "chars_per_shard": 50_000_000}
    megatron = megatron_spec(work, name, source, args.mb * 1_000_000 // 2)
    cores = args.cores or [1, cpu_count()]
    most = cores[-1]
    # The machine's own ceiling for running in parallel: `most` independent one-core conversions at once, each with a
    # core to itself and nothing shared. On a shared VM cores slow each other down (memory, caches, the host), so
    # this, not `most` times one core, is what a conversion on `most` cores can hope for.
    together = f"{most} x 1 core at once"
    cases = {
        ("jsonl", "Arrow ceiling"): ({"peer": "ceiling", "corpus": str(corpus)}, 1),
        ("jsonl", "datatrove"): ({"peer": "datatrove", "corpus": str(corpus)}, 1),
        **{("jsonl", cores_label(n)): ({**jsonl, "processes": n}, 1) for n in cores},
        ("jsonl", together): ({**jsonl, "processes": 1}, most),
        **{("megatron", cores_label(n)): ({**megatron, "processes": n}, 1) for n in cores},
        ("megatron", together): ({**megatron, "processes": 1}, most),
    }
    runs = {case: [] for case in cases}
    for _ in range(args.repeat):  # alternate, so a burst of load on this shared machine hits all alike
        for case, (spec, copies) in cases.items():
            runs[case].append(measure(work, " ".join(case), spec, copies))
    results = {case: best(rs) for case, rs in runs.items()}
    mb = {"jsonl": corpus.stat().st_size / 1e6, "megatron": args.mb / 2}
    print(
        f"JSONL {mb['jsonl']:,.0f} MB (shuffle on); Megatron `{name}` {args.mb} M chars, max_chars half of it; "
        f"chars_per_shard 50M; best of {args.repeat}; {os.cpu_count()} cores (affinity {cpu_count()}); "
        f"`{together}`: throughput of {most} separate one-core runs together, the machine's parallel ceiling"
    )
    print("| input | run | wall s | MB/s | vs 1 core | vs Arrow ceiling | vs datatrove | cores busy | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (kind, what), r in results.items():
        wall = r["wall_s"] / r["copies"]  # per conversion's worth of input
        one = results.get((kind, cores_label(cores[0])))
        vs_one = f"{one['wall_s'] / wall:.2f}x" if one and what in [*map(cores_label, cores), together] else "-"
        vs_ceiling = f"{results[('jsonl', 'Arrow ceiling')]['wall_s'] / wall:.2f}x" if kind == "jsonl" else "-"
        vs_datatrove = f"{results[('jsonl', 'datatrove')]['wall_s'] / wall:.2f}x" if kind == "jsonl" else "-"
        print(
            f"| {kind} | {what} | {r['wall_s']:.2f} | {mb[kind] / wall:.0f} | {vs_one} | {vs_ceiling} | "
            f"{vs_datatrove} | {r['cpu_s'] / r['wall_s']:.2f} | {r['peak_rss_mb']:,.0f} |"
        )
    print(f"targets on 2 cores: 2 cores >= 1.6x 1 core; the project on {cores[-1]} cores >= 1.0x the Arrow ceiling")


def cores_label(n: int) -> str:
    return f"{n} core" if n == 1 else f"{n} cores"


def build(work: Path, chosen: dict, mb: int) -> None:
    """Write each layout's parts once per size (a stamp file marks a finished build)."""
    pool = None
    for i, (name, (sizes, _)) in enumerate(chosen.items()):
        stamp = work / slug(name) / f".built-{mb}"
        if not stamp.exists():
            pool = pool or document_pool()
            subprocess.run(["rm", "-rf", str(work / slug(name))], check=True)
            started = time.perf_counter()
            write_layout(work / slug(name), sizes, pool, seed=i)
            stamp.touch()
            print(f"built {name}: {len(sizes)} parts in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def slug(name: str) -> str:
    return name.replace(",", "").replace(" ", "_")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=500, help="characters of text in each layout, in millions")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, alternating; the best wall time counts")
    parser.add_argument("--only", nargs="*", help="layouts to run (default: all)")
    parser.add_argument("--workdir", default=str(REPO / "bench-data" / "scale"))
    parser.add_argument("--processes", action="store_true", help="1 core against more, and against two peers")
    parser.add_argument("--cores", type=int, nargs="*", help="`processes` values for --processes (default: 1 and all)")
    parser.add_argument("--jsonl-mb", type=int, default=200, help="size of the JSONL corpus for --processes")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    work = Path(args.workdir).resolve()
    if args.processes:
        return processes_table(work, args)
    total = args.mb * 1_000_000
    chosen = {k: v for k, v in layouts(total).items() if not args.only or k in args.only or k == "1 part"}
    build(work, chosen, args.mb)
    runs = {name: [] for name in chosen}
    for _ in range(args.repeat):  # alternate, so a burst of load on this shared machine hits all alike
        for name, (_, source) in chosen.items():
            runs[name].append(measure(work, name, megatron_spec(work, name, source, total // 2)))
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
