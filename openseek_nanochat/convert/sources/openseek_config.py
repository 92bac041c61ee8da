"""OpenSeek/FlagScale training configs as shipped: the `data.data_path` and `data.tokenizer` a training run reads.

OpenSeek's configs write each prefix as `${experiment.dataset_base_dir}/<name>_text_document`, with the base dir set
in the Hydra experiment file beside the training file. Here `${experiment.X}` takes its value from `dataset_base_dir`
(for X = dataset_base_dir) or from the experiment file's `experiment:` section; anything left unresolved is an error
naming it, so a prefix never silently points at a folder called `${...}`. Relative paths in a YAML file (the base
dir, the tokenizer's files) count from that file's folder: a config moved together with its data keeps working.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from openseek_nanochat.convert.spec import MegatronTokenizerSpec
from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import check_input_path
from openseek_nanochat.settings import Settings

MAX_CONFIG_BYTES = 4 << 20  # OpenSeek's training file is ~8 KB; a YAML this big is not a config
VARIABLE = re.compile(r"\$\{([^}]*)\}")
TOKENIZER_PATH_FIELDS = ("vocab_file", "merge_file", "tokenizer_model", "tokenizer_path")


@dataclass
class OpenSeekData:
    data_path: list  # weight, prefix, weight, prefix, ... with every ${...} resolved
    tokenizer: dict | None  # Megatron's tokenizer arguments, files resolved; None when the config names none
    files: list[str]  # the YAML files read, resolved (they join the fingerprint)


def load_yaml(path: str, settings: Settings) -> tuple[Path, dict]:
    resolved = check_input_path(path, settings)
    if not resolved.is_file():
        raise InputError("no such config file", path)
    size = resolved.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise InputError(f"a {size / 2**20:,.0f} MiB file; a config may be at most {MAX_CONFIG_BYTES >> 20} MiB", path)
    try:
        config = yaml.safe_load(resolved.read_bytes())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise InputError(f"not valid YAML: {getattr(e, 'problem', None) or e}", where) from None
    if not isinstance(config, dict):
        raise InputError("expected a YAML mapping at the top", path)
    return resolved, config


def experiment_variables(spec, settings: Settings) -> tuple[dict[str, str], list[str]]:
    """What `${experiment.X}` stands for, and the experiment file read (if any)."""
    if spec.dataset_base_dir is not None:
        return {"experiment.dataset_base_dir": spec.dataset_base_dir}, []
    if spec.experiment_config is None:
        return {}, []
    resolved, config = load_yaml(spec.experiment_config, settings)
    experiment = config.get("experiment")
    if not isinstance(experiment, dict):
        raise InputError("has no experiment: section", spec.experiment_config)
    variables = {f"experiment.{k}": str(v) for k, v in experiment.items() if isinstance(v, str | int | float)}
    base = variables.get("experiment.dataset_base_dir")
    if base is None:
        raise InputError("sets no experiment.dataset_base_dir", spec.experiment_config)
    variables["experiment.dataset_base_dir"] = str(
        resolved.parent / Path(VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), base)).expanduser()
    )
    return variables, [str(resolved)]


def substitute(value: str, variables: dict[str, str], config: str, where: str) -> str:
    for _ in range(8):  # values may refer to each other (exp_dir: ${experiment.exp_name}); a cycle stops here
        if not VARIABLE.search(value):
            return value
        value = VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), value)
    name = VARIABLE.search(value).group(0)
    hint = (
        "give dataset_base_dir or experiment_config"
        if name == "${experiment.dataset_base_dir}"
        else "only ${experiment.dataset_base_dir} and the experiment_config's experiment: values are known"
    )
    raise InputError(f"{where}: {name} is not set ({hint})", config)


def read_openseek_config(spec, settings: Settings) -> OpenSeekData:
    """The data_path (and tokenizer) of `spec.openseek_config`, a MegatronSource's field."""
    config_path = spec.openseek_config
    resolved, config = load_yaml(config_path, settings)
    variables, files = experiment_variables(spec, settings)
    data = config.get("data")
    if not isinstance(data, dict):
        raise InputError("has no data: section (the training config's data.data_path names the parts)", config_path)
    data_path = data.get("data_path")
    if isinstance(data_path, str):  # Megatron's --data-path as one string: "w1 prefix1 w2 prefix2"
        data_path = data_path.split()
    if not isinstance(data_path, list) or not data_path:
        raise InputError("data.data_path is missing or empty", config_path)
    out = []
    for i, item in enumerate(data_path):
        if isinstance(item, str) and i % 2:
            item = substitute(item, variables, config_path, f"data.data_path[{i}]")
            item = str(resolved.parent / Path(item).expanduser())
        out.append(item)
    tokenizer = data.get("tokenizer")
    if tokenizer is not None:
        if not isinstance(tokenizer, dict):
            raise InputError("data.tokenizer should be a mapping of Megatron's tokenizer arguments", config_path)
        fields = set(MegatronTokenizerSpec.model_fields)
        tokenizer = {k: v for k, v in tokenizer.items() if k in fields}  # the rest only concerns training
        for name in TOKENIZER_PATH_FIELDS:
            if isinstance(tokenizer.get(name), str):
                value = substitute(tokenizer[name], variables, config_path, f"data.tokenizer.{name}")
                tokenizer[name] = str(resolved.parent / Path(value).expanduser())
        try:
            MegatronTokenizerSpec.model_validate(tokenizer)
        except ValidationError as e:
            problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
            raise InputError(f"data.tokenizer: {problems}", config_path) from None
    return OpenSeekData(out, tokenizer, [str(resolved), *files])
