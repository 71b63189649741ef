"""Discover shortcuts without drawing: group images whose evidence sits in the same place, propose each group.

SpRAy-style (Lapuschkin et al. 2019, "Unmasking Clever Hans predictors"): a shortcut is evidence
that sits in the same place across many images, a place that has little to do with the object.

1. **Evidence map** per image, on the feature grid: e_c(u,v) = CAM_c(u,v) / (h·w), the exact
   per-cell part of logit c (z_c − b_c = Σ_uv e_c(u,v)), centred over classes (a constant added to
   every logit changes no prediction), and a(u,v) = Σ_c |e_c(u,v)|: every class, both signs, so
   evidence *against* classes counts too (`evidence_maps`).
2. **Pattern** p = a / Σ_uv a: where the evidence is, not how much. Images are grouped by k-means
   on √p (the Hellinger distance between patterns), k chosen by the silhouette score, over all
   images and again within each class (`group`): a shortcut at one place for every class, and one
   that only some classes carry.
3. **Region** of a group: the cells where the group's mean pattern reaches half its peak (`region`):
   a cell beside a shortcut sees it through its receptive field and carries some of its evidence,
   so a share of the total would take those neighbours too.
   Each member's mask is the region, plus the member's own cells next to it that carry at least as
   much of its evidence as the region's weakest cell does (`member_cells`): a shortcut that moves a
   little between images (a signature under a sketch) is followed. An image whose group is
   elsewhere joins the all-class group whose region holds the largest share of its evidence,
   when that share is more than an even spread would give the region (`extend`): a model that
   half-reads a shortcut still leaves more of its evidence there than anywhere of that size.
4. **Flip rate**: the members' masked content swapped with a donor of another class (the
   counterfactual of `counterfactual.blend`, donors from the same group where it has other
   classes, so a shortcut is swapped for another class's); the share of predictions that change.
   A region the model reads flips often.
5. A group's region can hold several places (a corner tag, and the centre where every symbol
   is); each connected part is its own proposal (`components`), and parts of different groups in
   the same place are one proposal with all their images (`merge`), so a person is asked once per
   place. Proposals are ranked by leverage, flip rate over region size: any large region flips
   predictions when swapped (it holds the object), a shortcut flips them from a small one.

Nothing here decides what a shortcut is: a person (or `simulated_answer`, for benchmarks) answers
each proposal yes (shortcut), no (object) or mixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from focusml.core import counterfactual
from focusml.core.cam import cam_from_features
from focusml.core.data.base import Dataset

PEAK = 0.5  # the region: cells whose mean pattern reaches this share of its peak
MAX_K = 8  # most groups per k-means (all images, or one class)
MIN_GROUP = 0.02  # a group smaller than this share of its images (and 5 images) is not proposed
SAME = 0.8  # regions overlapping this much (IoU) are one place
FLIP_SAMPLE = 512  # members whose swap is measured per proposal


@dataclass
class Proposal:
    """A group of images whose evidence sits in `region`; `cells[i]` is member `members[i]`'s mask."""

    scope: str  # "all classes" or "class <name>"
    region: np.ndarray  # (h, w) bool
    members: list[tuple[str, int]]  # (split, row)
    cells: np.ndarray  # (n, h, w) bool
    flip_rate: float = float("nan")
    id: str = ""
    rank: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def size(self) -> float:
        """The region's share of the image."""
        return float(self.region.mean())

    @property
    def leverage(self) -> float:
        """Flip rate per share of the image swapped (the ranking key; NaN flip rates last)."""
        return self.flip_rate / self.size if self.flip_rate == self.flip_rate else -1.0


@torch.no_grad()
def evidence_maps(model, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,C,H,W) float images → (a: N×h×w evidence per cell, every class, both signs; predictions N)."""
    model.eval()
    maps, preds = [], []
    for i in range(0, len(images), batch_size):
        a, logits = model.forward_features(images[i:i + batch_size])
        e = cam_from_features(a.float(), model.classifier.weight.float()) / (a.shape[-2] * a.shape[-1])
        maps.append((e - e.mean(1, keepdim=True)).abs().sum(1))
        preds.append(logits.argmax(1))
    return torch.cat(maps), torch.cat(preds)


def patterns(maps: torch.Tensor) -> np.ndarray:
    """Evidence maps → where the evidence is: each map over its sum (N × h·w)."""
    flat = maps.flatten(1).double()
    return (flat / flat.sum(1, keepdim=True).clamp_min(1e-12)).numpy()


def group(p: np.ndarray, seed: int = 0, max_k: int = MAX_K) -> np.ndarray:
    """Cluster labels of patterns `p` by k-means on √p, k in 2..max_k by the silhouette score (0 for one group)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = np.sqrt(p)
    distinct = len(np.unique(x.round(6), axis=0))
    if len(x) < 10 or distinct < 2:
        return np.zeros(len(x), dtype=int)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(x), min(len(x), 2000), replace=False)  # the silhouette is quadratic in its points
    best, best_score = np.zeros(len(x), dtype=int), -1.0
    for k in range(2, min(max_k, len(x) - 1, distinct) + 1):
        labels = KMeans(k, n_init=4, random_state=seed).fit_predict(x)
        if len(np.unique(labels[sample])) < 2:
            continue
        score = silhouette_score(x[sample], labels[sample])
        if score > best_score:
            best, best_score = labels, score
    return best


def region(mean_pattern: np.ndarray, peak: float = PEAK) -> np.ndarray:
    """(h, w) mean pattern → bool (h, w): the cells reaching `peak` times its largest cell."""
    return mean_pattern >= peak * mean_pattern.max()


def _grow(cells: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(cells.astype(np.float32))[None, None]
    return F.max_pool2d(t, 3, stride=1, padding=1)[0, 0].numpy() > 0


def member_cells(reg: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The region, plus each member's own cells beside it that carry ≥ its weakest region cell: (n, h, w) bool."""
    n = len(p)
    maps = p.reshape(n, *reg.shape)
    weakest = np.where(reg[None], maps, np.inf).reshape(n, -1).min(1)
    ring = _grow(reg) & ~reg
    return reg[None] | (ring[None] & (maps >= weakest[:, None, None]))


def pixel_masks(cells: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(n, h, w) bool cells → (n, H, W) uint8 masks (a cell's footprint: `proposals.cells_to_pixels`)."""
    from focusml.core.proposals import cells_to_pixels

    return torch.from_numpy(np.stack([cells_to_pixels(c, *size) for c in cells]).astype(np.uint8))


@torch.no_grad()
def flip_rate(model, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, pool_images: torch.Tensor,
              pool_labels: torch.Tensor, seed: int = 0) -> float:
    """Share of predictions that change when each image's masked content comes from a donor of another class.

    `images` uint8 (n,C,H,W) with `masks` (n,H,W); donors are drawn from the pool's other classes.
    """
    gen = torch.Generator().manual_seed(seed)
    src = torch.full((len(labels),), -1, dtype=torch.long)
    for cls in labels.unique().tolist():
        pool = torch.nonzero(pool_labels != cls).flatten()
        rows = torch.nonzero(labels == cls).flatten()
        if len(pool):
            src[rows] = pool[torch.randint(len(pool), (len(rows),), generator=gen)]
    has = src >= 0
    if not bool(has.any()):
        return float("nan")
    donor = pool_images[src.clamp_min(0)]
    # the donor brings only what is under the image's own mask: u = max(m, 0) = m
    x_cf, _ = counterfactual.blend(images, masks, donor, torch.zeros_like(masks), has, construction="union")
    model.eval()
    before = model(images.float() / 255).argmax(1)
    after = model(x_cf.float() / 255).argmax(1)
    return float((before != after)[has].double().mean())


def propose(model, data: Dataset, splits: tuple[str, ...] = ("train", "val"), seed: int = 0,
            max_k: int = MAX_K) -> list[Proposal]:
    """Ranked proposals from `model`'s evidence on `data`'s `splits` (the module docstring's steps 1–5)."""
    rows = [(s, i) for s in splits if s in data.splits for i in range(len(data.split(s)))]
    images = torch.cat([data.split(s).images[:] for s in splits if s in data.splits])
    labels = torch.cat([data.split(s).labels for s in splits if s in data.splits])
    maps, _ = evidence_maps(model, images.float() / 255)
    p = patterns(maps)
    grid = tuple(maps.shape[-2:])
    groups: list[tuple[str, np.ndarray]] = []
    for k in np.unique(g := group(p, seed, max_k)):
        groups.append(("all classes", np.nonzero(g == k)[0]))
    for c, name in enumerate(data.classes):
        idx = np.nonzero(labels.numpy() == c)[0]
        sub = group(p[idx], seed, max(2, max_k // 2))
        groups += [(f"class {name}", idx[sub == k]) for k in np.unique(sub)]
    candidates: list[tuple[str, np.ndarray, np.ndarray]] = []
    for scope, idx in groups:
        if len(idx) < max(5, MIN_GROUP * (len(p) if scope == "all classes" else (labels == labels[idx[0]]).sum())):
            continue
        candidates += [(scope, part, idx) for part in components(region(p[idx].mean(0).reshape(grid)))]
    out = [Proposal(scope, reg, [rows[i] for i in idx], member_cells(reg, p[idx]), extra={"index": idx})
           for scope, reg, idx in ((s, r, interleave(i, labels.numpy())) for s, r, i in merge(candidates))]
    extend(out, p, rows)
    size = tuple(images.shape[-2:])
    for prop in out:
        idx = prop.extra["index"]
        pick = np.random.default_rng(seed).permutation(len(idx))[:FLIP_SAMPLE]
        group_labels = labels[idx]
        other = group_labels.unique()
        pool_rows = idx if len(other) > 1 else np.arange(len(labels))  # donors of another class, same group if any
        prop.flip_rate = flip_rate(model, images[idx[pick]], pixel_masks(prop.cells[pick], size), labels[idx[pick]],
                                   images[pool_rows], labels[pool_rows], seed)
    out.sort(key=lambda q: (-q.leverage, -len(q.members)))
    for rank, prop in enumerate(out, 1):
        prop.rank, prop.id = rank, f"p{rank:02d}"
    return out


def extend(props: list[Proposal], p: np.ndarray, rows: list[tuple[str, int]], max_size: float = 0.5) -> None:
    """Each image joins the all-class group (region under `max_size` of the image, not its own group) whose
    region holds the largest share of its evidence, when that share exceeds the region's area (in place)."""
    cand = [q for q in props if q.scope == "all classes" and q.size < max_size]
    if not cand:
        return
    regions = np.stack([q.region.ravel() for q in cand]).astype(float)
    lift = (p @ regions.T) / regions.mean(1)  # share of the evidence in the region over its share of the image
    for k, q in enumerate(cand):
        lift[q.extra["index"], k] = 0.0
    best = lift.argmax(1)
    for k, q in enumerate(cand):
        join = np.nonzero((best == k) & (lift[:, k] > 1.0))[0]
        if len(join):
            q.extra["joined"] = len(join)
            q.extra["index"] = np.concatenate([q.extra["index"], join])
            q.members += [rows[i] for i in join]
            q.cells = np.concatenate([q.cells, member_cells(q.region, p[join])])


def interleave(idx: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`idx` reordered so classes take turns (first of each class, then second, ...): a proposal's first members,
    the ones its figure and the mask tool show first, are of every class it holds."""
    turn = np.zeros(len(idx), dtype=int)
    for c in np.unique(labels[idx]):
        mine = labels[idx] == c
        turn[mine] = np.arange(mine.sum())
    return idx[np.lexsort((labels[idx], turn))]


def components(cells: np.ndarray) -> list[np.ndarray]:
    """The 8-connected parts of a (h, w) bool grid, each as its own bool grid (largest first)."""
    seen, parts = np.zeros_like(cells, dtype=bool), []
    for start in zip(*np.nonzero(cells)):
        if seen[start]:
            continue
        part, todo = np.zeros_like(seen), [start]
        seen[start] = True
        while todo:
            y, x = todo.pop()
            part[y, x] = True
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < cells.shape[0] and 0 <= u < cells.shape[1] and cells[v, u] and not seen[v, u]:
                        seen[v, u] = True
                        todo.append((v, u))
        parts.append(part)
    return sorted(parts, key=lambda q: -int(q.sum()))


def merge(candidates: list[tuple[str, np.ndarray, np.ndarray]]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """One proposal per place: candidates (scope, region, image index) whose regions overlap by `SAME` (IoU) are
    one, with every image of each (all-class scope when classes or scopes differ)."""
    merged: list[list] = []
    for scope, reg, idx in sorted(candidates, key=lambda c: c[0] != "all classes"):
        for m in merged:
            if (m[1] & reg).sum() >= SAME * (m[1] | reg).sum():
                m[0] = m[0] if m[0] == scope else "all classes"
                m[2] = np.union1d(m[2], idx)
                break
        else:
            merged.append([scope, reg, idx])
    return [tuple(m) for m in merged]


def masks_from(proposals: list[Proposal], accepted: set[str], data: Dataset) -> dict[str, torch.Tensor]:
    """Per split, (N,H,W) uint8 masks: the union of the member masks of the accepted proposals (zeros elsewhere)."""
    out = {s: torch.zeros_like(data.split(s).masks[:]) for s in {s for q in proposals for s, _ in q.members}}
    for q in proposals:
        if q.id not in accepted:
            continue
        size = tuple(data.split(q.members[0][0]).masks.shape[-2:])
        masks = pixel_masks(q.cells, size)  # every member at once
        for (split, row), m in zip(q.members, masks):
            out[split][row] = torch.maximum(out[split][row], m)
    return out


def simulated_answer(q: Proposal, data: Dataset, share: float = 0.5, reach: int = 1) -> str:
    """A simulated user who sees the true masks: "yes" when the proposed cells lie on the shortcut, else "no".

    Judged on the feature grid, where the proposal lives. A cell within `reach` cells of the shortcut's own
    cells (those holding any of its pixels) counts as on it: it sees the shortcut through its receptive
    field and carries its evidence, so a 4-pixel patch's region is 2×2 cells. "yes" when on average at
    least `share` of each member's proposed cells are on the shortcut: an object, or a region that is
    mostly object, gets "no".
    """
    truth = torch.stack([data.split(s).masks[i] for s, i in q.members]).float()
    t = F.adaptive_max_pool2d(truth[:, None], q.region.shape)
    t = (F.max_pool2d(t, 2 * reach + 1, stride=1, padding=reach) if reach else t)[:, 0].numpy() > 0
    c = q.cells
    on = (c & t).reshape(len(c), -1).sum(1) / np.maximum(c.reshape(len(c), -1).sum(1), 1)
    return "yes" if on.mean() >= share else "no"


def mask_iou(produced: dict[str, torch.Tensor], data: Dataset) -> float:
    """Mean IoU of produced and true masks over the images that have either."""
    ious = []
    for split, masks in produced.items():
        a, b = masks.bool().flatten(1), data.split(split).masks[:].bool().flatten(1)
        union = (a | b).sum(1)
        keep = union > 0
        ious.append(((a & b).sum(1)[keep].double() / union[keep].double()))
    return float(torch.cat(ious).mean()) if ious else float("nan")
