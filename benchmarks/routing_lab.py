"""Routing lab: cache frozen MiniLM features once, then score routing selectors side by side.

    python benchmarks/routing_lab.py cache
    python benchmarks/routing_lab.py eval
    python benchmarks/routing_lab.py cost

Split: text4, seed=0, train_per_label=64, test_per_label=50, validation_per_label=16 (as
benchmarks/routing_shift.py). Features: per text, mean- and max-pooled hidden states of every
layer 0..6 (max_length=64), from one full pass; stored in results/routing_lab/cache/features.pt.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from routing_shift import sentences  # the sibling script (run as benchmarks/routing_lab.py)

from continual.backbone import Backbone
from continual.bench.sequences import load_sequence
from continual.selector import first_sentence

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / "results" / "routing_lab" / "cache" / "features.pt"
torch.set_num_threads(2)


def load_tasks():
    return load_sequence(
        "text4", seed=0, train_per_label=64, test_per_label=50, validation_per_label=16
    )


def views(text: str, rng: random.Random) -> dict[str, list[str]]:
    """Short views of one training text: its first sentence, single sentences, 2-3 windows."""
    parts = sentences(text)
    out = {"first": [first_sentence(text)], "sent": parts[:8], "win": []}
    if len(parts) > 1:
        for width in (2, 3):
            if len(parts) >= width:
                start = rng.randrange(0, len(parts) - width + 1)
                out["win"].append(" ".join(parts[start : start + width]))
        # one random 1-sentence window anywhere in the text
        out["win"].append(rng.choice(parts))
    return out


def build_text_index(tasks):
    rng = random.Random(0)
    groups: dict[tuple, list[str]] = {}
    for t, task in enumerate(tasks):
        for split in ("train", "validation"):
            texts = [x for x, _ in getattr(task, split)]
            groups[(t, split, "whole")] = texts
            for kind in ("first", "sent", "win"):
                groups[(t, split, kind)] = []
            # remember which source text each view came from
            for _i, text in enumerate(texts):
                for kind, vs in views(text, rng).items():
                    groups[(t, split, kind)] += vs
        groups[(t, "test", "whole")] = [x for x, _ in task.test]
        groups[(t, "test", "first_sentence")] = [first_sentence(x) for x, _ in task.test]
    return groups


@torch.no_grad()
def cache():
    tasks = load_tasks()
    groups = build_text_index(tasks)
    unique = sorted({x for texts in groups.values() for x in texts}, key=len)
    print(len(unique), "unique texts", flush=True)
    backbone = Backbone.load(max_length=64, query_layer=3)
    model = backbone.model
    means, maxes = [], []
    started = time.time()
    for s in range(0, len(unique), 64):
        batch = backbone.tokenize(unique[s : s + 64])
        mask = batch["attention_mask"]
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            token_type_ids=torch.zeros_like(mask),
            output_hidden_states=True,
        )
        h = torch.stack(out.hidden_states, 1)  # (B, 7, n, H)
        w = mask[:, None, :, None].float()
        means.append(((h * w).sum(2) / w.sum(2).clamp(min=1)).half())
        maxes.append(h.masked_fill(w == 0, -1e4).max(2).values.half())
        if s % 1280 == 0:
            print(s, round(time.time() - started), flush=True)
    index = {x: i for i, x in enumerate(unique)}
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "texts": unique,
            "mean": torch.cat(means),
            "max": torch.cat(maxes),
            "groups": {k: [index[x] for x in v] for k, v in groups.items()},
            "names": [t.name for t in tasks],
        },
        CACHE,
    )
    print("cached", CACHE, round(time.time() - started), "s")


# ---------------------------------------------------------------------------------------------
# Evaluation on cached features
# ---------------------------------------------------------------------------------------------
KINDS_SHORT = ("first", "sent", "win")


def records(tasks):
    """(task, split, kind, text, label) for every cached text, labels carried to the views."""
    rng = random.Random(0)  # same draw order as build_text_index
    out = []
    for t, task in enumerate(tasks):
        for split in ("train", "validation"):
            for text, label in getattr(task, split):
                out.append((t, split, "whole", text, label))
            for text, label in getattr(task, split):
                for kind, vs in views(text, rng).items():
                    out += [(t, split, kind, v, label) for v in vs]
        for text, label in task.test:
            out.append((t, "test", "whole", text, label))
            out.append((t, "test", "first_sentence", first_sentence(text), label))
    return out


class Lab:
    def __init__(self):
        data = torch.load(CACHE, weights_only=True)
        self.mean, self.max = data["mean"].float(), data["max"].float()
        self.names = data["names"]
        index = {x: i for i, x in enumerate(data["texts"])}
        self.recs = [(t, s, k, index[x], y) for t, s, k, x, y in records(load_tasks())]
        self._feat = {}
        self.tokens = None

    def token_ids(self):
        """Wordpiece ids of every cached text, truncated as the query pass sees it (62 + 2)."""
        if self.tokens is None:
            path = HERE / "token_ids.pt"
            if not path.exists():
                from transformers import AutoTokenizer

                from continual.backbone import default_model_path

                tok = AutoTokenizer.from_pretrained(default_model_path())
                texts = torch.load(CACHE, weights_only=True)["texts"]
                ids = tok(texts, add_special_tokens=False, truncation=True, max_length=62)[
                    "input_ids"
                ]
                torch.save({"ids": ids, "vocab": tok.vocab_size}, path)
            data = torch.load(path, weights_only=True)
            self.tokens, self.vocab = data["ids"], data["vocab"]
        return self.tokens

    def counts(self, idx):
        ids = self.token_ids()
        rows = torch.cat([torch.full((len(ids[i]),), r) for r, i in enumerate(idx)])
        cols = torch.cat([torch.tensor(ids[i], dtype=torch.long) for i in idx])
        out = torch.zeros(len(idx), self.vocab, dtype=torch.float64)
        out.index_put_((rows, cols), torch.ones(len(cols), dtype=torch.float64), accumulate=True)
        return out

    def feats(self, spec: str) -> torch.Tensor:
        """'m3+m6' → per-layer unit-normalised blocks concatenated (and scaled to unit norm)."""
        if spec not in self._feat and spec.startswith("r:"):
            # raw hidden states concatenated, then the whole vector unit-normalised
            blocks = [
                (self.mean if p[0] == "m" else self.max)[:, int(p[1:])].double()
                for p in spec[2:].split("+")
            ]
            self._feat[spec] = torch.nn.functional.normalize(torch.cat(blocks, 1), dim=1)
        if spec not in self._feat:
            blocks = []
            for part in spec.split("+"):
                src = self.mean if part[0] == "m" else self.max
                blocks.append(torch.nn.functional.normalize(src[:, int(part[1:])].double(), dim=1))
            self._feat[spec] = torch.cat(blocks, 1) / len(blocks) ** 0.5
        return self._feat[spec]

    def select(self, t, split, kinds):
        rows = [r for r in self.recs if r[0] == t and r[1] == split and r[2] in kinds]
        return [r[3] for r in rows], [r[4] for r in rows], [r[2] for r in rows]


def fit_state(X, labels, kinds, components="task", kmeans=0, seed=0, store="fp32"):
    """Component means (K, D), pooled within-component covariance (D, D), own covariance."""
    if components == "task":
        keys = [0] * len(X)
    elif components == "class":
        keys = labels
    elif components == "kind":
        keys = ["whole" if k == "whole" else "short" for k in kinds]
    elif components == "class*kind":
        keys = [(y, "whole" if k == "whole" else "short") for y, k in zip(labels, kinds)]
    elif components == "kmeans":
        from sklearn.cluster import KMeans

        keys = (
            KMeans(n_clusters=kmeans, n_init=4, random_state=seed).fit(X.numpy()).labels_.tolist()
        )
    uniq = sorted(set(keys), key=str)
    means, scatter = [], torch.zeros(X.shape[1], X.shape[1], dtype=X.dtype)
    for key in uniq:
        sel = torch.tensor([k == key for k in keys])
        m = X[sel].mean(0)
        means.append(m)
        c = X[sel] - m
        scatter += c.T @ c
    cov = scatter / len(X)
    if store == "fp16":
        cov = cov.half().double()
    elif store.startswith("lr"):  # low rank + diagonal: top-r eigenvectors, diagonal rest
        r = int(store[2:])
        vals, vecs = torch.linalg.eigh(cov)
        U = vecs[:, -r:] * vals[-r:].clamp(min=0).sqrt()
        U = U.half().double()
        low = U @ U.T
        cov = low + torch.diag((cov.diagonal() - low.diagonal()).clamp(min=0))
    # Whole-task covariance too (for QDA-style second stage)
    c = X - X.mean(0)
    return {"means": torch.stack(means), "cov": cov, "tcov": c.T @ c / len(X), "tmean": X.mean(0)}


def shrink(cov, alpha):
    scale = cov.diagonal().mean()
    return (1 - alpha) * cov + alpha * scale * torch.eye(len(cov), dtype=cov.dtype)


def lda_scores(Q, states, alpha, reduce="max"):
    shared = torch.stack([s["cov"] for s in states]).mean(0)
    P = torch.linalg.inv(shrink(shared, alpha))
    out = []
    qPq = ((Q @ P) * Q).sum(1, keepdim=True)
    for s in states:
        M = s["means"]
        d = qPq - 2 * Q @ P @ M.T + ((M @ P) * M).sum(1)
        out.append(
            -d.max(dim=1).values
            if False
            else (-d).max(1).values
            if reduce == "max"
            else torch.logsumexp(-d / 2, 1)
        )
    return torch.stack(out, 1)


def qda_scores(Q, states, alpha):
    out = []
    for s in states:
        C = shrink(s["tcov"], alpha)
        P = torch.linalg.inv(C)
        c = Q - s["tmean"]
        out.append(-((c @ P) * c).sum(1) - torch.logdet(C))
    return torch.stack(out, 1)


def nb_scores(C, counts, smooth, per_token=True):
    """Token evidence: log p_t(w) with each task's unigram counts smoothed towards all tasks'."""
    counts = torch.stack(counts)  # (T, V)
    background = (counts.sum(0) + 1) / (counts.sum() + counts.shape[1])
    logp = torch.log((counts + smooth * background) / (counts.sum(1, keepdim=True) + smooth))
    S = C @ logp.T
    if per_token:
        S = S / C.sum(1, keepdim=True).clamp(min=1)
    # relative to the background, so tasks compare on the words that distinguish them
    return S


def evaluate(
    lab,
    spec,
    fit_kinds=("whole",),
    components="task",
    alpha=0.1,
    kmeans=0,
    split="test",
    second=None,
    reduce="max",
    nb=None,
    with_val=False,
    store="fp32",
):
    X = lab.feats(spec)
    states, counts = [], []
    for t in range(len(lab.names)):
        idx, ys, ks = lab.select(t, "train", fit_kinds)
        if with_val and split == "test":  # fit on train + validation texts (test scoring only)
            vi, vy, vk = lab.select(t, "validation", fit_kinds)
            idx, ys, ks = idx + vi, ys + vy, ks + vk
        states.append(fit_state(X[idx], ys, ks, components, kmeans, store=store))
        if nb is not None:
            counts.append(lab.counts(idx).sum(0))
    evals = (
        {"whole": ("whole",), "first_sentence": ("first_sentence",)}
        if split == "test"
        else {"whole": ("whole",), "first_sentence": ("first",)}
    )
    row = {}
    for name, kinds in evals.items():
        per = []
        for t in range(len(lab.names)):
            idx, _, _ = lab.select(t, split, kinds)
            S = lda_scores(X[idx], states, alpha, reduce)
            if nb is not None:  # (weight, smoothing, per_token)
                S = S + nb[0] * nb_scores(lab.counts(idx), counts, nb[1], nb[2])
            if second is not None and second[0] == "pair":
                # re-score ambiguous inputs' top-2 by LDA under those two tasks' covariances
                _, margin_cut, a2 = second
                top = S.topk(2, 1)
                routed = top.indices[:, 0].clone()
                amb = (top.values[:, 0] - top.values[:, 1]) < margin_cut
                pairs = {}
                for i in torch.nonzero(amb)[:, 0].tolist():
                    pairs.setdefault(tuple(sorted(top.indices[i].tolist())), []).append(i)
                for pair, rows in pairs.items():
                    S2 = lda_scores(X[idx][rows], [states[j] for j in pair], a2, reduce)
                    routed[rows] = torch.tensor(pair)[S2.argmax(1)]
            elif second is not None:  # re-score ambiguous inputs' top-2 with per-task QDA
                margin_cut, qalpha = second
                top = S.topk(2, 1)
                amb = (top.values[:, 0] - top.values[:, 1]) < margin_cut
                Qs = qda_scores(X[idx], states, qalpha)
                pick = torch.where(
                    Qs.gather(1, top.indices[:, :1]) >= Qs.gather(1, top.indices[:, 1:]),
                    top.indices[:, 0:1],
                    top.indices[:, 1:2],
                )[:, 0]
                routed = torch.where(amb, pick, top.indices[:, 0])
            else:
                routed = S.argmax(1)
            per.append(100 * (routed == t).double().mean().item())
        row[name] = (round(sum(per) / len(per), 1), [round(p, 1) for p in per])
    return row


def fmt(row):
    return (
        f"whole {row['whole'][0]:5.1f} {row['whole'][1]}  "
        f"first {row['first_sentence'][0]:5.1f} {row['first_sentence'][1]}"
    )


def run_eval(argv):
    lab = Lab()
    print("tasks", lab.names)
    exps = eval(argv[0]) if argv else [dict(spec="m3")]
    for e in exps:
        e = dict(e)
        started = time.time()
        val = evaluate(lab, split="validation", **e)
        test = evaluate(lab, **e)
        print(
            f"{e}\n   VAL  {fmt(val)}\n   TEST {fmt(test)}  ({time.time() - started:.1f}s)",
            flush=True,
        )


@torch.no_grad()
def cost(argv):
    """Seconds per routed prediction batch (32 texts x 64 tokens, 16 prompt tokens), 2 threads.

    today: query layers 1..3, then the prompted full pass; deep: query layers 1..6, then the same
    prompted pass. Interleaved repeats, medians.
    """
    from continual.families import truncated

    repeats = int(argv[0]) if argv else 15
    backbone = Backbone.load(max_length=64, query_layer=3)
    ids = torch.randint(1000, 20000, (32, 64))
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones_like(ids)
    shallow, deep = truncated(backbone.model, 3), truncated(backbone.model, 6)
    prompt = torch.randn(16, backbone.hidden_size) * 0.02

    def query(model):
        h = model(
            input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(mask)
        ).last_hidden_state
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    def prompted():
        emb = torch.cat([prompt.expand(32, -1, -1), backbone.embed(ids)], 1)
        full = torch.cat([torch.ones(32, 16, dtype=mask.dtype), mask], 1)
        return backbone.encode(emb, full)

    times = {"today": [], "deep": []}
    for _ in range(2):  # warm-up
        query(shallow), query(deep), prompted()
    for r in range(repeats):
        for name, model in (
            (("today", shallow), ("deep", deep))
            if r % 2 == 0
            else (("deep", deep), ("today", shallow))
        ):
            started = time.perf_counter()
            query(model)
            prompted()
            times[name].append(time.perf_counter() - started)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(
        {k: round(v * 1000, 1) for k, v in med.items()},
        "ms; ratio deep/today",
        round(med["deep"] / med["today"], 3),
        "repeats",
        repeats,
    )


if __name__ == "__main__":
    if sys.argv[1] == "cache":
        cache()
    elif sys.argv[1] == "eval":
        run_eval(sys.argv[2:])
    elif sys.argv[1] == "cost":
        cost(sys.argv[2:])
