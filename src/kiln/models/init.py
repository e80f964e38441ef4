"""Data-dependent initialisation: first-layer filters from the principal components of image patches.

Whitened patch components are what a first conv layer learns to be anyway (colour blobs, then edges of
rising frequency); starting there saves the first part of training. airbench94 builds its frozen
whitening layer this way; ``pca_init`` applies the same idea to the first conv of any model
(``model.pca_init: true``), whose filters then go on training as usual.
"""

from __future__ import annotations

import torch
from torch import nn

from kiln.errors import ConfigError

# ~250,000 patches pin the covariance of a few dozen dimensions down well and keep the unfolded patch
# matrix small (75 dims x 250k x 4 bytes = 75 MB for 5x5 RGB patches).
MAX_PATCHES = 250_000


def patch_pca(images: torch.Tensor, kernel: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, shape [D]) and eigenvectors as filters ([D, C, kh, kw]) of the
    uncentred covariance of every ``kernel``-sized patch of ``images`` (N, C, H, W; already normalised)."""
    c, (h, w) = images.shape[1], kernel
    patches = images.float().unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w)
    eigval, eigvec = torch.linalg.eigh(patches.T @ patches / len(patches), UPLO="U")
    return eigval.flip(0), eigvec.T.reshape(c * h * w, c, h, w).flip(0)


def images_for_pca(kernel: tuple[int, int], size: tuple[int, int]) -> int:
    """How many images give about MAX_PATCHES patches of ``kernel`` at ``size`` (at least one)."""
    per_image = max(1, (size[0] - kernel[0] + 1) * (size[1] - kernel[1] + 1))
    return max(1, MAX_PATCHES // per_image)


def first_conv(model: nn.Module) -> nn.Conv2d:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ConfigError(
            f"model.pca_init: {type(model).__name__} has no Conv2d layer to initialise; "
            "set model.pca_init=false"
        )
    return conv


@torch.no_grad()
def pca_init(conv: nn.Conv2d, images: torch.Tensor, eps: float = 1e-2) -> None:
    """Set ``conv``'s filters to the top principal components of its input patches, each scaled to give
    unit-variance outputs (``eps`` damps the smallest components: 1e-2 measured best for LeNet on CIFAR-10,
    1e-3 amplified pixel noise and cost ~1.5 points of accuracy after one epoch). Biases start at zero."""
    if conv.groups != 1 or conv.dilation != (1, 1):
        raise ConfigError(
            "model.pca_init: the first Conv2d is grouped or dilated, which patch PCA cannot "
            "initialise; set model.pca_init=false"
        )
    eigval, eigvec = patch_pca(images, conv.kernel_size)  # type: ignore[arg-type]
    k = min(conv.out_channels, len(eigval))
    weight = torch.zeros_like(conv.weight)
    weight[:k] = (eigvec[:k] / torch.sqrt(eigval[:k].clamp_min(0) + eps).view(-1, 1, 1, 1)).to(weight)
    conv.weight.copy_(weight)  # more filters than patch dimensions: the extra ones start at zero
    if conv.bias is not None:
        conv.bias.zero_()
