"""Near twins among images: copies of one photo (resized, re-encoded, cropped, mirrored, recoloured) told
apart from distinct photos of the same kind. Candidates by cosine similarity of L2-normalised pooled
features (exact search, one matrix product per block of rows: 13k x 13k images is well under a second on
2 cores, no index needed) and by band-passed pixel prints, confirmed by template matching of the prints:
features alone do not separate a copy shrunk and re-encoded hard from a distinct photo of the same kind.
Used by ``kiln audit`` (every pair) and ``kiln train`` (its one line about val images with a twin in
train)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kiln.console import Progress
from kiln.metrics.audit import nearest

TWIN_SCORE = 0.87  # twin score (``Twins``) at or above which two images are near twins
EXACT_SIMILARITY = 0.9995  # identical pixels at the model's input (up to float noise)
NEIGHBOURS = 5  # candidates per image, by features and by pixel prints each
MIN_TWIN_SIDE = 24  # px: smaller images are not searched for twins (too few pixels to tell copies apart)
GRAY_SIDE = 96  # px of the grayscale copy of each image kept for matching (uint8: 9 kB an image)
PRINT_SIDE = 48  # px of the band-passed print compared
SHIFT = 3  # px of the print searched in each direction (a crop off centre)
ZOOMS = (1.03, 1.06, 1.09, 1.12, 1.15, 1.18, 1.21)  # scales searched besides 1 (a crop to 95-83 %)
CLOSE_FEATURES = 0.8  # feature cosine from which a neighbour pair is matched by its prints
CLOSE_PRINTS = 0.6  # or print-vector correlation (the copies seen: 0.99-1.0 unless cropped)
CANDIDATE_FEATURES = 0.7  # feature cosine from which kiln train's leak check looks at a val image's pixels
ZOOM_FEATURES = 0.85  # feature cosine from which a pair's prints are also matched at every zoom


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
    return scored(prints_of(a), prints_of(b), a, b, features)


def scored(
    prints_a: torch.Tensor, prints_b: torch.Tensor, a: torch.Tensor, b: torch.Tensor, features: torch.Tensor
) -> torch.Tensor:
    """``twin_score`` of gray views whose unzoomed prints (``prints_of``) are already made."""
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
        """(row in ``name``, row in ``other``, feature cosine) of every candidate pair worth matching, each
        once: close by features (a crop) or by print vectors (a copy resized or re-encoded). On imagenette
        that leaves 62 of 4,423 val-train neighbour pairs and every copy; on steel textures, 40 %."""
        same = name == other
        _, by_features = nearest(self.splits[name], self.splits[other], NEIGHBOURS, same=same)
        plain, _ = self.vectors[name]
        other_plain, other_mirrored = self.vectors[other]
        _, by_pixels = nearest(plain, other_plain, NEIGHBOURS, same=same)
        _, by_mirror = nearest(plain, other_mirrored, NEIGHBOURS, same=same)
        found: dict[tuple[int, int], None] = {}  # each pair once, in the order first found
        for idx in (by_features, by_pixels, by_mirror):
            for row, cols in enumerate(idx.tolist()):
                for col in cols:
                    key = (max(row, col), min(row, col)) if same else (row, col)
                    if not same or key[0] != key[1]:
                        found[key] = None
        keys = list(found)
        if not keys:
            return []
        a = torch.tensor([k[0] for k in keys], dtype=torch.long)
        b = torch.tensor([k[1] for k in keys], dtype=torch.long)
        cos = (self.splits[name][a] * self.splits[other][b]).sum(1)
        pixels = torch.maximum((plain[a] * other_plain[b]).sum(1), (plain[a] * other_mirrored[b]).sum(1))
        worth = (cos >= CLOSE_FEATURES) | (pixels >= CLOSE_PRINTS)
        return [(k[0], k[1], float(c)) for k, c, w in zip(keys, cos, worth, strict=True) if w]

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
            gray_a, gray_b = self.gray[name][a], self.gray[other][b]
            score = scored(self.prints[name][a], self.prints[other][b], gray_a, gray_b, features)
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
