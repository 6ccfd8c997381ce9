"""A DivideMix run through the Trainer in 1 or N processes; each process saves the clean probabilities
it computed itself (every call of mixture_clean_probability, before the store's gather could hide a difference)
and its copy of the stored clean_prob to <out>/rank-<rank>.npz (tests/test_dividemix.py compares them).

    PYTHONPATH=. python tests/support/dividemix_worker.py OUT key=value ...   (or through accelerate launch, see launch.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from training.config import load_config
from training.methods import dividemix
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]


def main(out: Path, overrides: list[str]) -> None:
    computed = []
    fit = dividemix.mixture_clean_probability

    def recording(x):
        computed.append(fit(x))
        return computed[-1]

    dividemix.mixture_clean_probability = recording
    trainer = Trainer(load_config(ROOT / "training/configs/demo_cpu.yaml", overrides))
    trainer.fit()
    np.savez(out / f"rank-{trainer.accelerator.process_index}.npz", computed=np.stack(computed),
             stored=trainer.store[dividemix.CLEAN_PROB])


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
