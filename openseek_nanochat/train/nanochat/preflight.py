"""The nanochat backend's checks at submit: everything a job needs that can be known before it is queued.

The checkout must look like nanochat's; the spec's flags must be flags of its base_train (read from its add_argument
calls, nothing is run), extra_args may only add flags the spec does not set; the workers' Python must import what
base_train (and tok_train, when it trains the tokenizer) imports, checked in a child process; and several ranks need
as many CUDA devices. Each refusal is an InputError naming the field to fix.
"""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import PathPolicyError, check_input_path
from openseek_nanochat.settings import Settings
from openseek_nanochat.train.nanochat.command import BASE_TRAIN, RESUME_FLAG, SPEC_FLAGS, TOK_TRAIN, uses_tok_train
from openseek_nanochat.train.nanochat.rundir import model_tag
from openseek_nanochat.train.spec import TrainSpec

NANOCHAT_SEED = 42  # base_train has no seed flag: nanochat seeds every run with 42
PIP_NAMES = {"yaml": "pyyaml"}  # import name -> package name, where they differ


def script_path(module: str) -> str:
    """A checkout's script by its module name: scripts.base_train -> scripts/base_train.py."""
    return module.replace(".", "/") + ".py"


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
    scripts = [BASE_TRAIN] + ([TOK_TRAIN] if uses_tok_train(spec) else [])
    probe = probe_python(third_party_imports(nanochat_dir, scripts))
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
    base_train = script_path(BASE_TRAIN)
    for part, is_there in ((base_train, (path / base_train).is_file()), ("nanochat/", (path / "nanochat").is_dir())):
        if not is_there:
            raise InputError(f"{path} is not a nanochat checkout: it has no {part}", where="nanochat_dir")
    return path


def base_train_flags(nanochat_dir: Path) -> set[str]:
    """The --flags this checkout's base_train accepts, read from its add_argument calls (nothing is run)."""
    flags = set()
    for node in ast.walk(_parse(nanochat_dir / script_path(BASE_TRAIN))):
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
            raise InputError(f"{name} is not a flag of this checkout's {script_path(BASE_TRAIN)} (use full flag "
                             "names)", where="extra_args")
    missing = [f"{flag} (field {field!r})" for flag, field in SPEC_FLAGS.items() if flag not in known]
    if missing:
        raise InputError(f"this checkout's base_train lacks flags the spec sets: {', '.join(missing)}; "
                         "update the checkout", where="nanochat_dir")


def third_party_imports(nanochat_dir: Path, scripts: list[str]) -> list[str]:
    """Top-level modules that importing `scripts` (module names) needs from the Python environment, following the
    checkout's own imports.

    Only module-level imports count: nanochat imports optional extras (e.g. FA3 `kernels`) inside functions.
    """
    local = {p.name if p.is_dir() else p.stem for p in nanochat_dir.iterdir() if p.is_dir() or p.suffix == ".py"}
    needed, seen = set(), set()
    todo = [nanochat_dir / script_path(s) for s in scripts]
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
