"""The nanochat backend: train with a nanochat checkout's own `scripts.base_train`, without changing any of its files.

A job's run dir is what nanochat reads as NANOCHAT_BASE_DIR:

    <run dir>/base_data_climbmix/shard_*.parquet   links to the dataset's shards (nanochat: the last is validation)
    <run dir>/tokenizer/                           tokenizer.pkl + token_bytes.pt (this project's, or tok_train's)
    <run dir>/base_checkpoints/<model tag>/        what base_train writes: model_, meta_ and optim_<step> files

The job runs `torchrun --standalone --nproc_per_node=N -m scripts.base_train -- <flags>` with the checkout as its
working directory (with `loader: "openseek"`, the project's launcher module instead, which swaps in this project's
data loader first). base_train's step and validation lines become metric and progress events. Started again, a job
resumes from its last complete checkpoint with --resume-from-step.

`prepare` runs at submit (train_job.prepare calls it), `run` in the job process (train_job.run calls it).
"""

import ast
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from openseek_nanochat.train import checkpoints as checkpoint_files
from openseek_nanochat import events
from openseek_nanochat.train import tokenizer as tok
from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import PathPolicyError, check_input_path
from openseek_nanochat.settings import Settings
from openseek_nanochat.train.spec import ReuseTokenizer, TrainSpec

# Where nanochat looks, under NANOCHAT_BASE_DIR (nanochat/dataset.py, nanochat/tokenizer.py, scripts/base_train.py).
DATA_SUBDIR = "base_data_climbmix"
TOKENIZER_SUBDIR = "tokenizer"
CHECKPOINTS_SUBDIR = "base_checkpoints"

BASE_TRAIN = "scripts/base_train.py"
TOK_TRAIN = "scripts/tok_train.py"
LAUNCHER = "openseek_nanochat.train.nanochat.launcher"

# base_train flag <- the spec field that sets it. These flags belong to the spec: extra_args may not repeat them.
SPEC_FLAGS = {
    "--device-type": "device",
    "--depth": "depth",
    "--aspect-ratio": "aspect_ratio",
    "--head-dim": "head_dim",
    "--max-seq-len": "max_seq_len",
    "--num-iterations": "num_iterations",
    "--device-batch-size": "device_batch_size",
    "--total-batch-size": "total_batch_size",
    "--embedding-lr": "embedding_lr",
    "--unembedding-lr": "unembedding_lr",
    "--matrix-lr": "matrix_lr",
    "--weight-decay": "weight_decay",
    "--warmup-steps": "warmup_steps",
    "--warmdown-ratio": "warmdown_ratio",
    "--final-lr-frac": "final_lr_frac",
    "--eval-every": "eval_every",
    "--eval-tokens": "eval_tokens",
    "--save-every": "save_every",
    "--run": "run",
    "--model-tag": "model_tag",
}
RESUME_FLAG = "--resume-from-step"  # the service's: a job resumes from its own checkpoints
# Defaults that keep a job offline (the CORE metric downloads its eval bundle); extra_args may override them.
OFFLINE_DEFAULTS = {"--core-metric-every": "-1"}
NANOCHAT_SEED = 42  # base_train has no seed flag: nanochat seeds every run with 42
WANDB_OFF = "dummy"  # base_train's run name that disables wandb
PIP_NAMES = {"yaml": "pyyaml"}  # import name -> package name, where they differ


def model_tag(spec: TrainSpec) -> str:
    return spec.model_tag or f"d{spec.depth}"


def checkpoint_dir(spec: TrainSpec, run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_SUBDIR / model_tag(spec)


def _nanochat_tokenizer(spec: TrainSpec) -> bool:
    """Whether to train the tokenizer with the checkout's scripts.tok_train instead of this project's trainer.

    Asked for by `"tokenizer": {..., "trainer": "nanochat"}`.
    """
    return getattr(spec.tokenizer, "trainer", "openseek") == "nanochat"  # a reused tokenizer has no trainer


# --- preflight (at submit) ----------------------------------------------------------------------------------------

def prepare(spec: TrainSpec, settings: Settings) -> TrainSpec:
    """Check what a nanochat job needs before it is queued; return the spec with `nanochat_dir` resolved.

    Raises InputError naming the field to fix.
    """
    nanochat_dir = resolve_checkout(spec, settings)
    known = base_train_flags(nanochat_dir)
    check_flags(spec, known)
    if spec.seed != NANOCHAT_SEED:
        raise InputError(f"nanochat's base_train always seeds {NANOCHAT_SEED}; it has no flag for seed {spec.seed}",
                         where="seed")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_tag(spec)) or model_tag(spec) in (".", ".."):
        raise InputError(f"{model_tag(spec)!r} is not a plain directory name", where="model_tag")
    roots = [BASE_TRAIN] + ([TOK_TRAIN] if _nanochat_tokenizer(spec) else [])
    probe = probe_python(third_party_imports(nanochat_dir, roots))
    check_python(probe)
    check_ranks(spec, probe["cuda_devices"])
    return spec.model_copy(update={"nanochat_dir": str(nanochat_dir)})


def resolve_checkout(spec: TrainSpec, settings: Settings) -> Path:
    """The spec's nanochat_dir (under the input roots) or the server's; it must look like a nanochat checkout."""
    configured = settings.nanochat_dir.expanduser().resolve() if settings.nanochat_dir else None
    if spec.nanochat_dir is None and configured is None:
        raise InputError("backend 'nanochat' needs a nanochat checkout: set nanochat_dir in the spec, or "
                         "OPENSEEK_NANOCHAT_NANOCHAT_DIR on the server", where="nanochat_dir")
    path = Path(spec.nanochat_dir).expanduser().resolve() if spec.nanochat_dir else configured
    if path != configured:
        # The job runs code from this directory: only where the server allows inputs to come from.
        try:
            check_input_path(path, settings)
        except PathPolicyError as e:
            raise InputError(str(e), where="nanochat_dir") from None
    if not path.is_dir():
        raise InputError(f"{path} is not a directory", where="nanochat_dir")
    for part, is_there in ((BASE_TRAIN, (path / BASE_TRAIN).is_file()), ("nanochat/", (path / "nanochat").is_dir())):
        if not is_there:
            raise InputError(f"{path} is not a nanochat checkout: it has no {part}", where="nanochat_dir")
    return path


def base_train_flags(nanochat_dir: Path) -> set[str]:
    """The --flags this checkout's base_train accepts, read from its add_argument calls (nothing is run)."""
    flags = set()
    for node in ast.walk(_parse(nanochat_dir / BASE_TRAIN)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags.update(a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--"))
    return flags


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}", where="nanochat_dir") from None


def check_flags(spec: TrainSpec, known: set[str]) -> None:
    """extra_args: only flags base_train knows and the spec does not set; the spec's flags: all known here."""
    for arg in spec.extra_args:
        if not arg.startswith("-") or re.fullmatch(r"-[\d.]+(e-?\d+)?", arg):
            continue  # the value of the flag before it
        name = arg.split("=", 1)[0]
        if name in SPEC_FLAGS:
            field = SPEC_FLAGS[name]
            raise InputError(f"{name} is the spec's field {field!r}: set {field} instead", where="extra_args")
        if name == RESUME_FLAG:
            raise InputError(f"{name} is the service's: a job resumes from its own last checkpoint", where="extra_args")
        if name not in known:
            raise InputError(f"{name} is not a flag of this checkout's scripts/base_train.py (use full flag names)",
                             where="extra_args")
    missing = [f"{flag} (field {field!r})" for flag, field in SPEC_FLAGS.items() if flag not in known]
    if missing:
        raise InputError(f"this checkout's base_train lacks flags the spec sets: {', '.join(missing)}; "
                         "update the checkout", where="nanochat_dir")


def third_party_imports(nanochat_dir: Path, roots: list[str]) -> list[str]:
    """Top-level modules that importing `roots` needs from the Python environment, following the checkout's own imports.

    Only module-level imports count: nanochat imports optional extras (e.g. FA3 `kernels`) inside functions.
    """
    local = {p.name if p.is_dir() else p.stem for p in nanochat_dir.iterdir() if p.is_dir() or p.suffix == ".py"}
    needed, seen = set(), set()
    todo = [nanochat_dir / r for r in roots]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        for node in _parse(path).body:
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # may name submodules
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in local:
                    module = nanochat_dir / name.replace(".", "/")
                    todo += [module.with_name(module.name + ".py"), module / "__init__.py"]
                elif top not in sys.stdlib_module_names:
                    needed.add(top)
    return sorted(needed)


_PROBE = """
import importlib, json, sys
missing = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as e:
        missing[name] = f"{type(e).__name__}: {e}"
cuda_devices = sys.modules["torch"].cuda.device_count() if "torch" in sys.modules else 0
print(json.dumps({"missing": missing, "cuda_devices": cuda_devices}))
"""
_probed: dict[tuple, dict] = {}  # successful probes: a server checks once per Python and module list


def probe_python(modules: list[str]) -> dict:
    """Import `modules` in a fresh process of this Python (the one workers run jobs with); count CUDA devices.

    Returns {"missing": {module: error}, "cuda_devices": n}. A child process, so a broken import cannot hurt the server.
    """
    key = (sys.executable, *modules)
    if key in _probed:
        return _probed[key]
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        probe = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as e:
        raise InputError(f"could not check the Python environment {sys.executable} for nanochat: {e}",
                         where="nanochat_dir") from None
    if not probe["missing"]:
        _probed[key] = probe
    return probe


def check_python(probe: dict) -> None:
    missing = probe["missing"]
    if missing:
        packages = " ".join(sorted(PIP_NAMES.get(m, m) for m in missing))
        details = "; ".join(f"{m}: {e}" for m, e in sorted(missing.items()))
        raise InputError(f"the workers' Python ({sys.executable}) cannot import what nanochat needs ({details}); "
                         f"run pip install 'openseek-nanochat[nanochat]' (or: pip install {packages})",
                         where="nanochat_dir")


def check_ranks(spec: TrainSpec, cuda_devices: int) -> None:
    """nanochat joins its ranks into one job only on CUDA: elsewhere each rank would train a model of its own."""
    if spec.nproc_per_node == 1:
        return
    on_cuda = spec.device == "cuda" or (spec.device == "auto" and cuda_devices > 0)
    if not on_cuda:
        raise InputError(f"nanochat's base_train runs several ranks only on CUDA (here each of the "
                         f"{spec.nproc_per_node} ranks would train alone); use nproc_per_node 1",
                         where="nproc_per_node")
    if spec.nproc_per_node > cuda_devices:
        raise InputError(f"nproc_per_node {spec.nproc_per_node} is more than the {cuda_devices} CUDA device(s) here",
                         where="nproc_per_node")


# --- the command ---------------------------------------------------------------------------------------------------

def spec_flags(spec: TrainSpec) -> dict[str, object]:
    """The spec as base_train flag values, where they mean the same thing; the rest as the spec defines them."""
    values = {flag: getattr(spec, field) for flag, field in SPEC_FLAGS.items()}
    values.update({
        "--device-type": "" if spec.device == "auto" else spec.device,  # "": nanochat picks cuda, mps or cpu
        "--total-batch-size": spec.total_tokens_per_step(),  # the spec's default, not nanochat's auto-sizing
        # the spec's -1 is "only at the end"; nanochat's -1 is "never" (it also evaluates at step 0)
        "--eval-every": spec.eval_every if spec.eval_every > 0 else spec.num_iterations,
        "--run": spec.run or WANDB_OFF,
        "--model-tag": model_tag(spec),
    })
    return values


def base_train_args(spec: TrainSpec, resume_step: int | None = None) -> list[str]:
    """base_train's argv: the spec's flags, offline defaults, the resume step, then extra_args (argparse: last wins)."""
    given = {arg.split("=", 1)[0] for arg in spec.extra_args}
    args = [f"{flag}={value}" for flag, value in spec_flags(spec).items()]
    args += [f"{flag}={value}" for flag, value in OFFLINE_DEFAULTS.items() if flag not in given]
    if resume_step is not None:
        args.append(f"{RESUME_FLAG}={resume_step}")
    return args + list(spec.extra_args)


def torchrun_command(spec: TrainSpec, resume_step: int | None = None) -> list[str]:
    """torchrun (this Python's) running base_train, or the launcher that swaps in the project's loader first."""
    module = LAUNCHER if spec.loader == "openseek" else "scripts.base_train"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.nproc_per_node}",
            "-m", module, "--", *base_train_args(spec, resume_step)]


def use_compile(spec: TrainSpec) -> bool:
    """The spec's `compile`; base_train always calls torch.compile, so "off" disables TorchDynamo for the job."""
    if spec.compile != "auto":
        return spec.compile == "on"
    if spec.device != "auto":
        return spec.device == "cuda"
    import torch

    return torch.cuda.is_available()


def nanochat_environment(run_dir: Path) -> dict[str, str]:
    """Any nanochat script's environment: the run dir as its base dir, nothing written into the checkout."""
    return {
        **os.environ,
        "NANOCHAT_BASE_DIR": str(run_dir),
        "WANDB_DIR": str(run_dir),  # wandb writes ./wandb otherwise, into the checkout
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ inside the checkout either
        "PYTHONUNBUFFERED": "1",  # lines as they happen
    }


def job_environment(spec: TrainSpec, run_dir: Path) -> dict[str, str]:
    env = nanochat_environment(run_dir)
    if not use_compile(spec):
        env["TORCHDYNAMO_DISABLE"] = "1"  # torch.compile returns the model as it is
    if spec.loader == "openseek":
        # The launcher runs with the checkout as cwd; make this package importable even when it is not installed.
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), package_root) if p)
    return env


# --- the run dir ---------------------------------------------------------------------------------------------------

def link_shards(dataset_dir: Path, run_dir: Path) -> list[Path]:
    """<run dir>/base_data_climbmix: a link per shard, same names, so nanochat's sort keeps validation last."""
    if not Path(dataset_dir).is_dir():
        raise InputError(f"{dataset_dir} is not a directory", where="dataset")
    # hidden files are a conversion's shards in the making
    shards = sorted(p for p in Path(dataset_dir).iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))
    if len(shards) < 2:
        raise InputError(f"{dataset_dir} has {len(shards)} parquet shard(s); nanochat needs train shards and a "
                         "validation shard (the last)", where="dataset")
    return _link_files(shards, Path(run_dir) / DATA_SUBDIR)


def _link_files(targets: list[Path], folder: Path) -> list[Path]:
    """`folder` holds exactly one link per target (links left from an earlier attempt are replaced)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_symlink():
            old.unlink()
    links = []
    for target in targets:
        link = folder / target.name
        link.symlink_to(target.resolve())
        links.append(link)
    return links


def tokenizer_ready(tokenizer_dir: Path) -> bool:
    """Both files there and whole (nanochat's tok_train writes them in place, so a kill can leave one cut short)."""
    return tok.is_complete(tokenizer_dir) and _whole_torch_file(Path(tokenizer_dir) / tok.TOKEN_BYTES_FILE)


def _whole_torch_file(path: Path) -> bool:
    """torch.save writes a zip whose directory is at the very end: a file cut short has none."""
    return path.is_file() and zipfile.is_zipfile(path)


def ensure_tokenizer(spec: TrainSpec, run_dir: Path, emit=events.emit) -> Path:
    """Put the tokenizer where nanochat reads it, <run dir>/tokenizer; return the directory it comes from."""
    target = Path(run_dir) / TOKENIZER_SUBDIR
    if isinstance(spec.tokenizer, ReuseTokenizer):
        source = Path(spec.tokenizer.path)
        _link_files([source / tok.TOKENIZER_FILE, source / tok.TOKEN_BYTES_FILE], target)
        return source
    if tokenizer_ready(target):
        print(f"tokenizer: reusing {target}", flush=True)
        return target
    options = spec.tokenizer
    emit("progress", phase="tokenizer", message="training the tokenizer", fraction=0.0)
    if _nanochat_tokenizer(spec):
        train_nanochat_tokenizer(Path(spec.nanochat_dir), run_dir, options.vocab_size, options.max_chars,
                                 options.doc_cap)
    else:
        try:
            stats = tok.train_from_shards(spec.dataset, target, options.vocab_size, options.max_chars, options.doc_cap)
        except ValueError as e:
            raise InputError(str(e), where="tokenizer") from None
        print(f"tokenizer: {stats['vocab_size']:,} tokens from {stats['docs']:,} docs in {stats['seconds']:.1f}s",
              flush=True)
    return target


def train_nanochat_tokenizer(nanochat_dir: Path, run_dir: Path, vocab_size: int, max_chars: int, doc_cap: int) -> Path:
    """nanochat's own scripts.tok_train on the linked train shards; it writes <run dir>/tokenizer."""
    command = [sys.executable, "-m", "scripts.tok_train", f"--vocab-size={vocab_size}", f"--max-chars={max_chars}",
               f"--doc-cap={doc_cap}"]
    returncode, failure = stream(command, nanochat_dir, nanochat_environment(run_dir))
    target = Path(run_dir) / TOKENIZER_SUBDIR
    if returncode != 0 or not tokenizer_ready(target):
        raise RuntimeError(f"nanochat's tok_train failed (exit code {returncode})"
                           + (f": {failure}" if failure else ""))
    return target


# --- checkpoints ---------------------------------------------------------------------------------------------------

def last_complete_step(checkpoints: Path, world_size: int) -> int | None:
    """The latest step with every file base_train writes for it, whole: base_train writes checkpoints in place, so a
    killed run can leave a file cut short that merely existing would not reveal."""
    return checkpoint_files.last_complete_step(checkpoints, world_size, whole=_whole_checkpoint_file)


def _whole_checkpoint_file(path: Path) -> bool:
    if path.suffix == ".json":
        return _read_meta(path.parent, int(path.stem.split("_")[1])) is not None
    return _whole_torch_file(path)


def _read_meta(checkpoints: Path, step: int) -> dict | None:
    try:
        return json.loads((checkpoints / f"meta_{step:06d}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


# --- base_train's output -------------------------------------------------------------------------------------------

STEP_LINE = re.compile(r"step (\d+)/(\d+) \([^)]*\)((?: \| [^|]+)+)")
VAL_LINE = re.compile(r"Step (\d+) \| Validation bpb: (\S+)")
MIN_VAL_LINE = re.compile(r"Minimum validation bpb: (\S+)")
LR_SCALE_LINE = re.compile(r"Scaling LRs by (\S+) for batch size")
GPU_LINE = re.compile(r"GPU: .* \| Peak FLOPS \(BF16\): (\S+)")
# The reason a rank failed: an exception's last traceback line, or an argparse complaint about the flags.
FAILURE_LINE = re.compile(r"(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Interrupt)\b.*|\S+\.py: error: .*")
LAUNCHER_FAILURE = "ChildFailedError"  # torchrun's own report comes after the rank's, and says less


def _number(text: str) -> float | None:
    """'1,234' '12.50ms' '0.05m' -> float; nan and inf -> None (JSON has no such numbers, and the API serves JSON)."""
    value = float(text.strip().rstrip("ms").replace(",", ""))
    return value if math.isfinite(value) else None


class OutputParser:
    """base_train's output lines in, one metric record per completed step out.

    Steps are counted as done steps, like the builtin trainer and nanochat's checkpoints and validation lines: the line
    `step 00012/00100` reports the 13th step, so its record is step 13. A validation line for step s follows the step
    line of step s and is merged into its record (one record per step: the worker keeps the last one it gets).
    `loss` is nanochat's printed (smoothed, debiased) training loss; `lr` is the matrix learning rate of the step.
    A resumed run evaluates its checkpoint's step again; that record was made by the run that wrote the checkpoint,
    so it is not made again (it would replace the step's loss with nothing).
    """

    def __init__(self, matrix_lr: float, num_iterations: int | None = None, resume_step: int | None = None):
        self.matrix_lr = matrix_lr
        self.resume_step = resume_step
        self.lr_scale = 1.0  # nanochat scales every LR by sqrt(batch / 2**19) and says so
        self.peak_flops: float | None = None  # known on a GPU nanochat has in its table; MFU means nothing elsewhere
        self.pending: dict | None = None  # the last step's record, until we know whether a validation line follows
        self.records: list[dict] = []
        self.step = resume_step or 0
        self.num_iterations = num_iterations
        self.loss = self.tok_per_sec = self.val_bpb = self.min_val_bpb = self.eta_s = None

    def feed(self, line: str) -> str | None:
        """Read one line; returns "step", "val" or "done" for lines that move the job, else None."""
        line = line.strip()
        if m := STEP_LINE.fullmatch(line):
            try:
                record = self._step_record(int(m.group(1)), int(m.group(2)), m.group(3))
            except (KeyError, ValueError):
                return None  # a line like it that is not one: output must never break a job
            self._flush()
            self.pending = record
            return "step"
        if m := VAL_LINE.fullmatch(line):
            step, self.val_bpb = int(m.group(1)), _number(m.group(2))
            if self.pending is None or self.pending["step"] != step:
                self._flush()
                if step != self.resume_step:
                    self.pending = self._record(step)
            if self.pending is not None:
                self.pending["val_bpb"] = self.val_bpb
            self.step = max(self.step, step)
            self._flush()
            return "val"
        if m := MIN_VAL_LINE.fullmatch(line):
            self.min_val_bpb = _number(m.group(1))
            self._flush()
            return "done"
        if m := LR_SCALE_LINE.match(line):
            self.lr_scale = float(m.group(1))
        elif m := GPU_LINE.fullmatch(line):
            self.peak_flops = _number(m.group(1))  # inf (a GPU nanochat does not know): no MFU
        return None

    def _step_record(self, index: int, num_iterations: int, rest: str) -> dict:
        """The record of a step line's `key: value` fields (in any order); KeyError/ValueError when they are not."""
        fields = dict(part.split(": ", 1) for part in rest.split(" | ")[1:] if ": " in part)
        record = self._record(index + 1)
        lrm = _number(fields["lrm"])
        record.update(loss=_number(fields["loss"]), dt_ms=_number(fields["dt"]), tok_per_sec=_number(fields["tok/sec"]),
                      lr=None if lrm is None else self.matrix_lr * self.lr_scale * lrm)
        if self.peak_flops and "bf16_mfu" in fields:
            record["mfu"] = _number(fields["bf16_mfu"])
        eta_minutes = _number(fields["eta"]) if "eta" in fields else None  # printed from the 11th step on
        self.step, self.num_iterations = index + 1, num_iterations
        self.loss, self.tok_per_sec = record["loss"], record["tok_per_sec"]
        self.eta_s = None if eta_minutes is None else 60 * eta_minutes
        return record

    @staticmethod
    def _record(step: int) -> dict:
        return dict.fromkeys(("loss", "lr", "dt_ms", "tok_per_sec", "mfu", "val_bpb"), None) | {"step": step}

    def _flush(self) -> None:
        if self.pending is not None:
            self.records.append(self.pending)
            self.pending = None

    def pop_records(self) -> list[dict]:
        records, self.records = self.records, []
        return records

    def close(self) -> list[dict]:
        self._flush()
        return self.pop_records()

    def progress(self) -> dict:
        fraction = self.step / self.num_iterations if self.num_iterations else None
        return {"phase": "train", "step": self.step, "num_iterations": self.num_iterations, "fraction": fraction,
                "loss": self.loss, "tok_per_sec": self.tok_per_sec, "val_bpb": self.val_bpb, "eta_s": self.eta_s}


# --- running -------------------------------------------------------------------------------------------------------

def stream(command: list[str], cwd: Path, env: dict[str, str], on_line=None) -> tuple[int, str | None]:
    """Run a child, copying its output (stdout and stderr) to ours as it comes and handing each line to `on_line`.

    Returns the exit code and the first failure line it printed (the reason, when it failed).
    """
    from openseek_nanochat.train.job import _die_with_parent

    print("$ " + " ".join(command), flush=True)
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, preexec_fn=preexec)
    failure = None
    out = sys.stdout
    try:
        for raw in process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if hasattr(out, "buffer"):  # the child's bytes as they are, whatever our stdout's encoding
                out.flush()  # after our own events and lines, in order
                out.buffer.write(raw)
                out.buffer.flush()
            else:
                print(line, flush=True)
            if failure is None and FAILURE_LINE.fullmatch(line.strip()) and LAUNCHER_FAILURE not in line:
                failure = line.strip()
            if on_line is not None:
                on_line(line)
        return process.wait(), failure
    finally:
        if process.poll() is None:  # we are being interrupted: take the training down with us
            process.terminate()
            process.wait()


def run(spec: TrainSpec, job_dir, events: bool = True) -> dict:
    """Run a prepared nanochat job in `job_dir` (its run dir), resuming whatever it holds; return the result.

    Raises InputError for bad data, RuntimeError when nanochat fails (its output, copied to ours, says why).
    """
    emit = _emitter(events)
    if not spec.nanochat_dir:
        raise InputError("no nanochat checkout: the spec was not prepared", where="nanochat_dir")
    nanochat_dir = Path(spec.nanochat_dir)
    run_dir = Path(job_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    link_shards(Path(spec.dataset), run_dir)
    tokenizer_dir = ensure_tokenizer(spec, run_dir, emit)

    checkpoints = checkpoint_dir(spec, run_dir)
    saved_step = last_complete_step(checkpoints, spec.nproc_per_node)
    if saved_step is not None and saved_step >= spec.num_iterations:
        print(f"nothing to do: {checkpoints} already has step {saved_step}", flush=True)
    else:
        if saved_step is not None:
            print(f"resuming from the checkpoint of step {saved_step} in {checkpoints}", flush=True)
        train(spec, run_dir, saved_step, emit)
        saved_step = last_complete_step(checkpoints, spec.nproc_per_node)
        if saved_step is None or saved_step < spec.num_iterations:
            raise RuntimeError(f"nanochat's base_train ended without a checkpoint of step {spec.num_iterations} "
                               f"in {checkpoints}")

    meta = _read_meta(checkpoints, saved_step) or {}
    result = {
        "backend": "nanochat",
        "run_dir": str(run_dir),
        "nanochat_dir": str(nanochat_dir),
        "tokenizer_dir": str(tokenizer_dir),
        "checkpoint_dir": str(checkpoints),
        "world_size": spec.nproc_per_node,
        "step": meta.get("step", saved_step),
        "num_iterations": spec.num_iterations,
        "val_bpb": meta.get("val_bpb"),
        "min_val_bpb": meta.get("loop_state", {}).get("min_val_bpb"),
    }
    emit("progress", phase="done", step=result["step"], num_iterations=spec.num_iterations, fraction=1.0,
         val_bpb=result["val_bpb"], message="trained")
    emit("result", **result)
    return result


def train(spec: TrainSpec, run_dir: Path, resume_step: int | None, emit=events.emit) -> OutputParser:
    """torchrun base_train once, its output parsed into metric and (at most every 2 s) progress events."""
    parser = OutputParser(spec.matrix_lr, spec.num_iterations, resume_step)
    throttle = events.Throttle(2.0)
    emit("progress", phase="train", message="starting nanochat's base_train", step=resume_step or 0,
         num_iterations=spec.num_iterations, fraction=(resume_step or 0) / spec.num_iterations)

    def on_line(line: str) -> None:
        moved = parser.feed(line)
        for record in parser.pop_records():
            emit("metric", **record)
        if moved == "val" or (moved == "step" and throttle.ready()):
            emit("progress", **parser.progress())

    returncode, failure = stream(torchrun_command(spec, resume_step), Path(spec.nanochat_dir),
                                 job_environment(spec, run_dir), on_line)
    for record in parser.close():
        emit("metric", **record)
    if returncode != 0:
        raise RuntimeError(f"nanochat's base_train failed (torchrun exit code {returncode})"
                           + (f": {failure}" if failure else ""))
    return parser


def _emitter(on: bool):
    return events.emit if on else (lambda *args, **kwargs: None)
