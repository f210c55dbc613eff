"""The LMMs' training media and batches: each example's images or video frames as uint8
arrays (read locally, or streamed by a Ray Data media stage), collated with the tokenised
conversations into right-padded model inputs."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch

from vqpipe.models.mplug_owl2 import MPLUGOwl2Config, MPLUGOwl2ImageProcessor, PromptTokenizer
from vqpipe.models.mplug_owl2.modeling import IGNORE_INDEX
from vqpipe.train.data import load_image
from vqpipe.train.lmm_examples import encode_example, epoch_order, training_examples
from vqpipe.train.settings import LMMSettings


def checkpoint_processor(checkpoint: str) -> MPLUGOwl2ImageProcessor:
    """The image processor of a local checkpoint directory (its JSON files only)."""
    size = MPLUGOwl2Config.from_pretrained(checkpoint).vision.image_size
    return MPLUGOwl2ImageProcessor.from_pretrained(checkpoint, size)


def load_visual(
    path: str,
    processor: MPLUGOwl2ImageProcessor,
    video_fps: float,
    max_frames: int,
    storage_options: dict[str, Any] | None = None,
) -> np.ndarray:
    """uint8 [T, 3, S, S]: one image (T = 1), or a video's frames sampled at ``video_fps`` and
    capped evenly at ``max_frames``."""
    from vqpipe.io.fs import read_bytes
    from vqpipe.io.media_types import media_type_from_name
    from vqpipe.media.decode import decode_video, even_subset

    if media_type_from_name(path) != "video":
        return processor.to_uint8(load_image(path, storage_options))[None]
    frames, _ = decode_video(read_bytes(path, storage_options), float(video_fps))
    keep = even_subset(len(frames), int(max_frames))
    return np.stack([processor.to_uint8(frames[i]) for i in keep])


def _pack(arrays: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    return buf.getvalue()


def _unpack(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(data)) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


def decode_lmm_batch(
    batch: dict[str, np.ndarray], checkpoint: str, options: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Ray Data media stage of the LMM loops: each row's images (or video frames) → uint8
    arrays packed as ``.npz`` bytes in ``visuals``; a failure leaves ``error`` set instead.
    ``options``: ``video_fps``, ``max_frames``, ``storage_options``."""
    from vqpipe.train.config import setting

    processor = checkpoint_processor(checkpoint)
    fps, frames = setting(options, "lmm", "video_fps"), setting(options, "lmm", "max_frames")
    storage = options.get("storage_options")
    visuals = np.full(len(batch["images"]), b"", dtype=object)
    errors = np.full(len(batch["images"]), "", dtype=object)
    for i, paths in enumerate(batch["images"]):
        try:
            visuals[i] = _pack(
                [load_visual(p, processor, fps, frames, storage) for p in json.loads(paths)]
            )
        except Exception as exc:  # an unreadable image must not end the run
            errors[i] = f"{type(exc).__name__}: {exc}"
    return {**batch, "visuals": visuals, "error": errors}


def lmm_training_stream(config: LMMSettings, method: str) -> Any:
    """The examples' visual inputs as a Ray Dataset (read, decode and preprocess in Ray Data
    workers; split across the training workers). The weighted plan of epoch 0 is drawn once
    on the driver; Ray Data streams it again each epoch."""
    import pandas as pd
    import ray.data

    examples = training_examples(config, method)
    order = epoch_order(examples, config.seed, config.weighted, 0, 0, 1)
    rows = pd.DataFrame(
        {"index": order, "images": [json.dumps(examples[i]["images"]) for i in order]}
    )
    options = {
        "storage_options": config.storage_options,
        "video_fps": config.video_fps,
        "max_frames": config.max_frames,
    }
    return ray.data.from_pandas(rows).map_batches(
        decode_lmm_batch,
        batch_size=16,
        fn_kwargs={"checkpoint": str(config.checkpoint), "options": options},
        num_cpus=0.5,
    )


class Collator:
    """Examples → model inputs: right-padded ids / labels / mask and the visual inputs (one
    normalised tensor [N, 3, S, S] for images, a list of [T, 3, S, S] per placeholder when
    videos are present)."""

    def __init__(
        self,
        tokenizer: PromptTokenizer,
        processor: MPLUGOwl2ImageProcessor,
        eos_id: int,
        pad_id: int,
        config: LMMSettings,
    ) -> None:
        self.tokenizer, self.processor = tokenizer, processor
        self.eos_id, self.pad_id = eos_id, pad_id
        self.config = config

    def load(self, path: str) -> np.ndarray:
        """One image's or video's uint8 frames, read here."""
        c = self.config
        return load_visual(path, self.processor, c.video_fps, c.max_frames, c.storage_options)

    def __call__(
        self,
        examples: list[dict[str, Any]],
        loaded: list[list[np.ndarray] | None] | None = None,
    ) -> dict[str, Any]:
        """``loaded``: each example's uint8 visuals already decoded (None: blank images);
        not given: read here."""
        ids, labels, visuals = [], [], []
        size = self.processor.crop_size
        for k, ex in enumerate(examples):
            i, lab = encode_example(
                self.tokenizer, ex["conversations"], len(ex["images"]), self.eos_id
            )
            ids.append(i)
            labels.append(lab)
            if loaded is None:
                visuals.extend(self.load(str(p)) for p in ex["images"])
            elif loaded[k] is None:
                visuals.extend(np.zeros((1, 3, size, size), np.uint8) for _ in ex["images"])
            else:
                visuals.extend(loaded[k])
        width = max(map(len, ids))
        mask = [[1] * len(i) + [0] * (width - len(i)) for i in ids]
        ids = [i + [self.pad_id] * (width - len(i)) for i in ids]
        labels = [lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels]
        if all(len(v) == 1 for v in visuals):
            images: Any = self.processor.normalize(np.concatenate(visuals))
        else:
            images = [self.processor.normalize(v) for v in visuals]
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "kept_labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
            "images": images,
            "loss_scale": 1.0,
        }

    def streamed(self, examples: list[dict[str, Any]], rows: dict[str, np.ndarray]) -> dict:
        """A batch of :func:`lmm_training_stream`: rows that failed to load keep their place
        with blank images and no loss (all labels ignored), so every worker runs the same
        steps."""
        chosen = [examples[int(i)] for i in rows["index"]]
        visuals = [
            _unpack(v) if not e else None
            for v, e in zip(rows["visuals"], rows["error"], strict=True)
        ]
        batch = self(chosen, visuals)
        failed = [i for i, v in enumerate(visuals) if v is None]
        if failed:
            batch["labels"][failed] = IGNORE_INDEX
            if len(failed) == len(visuals):  # keep one row's labels, count it for nothing
                batch["labels"][0] = batch["kept_labels"][0]
                batch["loss_scale"] = 0.0
        return batch
