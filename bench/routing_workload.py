"""What the routing benchmark sends: the arrival schedule and the inputs with their reference answers.

The schedule is open-loop: request arrival times are a Poisson process (exponential gaps at ``rate_hz``)
drawn from a seeded generator, so every policy of a scenario sees exactly the same requests at exactly
the same moments, and a slow answer never delays the next request (no coordinated omission).

Each arrival names a stream (several ``ModelStreamInfer`` streams share the load), a model and an
item. Items:

- ``minilm``: the sentences the models build keeps in ``src/fogline/modelbuild/data/sentences.txt``; quality is
  the cosine between the answer and the full (FP32) model's embedding of the same sentence, computed
  once here with ``FullModel``;
- ``digits``: the held-out test images of scikit-learn's digits, split exactly as the models build
  splits them (``fogline.models.digits_net.load_digits_split``), so no training image is ever asked;
  quality is accuracy against the true labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODELS = ("minilm", "digits")


@dataclass(frozen=True)
class Arrival:
    """One request of the schedule: when (seconds from the start), on which stream, what."""

    index: int
    t_s: float
    stream: int
    model: str
    item: int


def poisson_schedule(
    duration_s: float,
    rate_hz: float,
    *,
    streams: int,
    item_counts: Mapping[str, int],
    minilm_share: float = 0.5,
    seed: int = 0,
) -> tuple[Arrival, ...]:
    """Poisson arrivals over ``[0, duration_s)``, each on a random stream with a random model and item."""
    if rate_hz <= 0 or duration_s <= 0 or streams < 1:
        raise ValueError("rate_hz and duration_s must be positive and streams at least 1")
    if not 0.0 <= minilm_share <= 1.0:
        raise ValueError(f"minilm_share must be within 0..1, got {minilm_share}")
    rng = np.random.default_rng(seed)
    out: list[Arrival] = []
    t = float(rng.exponential(1.0 / rate_hz))
    while t < duration_s:
        model = "minilm" if rng.random() < minilm_share else "digits"
        out.append(
            Arrival(
                index=len(out),
                t_s=round(t, 6),
                stream=int(rng.integers(streams)),
                model=model,
                item=int(rng.integers(item_counts[model])),
            )
        )
        t += float(rng.exponential(1.0 / rate_hz))
    return tuple(out)


def scenario_seed(base_seed: int, name: str) -> int:
    """A seed per scenario that does not depend on Python's hash randomisation."""
    return (base_seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))) % (2**32)


@dataclass(frozen=True)
class Workload:
    """The inputs and the answers the benchmark judges quality against."""

    sentences: tuple[str, ...]
    #: Full-model embeddings of ``sentences`` [N, 384], L2-normalised.
    reference_embeddings: np.ndarray
    #: Held-out digit images [M, 8, 8] (float32, 0..16) and their labels [M].
    digit_images: np.ndarray
    digit_labels: np.ndarray
    split_note: str
    #: Quality of each tier's answer per item, ``{(model, tier): array}``, measured in-process with the
    #: same model files (the oracle's quality; also a check on what the agent returns).
    tier_quality: Mapping[tuple[str, str], np.ndarray]

    @property
    def item_counts(self) -> dict[str, int]:
        return {"minilm": len(self.sentences), "digits": len(self.digit_labels)}

    def inputs(self, model: str, item: int) -> dict[str, np.ndarray]:
        """The v2 input tensors of one request (a batch of one)."""
        if model == "minilm":
            text = np.empty(1, dtype=object)
            text[0] = self.sentences[item].encode("utf-8")
            return {"text": text}
        if model == "digits":
            return {"image": self.digit_images[item : item + 1].astype(np.float32)}
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")

    def score(self, model: str, item: int, outputs: Mapping[str, np.ndarray]) -> float:
        """Quality of one answer: cosine to the full model (minilm) or 1.0/0.0 correct (digits)."""
        if model == "minilm":
            emb = np.asarray(outputs["embedding"], dtype=np.float64).reshape(-1)
            ref = self.reference_embeddings[item].astype(np.float64)
            denom = float(np.linalg.norm(emb) * np.linalg.norm(ref)) or 1.0
            return float(emb @ ref / denom)
        probs = np.asarray(outputs["probabilities"]).reshape(-1)
        return float(int(np.argmax(probs)) == int(self.digit_labels[item]))


def load_workload(models_dir: Path) -> Workload:
    """Sentences and held-out digits, with the full model's embeddings as the minilm reference.

    Imports torch (through ``FullModel``) in this process only, once; the agent never sees it.
    """
    import torch

    from fogline.modelbuild.fidelity import cosine_rows, load_sentences
    from fogline.models.digits_net import DigitsConfig, load_digits_split
    from fogline.models.edge_runtime import EdgeModel
    from fogline.models.full_runtime import FullModel
    from fogline.models.repository import ModelRepository

    sentences = tuple(load_sentences())
    repo = ModelRepository(models_dir)
    cfg = DigitsConfig()
    split = load_digits_split(cfg)
    text = np.empty(len(sentences), dtype=object)
    text[:] = [s.encode("utf-8") for s in sentences]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        full_minilm = FullModel.load(repo.resolve("minilm"))
        reference = np.asarray(full_minilm.predict({"text": text})["embedding"], dtype=np.float32)
        full_digits = FullModel.load(repo.resolve("digits")).predict({"image": split.test_x})["probabilities"]
    finally:
        torch.set_num_threads(previous)
    # One item per call, as the agent mostly runs them: INT8 activations are quantized per batch, so
    # an item's edge answer depends a little on the batch it shares.
    edge_minilm = EdgeModel.load(repo.resolve("minilm"))
    edge_emb = np.concatenate([edge_minilm.predict({"text": text[i : i + 1]})["embedding"]
                               for i in range(len(text))])
    edge_model = EdgeModel.load(repo.resolve("digits"))
    edge_digits = np.concatenate([edge_model.predict({"image": split.test_x[i : i + 1]})["probabilities"]
                                  for i in range(len(split.test_x))])
    quality = {
        ("minilm", "cloud"): cosine_rows(reference, reference),
        ("minilm", "edge"): cosine_rows(edge_emb, reference),
        ("digits", "cloud"): (np.argmax(full_digits, axis=1) == split.test_y).astype(np.float64),
        ("digits", "edge"): (np.argmax(edge_digits, axis=1) == split.test_y).astype(np.float64),
    }
    note = (
        f"scikit-learn digits, held-out split of the models build (stratified, test_fraction="
        f"{cfg.test_fraction}, random_state={cfg.seed}): {len(split.test_y)} images"
    )
    return Workload(sentences, reference, split.test_x, split.test_y, note, quality)
