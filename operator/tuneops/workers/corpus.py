"""A small built-in English corpus: tokenizer training, default AWQ calibration and default evaluation text."""

from __future__ import annotations

import random

_SUBJECTS = [
    "The operator",
    "A small model",
    "The quantized model",
    "Each worker",
    "The merge job",
    "A careful engineer",
    "The cluster",
    "Our team",
    "The inference service",
    "A new adapter",
    "The scheduler",
    "The evaluation",
]
_VERBS = [
    "reads",
    "writes",
    "checks",
    "merges",
    "measures",
    "compares",
    "streams",
    "loads",
    "serves",
    "reports",
    "verifies",
    "quantizes",
]
_OBJECTS = [
    "the weights of every layer",
    "a short report about perplexity",
    "the tokenizer and its chat template",
    "one shard at a time",
    "the digest of each file",
    "a list of adapters for the base model",
    "the status of the running pods",
    "seven hundred and twelve tokens",
    "the numbers 3, 14, 159 and 2653",
    "the result before it is renamed",
    "a quiet summary for the next step",
    "the memory that the job may use",
]
_TAILS = [
    "before the sun goes down.",
    "and then it waits for the next request.",
    "so that nothing is lost after a crash.",
    "while the rest of the cluster keeps working.",
    "because quality matters more than speed.",
    "in less than a minute.",
    "without asking anyone for help.",
    "and writes the answer to a log.",
    "with great care and a little patience.",
    "as the documentation describes.",
]
_PARAGRAPHS = [
    "Rivers carry water from the mountains to the sea. Along the way they shape valleys, feed forests and give "
    "towns a reason to exist. In spring the snow melts and the rivers grow wide and loud; in late summer they "
    "shrink to quiet streams that children can cross on stones.",
    "A good recipe for bread needs only flour, water, salt and yeast. Mix them, let the dough rest, fold it a "
    "few times and give it time to rise. Bake it hot at first and cooler later, and let it cool before you cut "
    "it, or the crumb will be gummy.",
    "The library opens at nine in the morning. Students arrive early to find a quiet table near the windows, "
    "where the light is best. By noon every seat is taken, and the only sounds are pages turning and the soft "
    "click of keyboards.",
    "Bees visit thousands of flowers every day. They carry pollen from one plant to the next and bring nectar "
    "home to the hive, where it slowly turns into honey. A strong colony can hold tens of thousands of bees.",
    "When you learn a new language, start with the words you use every day: hello, thank you, water, bread, "
    "left, right, how much, where is. Speak out loud, make mistakes, and listen to how people answer you.",
]


def corpus_lines(n_sentences: int = 1200, seed: int = 0) -> list[str]:
    """Deterministic lines of plain English: templated sentences mixed with a few fixed paragraphs."""
    rng = random.Random(seed)
    lines = list(_PARAGRAPHS)
    for _ in range(n_sentences):
        lines.append(
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
        )
    return lines


def default_text(n_sentences: int = 200, seed: int = 1) -> str:
    """Evaluation text: same vocabulary as the training corpus, different sentences (another seed)."""
    return "\n".join(corpus_lines(n_sentences, seed)[len(_PARAGRAPHS) :] + _PARAGRAPHS)
