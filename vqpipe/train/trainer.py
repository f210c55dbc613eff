"""Ray Train entry point: ``fit(method, config)`` runs a method's ``train_loop_per_worker`` in a
``TorchTrainer`` (CPU: gloo; GPU: nccl), with checkpoints reported each epoch. A run is its
``storage_path`` and ``name``: Ray Train restores a run's checkpoint list itself and hands
each worker the latest (``ray.train.get_checkpoint()``), which the loop resumes from unless
``resume=False`` (config ``resume: false``: start over; the old checkpoints are forgotten as
the new ones replace them). ``stream: true`` streams the training images with Ray Data
(:func:`streamed_training_data`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vqpipe.train.config import absolute_paths, check_config, start_from

log = logging.getLogger("vqpipe.train")

METHODS: dict[str, str] = {
    "gamma": "vqpipe.train.gamma:train_gamma",
    "qalign": "vqpipe.train.lmm:train_qalign",
    "compare2score": "vqpipe.train.lmm:train_compare2score",
}
"""Method → its training loop."""


def training_loop(method: str) -> Callable[[dict[str, Any]], Any]:
    import importlib

    try:
        module, _, name = METHODS[method].partition(":")
    except KeyError:
        raise ValueError(
            f"no training loop for {method!r} yet; available: {sorted(METHODS)}"
        ) from None
    return getattr(importlib.import_module(module), name)


def fit(
    method: str,
    config: dict[str, Any],
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    storage_path: str | os.PathLike | None = None,
    name: str = "vqpipe-train",
    resume: bool = True,
    keep_checkpoints: int = 2,
    max_failures: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> Any:
    """Run the method's loop on ``num_workers`` Ray Train workers; returns the ``Result``
    (``result.checkpoint`` holds ``model.safetensors`` in the layout the scorer loads).

    The config is checked first (:func:`~vqpipe.train.config.check_config`): a bad one raises
    :class:`~vqpipe.train.config.ConfigError` before Ray starts. Where the weights come from
    (:func:`~vqpipe.train.config.start_from`: Gamma without ``checkpoint`` or
    ``model_config`` fine-tunes the bundled demo) goes to ``notice`` (default: the log).
    ``progress(metrics)`` is called on this process for every epoch rank 0 reports."""
    check_config(method, config)
    config, start = start_from(method, absolute_paths(method, config))
    (notice or log.warning)(start)
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from vqpipe.train.progress import reported_epochs

    loop = training_loop(method)
    storage = str(storage_path or Path.home() / "vqpipe-runs")
    if "://" not in storage:  # local: absolute; object stores (s3://...) go to Ray as they are
        storage = str(Path(storage).expanduser().resolve())

    def run_config(callbacks: list[Any]) -> Any:
        return ray.train.RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
        )

    scaling = ray.train.ScalingConfig(
        num_workers=num_workers,
        use_gpu=use_gpu,
        resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
    )
    from vqpipe.train.settings import settings

    streamed = settings(method, config).stream
    datasets = {"train": streamed_training_data(method, config)} if streamed else None
    if not resume:  # the workers ignore the checkpoint Ray Train restores for this name
        config = {**config, "resume": False}
    with reported_epochs(progress) as callbacks:
        trainer = TorchTrainer(
            loop,
            train_loop_config=config,
            scaling_config=scaling,
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=run_config(callbacks),
            datasets=datasets,
        )
        return trainer.fit()


def streamed_training_data(method: str, config: dict[str, Any]) -> Any:
    """``stream: true``: the training images as a Ray Dataset read, decoded and
    preprocessed by Ray Data workers (local or object storage), split across the training
    workers — the Gamma crops (:func:`vqpipe.train.data.training_stream`) or the LMM examples'
    images and frames (:func:`vqpipe.train.lmm.lmm_training_stream`)."""
    from vqpipe.train.settings import settings

    typed = settings(method, config)
    if method != "gamma":
        from vqpipe.train.lmm_media import lmm_training_stream

        return lmm_training_stream(typed, method)
    from vqpipe.train.data import mixed_table, training_stream
    from vqpipe.train.gamma import input_size

    return training_stream(
        mixed_table(typed.datasets, typed.split, typed.storage_options),
        input_size(typed),
        crop_step=typed.crop_step,
        augment=typed.augment,
        storage_options=typed.storage_options,
    )
