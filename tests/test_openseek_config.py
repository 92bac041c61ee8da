"""OpenSeek's training config as shipped: its data_path over a tree of parts named as it names them, its tokenizer,
its ${experiment.dataset_base_dir}, and every way a config can be wrong (over HTTP: a 422 saying what)."""

import collections
import json
import os
import random
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import SHARED_DATA
from convertutil import read_docs, run_spec
from megatronutil import write_part
from serverutil import cli, service_env, start_server
from test_detok import BEGIN, END, qwen_reference

CONFIGS = "openseek-configs"
TRAIN = "train_deepseek_v3_3b_1330B.yaml"
EXPERIMENT = "config_deepseek_v3_3b_1330B.yaml"
BASE = "${experiment.dataset_base_dir}/"
TOTAL_CHARS = 4_000_000  # over all 38 parts, split by the config's weights
# Short documents: a share is exact to a few documents, and 2% of a part at 1% of the budget is ~8 of them.
WORDS = ["data", "token", "Megatron", "parquet", "shard", "weight", "blend", "数据", "训练", "模型", "épreuve", "🦜"]


def config_blend(shared_data) -> list[tuple[float, str]]:
    """(weight, part name) as the shared training config lists them."""
    data_path = yaml.safe_load((shared_data / CONFIGS / TRAIN).read_text())["data"]["data_path"]
    return [(float(w), p.removeprefix(BASE)) for w, p in zip(data_path[::2], data_path[1::2])]


def document(rng: random.Random, name: str, i: int) -> str:
    return f"[{name} {i}] " + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 12)))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """<root>/CCI4.0-M2-v1/<name>_text_document for every part the config names, Qwen-tokenized (OpenSeek's
    <|extra_203|> ... <|extra_204|> around each document), characters in proportion to its weight; the two configs
    copied beside it as OpenSeek lays them out, with the tokenizer folder the training file names."""
    root, shared_data = tmp_path_factory.mktemp("openseek"), SHARED_DATA
    _, qwen = qwen_reference(shared_data / "qwen.tiktoken")
    blend = config_blend(shared_data)
    total_weight = sum(w for w, _ in blend)
    texts = {}
    for k, (weight, name) in enumerate(blend):
        rng, docs, chars = random.Random(k), [], 0
        while chars < TOTAL_CHARS * weight / total_weight:
            docs.append(document(rng, name, len(docs)))
            chars += len(docs[-1])
        texts[name] = docs
        write_part(root / "CCI4.0-M2-v1" / name, [[BEGIN, *qwen.encode(t), END] for t in docs])
    configs = root / "configs"
    configs.mkdir()
    for file in (TRAIN, EXPERIMENT):
        shutil.copy(shared_data / CONFIGS / file, configs / file)
    tokenizer = root / "hf_openseek" / "tokenizer"  # the training file's tokenizer_path, from its folder
    tokenizer.mkdir(parents=True)
    (tokenizer / "qwen.tiktoken").symlink_to(shared_data / "qwen.tiktoken")
    return root, blend, texts


def chars_by_part(docs: list[str]) -> collections.Counter:
    counts = collections.Counter()
    for doc in docs:
        counts[re.match(r"\[(\S+) \d+\] ", doc).group(1)] += len(doc)
    return counts


@pytest.fixture
def roots(tree, data_dir, monkeypatch) -> str:
    """The data dir's input roots and the tree's."""
    value = os.pathsep.join([os.environ["OPENSEEK_NANOCHAT_INPUT_ROOTS"], str(tree[0])])
    monkeypatch.setenv("OPENSEEK_NANOCHAT_INPUT_ROOTS", value)
    return value


def test_the_cli_converts_what_the_config_trains_on_in_its_shares(tree, data_dir, datasets, roots):
    """`convert --openseek-config FILE --dataset-base-dir DIR --max-chars N`: the config's own tokenizer (relative
    to the config), its 38 parts, each part's share of the characters its weight's, within 2% (parts over 1%)."""
    root, blend, texts = tree
    budget = TOTAL_CHARS // 2
    argv = cli(
        "convert",
        "--openseek-config",
        str(root / "configs" / TRAIN),
        "--dataset-base-dir",
        str(root / "CCI4.0-M2-v1"),
        "--max-chars",
        str(budget),
        "--events",
    )
    env = service_env(data_dir, {"OPENSEEK_NANOCHAT_INPUT_ROOTS": roots})
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = datasets / "train_deepseek_v3_3b_1330B"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["chars"] >= budget
    counts = chars_by_part(read_docs(out))
    total_weight = sum(w for w, _ in blend)
    written = sum(counts.values())
    checked = 0
    for weight, name in blend:
        expected = written * weight / total_weight
        if expected > 0.01 * budget:
            assert abs(counts[name] - expected) <= 0.02 * expected, (name, counts[name], expected)
            checked += 1
    assert checked == 24  # the config's parts over 1% of its blend


def test_every_document_once_with_the_experiment_config(tree, data_dir, datasets, roots):
    """No budget: every document of every part exactly once. The base dir comes from the Hydra experiment file
    (`../CCI4.0-M2-v1`, from that file's folder), the tokenizer from the training file."""
    root, _, texts = tree
    spec = {
        "name": "all",
        "sources": [
            {
                "type": "megatron",
                "openseek_config": str(root / "configs" / TRAIN),
                "experiment_config": str(root / "configs" / EXPERIMENT),
            }
        ],
    }
    run_spec(spec)
    docs = read_docs(datasets / "all")
    assert sorted(docs) == sorted(t for part in texts.values() for t in part)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("api") / "data", workers=0) as server:
        yield server


def submit(server, **source) -> tuple[int, str | None]:
    response = server.client.post(
        "/jobs/convert", json={"name": "openseek", "sources": [{"type": "megatron", **source}]}
    )
    if response.status_code != 422:
        return response.status_code, None
    [error] = response.json()["detail"]
    return 422, error["msg"]


@pytest.fixture
def configs(server, tree):
    """The tree's configs and parts, moved inside the server's input roots."""
    root = server.data_dir.parent / f"openseek-{os.urandom(4).hex()}"
    shutil.copytree(tree[0], root, symlinks=True)
    return root


def test_the_config_with_its_parts_is_accepted(server, configs):
    assert submit(
        server, openseek_config=str(configs / "configs" / TRAIN), dataset_base_dir=str(configs / "CCI4.0-M2-v1")
    ) == (202, None)


def test_an_unset_base_dir_is_named(server, configs):
    config = str(configs / "configs" / TRAIN)
    assert submit(server, openseek_config=config) == (
        422,
        (
            f"{config}: data.data_path[1]: ${{experiment.dataset_base_dir}} is not set "
            "(give dataset_base_dir or experiment_config)"
        ),
    )


def test_an_unknown_variable_is_named(server, configs):
    config = configs / "configs" / TRAIN
    text = config.read_text().replace(f"{BASE}zh_cc_text_document", "${experiment.exp_name}/zh_cc_text_document")
    config.write_text(text)
    at = yaml.safe_load(text)["data"]["data_path"].index("${experiment.exp_name}/zh_cc_text_document")
    assert submit(server, openseek_config=str(config), dataset_base_dir=str(configs / "CCI4.0-M2-v1")) == (
        422,
        (
            f"{config}: data.data_path[{at}]: ${{experiment.exp_name}} is not set "
            "(only ${experiment.dataset_base_dir} and the experiment_config's experiment: values are known)"
        ),
    )
    # The experiment file knows exp_name: the prefix resolves, and only the part is missing.
    status, message = submit(
        server, openseek_config=str(config), experiment_config=str(configs / "configs" / EXPERIMENT)
    )
    assert (status, message) == (
        422,
        (
            f"{config}: 1 of the 38 parts its data_path names are missing (no .idx and .bin): "
            f"{configs}/configs/OpenSeek-Small-v1/zh_cc_text_document"
        ),
    )


def test_missing_parts_are_counted_and_the_first_named(server, configs):
    base = configs / "CCI4.0-M2-v1"
    parts = sorted(p.name for p in base.iterdir())
    for name in (
        "Nemotron-CC-medium-actual-actual-mid_text_document",
        "code_text_document",
        "books_text_document",
        "wiki_text_document",
    ):
        (base / f"{name}.bin").unlink()
    (base / "math_text_document.idx").unlink()
    assert len(parts) == 76
    config = str(configs / "configs" / TRAIN)
    assert submit(server, openseek_config=config, dataset_base_dir=str(base)) == (
        422,
        (
            f"{config}: 5 of the 38 parts its data_path names are missing (no .idx and .bin): "
            f"{base}/Nemotron-CC-medium-actual-actual-mid_text_document, {base}/code_text_document, "
            f"{base}/math_text_document, ..."
        ),
    )


def test_a_config_without_a_data_section(server, configs):
    config = str(configs / "configs" / EXPERIMENT)  # the Hydra file: experiment settings, no data
    assert submit(server, openseek_config=config, dataset_base_dir=str(configs)) == (
        422,
        (f"{config}: has no data: section (the training config's data.data_path names the parts)"),
    )


def test_a_config_that_is_not_yaml(server, configs):
    config = configs / "configs" / "broken.yaml"
    config.write_text("data:\n  data_path: [1.0, a\n  tokenizer: {\n")
    status, message = submit(server, openseek_config=str(config), dataset_base_dir=str(configs))
    assert status == 422 and message.startswith(f"{config}:") and "not valid YAML" in message


def test_a_config_outside_the_input_roots_is_refused_unread(server, tmp_path):
    outside = tmp_path / "train.yaml"
    outside.write_text("data: {data_path: [1.0, /x/part]}\n")
    status, message = submit(server, openseek_config=str(outside), dataset_base_dir="/x")
    assert status == 422 and "outside" in message and "data_path" not in message
