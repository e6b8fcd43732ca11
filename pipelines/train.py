"""Training on Ray Train: the built-in panoptic network's loop (:mod:`operators.training.loop`)
placed on one or more ``TorchTrainer`` workers.

One worker on the CPU by default; ``workers=N, use_gpu=True`` runs N data-parallel GPU workers
(DDP through ``ray.train.torch.prepare_model``) on a cluster. Returns the weights file's bytes
(an fp16 state dict, read back with ``torch.load(weights_only=True)``), the loss history and
rank 0's timings; :mod:`jobs.train` writes them.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

from operators.training.loop import TrainConfig

WEIGHTS_NAME = "weights.pt"


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point: each worker samples its own pairs (seed + rank)."""
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model

    from operators.segmentation.loading import save_builtin
    from operators.training.loop import PairSampler, load_training_videos, new_model, train_model

    torch.set_num_threads(loop_config["threads"])
    config: TrainConfig = loop_config["config"]
    rank = ray.train.get_context().get_world_rank()
    sampler = PairSampler(load_training_videos(config), config, seed=config.seed + rank)
    model = prepare_model(new_model(config, seed=config.seed))
    started, cpu_started = time.time(), time.process_time()
    history = train_model(model, sampler, config, get_device(),
                          report=lambda step, metrics: print(f"[train] step {step}: " + ", ".join(
                              f"{k} {v:.4f}" for k, v in metrics.items() if k != "step"), flush=True))
    final = {"history": json.dumps(history), "train_seconds": time.time() - started,
             "train_cpu_seconds": time.process_time() - cpu_started}
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            save_builtin(getattr(model, "module", model).cpu(), os.path.join(directory, WEIGHTS_NAME))
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(final, checkpoint=checkpoint)


def train_with_ray(config: TrainConfig, workers: int = 1, use_gpu: bool = False, cpus_per_worker: float = 1.0,
                   threads: int = 2, address: str | None = None) -> tuple[bytes, list[dict], dict]:
    """Run the TorchTrainer; returns (weights file bytes, loss history, timings: training wall
    and CPU seconds of rank 0)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cluster.connect import ray_session

    with ray_session(address, log_to_driver=True), tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": config, "threads": threads},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": cpus_per_worker}),
            run_config=RunConfig(name="tubeflow-train", storage_path=storage))
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        with result.checkpoint.as_directory() as directory:
            with open(os.path.join(directory, WEIGHTS_NAME), "rb") as f:
                weights = f.read()
        timings = {k: round(float(result.metrics[k]), 1) for k in ("train_seconds", "train_cpu_seconds")}
        return weights, json.loads(result.metrics["history"]), timings
