"""The loss landscape around a pseudo-trigger and its curvature (the natural-backdoor filter of AMDet).

The grid spans +-``span`` times the norm of v along two unit directions (the negative gradient and a random
direction orthogonal to it), so the window means the same for every model width. At every interior grid
point a finite-difference 2x2 Hessian is formed; the share of its positive eigenvalues measures how
bowl-like the ground is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from amdet_audit.scan.config import ScanConfig
from amdet_audit.scan.terms import FAMILIES, Encoders, compute_terms, family_loss


@dataclass
class Landscape:
    """Loss on a G x G grid, the grid's coordinates (in units of |v|) and the Hessian eigenvalues."""

    coords: list[float]
    loss: list[list[float]]
    eigenvalues: list[float]
    positive_share: float


def directions(enc: Encoders, v: torch.Tensor, family: str, index, ids, config: ScanConfig, gen) -> torch.Tensor:
    """[2, k, D] unit directions: normalised negative gradient, and a random one orthogonal to it."""
    probe = v.detach().clone().unsqueeze(0).requires_grad_(True)  # [1, k, D]
    fam = torch.tensor([FAMILIES.index(family)], device=probe.device)
    family_loss(compute_terms(enc, probe, index, ids), fam, config).sum().backward()
    d1 = -probe.grad[0]
    d1 = d1 / d1.norm().clamp_min(1e-12)
    d2 = torch.randn(d1.shape, generator=gen).to(d1.device)  # drawn on the host: the same on any device
    d2 = d2 - (d2 * d1).sum() * d1
    return torch.stack([d1, d2 / d2.norm().clamp_min(1e-12)])


@torch.no_grad()
def landscape(enc: Encoders, v: torch.Tensor, family: str, index: torch.Tensor, ids: torch.Tensor,
              config: ScanConfig, chunk: int = 32) -> Landscape:
    """Evaluate the family's loss around v [k, D] on prompts ``index`` (ids cut to W + k)."""
    gen = torch.Generator().manual_seed(config.seed + 2)
    v = v.to(enc.suspect.device)  # candidates are kept on the host
    with torch.enable_grad():
        dirs = directions(enc, v, family, index, ids, config, gen)  # [2, k, D]
    G, scale = config.landscape_points, float(v.norm())
    coords = torch.linspace(-config.landscape_span, config.landscape_span, G)
    a, b = (c.to(v.device) for c in torch.meshgrid(coords, coords, indexing="ij"))  # [G, G] each
    offsets = (a.reshape(-1, 1, 1, 1) * dirs[0] + b.reshape(-1, 1, 1, 1) * dirs[1]).squeeze(1)  # [G*G, k, D]
    points = v.unsqueeze(0) + scale * offsets  # [G*G, k, D]
    fam = torch.tensor([FAMILIES.index(family)], device=v.device)
    values = torch.cat([
        family_loss(compute_terms(enc, points[i : i + chunk].to(enc.suspect.dtype), index, ids),
                    fam.expand(len(points[i : i + chunk])), config)
        for i in range(0, len(points), chunk)
    ]).float().view(G, G)  # [G, G]
    eig = hessian_eigenvalues(values, h=float(coords[1] - coords[0]))
    return Landscape(coords=coords.tolist(), loss=values.tolist(), eigenvalues=eig.tolist(),
                     positive_share=float((eig > 0).float().mean()))


def hessian_eigenvalues(f: torch.Tensor, h: float) -> torch.Tensor:
    """[G, G] grid values -> eigenvalues of the finite-difference Hessian at every interior point, flattened."""
    fxx = (f[2:, 1:-1] - 2 * f[1:-1, 1:-1] + f[:-2, 1:-1]) / h**2  # [G-2, G-2]
    fyy = (f[1:-1, 2:] - 2 * f[1:-1, 1:-1] + f[1:-1, :-2]) / h**2
    fxy = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / (4 * h**2)
    hess = torch.stack([torch.stack([fxx, fxy], -1), torch.stack([fxy, fyy], -1)], -2)  # [G-2, G-2, 2, 2]
    return torch.linalg.eigvalsh(hess).reshape(-1)
