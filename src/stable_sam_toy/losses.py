"""Toy-only losses: how well per-cell image features tell a scene's segments apart (the toy base's instance loss
and the headroom study's separation probe)."""

import torch
import torch.nn.functional as F


def _cell_segments(features: torch.Tensor, labels: torch.Tensor, min_share: float):
    """Per-cell unit features `(B, N, D)`, one-hot segment assignment `(B, N, K)` (zero rows for cells no segment
    owns), the validity `(B, N)` and the segments' sums of unit features `(B, K, D)` (zero where absent)."""
    g = features.shape[-1]
    if features.ndim != 4 or labels.ndim != 3 or labels.shape[-1] % g or labels.shape[-2] % features.shape[-2]:
        raise ValueError(
            f"`features` must be (B, D, g, g) and `labels` (B, H, W) with H and W multiples of g, got "
            f"{tuple(features.shape)} and {tuple(labels.shape)}."
        )
    num_ids = int(labels.max()) + 1
    one_hot = F.one_hot(labels.long(), num_ids).permute(0, 3, 1, 2).float()  # B x K x H x W
    share, owner = F.adaptive_avg_pool2d(one_hot, features.shape[-2:]).flatten(2).max(1)  # B x N each
    valid = (share >= min_share).float()
    cells = F.normalize(features.flatten(2).transpose(1, 2).float(), dim=-1)  # B x N x D
    assign = F.one_hot(owner, num_ids).float() * valid[..., None]  # B x N x K
    return cells, assign, valid, assign.transpose(1, 2) @ cells


def instance_loss(features: torch.Tensor, labels: torch.Tensor, min_share: float = 0.5) -> torch.Tensor:
    """Pull-push loss that makes per-cell image features tell a scene's segments (objects and background) apart.

    Each feature cell belongs to the segment that covers at least `min_share` of its pixels (cells without one, such
    as most cells of a thin wire, are left out). Cells are pulled to their segment's mean direction (1 - cosine) and
    the mean directions of a scene's segments are pushed apart (squared positive cosine), so 0 means every segment
    has its own direction, orthogonal to the others.

    Args:
        features (`torch.Tensor` of shape `(B, D, g, g)`): per-cell features (any scale; they are L2-normalised).
        labels (`torch.Tensor` of shape `(B, H, W)`): label maps, 0 background and 1..n objects; H, W multiples of g.
        min_share (`float`): share of a cell's pixels its segment must cover.

    Returns:
        `torch.Tensor`: the scalar loss, pull + push, each a mean over its cells or segment pairs.
    """
    cells, assign, valid, sums = _cell_segments(features, labels, min_share)
    centres = F.normalize(sums, dim=-1)  # B x K x D: unit mean directions
    pull = ((1 - (cells * (assign @ centres)).sum(-1)) * valid).sum() / valid.sum().clamp(min=1)
    present = assign.sum(1) > 0  # B x K
    pairs = (
        present[:, :, None]
        & present[:, None, :]
        & ~torch.eye(present.shape[1], dtype=torch.bool, device=present.device)
    )
    similarity = centres @ centres.transpose(1, 2)  # B x K x K
    push = (F.relu(similarity) ** 2 * pairs).sum() / pairs.sum().clamp(min=1)
    return pull + push


def segment_separation(features: torch.Tensor, labels: torch.Tensor, min_share: float = 0.5) -> float:
    """Share (0-1) of owned feature cells whose nearest segment mean (cosine, same scene, the cell itself excluded
    from its own segment's mean) is their own segment's; arguments as `instance_loss`. Cells of one-cell segments,
    which have no mean without them, are left out."""
    cells, assign, valid, sums = _cell_segments(features, labels, min_share)
    dots = cells @ sums.transpose(1, 2)  # B x N x K
    norms_squared = (sums * sums).sum(-1)[:, None].expand_as(dots)  # B x N x K
    # The own segment's sum without the cell: dot - 1 and |sum - cell|^2 = |sum|^2 - 2 dot + 1 (unit cells)
    own = assign.bool()
    dots = torch.where(own, dots - 1, dots)
    norms_squared = torch.where(own, norms_squared - 2 * (dots + 1) + 1, norms_squared)
    counts = assign.sum(1)[:, None].expand_as(dots) - assign  # cells in each segment's mean for this cell
    similarity = (dots / norms_squared.clamp(min=1e-12).sqrt()).masked_fill(counts == 0, -2.0)
    counted = valid.bool() & ((counts * assign).sum(-1) > 0)
    correct = similarity.argmax(-1) == assign.argmax(-1)
    return (correct & counted).sum().item() / max(int(counted.sum()), 1)


__all__ = ["instance_loss", "segment_separation"]
