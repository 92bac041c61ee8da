"""base_train's output, read line by line: metric records and progress for the job, and the reason a run failed.

nanochat prints a line per step (`step 00012/00100 (12.00%) | loss: ... | lrm: ... | dt: ... | tok/sec: ...`), a line
per evaluation (`Step 00012 | Validation bpb: ...`) and, once done, the minimum validation bpb. OutputParser turns
them into the records the builtin trainer writes ({step, loss, lr, dt_ms, tok_per_sec, mfu, val_bpb}); `failure`
finds the line that says why a rank failed, for procs.stream.
"""

import math
import re

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
        record.update(
            loss=_number(fields["loss"]),
            dt_ms=_number(fields["dt"]),
            tok_per_sec=_number(fields["tok/sec"]),
            lr=None if lrm is None else self.matrix_lr * self.lr_scale * lrm,
        )
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
        return {
            "phase": "train",
            "step": self.step,
            "num_iterations": self.num_iterations,
            "fraction": fraction,
            "loss": self.loss,
            "tok_per_sec": self.tok_per_sec,
            "val_bpb": self.val_bpb,
            "eta_s": self.eta_s,
        }


def failure(line: str) -> str | None:
    """The reason a line gives for a failed run: an exception's last traceback line or an argparse complaint (not
    torchrun's own report, which comes after the rank's and says less)."""
    line = line.strip()
    return line if FAILURE_LINE.fullmatch(line) and LAUNCHER_FAILURE not in line else None
