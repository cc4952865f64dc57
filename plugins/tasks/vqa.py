"""Task ``vqa``: visual question answering on the shared TRACER engine, in two forms: contrastive
(image vs "{question} {answer}" texts) for the contrastive methods, a fused-feature head for the
head methods.

**Contrastive form** (``flyp``, ``carot``, ``tracer``; FLYP-style: training, zero-shot and
evaluation score the same texts). For each training batch, :meth:`VqaTask.train_pairs` writes
``zeroshot_template`` for every distinct question of the batch with every distinct canonical
answer of the batch (the in-batch candidates, sorted); each image is scored against its own
question's K texts, and its target is its canonical answer (a
:class:`~tracer_cli.sdk.Pairing`). The loss is the cross-entropy of those B×K logits; with
``tracer`` the teacher's views act on the same B×K image-answer-text logits, so they distil the
teacher's answer distribution (CRD, XKD), its text features of the answers (FD, ICL).
Evaluation of such a run is the zero-shot scorer below, on the finetuned student or teacher.

**Head.** :class:`VqaHead` scores a closed answer vocabulary from the image and question features
of the backbone (both L2-normalized, D each)::

    x = [√D·f_i, √D·f_q, D·(f_i ⊙ f_q)]            (3D; the scales give each part unit RMS)
    logits = W₂ · GELU(W₁ x + b₁) + b₂              (dropout after the GELU while training)

The vocabulary is the ``vocab_size`` most frequent canonical answers of the training split (ties
broken alphabetically, so it does not depend on data order). It travels in the head's state dict
(``_extra_state``), so a checkpoint, ``tracer eval RUN`` and ``tracer export`` (``head.json``)
know what every output means.

**Head training** (``lp``, ``ft``, ``lpft``): cross-entropy of the head's logits against each
question's canonical answer; questions whose answer is outside the vocabulary are ignored. The
text the engine encodes for a training image is its question (``train_texts``); ``lp`` trains the
head alone on frozen features, ``ft`` head and backbone, ``lpft`` one after the other.

**Evaluation.** Through the trained head when the run has one: logits over the vocabulary. Without
a head (contrastive runs, the zero-shot evaluation at the start of a run, ``tracer eval
--model``), CLIP-style
zero-shot VQA: for each question the image is scored against the texts ``zeroshot_template``
(``"{question} {answer}"``) for every candidate answer, the evaluated dataset's own answer set
(``info["answers"]``, most frequent first), and the best-scoring answer is predicted. Texts are
encoded once per distinct question (in chunks, cached within the call), which is cheap when
questions repeat (the synthetic world: about twenty phrasings) and costs |questions| × |answers|
text encodings when they do not (VQAv2: limit the candidates with ``zeroshot_answers``).

Metrics (:func:`tracer_cli.sdk.vqa_metrics`): ``accuracy`` (prediction = canonical answer),
``vqa_score`` (min(#annotators who gave the predicted answer / 3, 1)), ``ece`` (15 bins, on the
softmax of the logits), ``coverage`` (share of canonical answers the scored vocabulary contains,
the ceiling on accuracy), ``n``, ``accuracy_se``.

``[task]`` keys: ``vocab_size`` (1000), ``hidden`` (512), ``dropout`` (0.1) for the head;
``zeroshot_template`` (``"{question} {answer}"``: the contrastive form's training and scoring
text), ``zeroshot_answers`` (0: every answer of the evaluated dataset; K: its K most frequent).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tracer_cli.sdk import (
    Backbone, DatasetBundle, Options, Pairing, RecipeError, RunError, TaskMetrics, UsageError,
    ece, eval_mode, hookimpl, softmax, vqa_metrics)
from tracer_plugins.tasks.retrieval import encode_texts

IGNORE = -100  # cross-entropy target of an answer outside the vocabulary
MAX_VOCAB = 10**5
MAX_HIDDEN = 2**14
# Zero-shot answer embeddings kept per evaluation call (rows × D floats): the distinct questions
# of a synthetic set fit many times over; a huge real set recomputes instead of exhausting memory.
_CACHE_ELEMENTS = 1 << 26

VQA_METRICS = TaskMetrics(
    primary="accuracy",
    columns=("accuracy", "vqa_score", "ece", "coverage", "n"),
    hidden=("accuracy_se",),
    higher_is_better=frozenset({"accuracy", "vqa_score", "coverage", "n"}),
    fractions=frozenset({"accuracy", "vqa_score", "ece", "coverage", "accuracy_se"}),
    averaged=("accuracy", "vqa_score", "ece"),
    id_averaged=("accuracy", "vqa_score"),
    headers={"accuracy": "acc %", "vqa_score": "VQA score %", "ece": "ECE",
             "coverage": "coverage %", "n": "n"},
    percent=frozenset({"accuracy", "vqa_score", "coverage"}),
)


def top_answers(answers: Iterable[str], k: int | None = None) -> list[str]:
    """Distinct answers by frequency (most frequent first, ties alphabetical), the first ``k``."""
    counts = Counter(str(a) for a in answers)
    ranked = sorted(counts, key=lambda a: (-counts[a], a))
    return ranked if not k else ranked[:k]


def _dataset_answers(bundle: DatasetBundle, what: str) -> list[str]:
    answers = bundle.info.get("answers") if isinstance(bundle.info, dict) else None
    if not answers:
        raise UsageError(f"task 'vqa' needs a VQA dataset ({what} has no info['answers']): use "
                         "synth-vqa or vqav2")
    return list(answers)


def _questions(batch: dict[str, Any], what: str) -> list[str]:
    if "question" not in batch:
        raise UsageError(f"task 'vqa' needs a VQA dataset ({what} has no questions): use "
                         "synth-vqa or vqav2")
    return [str(q) for q in batch["question"]]


def _annotators(batch: dict[str, Any]) -> list[list[str]]:
    if "answers" in batch:
        return [[str(a) for a in answers] for answers in batch["answers"]]
    return [[str(a)] for a in batch["answer"]]


class VqaHead(nn.Module):
    """[f_i, f_q, f_i ⊙ f_q] → MLP → answer logits; the vocabulary rides in its state dict."""

    uses_text = True  # the engine passes it the question features f_q

    def __init__(self, dim: int, vocab: Sequence[str], hidden: int = 512, dropout: float = 0.1):
        super().__init__()
        self.dim, self.hidden, self.dropout = dim, hidden, float(dropout)
        self.vocab = list(vocab)
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, len(self.vocab)))

    @property
    def answers(self) -> int:
        return self.mlp[-1].out_features

    def get_extra_state(self) -> dict[str, Any]:
        return {"vocab": list(self.vocab), "dropout": self.dropout}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.vocab = list(state.get("vocab", []))
        self.dropout = float(state.get("dropout", self.dropout))
        self.mlp[2].p = self.dropout

    def describe(self) -> dict[str, Any]:
        return {"kind": "vqa-mlp",
                "input": "L2-normalized image features f_i and question features f_q (D each)",
                "formula": "x = [sqrt(D)*f_i, sqrt(D)*f_q, D*(f_i*f_q)]; logits = "
                           "mlp.3(dropout(gelu(mlp.0(x))))",
                "dim": self.dim, "hidden": self.hidden, "dropout": self.dropout,
                "outputs": self.answers, "vocab": list(self.vocab)}

    def fuse(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        dtype = self.mlp[0].weight.dtype
        fi, fq = image_features.to(dtype), text_features.to(dtype)
        root = math.sqrt(fi.shape[-1])
        return torch.cat([root * fi, root * fq, (root * fi) * (root * fq)], dim=-1)

    def forward(self, image_features: torch.Tensor,
                text_features: torch.Tensor | None = None) -> torch.Tensor:
        if text_features is None:
            raise RunError("the VQA head needs the question features (text_features)")
        return self.mlp(self.fuse(image_features, text_features))


class _AnswerEmbeddings:
    """Zero-shot text features of "{question} {answer}" for every candidate, per question,
    cached within one evaluation call (least recently used questions dropped past a budget)."""

    def __init__(self, encode: Any, template: str, candidates: Sequence[str]):
        self.encode, self.template, self.candidates = encode, template, list(candidates)
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.elements = 0

    def get(self, question: str) -> torch.Tensor:
        if question in self.cache:
            self.cache.move_to_end(question)
            return self.cache[question]
        texts = [self.template.format(question=question, answer=a) for a in self.candidates]
        feats = self.encode(texts)
        self.cache[question] = feats
        self.elements += feats.numel()
        while self.elements > _CACHE_ELEMENTS and len(self.cache) > 1:
            _, dropped = self.cache.popitem(last=False)
            self.elements -= dropped.numel()
        return feats


class VqaTask:
    """VQA: image vs "{question} {answer}" texts for the contrastive methods (and zero-shot), a
    fused-feature head trained with cross-entropy for the head methods."""

    name = "vqa"
    objective = "contrastive"  # the head methods (lp, ft, lpft) still train the head
    metrics = VQA_METRICS

    def __init__(self, vocab_size: int = 1000, hidden: int = 512, dropout: float = 0.1,
                 zeroshot_template: str = "{question} {answer}", zeroshot_answers: int = 0):
        self.vocab_size, self.hidden, self.dropout = vocab_size, hidden, dropout
        self.zeroshot_template, self.zeroshot_answers = zeroshot_template, zeroshot_answers
        self._index: dict[str, int] | None = None  # the training head's answer -> output

    def train_texts(self, batch: dict[str, Any], bundle: DatasetBundle,
                    rng: torch.Generator) -> list[str]:
        """The questions, whose features the head reads (the head methods)."""
        return _questions(batch, "the training set")

    def train_pairs(self, batch: dict[str, Any], bundle: DatasetBundle,
                    rng: torch.Generator) -> tuple[list[str], Pairing]:
        """The contrastive form's texts and pairing: ``zeroshot_template`` for each distinct
        question of the batch (in order of appearance) with each distinct canonical answer of the
        batch (sorted), Q·K texts; image i's candidates are its question's K texts, its target
        its canonical answer. Deterministic: ``rng`` is not drawn from."""
        questions = _questions(batch, "the training set")
        answers = [str(a) for a in batch["answer"]]
        candidates = sorted(set(answers))
        asked = list(dict.fromkeys(questions))
        texts = [self.zeroshot_template.format(question=q, answer=a)
                 for q in asked for a in candidates]
        first = {q: j * len(candidates) for j, q in enumerate(asked)}
        columns = torch.arange(len(candidates))
        rows = torch.stack([first[q] + columns for q in questions])
        position = {a: k for k, a in enumerate(candidates)}
        targets = torch.tensor([position[a] for a in answers], dtype=torch.long)
        return texts, Pairing(rows, targets)

    # --- the head ---------------------------------------------------------------------------------

    @torch.no_grad()
    def make_head(self, backbone: Backbone, module: nn.Module, bundle: DatasetBundle,
                  device: torch.device, autocast: Any) -> VqaHead:
        """A freshly initialised head over the training split's ``vocab_size`` most frequent
        answers (its feature size read from one encoded text)."""
        vocab = top_answers(_dataset_answers(bundle, "the training set"), self.vocab_size)
        dim = encode_texts(backbone, module, ["a"], device, autocast).shape[-1]
        self._index = {a: i for i, a in enumerate(vocab)}
        return VqaHead(dim, vocab, self.hidden, self.dropout)

    def load_head(self, state: dict[str, Any]) -> VqaHead:
        """A head rebuilt from a checkpoint's ``head`` state (sizes read from its tensors)."""
        first, last = state.get("mlp.0.weight"), state.get("mlp.3.weight")
        extra = state.get("_extra_state")
        if not (isinstance(first, torch.Tensor) and isinstance(last, torch.Tensor)
                and first.ndim == 2 and last.ndim == 2 and first.shape[1] % 3 == 0
                and isinstance(extra, dict) and "vocab" in extra):
            raise UsageError("the checkpoint's head is not a VQA head (no 'mlp.0.weight' / "
                             "'mlp.3.weight' / vocabulary)")
        head = VqaHead(first.shape[1] // 3, [""] * last.shape[0], first.shape[0],
                       float(extra.get("dropout", 0.0)))
        head.load_state_dict(state)
        self._index = {a: i for i, a in enumerate(head.vocab)}
        return head

    def head_loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Cross-entropy against the canonical answers; answers outside the vocabulary are
        ignored (a batch without any in-vocabulary answer contributes a zero loss)."""
        if self._index is None:
            raise RunError("task 'vqa': head_loss before make_head / load_head built the head")
        targets = torch.tensor([self._index.get(str(a), IGNORE) for a in batch["answer"]],
                               device=logits.device)
        if bool((targets == IGNORE).all()):
            return logits.float().sum() * 0.0  # keeps the graph (and DDP) intact
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE)

    # --- evaluation -------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, backbone: Backbone, module: nn.Module,
                 datasets: Mapping[str, tuple[DatasetBundle, Any]], device: torch.device,
                 autocast: Any, head: VqaHead | None = None) -> dict[str, dict[str, Any]]:
        """Metrics, logits and labels (index of the canonical answer among the scored answers,
        -1 when absent) per dataset: through ``head``, or zero-shot without one."""
        out = {}
        with eval_mode(module):
            for name, (bundle, loader) in datasets.items():
                if head is not None:
                    vocab, score = head.vocab, self._head_scorer(backbone, module, head, device,
                                                                 autocast)
                else:
                    vocab = top_answers(_dataset_answers(bundle, f"dataset '{name}'"),
                                        self.zeroshot_answers)
                    score = self._zeroshot_scorer(backbone, module, vocab, device, autocast)
                out[name] = self._run(backbone, module, loader, vocab, score, device, autocast,
                                      name)
        return out

    def _run(self, backbone: Backbone, module: nn.Module, loader: Any, vocab: Sequence[str],
             score: Any, device: torch.device, autocast: Any, name: str) -> dict[str, Any]:
        index = {a: i for i, a in enumerate(vocab)}
        all_logits, labels, annotators = [], [], []
        for batch in loader:
            with autocast():
                fi = backbone.encode_image(module, batch["image"].to(device, non_blocking=True))
            all_logits.append(score(fi.float(), _questions(batch, f"dataset '{name}'")).cpu())
            labels.extend(index.get(str(a), -1) for a in batch["answer"])
            annotators.extend(_annotators(batch))
        if not all_logits:
            raise UsageError(f"dataset '{name}' has no readable question to answer")
        logits, labels_t = torch.cat(all_logits), torch.tensor(labels, dtype=torch.long)
        metrics = vqa_metrics(logits, annotators, vocab)
        metrics["ece"] = ece(softmax(logits), labels_t.numpy())
        return {"metrics": metrics, "logits": logits, "labels": labels_t}

    @staticmethod
    def _head_scorer(backbone: Backbone, module: nn.Module, head: VqaHead, device: torch.device,
                     autocast: Any) -> Any:
        def score(fi: torch.Tensor, questions: list[str]) -> torch.Tensor:
            fq = encode_texts(backbone, module, questions, device, autocast)
            return head(fi, fq).float()

        return score

    def _zeroshot_scorer(self, backbone: Backbone, module: nn.Module, candidates: Sequence[str],
                         device: torch.device, autocast: Any) -> Any:
        scale = backbone.logit_scale(module).float()
        embeddings = _AnswerEmbeddings(
            lambda texts: encode_texts(backbone, module, texts, device, autocast),
            self.zeroshot_template, candidates)

        def score(fi: torch.Tensor, questions: list[str]) -> torch.Tensor:
            logits = torch.empty(len(questions), len(candidates), device=fi.device)
            rows: dict[str, list[int]] = {}
            for row, question in enumerate(questions):
                rows.setdefault(question, []).append(row)
            for question, members in rows.items():
                picked = torch.tensor(members, device=fi.device)
                logits[picked] = scale * fi[picked] @ embeddings.get(question).T
            return logits

        return score


def _template(opts: Options) -> str:
    template = opts.str("zeroshot_template", default="{question} {answer}")
    try:
        template.format(question="q", answer="a")
    except (KeyError, IndexError, ValueError):
        raise RecipeError(opts.key("zeroshot_template"), f"got {template!r}; use the fields "
                          "{question} and {answer}, e.g. '{question} {answer}'") from None
    if "{answer}" not in template:
        raise RecipeError(opts.key("zeroshot_template"), f"got {template!r}; it must contain "
                          "{answer} (each candidate answer is scored through it)")
    return template


def make_task(options: dict[str, Any]) -> VqaTask:
    opts = Options(options, path="task")
    # The head is hidden × (3·width + vocab_size) weights: bounds far above VQAv2's 3,129
    # answers keep a typo from allocating terabytes.
    vocab_size = opts.int("vocab_size", default=1000, minimum=1, maximum=MAX_VOCAB)
    hidden = opts.int("hidden", default=512, minimum=1, maximum=MAX_HIDDEN)
    dropout = opts.float("dropout", default=0.1, minimum=0.0)
    if dropout >= 1.0:
        raise RecipeError(opts.key("dropout"), f"got {dropout}; must be in [0, 1)")
    template = _template(opts)
    answers = opts.int("zeroshot_answers", default=0, minimum=0, maximum=MAX_VOCAB)
    opts.done()
    return VqaTask(vocab_size, hidden, dropout, template, answers)


@hookimpl
def tracer_register_tasks(registry) -> None:
    registry.add("vqa", make_task)
