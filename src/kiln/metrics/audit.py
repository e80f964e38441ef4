"""What is wrong in a dataset, found from its images' backbone features (``kiln audit``, and the line
``kiln train`` prints about val images with a twin in train). Pure functions of feature and probability
tensors; the features come from the frozen-feature cache, so a folder a frozen run has seen costs no
backbone pass here.

- Near duplicates: candidates by cosine similarity of L2-normalised pooled features (exact search, one
  matrix product per block of rows: 13k x 13k images is well under a second on 2 cores, no index needed),
  and by band-passed pixel prints, confirmed by template matching of the prints (``Twins``): features
  alone do not separate a copy shrunk and re-encoded hard from a distinct photo of the same kind.
- Label errors: confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating
  Uncertainty in Dataset Labels", JAIR 70, 2021, sec. 3.1: the confident joint's off-diagonal entries),
  on out-of-fold probabilities of a linear head (k-fold over the features), ranked by self-confidence
  (the probability given to the given label, lowest first). Multi-label: the same rule per class on the
  binary problem "has this label", which finds missing and extra labels.
- Outliers: the k-nearest-neighbour distance in feature space (Sun, Ming, Zhu and Li, "Out-of-Distribution
  Detection with Deep Nearest Neighbors", ICML 2022), flagged where it is far above the train images' own
  (robust z-score > ``OUTLIER_Z``, Iglewicz and Hoaglin 1993).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kiln.console import Progress

TWIN_SCORE = 0.87  # twin score (``Twins``) at or above which two images are near twins
EXACT_SIMILARITY = 0.9995  # identical pixels at the model's input (up to float noise)
NEIGHBOURS = 5  # candidates per image, by features and by pixel prints each
MIN_TWIN_SIDE = 24  # px: smaller images are not searched for twins (too few pixels to tell copies apart)
GRAY_SIDE = 96  # px of the grayscale copy of each image kept for matching (uint8: 9 kB an image)
PRINT_SIDE = 48  # px of the band-passed print compared
SHIFT = 3  # px of the print searched in each direction (a crop off centre)
ZOOMS = (1.03, 1.06, 1.09, 1.12, 1.15, 1.18, 1.21)  # scales searched besides 1 (a crop to 95-83 %)
CANDIDATE_FEATURES = 0.7  # feature cosine from which kiln train's leak check looks at a val image's pixels
ZOOM_FEATURES = 0.85  # feature cosine from which a pair's prints are also matched at every zoom
OUTLIER_NEIGHBOURS = 10  # k of the kNN distance
OUTLIER_Z = 3.5  # robust z-score (median and MAD of the train images' distances) above which: outlier


def unit(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=1)


@torch.no_grad()
def nearest(
    queries: torch.Tensor, base: torch.Tensor, k: int, same: bool = False, block: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and indices [N, k] of each unit query row's ``k`` nearest unit rows of ``base``,
    nearest first. ``same``: the queries are ``base`` itself, each row's own entry left out."""
    k = min(k, len(base) - int(same))
    if k <= 0 or len(queries) == 0:
        empty = torch.zeros((len(queries), 0))
        return empty, empty.long()
    sims, idx = [], []
    for start in range(0, len(queries), block):
        scores = queries[start : start + block] @ base.T
        if same:
            rows = torch.arange(len(scores))
            scores[rows, rows + start] = -2.0
        top = scores.topk(k, dim=1)
        sims.append(top.values.cpu())
        idx.append(top.indices.cpu())
    return torch.cat(sims), torch.cat(idx)


@dataclass(frozen=True)
class Pair:
    """Two images that are near twins: ``split``/``index`` is the later split's (val or test when the pair
    crosses splits: the leak), ``other``/``other_index`` the earlier one's; ``similarity`` the twin score."""

    split: str
    index: int
    other_split: str
    other_index: int
    similarity: float
    features: float  # the features' cosine alone

    @property
    def leak(self) -> bool:
        return self.split != self.other_split

    @property
    def exact(self) -> bool:
        return self.features >= EXACT_SIMILARITY


def gray_views(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, GRAY_SIDE, GRAY_SIDE] grayscale copies of normalised images [N, C, H, W] (rescaled to
    their own range: what the prints need, and a few kB an image)."""
    small = F.adaptive_avg_pool2d(images.float().mean(1, keepdim=True), GRAY_SIDE)[:, 0]
    low = small.amin((1, 2), keepdim=True)
    high = small.amax((1, 2), keepdim=True)
    return ((small - low) / (high - low).clamp(min=1e-6) * 255).round().byte()


def pixel_prints(gray: torch.Tensor, zoom: float = 1.0) -> torch.Tensor:
    """[N, PRINT_SIDE, PRINT_SIDE] prints of the centre 1/``zoom`` of grayscale views [N, S, S]: shrunk,
    minus their 7 px local mean. A band of middle frequencies: resizing, re-encoding and a change of
    brightness or colour keep it; the low frequencies that distinct photos share (light falling across a
    steel strip) are gone."""
    side = gray.shape[-1]
    keep = round(side / zoom)
    start = (side - keep) // 2
    centre = gray[:, None, start : start + keep, start : start + keep].float()
    small = F.adaptive_avg_pool2d(centre, PRINT_SIDE)
    return (small - F.avg_pool2d(small, 7, 1, 3, count_include_pad=False))[:, 0]


def prints_of(gray: torch.Tensor) -> torch.Tensor:
    """Unzoomed prints of many grayscale views, in blocks (float16: 4.6 kB an image)."""
    return torch.cat([pixel_prints(gray[i : i + 4096]).half() for i in range(0, len(gray), 4096)])


def print_vectors(prints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit 16 x 16 vectors of prints, as they are and mirrored: what candidates are searched by."""

    def unit_rows(x: torch.Tensor) -> torch.Tensor:
        flat = F.adaptive_avg_pool2d(x[:, None].float(), 16).flatten(1)
        return F.normalize(flat - flat.mean(1, keepdim=True), dim=1)

    return unit_rows(prints), unit_rows(prints.flip(-1))


def correlations(templates: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """[M, 2r+1, 2r+1] normalised cross-correlation of each template [M, S-2r, S-2r] (mean 0, norm 1) with
    its own image [M, S, S] at every shift: one grouped convolution, the windows' norms by box filters."""
    m, side = len(images), templates.shape[-1]
    x = images[None]
    dots = F.conv2d(x, templates[:, None], groups=m)[0]
    ones = torch.ones((m, 1, side, side))
    total = F.conv2d(x, ones, groups=m)[0]
    squares = F.conv2d(x * x, ones, groups=m)[0]
    spread = (squares - total * total / side**2).clamp(min=1e-12).sqrt()
    return dots / spread


@torch.no_grad()
def print_match(
    a: torch.Tensor, b: torch.Tensor, gray: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """[M] the best correlation of prints ``a`` and ``b`` [M, S, S]: the centre of one against the other
    shifted by up to ``SHIFT`` px, as it is or mirrored (template matching by normalised
    cross-correlation). With their grayscale views ``gray``, also each one's centre at every one of
    ``ZOOMS`` against the other."""
    r = SHIFT
    a, b = a.float(), b.float()

    def template(x: torch.Tensor) -> torch.Tensor:
        centre = x[:, r:-r, r:-r]
        centre = centre - centre.mean((1, 2), keepdim=True)
        return centre / centre.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]

    tries = [(a, b)]
    if gray is not None:
        tries += [(pixel_prints(gray[1], z), a) for z in ZOOMS] + [
            (pixel_prints(gray[0], z), b) for z in ZOOMS
        ]
    best = torch.full((len(a),), -1.0)
    for fixed, searched in tries:
        kernel = template(fixed)
        for moving in (searched, searched.flip(-1)):
            best = torch.maximum(best, correlations(kernel, moving).flatten(1).amax(1))
    return best


def twin_score(a: torch.Tensor, b: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """[M] the twin score of pairs of gray views ``a``, ``b`` [M, S, S] with feature cosines
    ``features``: the larger of their print match and the mean of print match and feature cosine (a crop
    moves the pixels, not the content). Pairs with close features that do not reach ``TWIN_SCORE``
    unzoomed are also matched at every zoom (a crop)."""
    prints_a, prints_b = prints_of(a), prints_of(b)
    pixels = print_match(prints_a, prints_b)
    score = torch.maximum(pixels, (pixels + features) / 2)
    crop = (features >= ZOOM_FEATURES) & (score < TWIN_SCORE)
    if crop.any():
        zoomed = print_match(prints_a[crop], prints_b[crop], (a[crop], b[crop]))
        pixels[crop] = torch.maximum(pixels[crop], zoomed)
        score = torch.maximum(pixels, (pixels + features) / 2)
    return score


Pixels = Callable[[str], torch.Tensor]  # split -> gray_views of every image, in the split's order


class Twins:
    """Near twins among splits ({name: unit features}, in the order train, val, test). Candidates: each
    image's ``NEIGHBOURS`` nearest by features, and as many by pixel prints (a copy shrunk and re-encoded
    hard can fall to the 50th neighbour by features: on steel textures, ImageNet features see the JPEG
    artefacts). A candidate pair's twin score is the larger of its print match and the mean of print
    match and feature cosine (a crop moves the pixels, not the content); twins score >= ``TWIN_SCORE``.

    Measured (benchmarks/audit.py, copies resized to 60 % at JPEG quality 45, cropped to 90 % off centre,
    mirrored, recoloured, re-encoded): the copies scored 0.905-1.00 on imagenette and 0.92-1.00 on
    neu-steel; distinct photos at most 0.64 on imagenette, but 0.89 on neu-steel, whose textures repeat.
    """

    def __init__(self, splits: dict[str, torch.Tensor], prints: Pixels) -> None:
        self.splits = splits
        self.gray = {name: prints(name) for name in splits}
        self.prints = {name: prints_of(gray) for name, gray in self.gray.items()}
        self.vectors = {name: print_vectors(p) for name, p in self.prints.items()}

    def candidates(self, name: str, other: str) -> list[tuple[int, int, float]]:
        """(row in ``name``, row in ``other``, feature cosine) of every candidate pair, each once."""
        same = name == other
        _, by_features = nearest(self.splits[name], self.splits[other], NEIGHBOURS, same=same)
        plain, _ = self.vectors[name]
        other_plain, other_mirrored = self.vectors[other]
        _, by_pixels = nearest(plain, other_plain, NEIGHBOURS, same=same)
        _, by_mirror = nearest(plain, other_mirrored, NEIGHBOURS, same=same)
        found: dict[tuple[int, int], float] = {}
        for idx in (by_features, by_pixels, by_mirror):
            for row, cols in enumerate(idx.tolist()):
                for col in cols:
                    key = (max(row, col), min(row, col)) if same else (row, col)
                    if not same or key[0] != key[1]:
                        found[key] = 0.0
        keys = list(found)
        a = torch.tensor([k[0] for k in keys], dtype=torch.long)
        b = torch.tensor([k[1] for k in keys], dtype=torch.long)
        cos = (self.splits[name][a] * self.splits[other][b]).sum(1) if keys else torch.zeros(0)
        return [(k[0], k[1], float(c)) for k, c in zip(keys, cos, strict=True)]

    def pairs_between(self, name: str, other: str) -> list[Pair]:
        """Twins of ``name``'s images in ``other`` (``name`` itself: within the split, each pair once)."""
        found = self.candidates(name, other)
        pairs = []
        where = f"{name} against {other}" if name != other else f"within {name}"
        desc = f"near twins {where}: {len(found):,} candidate pairs"
        progress = Progress(desc, len(found), "pair", announce=False)
        for start in range(0, len(found), 2048):
            chunk = found[start : start + 2048]
            progress.update(len(chunk))
            a = torch.tensor([c[0] for c in chunk], dtype=torch.long)
            b = torch.tensor([c[1] for c in chunk], dtype=torch.long)
            features = torch.tensor([c[2] for c in chunk])
            score = twin_score(self.gray[name][a], self.gray[other][b], features)
            for (i, j, feature), twin in zip(chunk, score.tolist(), strict=True):
                if twin >= TWIN_SCORE:
                    pairs.append(Pair(name, i, other, j, twin, feature))
        progress.close()
        return pairs

    def all_pairs(self) -> list[Pair]:
        """Across splits (each against every earlier one) and within each: leaks first, then by score."""
        names = list(self.splits)
        pairs = [
            p
            for i, name in enumerate(names)
            for other in names[: i + 1]
            for p in self.pairs_between(name, other)
        ]
        return sorted(pairs, key=lambda p: (not p.leak, -p.similarity))


@dataclass(frozen=True)
class LabelIssues:
    """Confident learning's verdict per image: flagged, the label it suggests (multi-label: the 0/1 row
    after the fix) and a score (higher: likelier an error)."""

    flagged: torch.Tensor  # [N] bool
    suggested: torch.Tensor  # [N] class, or [N, K] 0/1
    score: torch.Tensor  # [N]


def confident_issues(probs: torch.Tensor, labels: torch.Tensor) -> LabelIssues:
    """Confident learning, Northcutt et al. 2021. The confident joint (sec. 3.1): per class j a threshold
    t_j, the mean probability of j over the images labelled j; an image counts as confidently of class j
    when p_j >= t_j (the likeliest of the classes where that holds). Calibrated to the class counts (eq.
    2), its off-diagonal row sums estimate how many images of each given label are wrong; "prune by class"
    (sec. 3.2) flags that many of each label's images, the lowest probability of their label first; the
    images the joint counts off its diagonal are flagged too (a quota can be spent on another image).
    Measured against the off-diagonal entries alone, which miss errors the head is sure of but not above
    the class's (high) threshold: imagenette, 10 % of labels flipped, recall 0.83 -> 0.92 at precision
    0.91 -> 0.85. Score: one minus the probability of the given label (self-confidence, sec. 3.2)."""
    if labels.dim() == 2:
        return _multi_label_issues(probs, labels)
    k = probs.shape[1]
    given = F.one_hot(labels, k).bool()
    counts = given.sum(0)
    thresholds = torch.where(counts > 0, (probs * given).sum(0) / counts.clamp(min=1), torch.inf)
    above = probs >= thresholds
    confident = torch.where(above, probs, -1.0).argmax(1)
    sure = above.any(1)
    joint = torch.zeros((k, k))
    joint.index_put_((labels[sure], confident[sure]), torch.ones(int(sure.sum())), accumulate=True)
    calibrated = joint / joint.sum(1, keepdim=True).clamp(min=1) * counts[:, None]
    wrong_per_label = (calibrated.sum(1) - calibrated.diagonal()).round().long()
    score = 1 - probs.gather(1, labels[:, None])[:, 0]
    flagged = torch.zeros(len(labels), dtype=torch.bool)
    for label in range(k):
        mine = torch.nonzero(labels == label).flatten()
        flagged[mine[score[mine].argsort(descending=True)[: int(wrong_per_label[label])]]] = True
    flagged |= sure & (confident != labels)  # counted off the diagonal: flagged whatever the quota
    others = probs.masked_fill(given, -1.0).argmax(1)
    suggested = torch.where(sure & (confident != labels), confident, others)
    return LabelIssues(flagged, suggested, score)


def _multi_label_issues(probs: torch.Tensor, labels: torch.Tensor) -> LabelIssues:
    """Each class as the binary problem "has label j" (absent, present) under the rule above: a missing
    label is a 0 confidently present, an extra one a 1 confidently absent. Score: the largest, over the
    flagged classes, of one minus the probability of what was given."""
    wrong = torch.zeros_like(labels, dtype=torch.bool)
    for j in range(labels.shape[1]):
        binary = torch.stack([1 - probs[:, j], probs[:, j]], 1)
        wrong[:, j] = confident_issues(binary, labels[:, j].long()).flagged
    doubt = torch.where(labels.bool(), 1 - probs, probs)
    score = torch.where(wrong, doubt, torch.zeros_like(doubt)).amax(1)
    suggested = torch.where(wrong, 1 - labels, labels).long()
    return LabelIssues(wrong.any(1), suggested, score)


def outlier_scores(queries: torch.Tensor, base: torch.Tensor, same: bool) -> torch.Tensor:
    """One minus the mean cosine similarity to the ``OUTLIER_NEIGHBOURS`` nearest unit rows of ``base``."""
    sims, _ = nearest(queries, base, OUTLIER_NEIGHBOURS, same=same)
    return 1 - sims.mean(1) if sims.numel() else torch.zeros(len(queries))


def outlier_cut(train_scores: torch.Tensor) -> float:
    """The kNN distance above which an image is an outlier: median + OUTLIER_Z robust standard deviations
    (1.4826 x the median absolute deviation) of the train images' own distances."""
    median = train_scores.median()
    mad = (train_scores - median).abs().median() * 1.4826
    return float(median + OUTLIER_Z * mad.clamp(min=1e-6))
