"""How a run's pieces are built from its config: the transform, the loaders' shared arguments and the
method's context. Shared by the Trainer and the tools that rebuild a finished run (label issues)."""

from __future__ import annotations

from functools import partial

import torch
from accelerate import Accelerator

from pipeline.format.dataset import Dataset
from pipeline.load import transforms
from training.config import Config
from training.methods.base import MethodContext
from training.models import build_model


def transform_config(config: Config) -> transforms.TransformConfig:
    preset = transforms.cifar10 if config.data.transform == "cifar" else transforms.imagenet
    data = config.data
    return preset(size=data.image_size, augment=data.augment, upscale=data.upscale,
                  strong_magnitude=data.strong_magnitude)


def loader_args(config: Config, accelerator: Accelerator) -> dict:
    """make_loader's arguments shared by every loader of a run (mode, transform, device, process split)."""
    data = config.data
    return dict(mode=data.loader, transform=transform_config(config), device=accelerator.device,
                process_index=accelerator.process_index, num_processes=accelerator.num_processes,
                num_threads=data.num_threads, mmap=data.mmap)


def method_context(config: Config, dataset: Dataset, noisy: torch.Tensor, clean: torch.Tensor | None) -> MethodContext:
    """What a method is built with: the trainer's, and tools that rebuild a run's method to predict with it."""
    optim = config.optim
    if optim.name == "sgd":
        build_optimizer = partial(torch.optim.SGD, lr=optim.lr, momentum=optim.momentum,
                                  weight_decay=optim.weight_decay, nesterov=optim.nesterov)
    else:
        build_optimizer = partial(torch.optim.AdamW, lr=optim.lr, weight_decay=optim.weight_decay)
    return MethodContext(
        num_classes=dataset.num_classes,
        num_samples=dataset.num_samples(config.data.train_split),
        noisy_labels=noisy,
        clean_labels=clean,
        epochs=config.epochs,
        base_lr=optim.lr,
        build_model=partial(build_model, config.model.name, dataset.num_classes, pretrained=config.model.pretrained),
        build_optimizer=build_optimizer,
        class_names=dataset.classes,
    )
