"""The nanochat backend's checks at submit: everything a job needs that can be known before it is queued.

The checkout must look like nanochat's; the spec's flags must be flags of its base_train (read from its add_argument
calls, nothing is run), extra_args may only add flags the spec does not set, each with as many values as the flag
takes (a word that is neither a flag nor the value of the flag before it is refused); the workers' Python must import
what base_train (and tok_train, when it trains the tokenizer) imports, checked in a child process; and several ranks
need as many CUDA devices. Each refusal is an InputError naming the field to fix.
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


def prepare(spec: TrainSpec, settings: Settings, this_machine: bool = True) -> TrainSpec:
    """Check what a nanochat job needs before it is queued; return the spec with `nanochat_dir` resolved. Without
    `this_machine` (the API's checks) the devices here are not the job's: the queue places it on a worker that has them.

    Raises InputError naming the field to fix.
    """
    nanochat_dir = resolve_checkout(spec, settings)
    known = base_train_flags(nanochat_dir)
    check_flags(spec, known)
    if spec.seed != NANOCHAT_SEED:
        raise InputError(
            f"nanochat's base_train always seeds {NANOCHAT_SEED}; it has no flag for seed {spec.seed}", where="seed"
        )
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_tag(spec)) or model_tag(spec) in (".", ".."):
        raise InputError(f"{model_tag(spec)!r} is not a plain directory name", where="model_tag")
    scripts = [BASE_TRAIN] + ([TOK_TRAIN] if uses_tok_train(spec) else [])
    probe = probe_python(third_party_imports(nanochat_dir, scripts))
    check_python(probe)
    check_ranks(spec, probe["cuda_devices"] if this_machine else None)
    return spec.model_copy(update={"nanochat_dir": str(nanochat_dir)})


def resolve_checkout(spec: TrainSpec, settings: Settings) -> Path:
    """The spec's nanochat_dir (under the input roots) or the server's; it must look like a nanochat checkout."""
    configured = settings.nanochat_dir.expanduser().resolve() if settings.nanochat_dir else None
    if spec.nanochat_dir is None and configured is None:
        raise InputError(
            "backend 'nanochat' needs a nanochat checkout: set nanochat_dir in the spec, or "
            "OPENSEEK_NANOCHAT_NANOCHAT_DIR on the server",
            where="nanochat_dir",
        )
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


# How many values a flag takes, by its add_argument `action` (argparse's own rules); the default is one.
NO_VALUE_ACTIONS = {"store_true", "store_false", "store_const", "append_const", "count", "help", "version"}
NARGS = {"?": (0, 1), "*": (0, None), "+": (1, None)}

Arity = tuple[int, int | None]  # the fewest and the most values a flag takes (None: no limit)


def base_train_flags(nanochat_dir: Path) -> dict[str, Arity]:
    """The --flags this checkout's base_train accepts, and how many values each takes, read from its add_argument
    calls (nothing is run)."""
    flags: dict[str, Arity] = {}
    for node in ast.walk(_parse(nanochat_dir / script_path(BASE_TRAIN))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")]
            keywords = {k.arg: k.value for k in node.keywords}
            arity = _arity(keywords.get("action"), keywords.get("nargs"))
            for name in names:
                flags[name] = arity
                if _is_boolean_optional(keywords.get("action")):
                    flags["--no-" + name[2:]] = arity
    return flags


def _arity(action: ast.expr | None, nargs: ast.expr | None) -> Arity:
    if _is_boolean_optional(action):
        return (0, 0)
    if isinstance(action, ast.Constant) and action.value in NO_VALUE_ACTIONS:
        return (0, 0)
    if action is not None and not isinstance(action, ast.Constant):
        return (0, None)  # an action of the script's own: it may take any number
    if nargs is None:
        return (1, 1)
    if isinstance(nargs, ast.Constant) and isinstance(nargs.value, int):
        return (nargs.value, nargs.value)
    if isinstance(nargs, ast.Constant) and nargs.value in NARGS:
        return NARGS[nargs.value]
    return (0, None)


def _is_boolean_optional(action: ast.expr | None) -> bool:
    return getattr(action, "attr", getattr(action, "id", None)) == "BooleanOptionalAction"


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}", where="nanochat_dir") from None


def check_flags(spec: TrainSpec, known: dict[str, Arity]) -> None:
    """extra_args: only flags base_train knows and the spec does not set, each followed by as many values as it takes
    (or given one as --flag=value); the spec's flags: all known here."""
    args, i = spec.extra_args, 0
    while i < len(args):
        arg = args[i]
        name, has_value, _ = arg.partition("=")
        if not arg.startswith("--"):
            raise InputError(
                f"{arg!r} is neither a flag of this checkout's {script_path(BASE_TRAIN)} nor the value "
                "of the flag before it",
                where="extra_args",
            )
        if name in SPEC_FLAGS:
            field = SPEC_FLAGS[name]
            raise InputError(f"{name} is the spec's field {field!r}: set {field} instead", where="extra_args")
        if name == RESUME_FLAG:
            raise InputError(f"{name} is the service's: a job resumes from its own last checkpoint", where="extra_args")
        if name not in known:
            raise InputError(
                f"{name} is not a flag of this checkout's {script_path(BASE_TRAIN)} (use full flag names)",
                where="extra_args",
            )
        fewest, most = known[name]
        if has_value:
            if most == 0:
                raise InputError(f"{name} takes no value (it is a switch): give {name} alone", where="extra_args")
            given = 1
        else:
            given = 0
            while (most is None or given < most) and i + 1 + given < len(args) and _is_value(args[i + 1 + given]):
                given += 1
        if given < fewest:
            raise InputError(f"{name} takes a value: give {name}=VALUE or {name} VALUE", where="extra_args")
        i += 1 + (0 if has_value else given)
    missing = [f"{flag} (field {field!r})" for flag, field in SPEC_FLAGS.items() if flag not in known]
    if missing:
        raise InputError(
            f"this checkout's base_train lacks flags the spec sets: {', '.join(missing)}; update the checkout",
            where="nanochat_dir",
        )


def _is_value(word: str) -> bool:
    """What argparse takes for a value rather than a flag: a word not starting with '-', or a negative number (its
    own pattern for one)."""
    return not word.startswith("-") or re.fullmatch(r"-\d+|-\d*\.\d+", word) is not None


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
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, *modules],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        probe = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as e:
        raise InputError(
            f"could not check the Python environment {sys.executable} for nanochat: {e}", where="nanochat_dir"
        ) from None
    if not probe["missing"]:
        _probed[key] = probe
    return probe


def check_python(probe: dict) -> None:
    missing = probe["missing"]
    if missing:
        packages = " ".join(sorted(PIP_NAMES.get(m, m) for m in missing))
        details = "; ".join(f"{m}: {e}" for m, e in sorted(missing.items()))
        raise InputError(
            f"the workers' Python ({sys.executable}) cannot import what nanochat needs ({details}); "
            f"run pip install 'openseek-nanochat[nanochat]' (or: pip install {packages})",
            where="nanochat_dir",
        )


def check_ranks(spec: TrainSpec, cuda_devices: int | None) -> None:
    """nanochat joins its ranks into one job only on CUDA: elsewhere each rank would train a model of its own.
    `cuda_devices`: this machine's, or None when the job will run elsewhere (only the spec's device counts then)."""
    if spec.world_size == 1:
        return
    on_cuda = spec.device == "cuda" or (spec.device == "auto" and (cuda_devices is None or cuda_devices > 0))
    if not on_cuda:
        raise InputError(
            f"nanochat's base_train runs several ranks only on CUDA (here each of the "
            f"{spec.world_size} ranks would train alone); use nnodes 1 and nproc_per_node 1",
            where="nproc_per_node",
        )
    if cuda_devices is not None and spec.nproc_per_node > cuda_devices:
        raise InputError(
            f"nproc_per_node {spec.nproc_per_node} is more than the {cuda_devices} CUDA device(s) here",
            where="nproc_per_node",
        )
