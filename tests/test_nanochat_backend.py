"""The nanochat backend: base_train's flags from a spec, its output parsed into metrics, the run dir, preflight errors.

The tests at the end run a real nanochat checkout on CPU and are skipped unless NANOCHAT_DIR points at one (a git
clone of karpathy/nanochat, with its runtime deps installed: pip install '.[nanochat]').
"""

import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import openseek_nanochat
from openseek_nanochat.errors import InputError
from openseek_nanochat.events import parse as parse_event
from openseek_nanochat.settings import Settings
from openseek_nanochat.train import nodes
from openseek_nanochat.train import tokenizer as tok
from openseek_nanochat.train.nanochat import preflight
from openseek_nanochat.train.nanochat.command import (
    BASE_TRAIN,
    SPEC_FLAGS,
    base_train_args,
    job_environment,
    torchrun_command,
)
from openseek_nanochat.train.nanochat.output import FAILURE_LINE, OutputParser
from openseek_nanochat.train.nanochat.run import ensure_tokenizer, train_nanochat_tokenizer
from openseek_nanochat.train.nanochat.rundir import last_complete_step, link_shards, tokenizer_ready
from openseek_nanochat.train.spec import TrainSpec

from serverutil import SHARED_DATA
from training_data import shakespeare_docs, write_shards


def nanochat_spec(**fields) -> TrainSpec:
    return TrainSpec.model_validate({"dataset": "/data/shards", "backend": "nanochat", "num_iterations": 10, **fields})


def flag_values(args: list[str]) -> dict[str, str]:
    """--flag=value arguments as a dict; a repeated flag keeps its last value, as argparse does."""
    return dict(arg.split("=", 1) for arg in args)


# --- the command -----------------------------------------------------------------------------------------------------


def test_spec_fields_become_base_train_flags():
    spec = nanochat_spec(
        depth=12,
        max_seq_len=1024,
        device_batch_size=16,
        nproc_per_node=1,
        total_batch_size=65536,
        matrix_lr=0.03,
        weight_decay=0.1,
        eval_every=100,
        eval_tokens=1 << 20,
        save_every=50,
        device="cuda",
    )
    command = torchrun_command(spec)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[3:8] == ["--standalone", "--nproc_per_node=1", "-m", "scripts.base_train", "--"]
    flags = flag_values(command[command.index("--") + 1 :])
    assert flags["--depth"] == "12" and flags["--max-seq-len"] == "1024" and flags["--device-batch-size"] == "16"
    assert flags["--total-batch-size"] == "65536" and flags["--num-iterations"] == "10"
    assert float(flags["--matrix-lr"]) == 0.03 and float(flags["--weight-decay"]) == 0.1
    assert flags["--eval-every"] == "100" and flags["--eval-tokens"] == str(1 << 20) and flags["--save-every"] == "50"
    assert flags["--device-type"] == "cuda"


def test_defaults_are_offline_and_name_the_checkpoint_dir():
    flags = flag_values(base_train_args(nanochat_spec(depth=6)))
    assert flags["--run"] == "dummy"  # base_train's "no wandb"
    assert flags["--core-metric-every"] == "-1"  # the CORE metric would download its eval bundle
    assert flags["--model-tag"] == "d6"
    assert flags["--device-type"] == ""  # nanochat autodetects
    # the spec's defaults, not nanochat's auto-sizing: one micro-batch per rank
    assert flags["--total-batch-size"] == str(32 * 2048)
    assert "--resume-from-step" not in flags


def test_spec_semantics_that_differ_from_nanochat_are_translated():
    # the spec's eval_every -1 is "only at the end"; nanochat's -1 would never evaluate
    assert flag_values(base_train_args(nanochat_spec(eval_every=-1, num_iterations=30)))["--eval-every"] == "30"
    flags = flag_values(base_train_args(nanochat_spec(run="exp1", model_tag="mine")))
    assert flags["--run"] == "exp1" and flags["--model-tag"] == "mine"


def test_extra_args_come_last_and_replace_offline_defaults():
    spec = nanochat_spec(extra_args=["--core-metric-every=500", "--window-pattern", "L", "--fp8"])
    args = base_train_args(spec, resume_step=40)
    assert args[-4:] == ["--core-metric-every=500", "--window-pattern", "L", "--fp8"]
    assert "--core-metric-every=-1" not in args
    assert "--resume-from-step=40" in args


def test_openseek_loader_runs_the_launcher():
    command = torchrun_command(nanochat_spec(loader="openseek", nproc_per_node=8))
    assert command[command.index("-m", 3) + 1] == "openseek_nanochat.train.nanochat.launcher"
    assert "--nproc_per_node=8" in command


def test_a_node_of_a_multi_node_job_meets_the_others_in_c10d(monkeypatch):
    place = nodes.Place(node=1, nnodes=2, endpoint="10.0.0.5:29400", rdzv_id="abc-3", address="10.0.0.6")
    for name, value in nodes.environment(place).items():
        monkeypatch.setenv(name, value)
    command = torchrun_command(nanochat_spec(nnodes=2, nproc_per_node=8, device="cuda"))
    launch = command[command.index("torch.distributed.run") + 1 : command.index("-m", 3)]
    assert launch == [
        "--nnodes=2",
        "--nproc_per_node=8",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=10.0.0.5:29400",
        "--rdzv-id=abc-3",
        f"--rdzv-conf=is_host=false,join_timeout={nodes.JOIN_TIMEOUT_S}",
        "--local-addr=10.0.0.6",
        "--max-restarts=0",
    ]
    monkeypatch.delenv(nodes.NNODES_ENV)
    with pytest.raises(ValueError, match="a multi-node job runs under workers"):
        torchrun_command(nanochat_spec(nnodes=2, device="cuda"))


def test_environment_points_nanochat_at_the_run_dir(tmp_path):
    env = job_environment(nanochat_spec(device="cpu"), tmp_path)
    assert env["NANOCHAT_BASE_DIR"] == str(tmp_path) and env["WANDB_DIR"] == str(tmp_path)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["TORCHDYNAMO_DISABLE"] == "1"  # compile "auto" is off on CPU
    assert "TORCHDYNAMO_DISABLE" not in job_environment(nanochat_spec(device="cpu", compile="on"), tmp_path)
    assert job_environment(nanochat_spec(device="cuda", compile="off"), tmp_path)["TORCHDYNAMO_DISABLE"] == "1"
    package_root = str(Path(openseek_nanochat.__file__).resolve().parents[1])
    python_path = job_environment(nanochat_spec(loader="openseek"), tmp_path)["PYTHONPATH"]
    assert package_root in python_path.split(os.pathsep)


# --- base_train's output ---------------------------------------------------------------------------------------------

# Recorded from nanochat's base_train (CPU, depth 2, 4 steps, --eval-every=2), banner left out.
CPU_OUTPUT = """\
2026-11-25 20:49:25,978 - nanochat.common - \x1b[32m\x1b[1mINFO\x1b[0m - Distributed world size: 1
COMPUTE_DTYPE: torch.float32 (auto-detected: no CUDA (CPU/MPS))
WARNING: Flash Attention 3 not available, using PyTorch SDPA fallback
Vocab size: 512
Estimated FLOPs per token: 2.949408e+06
Scaling LRs by 0.0156 for batch size 128 (reference: 524,288)
Scaling weight decay from 0.280000 to 0.813716 for depth 2
Scaling the LR for the AdamW parameters ∝1/√(128/768) = 2.449490
Using user-provided number of iterations: 4
Total batch size 128 => gradient accumulation steps: 1
Step 00000 | Validation bpb: 4.055883
step 00000/00004 (0.00%) | loss: 6.239335 | lrm: 0.03 | dt: 435.72ms | tok/sec: 293 | bf16_mfu: 0.00 | epoch: 2 pq: 1 rg: 3 | total time: 0.00m
step 00001/00004 (25.00%) | loss: 6.238940 | lrm: 0.05 | dt: 547.92ms | tok/sec: 233 | bf16_mfu: 0.00 | epoch: 2 pq: 1 rg: 3 | total time: 0.00m
Step 00002 | Validation bpb: 4.055838
2026-11-25 20:49:29,057 - nanochat.checkpoint_manager - \x1b[32m\x1b[1mINFO\x1b[0m - Saved model parameters to: /tmp/base/base_checkpoints/t/model_000002.pt
step 00002/00004 (50.00%) | loss: 6.239256 | lrm: 0.07 | dt: 722.90ms | tok/sec: 177 | bf16_mfu: 0.00 | epoch: 2 pq: 1 rg: 4 | total time: 0.00m
step 00003/00004 (75.00%) | loss: 6.238842 | lrm: 0.10 | dt: 1908.55ms | tok/sec: 67 | bf16_mfu: 0.00 | epoch: 2 pq: 1 rg: 4 | total time: 0.00m
Step 00004 | Validation bpb: 4.055771
Peak memory usage: 0.00MiB
Total training time: 0.00m
Minimum validation bpb: 4.055771
"""

# base_train's lines as it prints them on a GPU it knows, past step 10 (when it adds an ETA).
GPU_OUTPUT = """\
GPU: NVIDIA H100 80GB HBM3 | Peak FLOPS (BF16): 9.89e+14
Scaling LRs by 0.7071 for batch size 262,144 (reference: 524,288)
step 00011/00100 (11.00%) | loss: 7.123456 | lrm: 1.00 | dt: 250.12ms | tok/sec: 1,048,064 | bf16_mfu: 45.12 | epoch: 1 pq: 0 rg: 12 | total time: 0.01m | eta: 0.4m
"""

# A run resumed from its step-2 checkpoint: it evaluates step 2 again before going on.
RESUMED_OUTPUT = """\
Resuming optimization from step 2
Step 00002 | Validation bpb: 4.055838
step 00002/00004 (50.00%) | loss: 6.238257 | lrm: 0.07 | dt: 1046.13ms | tok/sec: 122 | bf16_mfu: 0.00 | epoch: 4 pq: 1 rg: 2 | total time: 0.00m
step 00003/00004 (75.00%) | loss: 6.237263 | lrm: 0.10 | dt: 574.80ms | tok/sec: 222 | bf16_mfu: 0.00 | epoch: 4 pq: 1 rg: 2 | total time: 0.00m
Step 00004 | Validation bpb: 4.055746
"""


def parse_output(text: str, parser: OutputParser) -> tuple[list[dict], list[str]]:
    records, moves = [], []
    for line in text.splitlines():
        moves.append(parser.feed(line))
        records += parser.pop_records()
    return records + parser.close(), [m for m in moves if m]


def test_parser_makes_one_record_per_done_step():
    parser = OutputParser(matrix_lr=0.02, num_iterations=4)
    records, moves = parse_output(CPU_OUTPUT, parser)
    assert moves == ["val", "step", "step", "val", "step", "step", "val", "done"]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    by_step = {r["step"]: r for r in records}
    # step 0 is the evaluation before training; `step 00000` is the first step done, so it is step 1
    assert by_step[0]["loss"] is None and by_step[0]["val_bpb"] == 4.055883
    assert by_step[1]["loss"] == 6.239335 and by_step[1]["val_bpb"] is None
    assert by_step[1]["dt_ms"] == 435.72 and by_step[1]["tok_per_sec"] == 293
    # a validation line is merged into the record of the step it follows
    assert by_step[2]["loss"] == 6.238940 and by_step[2]["val_bpb"] == 4.055838
    assert by_step[4]["loss"] == 6.238842 and by_step[4]["val_bpb"] == 4.055771
    # lr: the matrix LR, scaled as nanochat says it scaled it, times the step's multiplier
    assert math.isclose(by_step[3]["lr"], 0.02 * 0.0156 * 0.07)
    assert all(r["mfu"] is None for r in records)  # no GPU: nanochat's 0.00 means nothing
    assert set(by_step[1]) == {"step", "loss", "lr", "dt_ms", "tok_per_sec", "mfu", "val_bpb"}
    assert parser.min_val_bpb == 4.055771
    progress = parser.progress()
    assert progress["step"] == 4 and progress["fraction"] == 1.0 and progress["val_bpb"] == 4.055771


def test_parser_reads_mfu_eta_and_thousands_on_a_gpu():
    records, _ = parse_output(GPU_OUTPUT, OutputParser(matrix_lr=0.02))
    (record,) = records
    assert record["step"] == 12 and record["mfu"] == 45.12 and record["tok_per_sec"] == 1_048_064
    assert math.isclose(record["lr"], 0.02 * 0.7071)
    parser = OutputParser(matrix_lr=0.02)
    parse_output(GPU_OUTPUT, parser)
    assert parser.progress()["eta_s"] == pytest.approx(24.0) and parser.progress()["fraction"] == 0.12


def test_parser_does_not_redo_the_resumed_step():
    parser = OutputParser(matrix_lr=0.02, num_iterations=4, resume_step=2)
    records, _ = parse_output(RESUMED_OUTPUT, parser)
    # the step-2 record (with its loss) was made by the run that wrote the checkpoint; a new one would replace it
    assert [r["step"] for r in records] == [3, 4]
    assert records[1]["val_bpb"] == 4.055746 and records[1]["loss"] == 6.237263


def test_parser_ignores_everything_else():
    parser = OutputParser(matrix_lr=0.02)
    for line in [
        "",
        "step 1 of the plan",
        "Step 00003 | CORE metric: 0.1234",
        "The capital of France is Paris",
        "step 00001/00004 (25.00%) | loss: ??? | lrm: 1.00",
        "step 00001/00004 (25.00%) | only: this",
    ]:
        assert parser.feed(line) is None
    assert parser.close() == []


def test_a_diverged_loss_is_recorded_as_no_value():
    # JSON has no NaN: the record must stay servable
    records, _ = parse_output(CPU_OUTPUT.replace("loss: 6.238940", "loss: nan"), OutputParser(matrix_lr=0.02))
    assert [r["loss"] for r in records if r["step"] == 2] == [None]
    json.dumps(records, allow_nan=False)


@pytest.mark.parametrize(
    "line, reason",
    [
        ("AssertionError: Invalid window_pattern: Q. Use only S and L.", True),
        ("torch.OutOfMemoryError: CUDA out of memory.", True),
        ("base_train.py: error: argument --fp8-recipe: invalid choice: 'x'", True),
        ("WARNING: Training will be less efficient without FA3", False),
    ],
)
def test_failure_lines(line, reason):
    assert bool(FAILURE_LINE.fullmatch(line)) is reason


# --- the run dir -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Three small shards of Shakespeare (the last is validation), row groups of 20 documents."""
    docs = shakespeare_docs(SHARED_DATA)[:300]
    return write_shards(tmp_path_factory.mktemp("shards"), docs, num_shards=3, row_group_size=20, val_docs=40)


@pytest.fixture(scope="module")
def tokenizer_dir(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    tok.train_from_shards(shards, out, vocab_size=512, max_chars=200_000)
    return out


def nanochat_listing(base_dir: Path) -> list[Path]:
    """The shards nanochat's list_parquet_files finds: sorted *.parquet names under base_data_climbmix."""
    folder = base_dir / "base_data_climbmix"
    return [folder / name for name in sorted(os.listdir(folder)) if name.endswith(".parquet")]


def test_run_dir_links_every_shard_with_validation_last(shards, tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for shard in sorted(shards.glob("*.parquet")):
        (dataset / shard.name).write_bytes(shard.read_bytes())
    (dataset / "manifest.json").write_text("{}")
    (dataset / ".shard_00003.parquet").write_bytes(b"half a shard")  # a conversion's temp file
    run_dir = tmp_path / "run"
    link_shards(dataset, run_dir)
    found = nanochat_listing(run_dir)
    assert [p.name for p in found] == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"]
    assert all(p.is_symlink() for p in found)
    assert found[-1].resolve() == (dataset / "shard_00002.parquet").resolve()  # the validation shard
    # again, after the dataset lost a shard: no stale link stays behind
    (dataset / "shard_00001.parquet").unlink()
    link_shards(dataset, run_dir)
    assert [p.name for p in nanochat_listing(run_dir)] == ["shard_00000.parquet", "shard_00002.parquet"]


def test_one_shard_is_not_enough(shards, tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "shard_00000.parquet").write_bytes((shards / "shard_00000.parquet").read_bytes())
    with pytest.raises(InputError, match="validation shard"):
        link_shards(tmp_path / "one", tmp_path / "run")


def test_reused_tokenizer_is_linked_where_nanochat_reads_it(tokenizer_dir, tmp_path):
    spec = nanochat_spec(tokenizer={"path": str(tokenizer_dir)})
    assert ensure_tokenizer(spec, tmp_path, emit=lambda *a, **k: None) == tokenizer_dir
    assert (tmp_path / "tokenizer" / "tokenizer.pkl").resolve() == (tokenizer_dir / "tokenizer.pkl").resolve()
    assert tok.load(tmp_path / "tokenizer").get_vocab_size() == 512


def test_tokenizer_is_trained_into_the_run_dir_once(shards, tmp_path):
    spec = nanochat_spec(dataset=str(shards), tokenizer={"vocab_size": 300, "max_chars": 50_000})
    emitted = []
    assert ensure_tokenizer(spec, tmp_path, emit=lambda *a, **k: emitted.append(a)) == tmp_path / "tokenizer"
    assert tok.load(tmp_path / "tokenizer").get_vocab_size() == 300 and emitted == [("progress",)]
    emitted.clear()
    ensure_tokenizer(spec, tmp_path, emit=lambda *a, **k: emitted.append(a))
    assert emitted == []  # a second attempt finds it


def test_a_vocab_the_data_cannot_reach_is_an_input_error(shards, tmp_path):
    spec = nanochat_spec(dataset=str(shards), tokenizer={"vocab_size": 200_000, "max_chars": 2_000})
    with pytest.raises(InputError) as e:
        ensure_tokenizer(spec, tmp_path, emit=lambda *a, **k: None)
    assert e.value.where == "tokenizer"


def write_checkpoint(folder: Path, step: int, ranks: int, meta: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.zeros(2)}, folder / f"model_{step:06d}.pt")
    for rank in range(ranks):
        torch.save({"s": rank}, folder / f"optim_{step:06d}_rank{rank}.pt")
    (folder / f"meta_{step:06d}.json").write_text(meta if meta is not None else json.dumps({"step": step}))


def test_resume_picks_the_last_whole_checkpoint(tmp_path):
    assert last_complete_step(tmp_path / "none", 1) is None
    write_checkpoint(tmp_path, 10, ranks=2)
    write_checkpoint(tmp_path, 20, ranks=1)  # rank 1 had not written its optimizer state
    assert last_complete_step(tmp_path, 2) == 10
    write_checkpoint(tmp_path, 30, ranks=2)
    model = tmp_path / "model_000030.pt"
    model.write_bytes(model.read_bytes()[:100])  # killed while saving
    assert not zipfile.is_zipfile(model)
    assert last_complete_step(tmp_path, 2) == 10
    write_checkpoint(tmp_path, 40, ranks=2, meta='{"step": 4')
    assert last_complete_step(tmp_path, 2) == 10
    write_checkpoint(tmp_path, 50, ranks=2)
    assert last_complete_step(tmp_path, 2) == 50


# --- preflight -------------------------------------------------------------------------------------------------------


def fake_checkout(root: Path, imports: str = "import pyarrow\n", drop_flags: tuple = ()) -> Path:
    """Just enough of a nanochat checkout for the preflight: base_train's imports and flags."""
    flags = [
        f
        for f in (*SPEC_FLAGS, "--resume-from-step", "--core-metric-every", "--window-pattern", "--fp8")
        if f not in drop_flags
    ]
    (root / "scripts").mkdir(parents=True)
    (root / "nanochat").mkdir()
    (root / "nanochat" / "__init__.py").write_text("")
    (root / "nanochat" / "common.py").write_text("import os\nimport tiktoken\n\ndef later():\n    import kernels\n")
    (root / "scripts" / "base_train.py").write_text(
        "import argparse\n" + imports + "from nanochat.common import later\n"
        "parser = argparse.ArgumentParser()\n"
        + "".join(f'parser.add_argument("{flag}", type=str)\n' for flag in flags if flag != "--fp8")
        + ('parser.add_argument("--fp8", action="store_true")\n' if "--fp8" in flags else "")  # a switch, as there
    )
    return root


def settings_for(tmp_path: Path, nanochat_dir: Path | None = None) -> Settings:
    return Settings(data_dir=tmp_path / "data", input_roots=str(tmp_path), nanochat_dir=nanochat_dir)


def preflight_error(spec: TrainSpec, settings: Settings) -> InputError:
    with pytest.raises(InputError) as e:
        preflight.prepare(spec, settings)
    return e.value


def test_preflight_resolves_the_servers_checkout(tmp_path):
    checkout = fake_checkout(tmp_path / "nanochat")
    prepared = preflight.prepare(nanochat_spec(device="cpu"), settings_for(tmp_path, checkout))
    assert prepared.nanochat_dir == str(checkout.resolve())


def test_preflight_needs_a_checkout(tmp_path):
    error = preflight_error(nanochat_spec(), settings_for(tmp_path))
    assert error.where == "nanochat_dir" and "OPENSEEK_NANOCHAT_NANOCHAT_DIR" in error.message
    (tmp_path / "empty").mkdir()
    error = preflight_error(nanochat_spec(nanochat_dir=str(tmp_path / "empty")), settings_for(tmp_path))
    assert "not a nanochat checkout" in error.message and "scripts/base_train.py" in error.message
    error = preflight_error(nanochat_spec(nanochat_dir=str(tmp_path / "missing")), settings_for(tmp_path))
    assert "not a directory" in error.message


def test_a_spec_checkout_must_be_under_the_input_roots(tmp_path):
    checkout = fake_checkout(tmp_path / "elsewhere" / "nanochat")
    settings = Settings(data_dir=tmp_path / "data", input_roots=str(tmp_path / "inputs"))
    error = preflight_error(nanochat_spec(nanochat_dir=str(checkout)), settings)
    assert error.where == "nanochat_dir" and "input roots" in error.message


def test_preflight_names_missing_modules_and_the_extra(tmp_path):
    checkout = fake_checkout(tmp_path / "nanochat", imports="import pyarrow\nimport surely_not_installed_mod\n")
    error = preflight_error(nanochat_spec(nanochat_dir=str(checkout)), settings_for(tmp_path))
    assert "surely_not_installed_mod" in error.message and "openseek-nanochat[nanochat]" in error.message


def test_needed_modules_follow_the_checkouts_own_imports(tmp_path):
    checkout = fake_checkout(tmp_path / "nanochat", imports="import yaml\nfrom pyarrow import parquet\n")
    # tiktoken comes through nanochat.common; kernels is imported inside a function (optional); os is stdlib
    assert preflight.third_party_imports(checkout, [BASE_TRAIN]) == ["pyarrow", "tiktoken", "yaml"]


@pytest.mark.parametrize(
    "extra_args, message",
    [
        (["--depth=4"], "set depth instead"),
        (["--run", "x"], "set run instead"),
        (["--resume-from-step=3"], "resumes from its own"),
        (["--no-such-flag=1"], "not a flag"),
        (["--window"], "not a flag"),  # argparse would take the abbreviation; we ask for the full name
    ],
)
def test_extra_args_are_checked_against_base_train(tmp_path, extra_args, message):
    checkout = fake_checkout(tmp_path / "nanochat")
    error = preflight_error(nanochat_spec(extra_args=extra_args), settings_for(tmp_path, checkout))
    assert error.where == "extra_args" and message in error.message


def test_extra_args_that_base_train_knows_pass(tmp_path):
    checkout = fake_checkout(tmp_path / "nanochat")
    spec = nanochat_spec(extra_args=["--window-pattern", "L", "--core-metric-every", "-1", "--fp8"])
    assert preflight.prepare(spec, settings_for(tmp_path, checkout)).extra_args == spec.extra_args


def test_an_old_checkout_without_a_spec_flag_is_refused(tmp_path):
    checkout = fake_checkout(tmp_path / "nanochat", drop_flags=("--head-dim",))
    error = preflight_error(nanochat_spec(), settings_for(tmp_path, checkout))
    assert "--head-dim" in error.message and "head_dim" in error.message


@pytest.mark.parametrize(
    "fields, where",
    [
        ({"seed": 7}, "seed"),
        ({"model_tag": "../outside"}, "model_tag"),
        ({"nproc_per_node": 2, "device": "cpu"}, "nproc_per_node"),
    ],
)
def test_specs_nanochat_cannot_honour_are_refused(tmp_path, fields, where):
    checkout = fake_checkout(tmp_path / "nanochat")
    assert preflight_error(nanochat_spec(**fields), settings_for(tmp_path, checkout)).where == where


# --- a real nanochat checkout (NANOCHAT_DIR) -------------------------------------------------------------------------

needs_nanochat = pytest.mark.skipif(not os.environ.get("NANOCHAT_DIR"), reason="NANOCHAT_DIR is not set")

# Tiny and quick on CPU: 2 layers of width 128, 64-token rows, 128 tokens a step.
TINY = {
    "backend": "nanochat",
    "depth": 2,
    "head_dim": 64,
    "max_seq_len": 64,
    "device_batch_size": 2,
    "eval_tokens": 128,
    "device": "cpu",
    "extra_args": ["--sample-every=-1", "--window-pattern=L"],
}


@pytest.fixture
def checkout():
    """NANOCHAT_DIR, checked to be left exactly as it was (nothing changed, not even ignored files added)."""
    path = Path(os.environ["NANOCHAT_DIR"]).resolve()

    def status():
        return subprocess.run(
            ["git", "status", "--porcelain", "--ignored"], cwd=path, capture_output=True, text=True, check=True
        ).stdout

    before = status()
    assert subprocess.run(["git", "status", "--porcelain"], cwd=path, capture_output=True, text=True).stdout == "", (
        f"{path} has local changes"
    )
    yield path
    assert status() == before, f"the job changed {path}"


def service_settings(workdir: Path, nanochat_dir: Path) -> dict[str, str]:
    """The checkout in the server's settings; inputs from this test session's temp dirs (the shared shards too)."""
    return {
        "OPENSEEK_NANOCHAT_NANOCHAT_DIR": str(nanochat_dir),
        "OPENSEEK_NANOCHAT_INPUT_ROOTS": os.pathsep.join([str(workdir.parent), str(SHARED_DATA)]),
    }


def train_cli(spec: dict, workdir: Path, nanochat_dir: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`openseek-nanochat train SPEC --events`, as a worker would run it; returns its output and events."""
    from serverutil import cli, service_env

    spec_file = workdir / f"spec-{len(list(workdir.glob('spec-*')))}.json"
    spec_file.write_text(json.dumps(spec))
    env = service_env(workdir / "data", service_settings(workdir, nanochat_dir))
    done = subprocess.run(
        cli("train", str(spec_file), "--events"), env=env, capture_output=True, text=True, timeout=600
    )
    found = [e for e in map(parse_event, done.stdout.splitlines()) if e]
    return done, found


def of_type(found: list[dict], kind: str) -> list[dict]:
    return [e for e in found if e["type"] == kind]


@needs_nanochat
def test_cli_job_trains_resumes_and_leaves_the_checkout_alone(checkout, shards, tmp_path):
    spec = {
        **TINY,
        "dataset": str(shards),
        "tokenizer": {"vocab_size": 400, "max_chars": 100_000},
        "num_iterations": 4,
        "eval_every": 2,
        "save_every": 2,
    }
    done, found = train_cli(spec, tmp_path, checkout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = {m["step"]: m for m in of_type(found, "metric")}
    assert sorted(metrics) == [0, 1, 2, 3, 4]
    assert all(math.isfinite(metrics[s]["loss"]) for s in (1, 2, 3, 4))
    assert [s for s in sorted(metrics) if metrics[s]["val_bpb"] is not None] == [0, 2, 4]
    (result,) = of_type(found, "result")
    checkpoints = Path(result["checkpoint_dir"])
    assert checkpoints.name == "d2" and checkpoints.parent.name == "base_checkpoints"
    assert {"model_000004.pt", "meta_000004.json", "optim_000004_rank0.pt"} <= {p.name for p in checkpoints.iterdir()}
    assert result["step"] == 4 and result["val_bpb"] == pytest.approx(metrics[4]["val_bpb"], abs=1e-6)
    assert tok.load(result["tokenizer_dir"]).get_vocab_size() == 400

    # a crash after the step-2 checkpoint: the same job started again continues from step 2
    for path in checkpoints.glob("*000004*"):
        path.unlink()
    done, found = train_cli(spec, tmp_path, checkout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "--resume-from-step=2" in done.stdout and "Resuming optimization from step 2" in done.stdout
    assert [m["step"] for m in of_type(found, "metric")] == [3, 4]
    assert (checkpoints / "model_000004.pt").is_file()


@needs_nanochat
def test_openseek_loader_gives_nanochats_first_loss(checkout, shards, tokenizer_dir, tmp_path):
    losses = {}
    for loader in ("nanochat", "openseek"):
        spec = {
            **TINY,
            "dataset": str(shards),
            "tokenizer": {"path": str(tokenizer_dir)},
            "num_iterations": 2,
            "eval_every": -1,
            "loader": loader,
        }
        done, found = train_cli(spec, tmp_path, checkout)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert ("openseek loader: nanochat.dataloader." in done.stdout) == (loader == "openseek")
        metrics = {m["step"]: m for m in of_type(found, "metric")}
        losses[loader] = (metrics[0]["val_bpb"], metrics[1]["loss"], metrics[2]["loss"])
    # same batches, same seed, same model: the same numbers, to the last printed digit
    assert losses["openseek"] == losses["nanochat"]


@needs_nanochat
def test_nanochats_own_tokenizer_training(checkout, shards, tmp_path):
    link_shards(shards, tmp_path)
    train_nanochat_tokenizer(checkout, tmp_path, vocab_size=300, max_chars=50_000, doc_cap=10_000)
    assert tokenizer_ready(tmp_path / "tokenizer")
    assert tok.load(tmp_path / "tokenizer").get_vocab_size() == 300  # nanochat's files, read the nanochat way


@needs_nanochat
def test_http_job(checkout, shards, tokenizer_dir, tmp_path):
    from serverutil import start_server, wait_for_state

    spec = {
        **TINY,
        "dataset": str(shards),
        "tokenizer": {"path": str(tokenizer_dir)},
        "num_iterations": 3,
        "eval_every": -1,
    }
    with start_server(tmp_path / "data", workers=1, env=service_settings(tmp_path, checkout)) as server:
        response = server.client.post("/jobs/train", json=spec)
        assert response.status_code == 202, response.text
        job = wait_for_state(server.client, response.json()["id"], "succeeded", timeout=300)
        metrics = server.client.get(f"/jobs/{job['id']}/metrics").raise_for_status().json()
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert job["progress"]["step"] == 3
    assert (Path(job["result"]["checkpoint_dir"]) / "model_000003.pt").is_file()


def probe_cli(command: str, spec, workdir: Path, nanochat_dir: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """`openseek-nanochat sample|eval SPEC --events` on a prepared spec, as a worker would run it; its result."""
    from serverutil import cli, service_env

    spec_file = workdir / f"{command}-{len(list(workdir.glob(f'{command}-*')))}.json"
    spec_file.write_text(spec.model_dump_json())
    env = service_env(workdir / "data", service_settings(workdir, nanochat_dir))
    done = subprocess.run(
        cli(command, str(spec_file), "--events"), env=env, capture_output=True, text=True, timeout=600
    )
    results = of_type([e for e in map(parse_event, done.stdout.splitlines()) if e], "result")
    return done, results[0] if results else {}


@needs_nanochat
def test_sample_and_eval_read_a_nanochat_checkpoint_with_the_checkouts_code(checkout, shards, tokenizer_dir, tmp_path):
    from openseek_nanochat.probe.locate import prepare_eval, prepare_sample
    from openseek_nanochat.probe.spec import EvalSpec, SampleSpec

    spec = {
        **TINY,
        "dataset": str(shards),
        "tokenizer": {"path": str(tokenizer_dir)},
        "num_iterations": 4,
        "eval_every": 2,
    }
    done, found = train_cli(spec, tmp_path, checkout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (trained,) = of_type(found, "result")
    train = TrainSpec.model_validate({**spec, "nanochat_dir": str(checkout)})
    run_dir = Path(trained["run_dir"])

    asked = SampleSpec(train_job="0123456789abcdef", prompts=["ROMEO:"], max_tokens=12, seed=5)
    prepared = prepare_sample(asked, train, run_dir, asked.train_job, "succeeded")
    assert prepared.checkpoint.backend == "nanochat" and prepared.checkpoint.step == 4
    runs = [probe_cli("sample", prepared, tmp_path, checkout) for _ in range(2)]
    for done, _ in runs:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [(first, again)] = [[result["completions"][0] for _, result in runs]]
    assert first["tokens"] == 12 and first["text"] and first == again

    settings = Settings(data_dir=tmp_path / "data", input_roots=str(shards.parent))
    evaluation = prepare_eval(EvalSpec(train_job=asked.train_job), settings, train, run_dir, asked.train_job, "done")
    done, result = probe_cli("eval", evaluation, tmp_path, checkout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert result["val_bpb"] == pytest.approx(trained["val_bpb"], abs=1e-3)


@needs_nanochat
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nanochat joins ranks only on CUDA: 2 nodes need 2 devices")
def test_http_job_on_two_nodes(checkout, shards, tokenizer_dir, tmp_path):
    """Two workers, each a node with a CUDA device of its own, run one nanochat job of world size 2."""
    from serverutil import start_server, start_worker, stop_process, wait_for_state

    spec = {
        **TINY,
        "device": "cuda",
        "nnodes": 2,
        "dataset": str(shards),
        "tokenizer": {"path": str(tokenizer_dir)},
        "num_iterations": 10,
        "eval_every": -1,
    }
    env = {**service_settings(tmp_path, checkout), "OPENSEEK_NANOCHAT_WORKER_HOST": "127.0.0.1"}
    with start_server(tmp_path / "data", workers=0, env={**env, "CUDA_VISIBLE_DEVICES": "0"}) as server:
        workers = [start_worker(server.data_dir, {**env, "CUDA_VISIBLE_DEVICES": str(i)}) for i in (0, 1)]
        try:
            response = server.client.post("/jobs/train", json=spec)
            assert response.status_code == 202, response.text
            job = wait_for_state(server.client, response.json()["id"], "succeeded", timeout=600)
        finally:
            for worker in workers:
                stop_process(worker)
    assert job["result"]["nnodes"] == 2 and job["result"]["world_size"] == 2
    assert [n["state"] for n in job["nodes"]] == ["exited", "exited"]
    assert (Path(job["result"]["checkpoint_dir"]) / "model_000010.pt").is_file()
