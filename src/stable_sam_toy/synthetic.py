"""Synthetic segmentation scenes for the offline toy demo: cluttered, textured objects where a poor prompt is ambiguous.

A scene is an RGB image with several objects painted in order on a textured background, and one instance mask per
object holding its visible part after occlusion. Masks are disjoint: a scene is fully described by a label map
(`0` background, `k` the k-th kept object). Objects whose visible part is tiny, or a small fraction of the object,
are dropped as instances; their visible pixels stay in the image as clutter and are labelled background.

What makes a sloppy box or a single click ambiguous while a ground-truth box is not:

- objects placed touching or overlapping an earlier object (occlusion), often in a similar colour;
- nested objects: an object inside the hole of a ring or frame, or lying on top of a larger object (the larger
  object's visible mask then has a hole where the smaller one lies);
- two-tone objects: one instance made of two differently coloured and textured parts (part or whole for one click);
- thin structures (wires, branches) and objects with holes. Every structure is at least 4 pixels wide at 128x128
  (two cells of SAM's 4x-upsampled low-res mask on a 16x16 embedding): thinner ones are below what the mask decoder
  can draw, so every prompt fails on them and they measure nothing about the prompt;
- textured backgrounds in the same palette as the objects, illumination gradients and pixel noise.

Two domains share this recipe and nothing else: `"train"` (blobs, polygons, rings, frames, wires, branches; hues from
red to cyan; smooth blotches, stripes and gradients) and `"shifted"` (stars, crosses, crescents, holed stars, arcs,
spirals; hues from blue to pink; checkers, dots, concentric rings and speckle), so a model trained on `"train"` can be
evaluated on shapes, colours and textures it never saw.

Every scene draws from its own `np.random.Generator` seeded by `(seed, domain, index)`: scene `i` is the same however
many scenes are generated and in whichever order.

On-disk layout written by `write_scene_tree` (the HQSeg-44K convention of one object per image/mask pair):
`root/<dataset_name>/<image_dir>/scene00012_obj2.jpg` and `root/<dataset_name>/<mask_dir>/scene00012_obj2.png`
(single-channel 0/255), the image being written once per kept object of the scene; `image_dir == mask_dir` puts
both files in one folder as in HQ-SAM's `cascade_psp` datasets.
"""

import math
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np


DOMAINS = ("train", "shifted")
_DOMAIN_IDS = {"train": 0, "shifted": 1}
_REFERENCE_SIZE = 128

# Shape families and their weights per domain; "filled" shapes can be nested inside others and can be two-tone
_SHAPES = {
    "train": {"blob": 0.26, "polygon": 0.26, "ring": 0.14, "frame": 0.10, "wire": 0.12, "branch": 0.12},
    "shifted": {"star": 0.24, "cross": 0.20, "crescent": 0.20, "holed_star": 0.12, "arc": 0.12, "spiral": 0.12},
}
_FILLED = {"train": ("blob", "polygon"), "shifted": ("star", "cross", "crescent")}
_CONTAINERS = ("ring", "frame", "holed_star")
_THIN = ("wire", "branch", "spiral", "arc")
_TEXTURES = {"train": ("flat", "stripes", "gradient", "blotch"), "shifted": ("checker", "dots", "rings", "speckle")}
_HUES = {"train": (0.0, 0.5), "shifted": (0.55, 0.95)}
# Smallest L1 distance in RGB (intensities in [0, 1]) between an object's colour and the mean background colour
_MIN_BACKGROUND_CONTRAST = 0.4


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scene generator; lengths are in pixels of a 128x128 image and scale with `size`.

    Args:
        min_objects (`int`, *optional*, defaults to 4): fewest objects painted per scene (before dropping).
        max_objects (`int`, *optional*, defaults to 8): most objects painted per scene.
        min_radius (`float`, *optional*, defaults to 0.12): smallest object radius, as a fraction of the image side.
        max_radius (`float`, *optional*, defaults to 0.24): largest object radius, as a fraction of the image side.
        p_nest (`float`, *optional*, defaults to 0.6): probability that the next object goes into a free hole of
            an earlier ring, frame or holed star.
        p_on_top (`float`, *optional*, defaults to 0.15): probability that an object lies on top of (inside the
            outline of) an earlier filled object.
        p_touch (`float`, *optional*, defaults to 0.6): probability that an object touches or overlaps an earlier
            one; the rest are placed uniformly.
        p_similar_colour (`float`, *optional*, defaults to 0.5): probability that an object's colour is a small
            perturbation of an earlier object's colour.
        p_two_tone (`float`, *optional*, defaults to 0.25): probability that a filled object is made of two parts
            of different colour and texture.
        p_outline (`float`, *optional*, defaults to 0.5): probability that an object has a darker one-pixel rim.
        min_visible_area (`float`, *optional*, defaults to 0.003): smallest visible area of a kept object, as a
            fraction of the image area (49 pixels at 128x128).
        min_visible_fraction (`float`, *optional*, defaults to 0.2): smallest visible fraction of an object's own
            area for it to be kept.
        max_noise_std (`float`, *optional*, defaults to 0.03): largest standard deviation of the pixel noise
            (intensities in [0, 1]).
        salient_min_radius (`float`, *optional*, defaults to 0.0): with `salient_max_radius`, the radius range of a
            salient object (fractions of the image side). 0 and 0 (the default) give SA-1B-like scenes: every
            object is labelled, hence a target. Above 0 give HQSeg-like scenes: the first object is a large one
            near the centre, the others are clutter that may touch, nest in or lie on it, and only the salient
            object is labelled (the rest is background), as in HQSeg-44K and the HQ benchmarks, whose images
            each annotate one foreground object. `min_objects` and `max_objects` count the salient object too.
        salient_max_radius (`float`, *optional*, defaults to 0.0): see `salient_min_radius`.
    """

    min_objects: int = 4
    max_objects: int = 8
    min_radius: float = 0.12
    max_radius: float = 0.24
    p_nest: float = 0.6
    p_on_top: float = 0.15
    p_touch: float = 0.6
    p_similar_colour: float = 0.5
    p_two_tone: float = 0.25
    p_outline: float = 0.5
    min_visible_area: float = 0.003
    min_visible_fraction: float = 0.2
    max_noise_std: float = 0.03
    salient_min_radius: float = 0.0
    salient_max_radius: float = 0.0

    def __post_init__(self):
        if not 1 <= self.min_objects <= self.max_objects <= 255:
            raise ValueError(
                f"`min_objects` and `max_objects` must satisfy 1 <= min_objects <= max_objects <= 255, got "
                f"{self.min_objects} and {self.max_objects}."
            )
        if not 0 < self.min_radius <= self.max_radius <= 0.5:
            raise ValueError(
                f"`min_radius` and `max_radius` must satisfy 0 < min_radius <= max_radius <= 0.5, got "
                f"{self.min_radius} and {self.max_radius}."
            )
        for name in ("p_nest", "p_on_top", "p_touch", "p_similar_colour", "p_two_tone", "p_outline"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"`{name}` must be a probability in [0, 1], got {value}.")
        if not 0 <= self.min_visible_area < 1 or not 0 <= self.min_visible_fraction <= 1:
            raise ValueError(
                "`min_visible_area` must lie in [0, 1) and `min_visible_fraction` in [0, 1], got "
                f"{self.min_visible_area} and {self.min_visible_fraction}."
            )
        if self.max_noise_std < 0:
            raise ValueError(f"`max_noise_std` must be >= 0, got {self.max_noise_std}.")
        if not (self.salient_min_radius == self.salient_max_radius == 0) and not (
            0 < self.salient_min_radius <= self.salient_max_radius <= 0.5
        ):
            raise ValueError(
                "`salient_min_radius` and `salient_max_radius` must both be 0 (no salient object) or satisfy "
                f"0 < salient_min_radius <= salient_max_radius <= 0.5, got {self.salient_min_radius} and "
                f"{self.salient_max_radius}."
            )

    @property
    def salient(self) -> bool:
        """Whether scenes have one salient, labelled object among unlabelled clutter (HQSeg-like)."""
        return self.salient_max_radius > 0

    @classmethod
    def from_strings(cls, settings) -> "SceneConfig":
        """A config from `name=value` strings (a command line's), the other knobs at their defaults.

        Example: `SceneConfig.from_strings(["p_similar_colour=0", "max_objects=5"])`.
        """
        types = {f.name: f.type for f in fields(cls)}
        values = {}
        for setting in settings:
            name, sep, value = str(setting).partition("=")
            name = name.strip()
            if not sep or name not in types:
                raise ValueError(
                    f"`scene_config` entries must be `name=value` with a name among {sorted(types)}, got {setting!r}."
                )
            try:
                values[name] = int(value) if types[name] in (int, "int") else float(value)
            except ValueError:
                raise ValueError(f"`scene_config` entry {setting!r}: {value!r} is not a number.") from None
        return cls(**values)


@dataclass
class _Placed:
    cx: float
    cy: float
    extent: float
    filled: bool
    hole: tuple[float, float, float] | None


# ---------------------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------------------


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def _check_domain(domain) -> str:
    if domain not in _DOMAIN_IDS:
        raise ValueError(f"`domain` must be one of {DOMAINS}, got {domain!r}.")
    return domain


def _check_config(config) -> SceneConfig:
    if config is None:
        return SceneConfig()
    if not isinstance(config, SceneConfig):
        raise TypeError(f"`config` must be a SceneConfig or None, got {type(config).__name__}.")
    return config


def scene_rng(index: int, domain: str = "train", seed: int = 0) -> np.random.Generator:
    """The random generator of one scene, independent of every other scene's.

    Args:
        index (`int`): scene index (>= 0).
        domain (`str`, *optional*, defaults to `"train"`): `"train"` or `"shifted"`.
        seed (`int`, *optional*, defaults to 0): dataset seed (>= 0).

    Returns:
        `np.random.Generator` seeded by `(seed, domain, index)`.
    """
    index = _check_int(index, "index", 0)
    seed = _check_int(seed, "seed", 0)
    return np.random.default_rng(np.random.SeedSequence([seed, _DOMAIN_IDS[_check_domain(domain)], index]))


# ---------------------------------------------------------------------------------------------------------------
# Colours and textures
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    y.setflags(write=False)
    x.setflags(write=False)
    return y, x


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = (hsv[..., i] for i in range(3))
    h6 = (h % 1.0) * 6.0
    c = v * s
    x = c * (1 - np.abs(h6 % 2 - 1))
    m = v - c
    sector = np.floor(h6).astype(np.int64) % 6
    zeros = np.zeros_like(c)
    table = np.stack(
        [
            np.stack([c, x, zeros], -1),
            np.stack([x, c, zeros], -1),
            np.stack([zeros, c, x], -1),
            np.stack([zeros, x, c], -1),
            np.stack([x, zeros, c], -1),
            np.stack([c, zeros, x], -1),
        ],
        0,
    )
    rgb = np.take_along_axis(table, sector[None, ..., None].repeat(3, -1), 0)[0]
    return (rgb + m[..., None]).astype(np.float32)


def _random_hsv(rng: np.random.Generator, domain: str) -> np.ndarray:
    low, high = _HUES[domain]
    return np.array([rng.uniform(low, high), rng.uniform(0.25, 0.95), rng.uniform(0.3, 0.95)], dtype=np.float32)


def _similar_hsv(rng: np.random.Generator, hsv: np.ndarray) -> np.ndarray:
    # Close in hue and saturation, a visible but small step in value
    step = rng.uniform(0.06, 0.18) * rng.choice([-1.0, 1.0])
    value = hsv[2] + step if 0.3 <= hsv[2] + step <= 0.95 else hsv[2] - step
    return np.array(
        [hsv[0] + rng.uniform(-0.03, 0.03), np.clip(hsv[1] + rng.uniform(-0.1, 0.1), 0.15, 1.0), value],
        dtype=np.float32,
    )


def _smooth_noise(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Value noise: random lattice in cell units, smoothstep-interpolated; u, v >= 0
    lattice = rng.random((int(v.max()) + 2, int(u.max()) + 2), dtype=np.float32)
    i0, j0 = np.floor(v).astype(np.int64), np.floor(u).astype(np.int64)
    fy, fx = v - i0, u - j0
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    top = lattice[i0, j0] * (1 - fx) + lattice[i0, j0 + 1] * fx
    bottom = lattice[i0 + 1, j0] * (1 - fx) + lattice[i0 + 1, j0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _texture(
    kind: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, c1: np.ndarray, c2: np.ndarray, scale: float
) -> np.ndarray:
    """Colours `(N, 3)` of a texture blending `c1` into `c2` at pixel coordinates `x`, `y` of shape `(N,)`."""
    angle = rng.uniform(0, 2 * math.pi)
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    strength = rng.uniform(0.5, 1.0)
    if kind == "flat":
        t = np.zeros_like(x)
    elif kind == "stripes":
        period = rng.uniform(5, 14) * scale
        t = 0.5 + 0.5 * np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi))
    elif kind == "gradient":
        t = (u - u.min()) / max(float(np.ptp(u)), 1e-6)
    elif kind == "blotch":
        cell = rng.uniform(8, 24) * scale
        t = _smooth_noise(rng, x / cell, y / cell)
    elif kind == "checker":
        cell = rng.uniform(4, 10) * scale
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    elif kind == "dots":
        period = rng.uniform(6, 12) * scale
        du, dv = u % period - period / 2, v % period - period / 2
        t = (np.hypot(du, dv) < period * rng.uniform(0.25, 0.4)).astype(np.float32)
    elif kind == "rings":
        period = rng.uniform(5, 12) * scale
        cx, cy = rng.uniform(x.min(), x.max() + 1), rng.uniform(y.min(), y.max() + 1)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * np.hypot(x - cx, y - cy) / period)
    elif kind == "speckle":
        t = (rng.random(x.shape, dtype=np.float32) < rng.uniform(0.15, 0.4)).astype(np.float32)
    else:
        raise ValueError(f"unknown texture {kind!r}")
    colours = c1 + (c2 - c1) * (strength * t)[:, None]
    grain = rng.uniform(0.0, 0.04)
    return colours + grain * rng.standard_normal((x.shape[0], 1), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Shapes: each returns a bool mask of the full image, and the hole `(cx, cy, radius)` of a container
# ---------------------------------------------------------------------------------------------------------------


def _local_frame(rng, x, y, cx, cy, anisotropic: bool = True):
    angle = rng.uniform(0, 2 * math.pi)
    stretch = math.sqrt(rng.uniform(0.6, 1.0)) if anisotropic else 1.0
    dx, dy = x - cx, y - cy
    u = (dx * math.cos(angle) + dy * math.sin(angle)) * stretch
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / stretch
    return u, v, stretch


def _blob_radius(rng, theta: np.ndarray, radius: float) -> tuple[np.ndarray, float]:
    amplitudes = rng.uniform(0, 0.13, size=3)
    phases = rng.uniform(0, 2 * math.pi, size=3)
    wobble = sum(a * np.cos(k * theta + p) for k, a, p in zip((2, 3, 4), amplitudes, phases))
    return radius * (1 + wobble), radius * (1 - float(amplitudes.sum()))


def _shape_blob(rng, x, y, cx, cy, radius, scale):
    u, v, _ = _local_frame(rng, x, y, cx, cy)
    boundary, _ = _blob_radius(rng, np.arctan2(v, u), radius)
    return np.hypot(u, v) <= boundary, None


def _shape_polygon(rng, x, y, cx, cy, radius, scale):
    u, v, _ = _local_frame(rng, x, y, cx, cy)
    sides = int(rng.integers(3, 9))
    normals = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(sides) / sides + rng.uniform(-0.15, 0.15, sides)
    offsets = radius * math.cos(math.pi / sides) * rng.uniform(0.85, 1.1, sides)
    inside = np.ones(x.shape, dtype=bool)
    for normal, offset in zip(normals, offsets):
        inside &= u * math.cos(normal) + v * math.sin(normal) <= offset
    return inside, None


def _shape_ring(rng, x, y, cx, cy, radius, scale):
    u, v, stretch = _local_frame(rng, x, y, cx, cy)
    rho = np.hypot(u, v)
    boundary, inscribed = _blob_radius(rng, np.arctan2(v, u), radius)
    hole_fraction = rng.uniform(0.42, 0.65)
    mask = (rho <= boundary) & (rho > boundary * hole_fraction)
    return mask, (cx, cy, inscribed * hole_fraction * min(stretch, 1 / stretch))


def _shape_frame(rng, x, y, cx, cy, radius, scale):
    u, v, _ = _local_frame(rng, x, y, cx, cy, anisotropic=False)
    half_u, half_v = radius * rng.uniform(0.85, 1.15), radius * rng.uniform(0.65, 1.0)
    thickness = min(rng.uniform(4.5, 8) * scale, 0.6 * min(half_u, half_v))
    outer = (np.abs(u) <= half_u) & (np.abs(v) <= half_v)
    inner = (np.abs(u) <= half_u - thickness) & (np.abs(v) <= half_v - thickness)
    return outer & ~inner, (cx, cy, min(half_u, half_v) - thickness)


def _segments_mask(x, y, starts: np.ndarray, ends: np.ndarray, half_widths: np.ndarray) -> np.ndarray:
    """Pixels within `half_widths` `(S,)` of segments `starts` -> `ends` `(S, 2)`, as a bool mask of `x`'s shape."""
    size_y, size_x = x.shape
    pad = float(half_widths.max()) + 1
    points = np.concatenate([starts, ends])
    x0, x1 = (int(np.clip(v, 0, size_x)) for v in (points[:, 0].min() - pad, points[:, 0].max() + pad + 1))
    y0, y1 = (int(np.clip(v, 0, size_y)) for v in (points[:, 1].min() - pad, points[:, 1].max() + pad + 1))
    mask = np.zeros(x.shape, dtype=bool)
    if x1 <= x0 or y1 <= y0:
        return mask
    px, py = x[y0:y1, x0:x1, None], y[y0:y1, x0:x1, None]  # h x w x 1
    ax, ay = starts[:, 0], starts[:, 1]
    bx, by = ends[:, 0] - ax, ends[:, 1] - ay
    t = np.clip(((px - ax) * bx + (py - ay) * by) / np.maximum(bx * bx + by * by, 1e-6), 0, 1)
    distance = np.hypot(px - ax - t * bx, py - ay - t * by)  # h x w x S
    mask[y0:y1, x0:x1] = (distance <= half_widths).any(-1)
    return mask


def _random_path(rng, start: np.ndarray, heading: float, length: float, segments: int, bend: float) -> np.ndarray:
    turns = np.cumsum(rng.uniform(-bend, bend, segments))
    headings = heading + turns
    steps = (length / segments) * np.stack([np.cos(headings), np.sin(headings)], -1)
    return np.concatenate([start[None], start[None] + np.cumsum(steps, 0)]).astype(np.float32)


def _centre_segments(starts, ends, cx, cy):
    points = np.concatenate([starts, ends])
    offset = np.array([cx, cy], dtype=np.float32) - (points.min(0) + points.max(0)) / 2
    return starts + offset, ends + offset


def _shape_wire(rng, x, y, cx, cy, radius, scale):
    path = _random_path(rng, np.zeros(2), rng.uniform(0, 2 * math.pi), radius * rng.uniform(3.0, 4.5), 12, 0.45)
    starts, ends = _centre_segments(path[:-1], path[1:], cx, cy)
    half_width = rng.uniform(2.0, 3.0) * scale
    return _segments_mask(x, y, starts, ends, np.full(len(starts), half_width, dtype=np.float32)), None


def _shape_branch(rng, x, y, cx, cy, radius, scale):
    heading = rng.uniform(0, 2 * math.pi)
    length = radius * rng.uniform(2.5, 3.5)
    trunk = _random_path(rng, np.zeros(2), heading, length, 4, 0.25)
    trunk_width = rng.uniform(2.2, 3.2) * scale
    starts, ends, widths = [trunk[:-1]], [trunk[1:]], [np.full(4, trunk_width)]
    for _ in range(int(rng.integers(2, 5))):
        segment = int(rng.integers(1, 4))
        origin = trunk[segment] + rng.uniform(0, 1) * (trunk[segment + 1] - trunk[segment])
        side = rng.choice([-1.0, 1.0])
        twig_heading = heading + side * rng.uniform(0.4, 1.0)
        twig = _random_path(rng, origin, twig_heading, length * rng.uniform(0.25, 0.5), 2, 0.2)
        starts.append(twig[:-1])
        ends.append(twig[1:])
        widths.append(np.full(2, max(0.75 * trunk_width, 2.0 * scale)))
    starts, ends = _centre_segments(np.concatenate(starts), np.concatenate(ends), cx, cy)
    return _segments_mask(x, y, starts, ends, np.concatenate(widths).astype(np.float32)), None


def _star_radius(rng, theta, radius):
    spikes = int(rng.integers(5, 9))
    inner = radius * rng.uniform(0.4, 0.6)
    sector = 2 * math.pi / spikes
    phase = ((theta - rng.uniform(0, sector)) % sector) / sector
    return inner + (radius - inner) * np.abs(2 * phase - 1), inner


def _shape_star(rng, x, y, cx, cy, radius, scale):
    u, v, _ = _local_frame(rng, x, y, cx, cy)
    boundary, _ = _star_radius(rng, np.arctan2(v, u), radius)
    return np.hypot(u, v) <= boundary, None


def _shape_holed_star(rng, x, y, cx, cy, radius, scale):
    u, v, _ = _local_frame(rng, x, y, cx, cy, anisotropic=False)
    rho = np.hypot(u, v)
    boundary, inner = _star_radius(rng, np.arctan2(v, u), radius)
    hole = inner * rng.uniform(0.55, 0.8)
    return (rho <= boundary) & (rho > hole), (cx, cy, hole)


def _shape_cross(rng, x, y, cx, cy, radius, scale):
    u, v, _ = _local_frame(rng, x, y, cx, cy, anisotropic=False)
    arm_u, arm_v = radius * rng.uniform(0.8, 1.0), radius * rng.uniform(0.6, 1.0)
    width_u, width_v = radius * rng.uniform(0.2, 0.35), radius * rng.uniform(0.2, 0.35)
    horizontal = (np.abs(u) <= arm_u) & (np.abs(v) <= width_u)
    vertical = (np.abs(v) <= arm_v) & (np.abs(u) <= width_v)
    return horizontal | vertical, None


def _shape_crescent(rng, x, y, cx, cy, radius, scale):
    angle = rng.uniform(0, 2 * math.pi)
    shift = radius * rng.uniform(0.35, 0.6)
    bite = np.hypot(x - cx - shift * math.cos(angle), y - cy - shift * math.sin(angle))
    return (np.hypot(x - cx, y - cy) <= radius) & (bite > radius * rng.uniform(0.75, 0.95)), None


def _shape_arc(rng, x, y, cx, cy, radius, scale):
    thickness = rng.uniform(4.5, 8) * scale
    rho = np.hypot(x - cx, y - cy)
    theta = np.arctan2(y - cy, x - cx)
    span = rng.uniform(0.7, 1.6) * math.pi
    offset = np.abs((theta - rng.uniform(-math.pi, math.pi) + math.pi) % (2 * math.pi) - math.pi)
    return (rho <= radius) & (rho >= radius - thickness) & (offset <= span / 2), None


def _shape_spiral(rng, x, y, cx, cy, radius, scale):
    turns = rng.uniform(1.1, 1.6)
    pitch = radius / (2 * math.pi * turns)
    half_width = rng.uniform(2.0, 2.6) * scale
    direction = rng.choice([-1.0, 1.0])
    rho = np.hypot(x - cx, y - cy)
    theta = (direction * np.arctan2(y - cy, x - cx) + rng.uniform(0, 2 * math.pi)) % (2 * math.pi)
    # Arm number of the nearest winding, then the arm's angle from the centre
    arm = np.clip(np.round((rho / pitch - theta) / (2 * math.pi)), 0, None)
    unwound = theta + 2 * math.pi * arm
    return (np.abs(rho - pitch * unwound) <= half_width) & (unwound <= 2 * math.pi * turns), None


_SHAPE_FUNCTIONS = {
    "blob": _shape_blob,
    "polygon": _shape_polygon,
    "ring": _shape_ring,
    "frame": _shape_frame,
    "wire": _shape_wire,
    "branch": _shape_branch,
    "star": _shape_star,
    "holed_star": _shape_holed_star,
    "cross": _shape_cross,
    "crescent": _shape_crescent,
    "arc": _shape_arc,
    "spiral": _shape_spiral,
}


# ---------------------------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------------------------


def _erode(mask: np.ndarray) -> np.ndarray:
    eroded = mask.copy()
    eroded[1:] &= mask[:-1]
    eroded[:-1] &= mask[1:]
    eroded[:, 1:] &= mask[:, :-1]
    eroded[:, :-1] &= mask[:, 1:]
    return eroded


def _place(rng, placed: list[_Placed], shape_names, weights, config: SceneConfig, domain: str, size: int):
    """Chooses the next object's shape, centre and radius, marking a container's hole used when nesting."""
    radius = size * rng.uniform(config.min_radius, config.max_radius)
    free_holes = [p for p in placed if p.hole is not None]
    on_top_hosts = [p for p in placed if p.filled and p.extent >= 0.1 * size]
    if free_holes and rng.random() < config.p_nest:
        host = free_holes[int(rng.integers(len(free_holes)))]
        hole_x, hole_y, hole_radius = host.hole
        host.hole = None
        jitter = hole_radius * 0.15
        shape = _FILLED[domain][int(rng.integers(len(_FILLED[domain])))]
        centre = (hole_x + rng.uniform(-jitter, jitter), hole_y + rng.uniform(-jitter, jitter))
        return shape, centre, max(hole_radius * rng.uniform(0.5, 0.85), 0.03 * size)
    if on_top_hosts and rng.random() < config.p_on_top:
        host = on_top_hosts[int(rng.integers(len(on_top_hosts)))]
        angle, distance = rng.uniform(0, 2 * math.pi), host.extent * rng.uniform(0, 0.35)
        shape = _FILLED[domain][int(rng.integers(len(_FILLED[domain])))]
        centre = (host.cx + distance * math.cos(angle), host.cy + distance * math.sin(angle))
        return shape, centre, host.extent * rng.uniform(0.3, 0.5)
    shape = shape_names[int(rng.choice(len(shape_names), p=weights))]
    if shape in _CONTAINERS:
        radius = min(radius * 1.3, 0.3 * size)
    if placed and rng.random() < config.p_touch:
        host = placed[int(rng.integers(len(placed)))]
        angle, distance = rng.uniform(0, 2 * math.pi), (host.extent + radius) * rng.uniform(0.6, 1.0)
        centre = (host.cx + distance * math.cos(angle), host.cy + distance * math.sin(angle))
        centre = tuple(float(np.clip(c, 0.1 * size, 0.9 * size)) for c in centre)
    else:
        margin = 0.5 * radius
        centre = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
    return shape, centre, radius


def _place_salient(rng, shape_names, weights, config: SceneConfig, size: int):
    """The salient object: any shape of the domain, large, its centre in the middle 30 % of each axis."""
    shape = shape_names[int(rng.choice(len(shape_names), p=weights))]
    radius = size * rng.uniform(config.salient_min_radius, config.salient_max_radius)
    centre = (size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65))
    return shape, centre, radius


def _render(rng: np.random.Generator, size: int, domain: str, config: SceneConfig) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(size)
    scale = size / _REFERENCE_SIZE
    textures = _TEXTURES[domain]
    shape_names = tuple(_SHAPES[domain])
    weights = np.array(list(_SHAPES[domain].values()))
    weights = weights / weights.sum()

    # Background: a texture between two colours of the domain's palette
    background_hsv = [_random_hsv(rng, domain)]
    background_hsv.append(_similar_hsv(rng, background_hsv[0]) if rng.random() < 0.5 else _random_hsv(rng, domain))
    c1, c2 = _hsv_to_rgb(np.stack(background_hsv))
    background_rgb = (c1 + c2) / 2
    kind = textures[int(rng.integers(len(textures)))]
    image = _texture(kind, rng, x.ravel(), y.ravel(), c1, c2, scale).reshape(size, size, 3)

    # Objects, painted back to front; labels hold the topmost object of each pixel
    labels = np.zeros((size, size), dtype=np.int32)
    placed: list[_Placed] = []
    colour_pool = []
    full_areas = []
    for index in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        if index == 0 and config.salient:
            shape, (cx, cy), radius = _place_salient(rng, shape_names, weights, config, size)
        else:
            shape, (cx, cy), radius = _place(rng, placed, shape_names, weights, config, domain, size)
        mask, hole = _SHAPE_FUNCTIONS[shape](rng, x, y, cx, cy, radius, scale)
        filled = shape in _FILLED[domain]
        if filled or shape in _CONTAINERS:
            extent = radius
        else:
            rows, cols = np.nonzero(mask)
            extent = 0.5 * max(np.ptp(rows), np.ptp(cols)) if rows.size else radius
        placed.append(_Placed(cx, cy, float(extent), filled, hole))
        if not mask.any():
            full_areas.append(0)
            continue

        if colour_pool and rng.random() < config.p_similar_colour:
            hsv = _similar_hsv(rng, colour_pool[int(rng.integers(len(colour_pool)))])
        else:
            hsv = _random_hsv(rng, domain)
        for _ in range(8):
            # Objects may look like each other, not like the background
            if np.abs(_hsv_to_rgb(hsv) - background_rgb).sum() >= _MIN_BACKGROUND_CONTRAST:
                break
            hsv = _random_hsv(rng, domain)
        second_hsv = _similar_hsv(rng, hsv) if rng.random() < 0.5 else _random_hsv(rng, domain)
        colour_pool.append(hsv)
        c1, c2 = _hsv_to_rgb(np.stack([hsv, second_hsv]))
        kind = textures[int(rng.integers(len(textures)))]
        image[mask] = _texture(kind, rng, x[mask], y[mask], c1, c2, scale)

        if filled and rng.random() < config.p_two_tone:
            # A second part with its own colour and texture: one instance, two looks
            angle = rng.uniform(0, 2 * math.pi)
            cut = (x - cx) * math.cos(angle) + (y - cy) * math.sin(angle) > radius * rng.uniform(-0.3, 0.3)
            part = mask & cut
            if part.any():
                part_hsv = _random_hsv(rng, domain)
                p1, p2 = _hsv_to_rgb(np.stack([part_hsv, _similar_hsv(rng, part_hsv)]))
                part_kind = textures[int(rng.integers(len(textures)))]
                image[part] = _texture(part_kind, rng, x[part], y[part], p1, p2, scale)
        if rng.random() < config.p_outline:
            rim = mask & ~_erode(mask)
            image[rim] *= rng.uniform(0.45, 0.8)
        labels[mask] = index + 1
        full_areas.append(int(mask.sum()))

    # Keep objects whose visible part is large enough, renumbered 1..K in painting order
    visible = np.bincount(labels.ravel(), minlength=len(full_areas) + 1)[1:]
    full = np.array(full_areas)
    keep = (visible >= max(config.min_visible_area * size * size, 1)) & (
        visible >= config.min_visible_fraction * np.maximum(full, 1)
    )
    for k in np.flatnonzero(keep):
        # A box prompt needs at least two rows and two columns
        rows, cols = np.nonzero(labels == k + 1)
        keep[k] = np.ptp(rows) >= 1 and np.ptp(cols) >= 1
    mapping = np.zeros(len(full_areas) + 1, dtype=np.uint8)
    mapping[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    labels = mapping[labels]
    if config.salient:
        # Only the salient object (painted first, so label 1 when kept) is annotated; no label means a redraw
        labels = (labels == 1).astype(np.uint8) if keep[0] else np.zeros_like(labels)

    # Illumination gradient and sensor noise
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    light = 1 + gx * (x / size - 0.5) + gy * (y / size - 0.5)
    image = image * light[..., None]
    image += rng.uniform(0.005, max(config.max_noise_std, 0.005)) * rng.standard_normal(image.shape, dtype=np.float32)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image, labels


def generate_scene_labels(
    index: int, size: int = 128, domain: str = "train", seed: int = 0, config: SceneConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One scene as an image and a label map.

    Args:
        index (`int`): scene index (>= 0); scene `index` does not depend on any other scene.
        size (`int`, *optional*, defaults to 128): image side in pixels (>= 16).
        domain (`str`, *optional*, defaults to `"train"`): `"train"` or `"shifted"`.
        seed (`int`, *optional*, defaults to 0): dataset seed (>= 0).
        config (`SceneConfig`, *optional*): generator knobs; `SceneConfig()` by default.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: the image (`np.ndarray` of shape `(size, size, 3)`, uint8 RGB) and the labels
        (`np.ndarray` of shape `(size, size)`, uint8: 0 background, `k` the visible part of object `k`, `1..K`).
        A scene always has at least one object; every object spans at least two rows and two columns.
    """
    size = _check_int(size, "size", 16)
    domain = _check_domain(domain)
    config = _check_config(config)
    rng = scene_rng(index, domain, seed)
    # Redraw (from the same stream) in the rare case that no object survives
    for _ in range(100):
        image, labels = _render(rng, size, domain, config)
        if labels.any():
            return image, labels
    raise RuntimeError(
        f"scene {index} (seed {seed}, domain {domain!r}) has no object after 100 draws; check `config`."
    )


def labels_to_masks(labels: np.ndarray) -> np.ndarray:
    """Instance masks of a label map.

    Args:
        labels (`np.ndarray` of shape `(height, width)`): integer labels, 0 background, objects `1..K`.

    Returns:
        `np.ndarray` of shape `(K, height, width)`, bool, `K = labels.max()`.
    """
    if not isinstance(labels, np.ndarray) or labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("`labels` must be an integer np.ndarray of shape (height, width).")
    return labels[None] == np.arange(1, int(labels.max()) + 1, dtype=labels.dtype)[:, None, None]


def generate_scene(
    index: int, size: int = 128, domain: str = "train", seed: int = 0, config: SceneConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One scene as an image and per-object masks of the visible parts.

    Args: see `generate_scene_labels`.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: the image (`np.ndarray` of shape `(size, size, 3)`, uint8 RGB) and the masks
        (`np.ndarray` of shape `(num_objects, size, size)`, bool, non-empty and pairwise disjoint, in painting order:
        a later object lies on top of an earlier one).
    """
    image, labels = generate_scene_labels(index, size, domain, seed, config)
    return image, labels_to_masks(labels)


def generate_scenes(
    num_scenes: int,
    size: int = 128,
    domain: str = "train",
    seed: int = 0,
    start: int = 0,
    config: SceneConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scenes `start .. start + num_scenes - 1`, stacked.

    Args:
        num_scenes (`int`): number of scenes (>= 0).
        size, domain, seed, config: see `generate_scene_labels`.
        start (`int`, *optional*, defaults to 0): index of the first scene.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: images (`np.ndarray` of shape `(num_scenes, size, size, 3)`, uint8) and
        labels (`np.ndarray` of shape `(num_scenes, size, size)`, uint8; see `labels_to_masks`).
    """
    num_scenes = _check_int(num_scenes, "num_scenes", 0)
    start = _check_int(start, "start", 0)
    size = _check_int(size, "size", 16)
    images = np.empty((num_scenes, size, size, 3), dtype=np.uint8)
    labels = np.empty((num_scenes, size, size), dtype=np.uint8)
    for offset in range(num_scenes):
        images[offset], labels[offset] = generate_scene_labels(start + offset, size, domain, seed, config)
    return images, labels


def _check_writer_arguments(
    root, num_scenes, start, jpeg_quality, domain, min_scenes: int
) -> tuple[int, int, int, str]:
    """The arguments every scene writer shares, checked; returns `(num_scenes, start, jpeg_quality, domain)`."""
    if not isinstance(root, (str, Path)):
        raise TypeError(f"`root` must be a str or Path, got {type(root).__name__}.")
    num_scenes = _check_int(num_scenes, "num_scenes", min_scenes)
    start = _check_int(start, "start", 0)
    jpeg_quality = _check_int(jpeg_quality, "jpeg_quality", 1)
    if jpeg_quality > 100:
        raise ValueError(f"`jpeg_quality` must lie in [1, 100], got {jpeg_quality}.")
    return num_scenes, start, jpeg_quality, _check_domain(domain)


def write_scene_tree(
    root: "str | Path",
    num_scenes: int,
    size: int = 128,
    domain: str = "train",
    seed: int = 0,
    *,
    start: int = 0,
    dataset_name: str | None = None,
    image_dir: str = "im",
    mask_dir: str = "gt",
    jpeg_quality: int = 95,
    config: SceneConfig | None = None,
) -> list[str]:
    """Writes scenes as HQSeg-style image/mask pairs, one pair per object.

    For object `k` (1-based) of scene `i` the stem is `scene{i:05d}_obj{k}`: `root/<dataset_name>/<image_dir>/<stem>.jpg`
    (RGB, no chroma subsampling) and `root/<dataset_name>/<mask_dir>/<stem>.png` (single channel, 0/255).

    Args:
        root (`str` or `Path`): folder to write into (created if needed).
        num_scenes (`int`): number of scenes (>= 0).
        size, domain, seed, config: see `generate_scene_labels`.
        start (`int`, *optional*, defaults to 0): index of the first scene.
        dataset_name (`str`, *optional*): dataset folder; `f"Synthetic-{domain}"` by default.
        image_dir (`str`, *optional*, defaults to `"im"`): image sub-folder.
        mask_dir (`str`, *optional*, defaults to `"gt"`): mask sub-folder (may equal `image_dir`).
        jpeg_quality (`int`, *optional*, defaults to 95): JPEG quality, 1-100.
        config (`SceneConfig`, *optional*): generator knobs.

    Returns:
        `list[str]`: the stems written, in order.
    """
    from PIL import Image

    num_scenes, start, jpeg_quality, domain = _check_writer_arguments(root, num_scenes, start, jpeg_quality, domain, 0)
    for name, value in (("dataset_name", dataset_name), ("image_dir", image_dir), ("mask_dir", mask_dir)):
        if value is not None and (not isinstance(value, str) or not value or Path(value).is_absolute()):
            raise ValueError(f"`{name}` must be a non-empty relative folder name, got {value!r}.")
    dataset = Path(root) / (dataset_name or f"Synthetic-{domain}")
    image_folder, mask_folder = dataset / image_dir, dataset / mask_dir
    image_folder.mkdir(parents=True, exist_ok=True)
    mask_folder.mkdir(parents=True, exist_ok=True)

    stems = []
    for index in range(start, start + num_scenes):
        image, labels = generate_scene_labels(index, size, domain, seed, config)
        picture = Image.fromarray(image)
        for k in range(1, int(labels.max()) + 1):
            stem = f"scene{index:05d}_obj{k}"
            picture.save(image_folder / f"{stem}.jpg", quality=jpeg_quality, subsampling=0)
            Image.fromarray(np.where(labels == k, 255, 0).astype(np.uint8)).save(mask_folder / f"{stem}.png")
            stems.append(stem)
    return stems


def write_coco_scenes(
    root: "str | Path",
    num_scenes: int,
    size: int = 128,
    domain: str = "train",
    seed: int = 0,
    *,
    start: int = 0,
    jpeg_quality: int = 95,
    config: SceneConfig | None = None,
) -> Path:
    """Writes scenes as a COCO instance-segmentation set: every object an annotation of one category.

    Scene `i` is image id `i + 1`, `root/images/scene{i:05d}.jpg` (RGB, no chroma subsampling); its objects are
    annotations with RLE masks (`pycocotools`), tight `bbox` `[x, y, width, height]`, `area` and `iscrowd` 0, in
    `root/instances.json`. `training/evaluate_model.py --coco_annotations --coco_images` reads it as it reads MS COCO.

    Args:
        root (`str` or `Path`): folder to write into (created if needed).
        num_scenes (`int`): number of scenes (>= 1).
        size, domain, seed, config: see `generate_scene_labels`.
        start (`int`, *optional*, defaults to 0): index of the first scene.
        jpeg_quality (`int`, *optional*, defaults to 95): JPEG quality, 1-100.

    Returns:
        `Path`: the annotation file.
    """
    import json

    from PIL import Image
    from pycocotools import mask as mask_utils

    num_scenes, start, jpeg_quality, domain = _check_writer_arguments(root, num_scenes, start, jpeg_quality, domain, 1)
    image_folder = Path(root) / "images"
    image_folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(start, start + num_scenes):
        image, labels = generate_scene_labels(index, size, domain, seed, config)
        file_name = f"scene{index:05d}.jpg"
        Image.fromarray(image).save(image_folder / file_name, quality=jpeg_quality, subsampling=0)
        images.append({"id": index + 1, "file_name": file_name, "height": size, "width": size})
        for mask in labels_to_masks(labels):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": 1,
                    "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    path = Path(root) / "instances.json"
    categories = [{"id": 1, "name": "object", "supercategory": "object"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


__all__ = [
    "DOMAINS",
    "SceneConfig",
    "generate_scene",
    "generate_scene_labels",
    "generate_scenes",
    "labels_to_masks",
    "scene_rng",
    "write_coco_scenes",
    "write_scene_tree",
]
