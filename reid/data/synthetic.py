"""Small procedurally generated re-id dataset, written once to disk in Market-1501 layout.

It exists so that the whole training/evaluation pipeline can be exercised end to end
without downloading anything. Identities are person-like figures defined by a
*combination* of parts (clothing colours shared across identities, clothing pattern,
trousers/shorts/skirt, hair, accessory, body proportions), and every camera changes the
appearance (colour cast, brightness, contrast, blur, background, preferred viewpoint),
so a colour histogram or raw pixels are not enough while a small CNN can learn it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from reid.data.market1501 import SUBSETS, Market1501
from reid.data.records import DatasetError, ReidSplits
from reid.errors import ConfigError
from reid.utils.process import process_exists

_LOG = logging.getLogger(__name__)

GENERATOR_VERSION = 1
COMPLETE_MARKER = ".complete"
# A temp folder this old whose generating process is gone here was left by a killed generation. The age
# guard keeps the folder of a generation running right now on another host that shares the dataset root.
ABANDONED_AFTER_S = 3600.0
_SUPERSAMPLE = 2
_JPEG_QUALITY = 92

# A small shared palette (with common colours weighted up) so that many identities
# share shirt or trouser colours, as in real footage.
_PALETTE = np.array(
    [
        (25, 25, 28),  # black
        (230, 230, 225),  # white
        (125, 125, 130),  # grey
        (40, 55, 140),  # blue
        (185, 40, 40),  # red
        (40, 125, 60),  # green
        (215, 190, 50),  # yellow
        (115, 75, 40),  # brown
        (140, 60, 140),  # purple
        (225, 125, 40),  # orange
        (120, 170, 215),  # light blue
        (200, 180, 140),  # beige
    ],
    dtype=np.float64,
)
_PALETTE_WEIGHTS = np.array([2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1], dtype=np.float64)
_SKIN = [(235, 200, 170), (200, 150, 110), (120, 80, 55)]
_HAIR = [(20, 18, 15), (90, 55, 25), (210, 180, 100), (150, 150, 150)]
_PATTERNS = ("plain", "hstripes", "vstripes", "two_tone", "logo")
_BOTTOMS = ("trousers", "shorts", "skirt")
_ACCESSORIES = ("none", "backpack", "shoulder_bag", "hat")


@dataclass(frozen=True)
class _Identity:
    top: tuple[int, ...]
    pattern: str
    pattern_color: tuple[int, ...]
    stripe_period: float
    short_sleeves: bool
    bottom: tuple[int, ...]
    bottom_type: str
    shoes: tuple[int, ...]
    skin: tuple[int, ...]
    hair: tuple[int, ...]
    long_hair: bool
    accessory: str
    accessory_color: tuple[int, ...]
    bag_side: int
    height_frac: float
    width_factor: float
    torso_ratio: float


@dataclass(frozen=True)
class _Camera:
    gain: np.ndarray
    brightness: float
    contrast: float
    gamma: float
    blur: float
    noise: float
    front_prob: float
    background: np.ndarray


def _color(rng: np.random.Generator, exclude: tuple[int, ...] | None = None) -> tuple[int, ...]:
    weights = _PALETTE_WEIGHTS.copy()
    if exclude is not None:
        weights[[i for i, c in enumerate(_PALETTE) if tuple(int(v) for v in c) == exclude]] = 0
    index = rng.choice(len(_PALETTE), p=weights / weights.sum())
    return tuple(int(v) for v in _PALETTE[index])


def _make_identity(rng: np.random.Generator) -> _Identity:
    top = _color(rng)
    bottom = _color(rng)
    return _Identity(
        top=top,
        pattern=_PATTERNS[rng.integers(len(_PATTERNS))],
        pattern_color=_color(rng, exclude=top),
        stripe_period=float(rng.uniform(0.12, 0.3)),
        short_sleeves=bool(rng.random() < 0.4),
        bottom=bottom,
        bottom_type=_BOTTOMS[rng.choice(3, p=[0.6, 0.25, 0.15])],
        shoes=_color(rng),
        skin=_SKIN[rng.integers(len(_SKIN))],
        hair=_HAIR[rng.integers(len(_HAIR))],
        long_hair=bool(rng.random() < 0.35),
        accessory=_ACCESSORIES[rng.integers(len(_ACCESSORIES))],
        accessory_color=_color(rng),
        bag_side=int(rng.choice([-1, 1])),
        height_frac=float(rng.uniform(0.78, 0.94)),
        width_factor=float(rng.uniform(0.8, 1.2)),
        torso_ratio=float(rng.uniform(0.36, 0.48)),
    )


def _make_camera(rng: np.random.Generator, height: int, width: int) -> _Camera:
    """A camera's fixed look: colour cast, exposure, optics and a static scene behind people."""
    ch, cw = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    margin = cw // 4
    top_c, bottom_c = rng.uniform(40, 210, size=3), rng.uniform(40, 210, size=3)
    ramp = np.linspace(0.0, 1.0, ch + 2 * margin)[:, None, None]
    shape = (ch + 2 * margin, cw + 2 * margin, 3)
    background = np.broadcast_to(top_c * (1 - ramp) + bottom_c * ramp, shape).copy()
    for _ in range(int(rng.integers(2, 5))):  # static scene objects, half-transparent
        y0, x0 = rng.integers(0, ch + margin), rng.integers(0, cw + margin)
        h, w = rng.integers(ch // 8, ch // 2), rng.integers(cw // 8, cw // 2)
        patch = background[y0 : y0 + h, x0 : x0 + w]
        patch[:] = 0.5 * patch + 0.5 * rng.uniform(30, 230, size=3)
    floor = int((ch + 2 * margin) * rng.uniform(0.72, 0.85))
    background[floor:] = background[floor:] * 0.5 + rng.uniform(60, 160, size=3) * 0.5
    return _Camera(
        gain=rng.uniform(0.85, 1.15, size=3),
        brightness=float(rng.uniform(-25, 25)),
        contrast=float(rng.uniform(0.75, 1.1)),
        gamma=float(rng.uniform(0.85, 1.2)),
        blur=float(rng.choice([0.0, 0.4, 0.7])),
        noise=float(rng.uniform(2.0, 7.0)),
        front_prob=float(rng.uniform(0.15, 0.85)),
        background=background,
    )


def _draw_figure(
    draw: ImageDraw.ImageDraw,
    ident: _Identity,
    rng: np.random.Generator,
    canvas_h: int,
    canvas_w: int,
    front: bool,
) -> None:
    """Draw one pose-jittered figure; all sizes are relative to the figure height.

    The view matters: from behind, a backpack covers the torso and hair covers the head.
    """

    def rect(x0: float, y0: float, x1: float, y1: float, fill: tuple[int, ...]) -> None:
        draw.rectangle([x0, y0, x1, y1], fill=fill)

    fh = ident.height_frac * rng.uniform(0.88, 1.05) * canvas_h
    cx = canvas_w / 2 + rng.uniform(-0.12, 0.12) * canvas_w
    feet = canvas_h * 0.98 + rng.uniform(-0.05, 0.02) * canvas_h
    top = feet - fh
    head_h = 0.14 * fh
    head_w = 0.6 * head_h
    torso_top = top + head_h * 1.05
    torso_bottom = torso_top + ident.torso_ratio * fh
    torso_h = torso_bottom - torso_top
    torso_hw = 0.13 * fh * ident.width_factor
    arm_w = 0.06 * fh
    stride = rng.uniform(0.0, 0.3) * torso_hw
    leg_w = torso_hw * 0.8
    accessory = ident.accessory_color

    # long hair and a backpack seen from the front are behind the body
    if ident.long_hair:
        rect(cx - head_w * 0.55, top + head_h * 0.3, cx + head_w * 0.55, torso_top + head_h * 0.6, ident.hair)
    if ident.accessory == "backpack" and front:
        side = cx + ident.bag_side * (torso_hw + arm_w * 0.2)
        rect(side - arm_w * 0.3, torso_top + head_h * 0.2, side + arm_w * 0.3, torso_bottom - head_h * 0.4, accessory)

    # legs, shoes, shorts or skirt
    leg_top = torso_bottom - head_h * 0.1
    leg_fill = ident.bottom if ident.bottom_type == "trousers" else ident.skin
    for sign in (-1, 1):
        x = cx + sign * (leg_w * 0.55 + stride)
        hip_inner, hip_outer = cx + sign * leg_w * 0.1, cx + sign * leg_w * 1.1
        draw.polygon(
            [(hip_inner, leg_top), (hip_outer, leg_top), (x + leg_w / 2, feet), (x - leg_w / 2, feet)],
            fill=leg_fill,
        )
        rect(x - leg_w * 0.6, feet - head_h * 0.3, x + leg_w * 0.6, feet, ident.shoes)
    if ident.bottom_type == "shorts":
        rect(cx - torso_hw * 0.95, leg_top, cx + torso_hw * 0.95, leg_top + (feet - leg_top) * 0.42, ident.bottom)
    elif ident.bottom_type == "skirt":
        hem = leg_top + (feet - leg_top) * 0.5
        waist, flare = torso_hw * 0.9, torso_hw * 1.3
        draw.polygon(
            [(cx - waist, leg_top), (cx + waist, leg_top), (cx + flare, hem), (cx - flare, hem)],
            fill=ident.bottom,
        )

    # arms (sleeve colour, with skin forearms for short sleeves)
    arm_bottom = torso_bottom + head_h * 0.3
    for sign in (-1, 1):
        x0 = cx + sign * torso_hw
        left, right = sorted([x0, x0 + sign * arm_w])
        swing = rng.uniform(-0.15, 0.15) * arm_w
        rect(left + swing, torso_top + head_h * 0.1, right + swing, arm_bottom, ident.top)
        if ident.short_sleeves:
            elbow = torso_top + (arm_bottom - torso_top) * 0.4
            rect(left + swing, elbow, right + swing, arm_bottom, ident.skin)

    # torso with the identity's pattern
    tx0, tx1 = cx - torso_hw, cx + torso_hw
    rect(tx0, torso_top, tx1, torso_bottom, ident.top)
    period = max(2.0, ident.stripe_period * torso_h)
    if ident.pattern == "hstripes":
        y = torso_top + period / 2
        while y < torso_bottom:
            rect(tx0, y, tx1, min(y + period / 2, torso_bottom), ident.pattern_color)
            y += period
    elif ident.pattern == "vstripes":
        x = tx0 + period / 4
        while x < tx1:
            rect(x, torso_top, min(x + period / 4, tx1), torso_bottom, ident.pattern_color)
            x += period / 2
    elif ident.pattern == "two_tone":
        rect(tx0, (torso_top + torso_bottom) / 2, tx1, torso_bottom, ident.pattern_color)
    elif ident.pattern == "logo":
        half = torso_hw * 0.35
        cy = torso_top + torso_h * 0.35
        rect(cx - half, cy - half, cx + half, cy + half, ident.pattern_color)

    # accessories in front of the torso
    strap = max(1, int(arm_w * 0.3))
    if ident.accessory == "backpack" and not front:
        rect(cx - torso_hw * 0.6, torso_top + head_h * 0.3, cx + torso_hw * 0.6, torso_bottom - head_h * 0.5, accessory)
    elif ident.accessory == "backpack":
        for sign in (-1, 1):
            sx = cx + sign * torso_hw * 0.55
            draw.line([(sx, torso_top), (sx, torso_top + torso_h * 0.6)], fill=accessory, width=strap)
    elif ident.accessory == "shoulder_bag":
        side = ident.bag_side
        corners = [(cx - side * torso_hw, torso_top), (cx + side * torso_hw, torso_bottom)]
        draw.line(corners, fill=accessory, width=strap)
        bx = cx + side * (torso_hw + arm_w * 0.6)
        rect(bx - arm_w * 0.9, torso_bottom - head_h * 0.6, bx + arm_w * 0.9, torso_bottom + head_h * 0.5, accessory)

    # head, hair, hat
    draw.ellipse([cx - head_w / 2, top, cx + head_w / 2, top + head_h], fill=ident.skin)
    hair_h = head_h * (0.4 if front else 1.0)
    draw.chord([cx - head_w / 2, top - head_h * 0.05, cx + head_w / 2, top + hair_h * 1.6], 180, 360, fill=ident.hair)
    if not front:
        draw.ellipse([cx - head_w / 2, top, cx + head_w / 2, top + head_h * 0.9], fill=ident.hair)
    if ident.accessory == "hat":
        rect(cx - head_w * 0.65, top - head_h * 0.15, cx + head_w * 0.65, top + head_h * 0.3, accessory)


def _render(
    ident: _Identity,
    camera: _Camera,
    rng: np.random.Generator,
    height: int,
    width: int,
) -> Image.Image:
    """Render one sighting of ``ident`` by ``camera`` (pose, occlusion and noise from ``rng``)."""
    ch, cw = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    margin = (camera.background.shape[1] - cw) // 2
    oy, ox = rng.integers(0, 2 * margin + 1, size=2)
    background = camera.background[oy : oy + ch, ox : ox + cw]
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    front = bool(rng.random() < camera.front_prob)
    _draw_figure(draw, ident, rng, ch, cw, front)
    if rng.random() < 0.2:
        occ_h = rng.uniform(0.15, 0.4) * ch
        color = tuple(int(v) for v in rng.uniform(20, 235, size=3))
        if rng.random() < 0.6:
            draw.rectangle([0, ch - occ_h, cw, ch], fill=color)
        else:
            occ_w = rng.uniform(0.2, 0.4) * cw
            x0 = 0 if rng.random() < 0.5 else cw - occ_w
            draw.rectangle([x0, rng.uniform(0, 0.5) * ch, x0 + occ_w, ch], fill=color)
    if rng.random() < 0.5:
        canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = canvas.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    if camera.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(camera.blur))

    pixels = np.asarray(image, dtype=np.float64)
    exposure = camera.brightness + rng.uniform(-10, 10)
    pixels = (pixels - 128.0) * camera.contrast + 128.0 + exposure
    pixels = pixels * camera.gain
    pixels = 255.0 * (np.clip(pixels, 0, 255) / 255.0) ** camera.gamma
    pixels += rng.normal(0.0, camera.noise, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


class SyntheticReID:
    """Generate (once) and load a small synthetic re-id dataset.

    Files go to ``<root>/<cache key>/`` in Market-1501 layout, where the cache key encodes
    every generation parameter and the generator version, and are then loaded with
    :class:`Market1501`. Generation writes to a temporary folder, writes a completion
    marker last and renames the folder into place, so a killed run never leaves a
    half-written dataset that looks complete, and concurrent runs do not corrupt each
    other (the loser of the rename discards its copy). Same parameters give byte-identical
    files.

    Train and test identities appear in every camera (``images_per_camera`` each). Queries
    are one image per (test identity, camera) for the first ``num_cameras // 2`` cameras;
    the gallery holds the remaining test images (so every query has matches in other
    cameras) plus ``num_test_ids // 2 + 2`` pid-0 distractors.
    """

    name = "synthetic"

    def __init__(
        self,
        root: str,
        num_train_ids: int = 24,
        num_test_ids: int = 24,
        images_per_camera: int = 3,
        num_cameras: int = 4,
        height: int = 64,
        width: int = 32,
        seed: int = 0,
        skip_bad_images: bool = False,
    ) -> None:
        checks = (
            ("num_train_ids", num_train_ids, 1),
            ("num_test_ids", num_test_ids, 1),
            ("images_per_camera", images_per_camera, 1),
            ("num_cameras", num_cameras, 2),
            ("height", height, 16),
            ("width", width, 8),
            ("seed", seed, 0),
        )
        for key, value, minimum in checks:
            if int(value) < minimum:
                raise ConfigError(f"SyntheticReID: {key}={value!r} is invalid: expected an integer >= {minimum}")
        if int(num_train_ids) + int(num_test_ids) > 9999:
            raise ConfigError(
                f"SyntheticReID: num_train_ids + num_test_ids = {int(num_train_ids) + int(num_test_ids)}: "
                "expected at most 9999 (Market-1501 names use 4-digit pids)"
            )
        self.root = str(root)
        self.num_train_ids = int(num_train_ids)
        self.num_test_ids = int(num_test_ids)
        self.images_per_camera = int(images_per_camera)
        self.num_cameras = int(num_cameras)
        self.height = int(height)
        self.width = int(width)
        self.seed = int(seed)
        self.skip_bad_images = bool(skip_bad_images)

    @property
    def cache_key(self) -> str:
        """Folder name that changes whenever any generation parameter does."""
        return (
            f"synthetic_v{GENERATOR_VERSION}_s{self.seed}_tr{self.num_train_ids}_te{self.num_test_ids}"
            f"_c{self.num_cameras}_i{self.images_per_camera}_{self.height}x{self.width}"
        )

    @property
    def dataset_dir(self) -> str:
        """Where the generated Market-1501-style dataset lives."""
        return os.path.join(os.path.abspath(os.path.expanduser(self.root)), self.cache_key)

    def _params(self) -> dict[str, int]:
        return {
            "generator_version": GENERATOR_VERSION,
            "num_train_ids": self.num_train_ids,
            "num_test_ids": self.num_test_ids,
            "images_per_camera": self.images_per_camera,
            "num_cameras": self.num_cameras,
            "height": self.height,
            "width": self.width,
            "seed": self.seed,
        }

    def _write(self, out_dir: str) -> None:
        """Render every image into ``out_dir`` (deterministic: each image has its own RNG stream)."""
        for folder in SUBSETS.values():
            os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
        cameras = [
            _make_camera(np.random.default_rng([self.seed, 1, cam]), self.height, self.width)
            for cam in range(self.num_cameras)
        ]
        query_cams = max(1, self.num_cameras // 2)
        serial = 0

        def save(pid: int, ident_index: int, cam: int, shot: int, folder: str) -> None:
            nonlocal serial
            serial += 1
            ident = _make_identity(np.random.default_rng([self.seed, 0, ident_index]))
            rng = np.random.default_rng([self.seed, 2, ident_index, cam, shot])
            image = _render(ident, cameras[cam], rng, self.height, self.width)
            name = f"{pid:04d}_c{cam + 1}s1_{serial:06d}_00.jpg"
            image.save(os.path.join(out_dir, folder, name), "JPEG", quality=_JPEG_QUALITY)

        for ident_index in range(self.num_train_ids):
            for cam in range(self.num_cameras):
                for shot in range(self.images_per_camera):
                    save(ident_index + 1, ident_index, cam, shot, SUBSETS["train"])
        for offset in range(self.num_test_ids):
            ident_index = self.num_train_ids + offset
            for cam in range(self.num_cameras):
                for shot in range(self.images_per_camera):
                    folder = SUBSETS["query"] if cam < query_cams and shot == 0 else SUBSETS["gallery"]
                    save(ident_index + 1, ident_index, cam, shot, folder)
        first_distractor = self.num_train_ids + self.num_test_ids
        for offset in range(self.num_test_ids // 2 + 2):
            cam = offset % self.num_cameras
            save(0, first_distractor + offset, cam, 0, SUBSETS["gallery"])

    def _is_complete(self, path: str) -> bool:
        return os.path.isfile(os.path.join(path, COMPLETE_MARKER))

    def _remove_abandoned_temp_folders(self, parent: str) -> None:
        prefix = f"{self.cache_key}.tmp-"
        for name in os.listdir(parent):
            if not name.startswith(prefix):
                continue
            path = os.path.join(parent, name)
            pid = name[len(prefix):].split("-", 1)[0]
            try:
                age = time.time() - os.path.getmtime(path)
            except OSError:
                continue
            if age > ABANDONED_AFTER_S and not (pid.isdigit() and process_exists(int(pid))):
                _LOG.info("removing %s, left by a synthetic-data generation that did not finish", path)
                shutil.rmtree(path, ignore_errors=True)

    def prepare(self) -> str:
        """Generate the dataset unless a complete copy exists; return its folder."""
        final = self.dataset_dir
        if self._is_complete(final):
            return final
        parent = os.path.dirname(final)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise DatasetError(
                f"cannot create synthetic dataset root {parent}: {exc}; expected a writable folder"
            ) from exc
        self._remove_abandoned_temp_folders(parent)
        if os.path.exists(final) and not self._is_complete(final):
            # this generator only ever renames complete folders into place, so a marker-less
            # one was left by something else: move it aside (atomically) and regenerate
            stale = f"{final}.stale-{uuid.uuid4().hex[:8]}"
            _LOG.warning("removing incomplete synthetic dataset %s", final)
            try:
                os.rename(final, stale)
                shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                pass
        start = time.perf_counter()
        # os.mkdir (unlike tempfile.mkdtemp) honours the umask, so the renamed folder is shareable
        tmp = os.path.join(parent, f"{self.cache_key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.mkdir(tmp)
        try:
            self._write(tmp)
            with open(os.path.join(tmp, COMPLETE_MARKER), "w", encoding="utf-8") as handle:
                json.dump(self._params(), handle, sort_keys=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not self._is_complete(final):
                    raise
                _LOG.info("synthetic dataset %s was generated concurrently; using that copy", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _LOG.info("generated synthetic dataset %s in %.2fs", final, time.perf_counter() - start)
        return final

    def load(self) -> ReidSplits:
        """Generate if needed, then load through the Market-1501 parser (named 'synthetic')."""
        splits = Market1501(self.prepare(), skip_bad_images=self.skip_bad_images).load()
        return replace(splits, name=self.name)
