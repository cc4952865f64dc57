"""``synth-vqa``: questions about shape, colour, size, position, domain and the number of shapes,
answered from a closed vocabulary.

Single-shape images come from :func:`~tracer_plugins.datasets.synth.rendering.render`, the images of
counting questions from :func:`~tracer_plugins.datasets.synth.groups.render_groups`; a seeded plan
(:func:`_plan_vqa`) decides which image is asked what, so a larger size extends a smaller one.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from tracer_cli.sdk import DatasetBundle, Options, RecipeError
from tracer_plugins.datasets.synth.captions import article
from tracer_plugins.datasets.synth.factory import as_image, open_options, read_names, split_seed
from tracer_plugins.datasets.synth.groups import MAX_GROUP, render_groups
from tracer_plugins.datasets.synth.rendering import render
from tracer_plugins.datasets.synth.world import (
    CLASSNAMES, COLOURLESS, COLOURS, DOMAIN_ID, DOMAINS, POSITIONS, RENDER_DOMAINS, SIZES)

QUESTION_KINDS = ("shape", "colour", "size", "position", "domain", "count")
DEFAULT_VQA_SIZE = {"train": 6000, "test": 2000}  # questions
DOMAIN_ANSWERS = {"photo": "photo", "sketch": "sketch", "cartoon": "cartoon",
                  "noisy": "noisy photo", "mono": "monochrome photo"}
# Size and position describe one shape, so group images (1-3 copies) are not asked them; a
# single-shape image is not asked to count (its answer would always be 1).
_GROUP_KINDS = ("count", "shape", "colour", "domain")
_SINGLE_KINDS = ("shape", "colour", "size", "position", "domain")
_PHRASINGS = 3  # phrasings per question kind
_VQA_STREAM = int.from_bytes(b"vqa", "little")  # seed-sequence tag of the question plan
_PLAN_BLOCK = 1024


def question_texts(domains: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The phrasings of each question kind; the enumerating domain question lists the world's
    four domains, plus the monochrome photo when ``domains`` includes ``mono``."""
    sizes = ", ".join(SIZES[:-1]) + f" or {SIZES[-1]}"
    named = [DOMAIN_ANSWERS[d] for d in RENDER_DOMAINS if d in DOMAINS or d in domains]
    listed = [f"{article(a)} {a}" for a in named]
    return {
        "shape": ("what shape is this?", "what shape is shown?", "which shape is in the picture?"),
        "colour": ("what colour is the shape?", "what color is the shape?",
                   "which colour does the shape have?"),
        "size": (f"is the shape {sizes}?", "how big is the shape?", "what size is the shape?"),
        "position": ("where is the shape?", "where in the picture is the shape?",
                     "in which part of the image is the shape?"),
        "domain": ("is this " + ", ".join(listed[:-1]) + f" or {listed[-1]}?",
                   "what kind of picture is this?", "what style is this image in?"),
        "count": ("how many shapes are there?", "how many shapes are in the picture?",
                  "how many shapes can you see?"),
    }


def answer_space(kinds: Sequence[str], domains: Sequence[str]) -> list[str]:
    """Every answer questions of ``kinds`` about ``domains`` can have, in kind order."""
    space = {"shape": CLASSNAMES, "colour": COLOURS, "size": SIZES, "position": POSITIONS,
             "domain": [DOMAIN_ANSWERS[d] for d in domains],
             "count": [str(c) for c in range(1, MAX_GROUP + 1)]}
    return list(dict.fromkeys(a for kind in kinds for a in space[kind]))


def _askable(kinds: Sequence[str], domain: str, group: bool) -> list[str]:
    allowed = _GROUP_KINDS if group else _SINGLE_KINDS
    return [k for k in kinds if k in allowed and not (k == "colour" and domain in COLOURLESS)]


def _group_share(kinds: Sequence[str], per_image: int) -> float:
    """Share of group images such that count questions (one per group image) make up about
    1 / len(kinds) of all questions.

    With ``a`` questions per group image and ``b`` per single-shape image, a share ``f`` gives
    count questions f / (f a + (1 - f) b) of the total; setting that to 1 / K gives
    f = b / (K - a + b). (Colourless domains, asked fewer questions, are ignored here.)
    """
    if "count" not in kinds:
        return 0.0
    a = min(per_image, len([k for k in kinds if k in _GROUP_KINDS]))
    b = min(per_image, len([k for k in kinds if k in _SINGLE_KINDS]))
    return b / (len(kinds) - a + b) if b else 1.0


def _plan_vqa(seed: int, n: int, domains: Sequence[str], kinds: Sequence[str],
              per_image: int) -> list[tuple[str, bool, list[tuple[str, int]]]]:
    """(domain, is a group image, [(kind, phrasing)]) per image, until ``n`` questions.

    Draws come in fixed-size blocks from one stream seeded by (seed, "vqa"), so a larger ``n``
    extends a smaller one's plan. A group image is always asked the count question first; the
    other kinds are taken in a random priority order, at most ``per_image`` in all.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, _VQA_STREAM]))
    share = _group_share(kinds, per_image)
    plan: list[tuple[str, bool, list[tuple[str, int]]]] = []
    total = 0
    while total < n:
        domain_ids = rng.integers(len(domains), size=_PLAN_BLOCK)
        groups = rng.random(_PLAN_BLOCK) < share
        priority = rng.random((_PLAN_BLOCK, len(QUESTION_KINDS)))
        phrasing = rng.integers(_PHRASINGS, size=(_PLAN_BLOCK, len(QUESTION_KINDS)))
        for b in range(_PLAN_BLOCK):
            domain, group = domains[domain_ids[b]], bool(groups[b])
            order = sorted(_askable(kinds, domain, group),
                           key=lambda k: (k != "count", priority[b, QUESTION_KINDS.index(k)]))
            asked = order[:min(per_image, n - total)]
            if asked:
                plan.append((domain, group, [(k, int(phrasing[b, QUESTION_KINDS.index(k)]))
                                             for k in asked]))
                total += len(asked)
            if total >= n:
                break
    return plan


def _plan_images(plan, seed: int, side: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The plan's images in plan order, and each one's attributes (a dict as render returns)."""
    needed: dict[tuple[str, bool], int] = {}
    slots = []
    for domain, group, _ in plan:
        slots.append(((domain, group), needed.get((domain, group), 0)))
        needed[(domain, group)] = slots[-1][1] + 1
    blocks, attrs, offset = [], {}, {}
    for key in sorted(needed, key=lambda k: (DOMAIN_ID[k[0]], k[1])):
        domain, group = key
        if group:
            images, described = render_groups(domain, needed[key], seed, side)
        else:
            images, _, _, described = render(domain, needed[key], seed, side,
                                             return_attributes=True)
        offset[key] = sum(len(b) for b in blocks)
        blocks.append(images)
        attrs[key] = described
    order = np.array([offset[key] + i for key, i in slots])
    return np.concatenate(blocks)[order], [attrs[key][i] for key, i in slots]


def _answer(kind: str, attrs: dict[str, Any]) -> str:
    if kind == "domain":
        return DOMAIN_ANSWERS[attrs["domain"]]
    return str(attrs[kind])


def _read_vqa_options(opts: Options) -> tuple[list[str], list[str], int]:
    domains = read_names(opts, "domains", ["photo"], RENDER_DOMAINS)
    kinds = read_names(opts, "kinds", QUESTION_KINDS, QUESTION_KINDS)
    per_image = opts.int("questions_per_image", default=2, minimum=1)
    opts.done()
    if "colour" in kinds and all(d in COLOURLESS for d in domains):
        raise RecipeError(opts.key("kinds"), f"'colour' cannot be asked about {', '.join(domains)}"
                                             " images (they have no colour); remove it or add a "
                                             "coloured domain to 'domains'")
    # Canonical orders, so the order of names in the recipe cannot change the data.
    return ([d for d in RENDER_DOMAINS if d in domains],
            [k for k in QUESTION_KINDS if k in kinds], per_image)


# The answer to a synthetic question is fixed by how the image was drawn, so every annotator would
# give it: items list it once per annotator of VQAv2's ten, and the VQA soft score
# min(#agreeing / 3, 1) equals accuracy, as it should for an unambiguous question.
SYNTH_ANNOTATORS = 10


class SynthVQADataset(Dataset):
    """One item per question: ``{"image", "question", "answer", "answers", "question_id",
    "image_id"}``; an image asked several questions is stored once (``image_ids`` point to it).
    ``answers`` holds the answer :data:`SYNTH_ANNOTATORS` times."""

    def __init__(self, images: np.ndarray, image_ids: Sequence[int], questions: Sequence[str],
                 answers: Sequence[str], transform: Callable[[Image.Image], Any] | None):
        self.images, self.image_ids = images, list(image_ids)
        self.questions, self.answers = list(questions), list(answers)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.image_ids[i]
        return {"image": as_image(self.images[image_id], self.transform),
                "question": self.questions[i], "answer": self.answers[i],
                "answers": [self.answers[i]] * SYNTH_ANNOTATORS, "question_id": int(i),
                "image_id": image_id}


def synth_vqa(spec: dict[str, Any], split: str, transform=None) -> DatasetBundle:
    """Questions about the world's images, answered from a closed vocabulary.

    One item per (image, question); ``size`` counts questions. Single-shape images (those of
    ``synth-<domain>`` with the same seed) are asked about shape, colour, size, position and
    domain; group images (1-3 copies of one shape, :func:`render_groups`) about count, shape,
    colour and domain. Colour is never asked about colourless domains (sketch, mono). Answers are
    exact attribute names (``answer_space`` in info); each item has one annotator answer.
    """
    opts, common = open_options(spec, split, DEFAULT_VQA_SIZE)
    domains, kinds, per_image = _read_vqa_options(opts)
    seed = split_seed(common["seed"], split)
    plan = _plan_vqa(seed, common["size"], domains, kinds, per_image)
    images, attrs = _plan_images(plan, seed, common["image_size"])
    texts = question_texts(domains)
    image_ids, asked, questions, answers = [], [], [], []
    for image_id, (_, _, pairs) in enumerate(plan):
        for kind, phrasing in pairs:
            image_ids.append(image_id)
            asked.append(kind)
            questions.append(texts[kind][phrasing])
            answers.append(_answer(kind, attrs[image_id]))
    return DatasetBundle(
        dataset=SynthVQADataset(images, image_ids, questions, answers, transform),
        classnames=[], templates=[], has_captions=False,
        info={"kind": "vqa", "answers": answers, "questions": questions,
              "question_kinds": asked, "answer_space": answer_space(kinds, domains),
              "domains": domains, "kinds": kinds, "questions_per_image": per_image,
              "split": split, **common, "num_images": len(plan)})
