"""The training loop (Accelerate): data, models, optimisers, evaluation, logging, checkpoints.

The trainer knows no method: it asks the Method for its models and either its loss (standard
step) or its own train step, then measures, logs and checkpoints the same way for all of them.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from tqdm.auto import tqdm

from pipeline.errors import TrainingDiverged
from pipeline.format.dataset import Dataset
from pipeline.format.locks import FolderLock, FolderLocked
from pipeline.format.provenance import code_version
from pipeline.load.loader import make_loader
from pipeline.load.sampling import BalancedEpochs, EpochSampling, SelectedEpochs
from training.clean_subset import CleanSubset
from training.run_setup import loader_args, method_context
from training.config import Config, ConfigError, dump_config
from state.store import SampleStore, choose_placement
from state.sync import communicator_for
from training.evaluation import TrainTally, eval_pass, predict, top1_top5
from training.methods import build_method, method_config
from training.methods.base import EpochReport, EvalFn, Run, plain_optimizer
from training.outputs import hardware, write_array, write_atomic, write_json, write_metrics
from training.plots import save_figure
from training.schedule import lr_factor
from training.tracking import TRACKING_DIR, Tracking, check_backend

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE = "state.zarr"
METHOD_DIR = "method"  # the method's epoch artefacts (EpochReport)


class Progress:
    """Finished epochs and their metrics; checkpointed with the model so --resume continues exactly."""

    def __init__(self) -> None:
        self.epochs_done = 0
        self.history: list[dict] = []
        self.train_seconds = 0.0

    def state_dict(self) -> dict:
        return {"epochs_done": self.epochs_done, "history": self.history, "train_seconds": self.train_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.epochs_done = state["epochs_done"]
        self.history = list(state["history"])
        self.train_seconds = state["train_seconds"]


def _check_devices(config: Config) -> None:
    gpu = torch.cuda.is_available() and not config.cpu
    if config.mixed_precision == "fp16" and not gpu:
        raise ConfigError("mixed_precision=fp16 needs a CUDA GPU; on CPU use mixed_precision=bf16 or no")
    if config.compile:  # inductor writes Triton kernels on a GPU, C++ on the CPU
        if gpu and importlib.util.find_spec("triton") is None:
            raise ConfigError("compile=true on a GPU needs triton (pip install triton); or set compile=false")
        if not gpu and shutil.which(os.environ.get("CXX", "g++")) is None:
            raise ConfigError("compile=true on CPU needs a C++ compiler (g++, or set CXX); or set compile=false")


class Trainer:
    def __init__(self, config: Config, resume: bool = False, exclude: np.ndarray | None = None):
        """exclude: bool (N,) training samples left out of this run besides the clean meta subset (the
        held-out fold of tools/find_label_issues.py --folds)."""
        _check_devices(config)
        check_backend(config.tracking.backend)
        # the method's validated parameters, defaults included, before anything is written: config.yaml
        # and results.json then record what ran, not only what was typed
        params = method_config(config.method.name, config.method.params).model_dump(mode="json")
        config = config.model_copy(update={"method": config.method.model_copy(update={"params": params})})
        self.config = config
        self.run_dir = Path(config.out_dir) / config.resolved_run_name
        backend = config.tracking.backend
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu,
                                       log_with=None if backend == "none" else backend,
                                       project_dir=self.run_dir / TRACKING_DIR)
        set_seed(config.seed, deterministic=config.deterministic)
        self.ckpt_dir = self.run_dir / CHECKPOINTS
        self._prepare_run_dir(resume)
        self._build_data()
        if exclude is not None:
            self.train_mask = exclude if self.subset_mask is None else exclude | self.subset_mask
        else:
            self.train_mask = self.subset_mask
        self._build_method()
        sampling = self._epoch_sampling()
        self.selection = sampling if isinstance(sampling, SelectedEpochs) else None  # set by Method.select
        self.train_loader = make_loader(self.dataset, config.data.train_split, batch_size=config.data.batch_size,
                                        train=True, seed=config.seed, exclude=self.train_mask,
                                        views=self.method.needs.views, sampling=sampling, **self._loader_args)
        # the training stream's samples in order with the eval transform, for methods' per-epoch passes
        self.train_eval_loader = None
        if self.method.needs.train_eval:
            self.train_eval_loader = make_loader(self.dataset, config.data.train_split, train=False,
                                                 batch_size=config.data.eval_batch_size, exclude=self.train_mask,
                                                 **self._loader_args)
        self._build_models()
        self.progress = Progress()
        acc = self.accelerator
        acc.register_for_checkpointing(self.progress, self.method, *self.schedulers.values())
        for extra in (self.store, self.clean_subset):
            if extra is not None:
                acc.register_for_checkpointing(extra)
        if resume:
            self._resume()
        self.tracking = Tracking(acc, config.tracking.backend, self.run_dir / METHOD_DIR)

    # ------------------------------------------------------------------ set-up

    def _prepare_run_dir(self, resume: bool) -> None:
        has_checkpoint = self._latest_checkpoint() is not None
        if resume and not has_checkpoint:
            raise ConfigError(f"--resume: no checkpoint under {self.ckpt_dir}; start the run without --resume")
        if not resume and (has_checkpoint or (self.run_dir / "results.json").exists()):
            raise ConfigError(
                f"{self.run_dir} already holds a run; pass --resume to continue it, or set run_name=... "
                f"or out_dir=... for a new one"
            )
        # one run per folder: the main process holds the folder's lock until it exits; every process learns
        # of a refusal (a second run with the same run_name would write the same checkpoints)
        refusal = [None]
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._run_lock = FolderLock(self.run_dir, f"{self.run_dir} is in use by another run (pid {{pid}}); wait "
                                            f"for it to finish, or set run_name=... or out_dir=... for a new run")
            except FolderLocked as err:
                refusal = [str(err)]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(refusal)
        if refusal[0] is not None:
            raise FolderLocked(refusal[0])
        if self.accelerator.is_main_process:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.run_dir / "config.yaml", dump_config(self.config))
        self.accelerator.wait_for_everyone()

    def _build_data(self) -> None:
        data, acc = self.config.data, self.accelerator
        self.dataset = Dataset(Path(data.root) / data.name)
        splits = [data.train_split, data.test_split, *data.extra_test_splits]
        self.dataset.verify(splits, data.verify, shards_only=True)  # label sets and masks: checked as they load
        if data.transform == "cifar":
            self.dataset.check_image_size(splits, data.image_size)
        device = acc.device
        self.label_entry = self.dataset.label_set_entry(data.train_split, data.label_set)
        self.noisy = torch.from_numpy(self.dataset.labels(data.train_split, data.label_set)).to(device)  # (N,)
        self.clean = None
        if data.clean_label_set:
            self.clean = torch.from_numpy(self.dataset.labels(data.train_split, data.clean_label_set)).to(device)
        self.subset_mask = self.dataset.mask(data.train_split, data.clean_subset) if data.clean_subset else None
        self._loader_args = loader_args(self.config, acc)
        # split -> (loader, clean labels (N_split,) on the device); the first is the headline test split
        self.test_sets = {
            split: (make_loader(self.dataset, split, batch_size=data.eval_batch_size, train=False, **self._loader_args),
                    torch.from_numpy(self.dataset.labels(split, "clean")).to(device))
            for split in [data.test_split, *data.extra_test_splits]
        }

    def _epoch_sampling(self) -> EpochSampling | None:
        """The training loader's per-epoch subset rule: data.epoch_samples, or the method's selection."""
        samples, select = self.config.data.epoch_samples, self.method.needs.select
        if samples is not None and select:
            raise ConfigError(f"method {self.config.method.name!r} selects its own samples each epoch: leave "
                              f"data.epoch_samples unset")
        if samples is not None:
            return BalancedEpochs(self.noisy.cpu().numpy(), samples, self.dataset.num_classes)
        if select:
            return SelectedEpochs(len(self.noisy), self.train_mask)
        return None

    def _clean_subset(self) -> CleanSubset:
        """Loaders over the clean meta subset only (everything outside the mask is excluded)."""
        data = self.config.data
        if self.subset_mask is None or self.clean is None:
            raise ConfigError(
                f"method {self.config.method.name!r} needs the clean meta subset: set data.clean_subset=<mask> "
                f"(make one with tools/make_shards.py --add-label-set --clean-subset M) and keep "
                f"data.clean_label_set set"
            )
        outside = ~self.subset_mask
        batch_size = data.clean_batch_size or data.batch_size
        train = make_loader(self.dataset, data.train_split, batch_size=batch_size, train=True,
                            seed=self.config.seed + 1, exclude=outside, **self._loader_args)
        evaluation = make_loader(self.dataset, data.train_split, batch_size=data.eval_batch_size, train=False,
                                 exclude=outside, **self._loader_args)
        return CleanSubset(train, evaluation, self.clean)

    def _build_method(self) -> None:
        cfg, acc = self.config, self.accelerator
        ctx = method_context(cfg, self.dataset, self.noisy, self.clean)
        self.method = build_method(cfg.method.name, cfg.method.params, ctx)
        specs = self.method.state_arrays()
        self.store = None
        if specs:
            device = choose_placement(cfg.state.placement, specs, ctx.num_samples, acc.device,
                                      cfg.state.device_budget_gib * 2**30)
            self.store = SampleStore(specs, ctx.num_samples, labels=self.noisy.cpu(), num_classes=ctx.num_classes,
                                     comm=communicator_for(acc), device=device)
        self.clean_subset = self._clean_subset() if self.method.needs.clean_subset else None

    def _build_models(self) -> None:
        cfg, acc, method = self.config, self.accelerator, self.method
        self.models = {name: acc.prepare(self._for_speed(model)) for name, model in method.build_models().items()}
        self.optimizers = {name: acc.prepare(opt) for name, opt in method.build_optimizers(self.models).items()}
        steps = len(self.train_loader)

        def factor(step: int) -> float:
            scheduled = lr_factor(step, steps_per_epoch=steps, epochs=cfg.epochs, optim=cfg.optim)
            return method.lr_factor(step / steps, scheduled)

        # Not passed through accelerator.prepare: its scheduler wrapper steps once per process. Built on the
        # optimiser Run.step steps (plain_optimizer), whose step the scheduler tracks.
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(plain_optimizer(opt), factor)
                           for name, opt in self.optimizers.items() if name not in method.unscheduled}
        self.run = Run(models=self.models, optimizers=self.optimizers, accelerator=acc, store=self.store,
                       clean=self.clean_subset, eval_train=self._eval_train,
                       make_loader=partial(make_loader, self.dataset, **self._loader_args))

    def _for_speed(self, model: torch.nn.Module) -> torch.nn.Module:
        """channels_last: NHWC weights, so convolutions run NHWC (cuDNN picks the layout from the weight or the
        input); compile: Module.compile() in place, which keeps the parameter names of checkpoints."""
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.config.compile:
            model.compile()
        return model

    # ------------------------------------------------------------------ checkpoints

    def _latest_checkpoint(self) -> Path | None:
        done = sorted(p for p in self.ckpt_dir.glob("epoch-*") if p.is_dir() and not p.name.endswith(".tmp"))
        return done[-1] if done else None

    def _resume(self) -> None:
        path = self._latest_checkpoint()
        self.accelerator.load_state(str(path))
        log.info("resumed from %s after epoch %d", path, self.progress.epochs_done)

    def _save_checkpoint(self) -> None:
        """Writes epoch-NNNN.tmp, then renames it: a crash mid-save leaves the previous checkpoint intact."""
        acc = self.accelerator
        final = self.ckpt_dir / f"epoch-{self.progress.epochs_done:04d}"
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        if self.store is not None:  # the checkpoint names this snapshot (SampleStore.state_dict)
            self.store.snapshot(self.run_dir / STATE, final.name, keep=self.config.keep_checkpoints + 1)
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp.rename(final)
            kept = sorted(p for p in self.ckpt_dir.glob("epoch-*") if not p.name.endswith(".tmp"))
            for old in kept[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ the loop

    def _train_epoch(self, epoch: int) -> dict:
        acc, method, run = self.accelerator, self.method, self.run
        for m in self.models.values():
            m.train()
        self.train_loader.set_epoch(epoch)
        run.epoch, run.steps = epoch, len(self.train_loader)
        method.on_epoch_start(run)
        if self.selection is not None:
            self.selection.select(method.select(run))
        tally = TrainTally(has_clean=self.clean is not None)
        bar = tqdm(self.train_loader, total=len(self.train_loader), desc=f"epoch {epoch + 1}/{self.config.epochs}",
                   disable=not acc.is_main_process, leave=False, dynamic_ncols=True)
        checked = 0  # steps whose losses are known to be finite
        step = 0
        for step, batch in enumerate(bar, start=1):
            labels = self.noisy[batch.idx]  # (B,) int64 given labels
            out = method.train_step(batch, labels, run)
            for scheduler in self.schedulers.values():
                scheduler.step()
            loss = out.terms["loss"].detach()
            tally.add(out.logits, loss, labels, self.clean[batch.idx] if self.clean is not None else None)
            if step % self.config.log_every == 0:
                bar.set_postfix(loss=f"{self._check_losses(tally, loss, epoch, checked, step):.3f}")
                checked = step
        if step > checked:
            self._check_losses(tally, loss, epoch, checked, step)
        return tally.reduced(acc)

    @staticmethod
    def _check_losses(tally: TrainTally, loss: torch.Tensor, epoch: int, checked: int, step: int) -> float:
        """The latest loss, read from the device (one host sync); raises if a loss since step `checked` was
        not finite (it then poisons the tally's loss sum, so checking every log_every steps misses none)."""
        latest, total = torch.stack([loss.double(), tally.loss_sum()]).tolist()
        if not math.isfinite(total):
            raise TrainingDiverged(
                f"epoch {epoch + 1}: a loss of steps {checked + 1}..{step} is not finite (latest {latest}); "
                f"lower optim.lr or use mixed_precision=bf16 instead of fp16 (log_every=1 finds the step)"
            )
        return latest

    def _write_report(self, report: EpochReport) -> None:
        """The method's epoch artefacts under <run>/method/ (main process), each replaced in one rename."""
        if not self.accelerator.is_main_process:
            return
        folder = self.run_dir / METHOD_DIR
        for name, fig in report.figures.items():
            save_figure(fig, folder / name)
        for name, array in report.arrays.items():
            write_array(folder / name, array)
        for name, text in report.texts.items():
            write_atomic(folder / name, text)

    def _eval_train(self, fn: EvalFn) -> tuple[torch.Tensor, torch.Tensor]:
        """Run.eval_train: fn over the training stream's samples with the eval transform, by idx."""
        loader = self.train_eval_loader
        if loader is None:
            raise RuntimeError(f"method {self.method.name!r} calls eval_train without declaring it: set "
                               f"needs = DataNeeds(train_eval=True) on the method class")
        idx, values = eval_pass(fn, self.models, loader, self.accelerator)
        if idx.numel() != loader.num_samples:
            raise RuntimeError(f"eval_train saw {idx.numel()} distinct training samples, "
                               f"expected {loader.num_samples}")
        return idx, values

    def _evaluate(self) -> dict[str, float]:
        """Top-1 and top-5 accuracy of method.predict on every test split (keys test_acc / test_top5 for the
        headline split)."""
        out = {}
        for i, (split, (loader, labels)) in enumerate(self.test_sets.items()):
            idx, top = predict(self.method.predict, self.models, loader, self.accelerator)
            if idx.numel() != labels.numel():
                raise RuntimeError(f"evaluation saw {idx.numel()} distinct {split!r} samples, expected {labels.numel()}")
            prefix = "test" if i == 0 else split
            out[f"{prefix}_acc"], out[f"{prefix}_top5"] = top1_top5(top, labels[idx])
        return out

    def fit(self) -> dict:
        cfg, acc = self.config, self.accelerator
        self.tracking.start(cfg.tracking.project or cfg.resolved_run_name, cfg.model_dump(mode="json"),
                            self.run_dir / TRACKING_DIR)
        for epoch in range(self.progress.epochs_done, cfg.epochs):
            lr = self.schedulers["model"].get_last_lr()[0]
            start = time.perf_counter()
            row = {"epoch": epoch + 1, "lr": lr, **self._train_epoch(epoch)}
            if self.store is not None:
                self.store.check()
            if acc.num_processes > 1 or torch.cuda.is_available():
                acc.wait_for_everyone()
            seconds = time.perf_counter() - start
            self.progress.train_seconds += seconds
            row["epoch_seconds"] = seconds
            row["images_per_s"] = row["train_samples"] / seconds
            report = self.method.on_epoch_end(self.run)
            row.update(report.metrics)
            self._write_report(report)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                row.update(self._evaluate())
            self.progress.history.append(row)
            self.progress.epochs_done = epoch + 1
            if acc.is_main_process:
                write_metrics(self.run_dir / "metrics.jsonl", self.progress.history)
                tqdm.write(format_row(row))
            self.tracking.log_epoch(row)
            self._save_checkpoint()
        if cfg.export_label_issues:
            self._export_label_issues()
        results = self._results()
        if acc.is_main_process:
            write_json(self.run_dir / "results.json", results)
        self.tracking.finish()
        return results

    def _export_label_issues(self) -> None:
        """<run>/label_issues/ from the final models (in-sample predictions on the whole training split)."""
        from training import label_issues

        probs = label_issues.predict_split(self.method, self.models, self.dataset, self.config.data.train_split,
                                           self._loader_args, self.config.data.eval_batch_size, self.accelerator)
        if self.accelerator.is_main_process:
            arrays = {name: self.store[name] for name in self.store.names} if self.store is not None else {}
            label_issues.export(self.run_dir / label_issues.EXPORT_DIR, probs, self.noisy.cpu().numpy(),
                                self.dataset, self.config.data.train_split, arrays, self._loader_args["transform"],
                                in_sample=True, source={"epoch": self.progress.epochs_done})

    def _results(self) -> dict:
        history = self.progress.history
        accs = [r["test_acc"] for r in history if "test_acc" in r]
        data = self.config.data
        return {
            "run": self.config.resolved_run_name,
            "dataset": self.dataset.name,
            "label_set": data.label_set,
            "label_set_sha256": self.label_entry.sha256,
            "label_set_noise_rate": self.label_entry.noise_rate,
            "method": self.config.method.name,
            "model": self.config.model.name,
            "epochs": self.progress.epochs_done,
            "best_test_acc": max(accs) if accs else None,
            "last_test_acc": accs[-1] if accs else None,
            "train_seconds": self.progress.train_seconds,
            "images_per_s": sum(r["train_samples"] for r in history) / max(self.progress.train_seconds, 1e-9),
            "code_version": code_version(),
            "hardware": hardware(self.accelerator.num_processes),
            "config": self.config.model_dump(mode="json"),
            "history": history,
        }


COLUMNS = [("epoch", "epoch", "{:d}"), ("train_loss", "loss", "{:.3f}"), ("train_acc_noisy", "acc(noisy)", "{:.3f}"),
           ("train_acc_clean", "acc(clean)", "{:.3f}"), ("memorised", "memorised", "{:.3f}"),
           ("corrected", "corrected", "{:.3f}"), ("broken", "broken", "{:.3f}"),
           ("test_acc", "test acc", "{:.4f}"), ("images_per_s", "img/s", "{:.0f}")]


def format_row(row: dict) -> str:
    return "  ".join(f"{title}={fmt.format(row[key])}" for key, title, fmt in COLUMNS if key in row)


def format_table(history: list[dict]) -> str:
    """A plain-text table of the per-epoch metrics, for the end of a run."""
    cols = [(key, title, fmt) for key, title, fmt in COLUMNS if any(key in r for r in history)]
    cells = [[title for _, title, _ in cols]]
    cells += [[fmt.format(r[key]) if key in r else "-" for key, _, fmt in cols] for r in history]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
