"""nanochat's `scripts.base_train`, unmodified, with this project's drop-in data loaders in place of nanochat's.

Run from a nanochat checkout (it must be the working directory, as for base_train itself):

    torchrun --standalone --nproc_per_node=N -m openseek_nanochat.train.nanochat.launcher -- <base_train flags>

base_train binds its loaders with `from nanochat.dataloader import ...` as it starts. Replacing those functions on the
`nanochat.dataloader` module before base_train is imported is therefore enough: no file of the checkout changes, and
everything else (model, optimizer, evaluation, checkpoints, resume) is nanochat's own.
"""

import os
import runpy
import sys


def swap_loaders() -> list[str]:
    """Point nanochat.dataloader's loader functions at ours (same names and signatures); return the names swapped."""
    import nanochat.dataloader as theirs

    from openseek_nanochat.train import dataloader as ours

    names = sorted(name for name in vars(ours) if name.startswith("tokenizing_") and hasattr(theirs, name))
    if not names:
        raise SystemExit(
            f"{theirs.__file__} has none of openseek_nanochat.train.dataloader's loaders: not a nanochat the openseek "
            "loader knows"
        )
    for name in names:
        setattr(theirs, name, getattr(ours, name))
    return names


def main() -> None:
    # `python -m` puts the working directory first on sys.path, so `nanochat` and `scripts` are the checkout's.
    names = swap_loaders()
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"openseek loader: nanochat.dataloader.{{{', '.join(names)}}} replaced", flush=True)
    if sys.argv[1:2] == ["--"]:  # torchrun drops it; by hand it may still be there
        del sys.argv[1]
    runpy.run_module("scripts.base_train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
