"""Label issues: which given labels of the training split a trained run contradicts, written in the
layouts cleanlab takes (`cleanlab.filter.find_label_issues(labels, pred_probs)`, `Datalab`).

From the run's predictions (Method.predict, softmax, the eval transform) on every training sample:

  pred_probs.npy     [N, K] float32, row i = sample idx i
  labels.npy         [N] int64, the given (noisy) labels the run trained on
  label_quality.npy  [N] float32, self-confidence pred_probs[i, labels[i]]: higher = more likely right
  label_issues.npy   [N] bool, flagged samples (the rule below)
  label_issues.csv   the flagged samples, most suspicious (lowest quality) first: idx, source key,
                     given and suggested (argmax) label names, quality, and the method's own evidence
                     from its sample store (generic: per array, a value; for an (N, K) array its argmax
                     class and largest entry; for other (N, C) arrays each column)
  label_issues.png   a grid of the top-ranked flagged images with given and suggested labels
  manifest.json      what was exported and how (checkpoint, rule, in- or out-of-sample, counts)

Flag rules: "cleanlab" = cleanlab's confident learning (`find_label_issues`, prune by noise rate);
"argmax" = the predicted class differs from the given label. "auto" takes cleanlab where it is
installed, else argmax.

In-sample: a model's predictions on the samples it trained on. It has fitted part of their wrong
labels (CE memorises them), so it flags fewer errors than a model that never saw them would;
tools/find_label_issues.py --folds trains K models, each with one fold held out (cleanlab's recipe), and takes
every sample's prediction from the model that did not train on it.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn

from pipeline.errors import UserError
from pipeline.format.dataset import Dataset
from pipeline.load.decode import decode_sample, quiet_decoder_warnings
from pipeline.load.loader import make_loader
from pipeline.load.random_access import ShardRandomAccess
from pipeline.load.transforms import TransformConfig, stored_side
from state.reader import StateReader
from training.config import Config, load_config
from training.evaluation import eval_pass
from training.methods import build_method
from training.methods.base import Method
from training.plots import class_name, save_figure
from training.run_setup import method_context

EXPORT_DIR = "label_issues"
RULES = ("auto", "cleanlab", "argmax")
GRID = 25  # images in label_issues.png


# ---------------------------------------------------------------------------------- predictions

def predict_split(method: Method, models: dict[str, nn.Module], dataset: Dataset, split: str, loader_args: dict,
                  batch_size: int, accelerator) -> np.ndarray:
    """softmax(method.predict) on every sample of `split` with the eval transform -> (N, K) float32 by idx,
    the same on every process."""
    loader = make_loader(dataset, split, batch_size=batch_size, train=False, **loader_args)
    idx, probs = eval_pass(lambda m, batch: method.predict(m, batch.images).float().softmax(dim=1), models,
                           loader, accelerator)
    n = dataset.num_samples(split)
    if not torch.equal(idx.cpu(), torch.arange(n)):
        raise RuntimeError(f"the prediction pass saw {idx.numel()} distinct samples of {split!r}, expected {n}")
    return probs.cpu().numpy().astype(np.float32)


@dataclass
class LoadedRun:
    """A finished (or checkpointed) run rebuilt for inference."""

    config: Config
    dataset: Dataset
    method: Method
    models: dict[str, nn.Module]
    checkpoint: Path
    accelerator: Accelerator
    arrays: dict[str, np.ndarray]  # the sample store at the checkpoint ({} for methods without one)


def checkpoint_path(run_dir: Path, epoch: int | None) -> Path:
    done = sorted(p for p in (run_dir / "checkpoints").glob("epoch-*") if p.is_dir() and not p.name.endswith(".tmp"))
    if not done:
        raise UserError(f"{run_dir}: no checkpoint under checkpoints/ (has the run finished an epoch?)")
    if epoch is None:
        return done[-1]
    chosen = run_dir / "checkpoints" / f"epoch-{epoch:04d}"
    if chosen not in done:
        raise UserError(f"{run_dir}: no checkpoint of epoch {epoch}; kept: {', '.join(p.name for p in done)} "
                        f"(keep_checkpoints=... keeps more)")
    return chosen


def load_run(run_dir: Path, epoch: int | None = None, data_root: str | None = None) -> LoadedRun:
    """The run's config.yaml, its method and models with the weights of the latest (or `epoch`'s)
    checkpoint, and its sample store at that checkpoint. data_root replaces data.root (a run made
    elsewhere, or from another working directory)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} holds no config.yaml: pass a run directory (out_dir/run_name)")
    config = load_config(run_dir / "config.yaml", [f"data.root={data_root}"] if data_root else [])
    checkpoint = checkpoint_path(run_dir, epoch)
    dataset = Dataset(Path(config.data.root) / config.data.name)
    accelerator = Accelerator(cpu=config.cpu)
    noisy = torch.from_numpy(dataset.labels(config.data.train_split, config.data.label_set))
    ctx = method_context(config, dataset, noisy.to(accelerator.device), None)
    method = build_method(config.method.name, config.method.params, ctx)
    models = method.build_models()
    for i, (name, model) in enumerate(models.items()):  # Accelerate's names, in the order they were prepared
        weights = checkpoint / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
        model.load_state_dict(load_file(weights))
        models[name] = model.to(accelerator.device)
    arrays = StateReader(run_dir).arrays(checkpoint.name) if method.state_arrays() else {}
    return LoadedRun(config, dataset, method, models, checkpoint, accelerator, arrays)


def fold_masks(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """`folds` disjoint bool (N,) masks covering every idx, stratified by label (each class dealt round-robin
    over the folds after a seeded shuffle), as cleanlab's cross-validation does."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        fold_of[members] = (np.arange(len(members)) + rng.integers(folds)) % folds
    return [fold_of == f for f in range(folds)]


# ---------------------------------------------------------------------------------- scores and flags

def self_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) probs[i, labels[i]]: the label quality cleanlab ranks by default."""
    return probs[np.arange(len(labels)), labels].astype(np.float32)


def resolve_rule(rule: str) -> str:
    if rule not in RULES:
        raise UserError(f"unknown flag rule {rule!r}; choose one of {', '.join(RULES)}")
    if rule != "auto":
        return rule
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        return "argmax"
    return "cleanlab"


def flag_issues(probs: np.ndarray, labels: np.ndarray, rule: str) -> np.ndarray:
    """(N,) bool by a resolved rule (see the module docstring)."""
    if rule == "cleanlab":
        from cleanlab.filter import find_label_issues

        return np.asarray(find_label_issues(labels=labels, pred_probs=probs), dtype=bool)
    return probs.argmax(axis=1) != labels


def store_evidence(arrays: dict[str, np.ndarray], num_classes: int, names: list[str]) -> dict[str, np.ndarray]:
    """CSV columns (N,) from the method's store arrays: a scalar array as it is; an (N, K) array (soft
    targets) as <name>_argmax (a class name) and <name>_max; another (N, C) array as <name>_0 .. <name>_C-1."""
    columns: dict[str, np.ndarray] = {}
    for name, arr in sorted(arrays.items()):
        if arr.ndim == 1:
            columns[name] = arr
        elif arr.ndim == 2 and arr.shape[1] == num_classes:
            columns[f"{name}_argmax"] = np.array([class_name(names, k) for k in arr.argmax(axis=1)])
            columns[f"{name}_max"] = arr.max(axis=1)
        elif arr.ndim == 2:
            columns.update({f"{name}_{c}": arr[:, c] for c in range(arr.shape[1])})
    return columns


# ---------------------------------------------------------------------------------- export

def export(out_dir: Path, probs: np.ndarray, labels: np.ndarray, dataset: Dataset, split: str,
           arrays: dict[str, np.ndarray], transform: TransformConfig, *, in_sample: bool, rule: str = "auto",
           source: dict | None = None) -> dict:
    """Writes the files of the module docstring into out_dir; returns the manifest (also written).
    source: what the predictions came from (checkpoint, folds), recorded in the manifest."""
    rule = resolve_rule(rule)
    labels = labels.astype(np.int64)
    quality = self_confidence(probs, labels)
    issues = flag_issues(probs, labels, rule)
    suggested = probs.argmax(axis=1)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, arr in (("pred_probs", probs.astype(np.float32)), ("labels", labels), ("label_quality", quality),
                      ("label_issues", issues)):
        np.save(out_dir / f"{name}.npy", arr)
    ranked = np.flatnonzero(issues)[np.argsort(quality[issues], kind="stable")]  # most suspicious first
    names = dataset.classes
    keys = dataset.source_keys(split)
    evidence = store_evidence(arrays, dataset.num_classes, names)
    with open(out_dir / "label_issues.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["idx", "source_key", "given_label", "suggested_label", "label_quality", *evidence])
        for i in ranked:
            writer.writerow([int(i), keys[i], class_name(names, labels[i]), class_name(names, suggested[i]),
                             f"{quality[i]:.6g}", *(_cell(col[i]) for col in evidence.values())])
    shown = ranked[:GRID]
    if len(shown):
        issue_grid(dataset, split, transform, shown, [class_name(names, labels[i]) for i in shown],
                   [class_name(names, suggested[i]) for i in shown], quality[shown], out_dir / "label_issues.png")
    manifest = {
        "split": split, "num_samples": int(len(labels)), "num_classes": dataset.num_classes,
        "flag_rule": rule, "flagged": int(issues.sum()),
        "pred_probs": "in-sample (the model trained on these labels)" if in_sample
                      else "out-of-sample (cross-validated: each from a model that held its fold out)",
        "evidence_columns": list(evidence), **(source or {}),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.6g}"
    return str(value.item() if isinstance(value, np.generic) else value)


def issue_grid(dataset: Dataset, split: str, transform: TransformConfig, idx: np.ndarray, given: list[str],
               suggested: list[str], quality: np.ndarray, path: Path) -> None:
    """The images of `idx` (read from the shards by idx, decoded as the loaders decode them), each titled
    with its given and suggested label."""
    from matplotlib.figure import Figure

    reader = ShardRandomAccess(dataset, split)
    cols = math.ceil(math.sqrt(len(idx)))
    rows = math.ceil(len(idx) / cols)
    fig = Figure(figsize=(1.9 * cols, 2.1 * rows + 0.4), layout="constrained")
    fig.suptitle("suspected label errors, most suspicious first")
    with quiet_decoder_warnings():
        for n, i in enumerate(idx):
            image = decode_sample(reader.read(int(i)).tobytes(), stored_side(transform), transform.kind == "imagenet",
                                  f"{split} idx {i}")
            ax = fig.add_subplot(rows, cols, n + 1)
            ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_title(f"#{i} given {given[n]}\n→ {suggested[n]} (p[y]={quality[n]:.2f})", fontsize=7)
            ax.axis("off")
    reader.close()
    save_figure(fig, path)
