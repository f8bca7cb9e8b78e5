"""Typed settings, one dataclass per concern. Defaults are the published full-scale configuration
(method.md); every size is a setting so that tests run the same pipeline at tiny sizes."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npva.errors import FormatError, MissingFileError, NpvaError
from npva.fileio import atomic_open

RESUMABLE = "resumable"  # field metadata: a resumed run may change the setting


def resumable(default: Any) -> Any:
    """A setting a resumed run may change: how the run goes (devices, logging, memory, speed), not what
    it learns from or the shape of its state."""
    return field(default=default, metadata={RESUMABLE: True})


def resumable_settings(config_class: type | None = None) -> frozenset[str]:
    """Dotted keys of the settings of `config_class` (default ExperimentConfig) marked resumable."""
    config_class = config_class or ExperimentConfig
    keys = set()
    for f in dataclasses.fields(config_class):
        kind = _field_types(config_class)[f.name]
        if dataclasses.is_dataclass(kind):
            keys |= {f"{f.name}.{key}" for key in resumable_settings(kind)}
        elif f.metadata.get(RESUMABLE):
            keys.add(f.name)
    return frozenset(keys)


# ModelConfig.texture, each mode adding to the last
TEXTURE_MODES = ("off", "features", "corrected", "lookup", "ray")


@dataclass
class ModelConfig:
    """Encoder and decoders (method.md section 3) and neural points (section 4)."""

    texture_size: int = 1024  # side of the average UV texture fed to the encoder
    posmap_size: int = 256  # side of the position map (and of the decoded coarse map)
    point_map_size: int = 1024  # side of the displacement / feature maps: one neural point per texel
    latent_channels: int = 4  # Z: channels of the latent code z (Z x L x L)
    latent_size: int = 8  # L: side of the latent code
    texture_channels: tuple[int, ...] = (512, 256)  # texture branch down blocks
    geometry_channels: int = 256  # 1x1 conv on the normalized position map
    encoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)  # down blocks after concatenation
    mu_scale: float = 0.1  # mu = mu_scale x the encoder's raw mean
    logstd_scale: float = 0.01  # logstd = logstd_scale x the encoder's raw log std (+ logstd_bias)
    # Added to logstd. 0 (published) starts the posterior at std 1: next to mu = 0.1 mu_raw a sampled z is
    # mostly noise until mu has grown over a long run, and in a short run the decoders learn to ignore z.
    logstd_bias: float = 0.0
    coarse_channels: tuple[int, ...] = (32, 16, 16, 8, 3)  # 8 -> 256 (5 up blocks)
    displacement_channels: tuple[int, ...] = (64, 32, 32, 16, 16, 8, 3)  # 8 -> 1024 (7 up blocks)
    feature_channels: tuple[int, ...] = (512, 256, 256, 128, 128, 64, 32)  # 8 -> 1024
    leaky_slope: float = 0.2  # negative slope of the networks' LeakyReLUs
    # BatchNorm after the encoder and decoder convolutions (published, with a batch of 8 frames over 8 GPUs
    # under synchronized BatchNorm). With one frame per step in one process it normalizes every frame by
    # its own statistics, which erases what the latent says about the expression: off in tiny and demo.
    batchnorm: bool = True
    mask_points_outside_uv: bool = True  # drop points whose texel lies outside the UV islands
    # How the frame's average texture colours the avatar (docs/model.md), each mode adding to the last:
    # "off" (published): through the latent only; "features": its RGB (resampled to the point map) is
    # appended to the decoded point features; "corrected": the colour MLP corrects that RGB instead of
    # making a colour of its own; "lookup": the RGB at a shading point is the texture at its own size,
    # looked up at the UV blended from the point's neighbours; "ray": looked up at the UV where the
    # shading point's ray meets the tracked mesh (the pixel's UV of the textured tracked mesh), at the
    # blended UV where the ray misses it.
    texture: str = "off"

    @property
    def texture_features(self) -> bool:
        """The point features end with the texture's RGB."""
        return TEXTURE_MODES.index(self.texture) >= TEXTURE_MODES.index("features")

    @property
    def colour_residual(self) -> bool:
        """The decoded colour corrects the texture's RGB of the point features."""
        return TEXTURE_MODES.index(self.texture) >= TEXTURE_MODES.index("corrected")

    @property
    def texture_lookup(self) -> bool:
        """A shading point's RGB feature channels are the full-size texture at a UV of its own."""
        return TEXTURE_MODES.index(self.texture) >= TEXTURE_MODES.index("lookup")

    @property
    def texture_at_ray(self) -> bool:
        """The lookup's UV is where the shading point's ray meets the tracked mesh."""
        return self.texture == "ray"

    @property
    def point_feature_channels(self) -> int:
        """Channels of a neural point's feature: the decoded ones, plus RGB with texture_features."""
        return self.feature_channels[-1] + (3 if self.texture_features else 0)


@dataclass
class SamplingConfig:
    """Patch-wise depth-guided shading-point sampling (method.md section 5)."""

    probe_offset_px: int = 16  # 3x3 probes at u + {-16, 0, 16}^2
    background_depth_mm: float = 10.0  # guide depth below this is background
    discontinuity_mm: float = 30.0  # d_max - d_min above this: two windows
    window_half_mm: float = 20.0  # each window is [d - 20, d + 20]
    num_candidates: int = 20  # 10 + 10 with two windows
    jitter: float = 0.3  # bin widths scaled by 1 + jitter (U - 0.5) in training
    max_samples: int = 16  # SR: kept shading points per ray, in ray order
    occupancy_voxel_mm: float = 1.0  # a candidate is kept if an occupied voxel is within
    occupancy_reach_voxels: int = 3  # +- this many voxels
    # True: a ray whose own pixel has no guide depth is background. The published rule (False) starts a ray
    # when any probe sees the surface, which widens the silhouette by up to probe_offset_px.
    centre_guide: bool = False


@dataclass
class QueryConfig:
    """Neighbour query (method.md section 6)."""

    k: int = 8  # K: neural points blended per shading point
    radius_mm: float = 4.0  # only neural points within this distance of a shading point are blended
    cell_fraction: float = 0.5  # grid cell side of the neighbour index, as a fraction of the radius
    # Candidate entries held at once (memory); None: 2^20 on CPU, 2^25 on GPU.
    max_candidates: int | None = resumable(None)
    # "grid" (exact grid index, any device), "kdtree" (SciPy, CPU), "auto": kdtree on CPU, grid on GPU.
    backend: str = resumable("auto")


@dataclass
class DecoderConfig:
    """Radiance decoding and compositing (method.md section 7)."""

    variant: str = "lightweight"  # or "pointnerf"
    feature_frequencies: int = 3  # PE_3 of the aggregated feature
    offset_frequencies: int = 5  # PE_5 of the 6-channel offset
    direction_frequencies: int = 4  # PE_4 of the ray direction
    # The offsets' camera-frame copy is a decoder input (published). False: the world-frame offsets only,
    # so that density and colour depend on the camera through the ray direction alone.
    camera_offsets: bool = True
    # With the texture mode "ray": False gives the shading points whose ray meets the tracked mesh in the
    # open mouth's texels the texture's colour as it is, without the colour MLP's correction. Inside the
    # mouth a capture's photos show teeth, tongue and shadow from a few directions only, so a correction
    # that depends on the view is learned from few views there and misleads from new ones
    # (docs/fidelity.md).
    mouth_correction: bool = True
    hidden: int = 128  # width of the lightweight decoder's MLPs
    pointnerf_hidden: int = 256  # width of the Point-NeRF decoder's MLPs
    leaky_slope: float = 0.2  # negative slope of the decoder MLPs' LeakyReLUs
    density_shift: float = 1.0  # sigma = softplus(raw - shift)
    colour_margin: float = 0.001  # c = (1 + 2 margin) sigmoid(raw) - margin: 1.002 sigmoid - 0.001
    min_distance_mm: float = 1e-6  # inverse-distance weights use max(|p - x|, this)
    last_delta: float = 1e10  # the last valid sample is made opaque


@dataclass
class RenderConfig:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # Rays decoded at once; bounds memory for any image size. None: by device
    # (npva.model.render.DEFAULT_CHUNK_RAYS).
    chunk_rays: int | None = resumable(None)
    # > 0: cells of the point map whose points lie farther apart than this get extra points in between
    # (npva.model.points.densify_points), so that stretched parts of the UV layout (a neck, an open
    # mouth) keep no holes. 0: one point per texel, as published.
    densify_mm: float = 0.0
    # The spacing of those extra points when the avatar renders in evaluation mode (validation, metrics,
    # renders, videos); None: densify_mm. Finer than in training, the stretched cells are filled more
    # evenly at a cost that only rendering pays (docs/training.md, "Stretched layouts").
    inference_densify_mm: float | None = resumable(None)
    # Which implementation runs the hot operations (neighbour query, neighbour blending): "auto" the
    # Triton kernels of npva.model.fast on CUDA when triton is installed and deterministic algorithms are
    # off, else plain PyTorch; "torch" always plain PyTorch (the reference); "triton" the kernels or an
    # error. Both give the same neighbours; blended values agree to float32 rounding.
    kernels: str = resumable("auto")
    # True: the radiance decoder and the compositing run compiled by torch.compile (npva.model.fast.compiled:
    # element-wise chains fused, forward and backward); the first steps wait for the compilation. False:
    # op by op (the reference).
    compile: bool = resumable(False)

    def for_inference(self) -> RenderConfig:
        """These settings as the avatar renders with them in evaluation mode."""
        if self.inference_densify_mm is None:
            return self
        return dataclasses.replace(self, densify_mm=self.inference_densify_mm)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-friendly dict of a settings dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


@dataclass
class PreprocessConfig:
    """`npva preprocess`: what is made from a subject, and where (method.md section 2)."""

    uv_size: int = 256  # side of the position maps
    image_scale: float = 0.5  # training resolution relative to the images (2048x1334 -> 1024x667)
    # "auto" (import when the MVS depth folder exists, else mesh), "import" (MVS depth files: EXR, npz or
    # COLMAP), "stereo" (multi-view stereo from the photos, npva.preprocess.stereo), "mesh" (the tracked
    # mesh rendered), "none"
    depth: str = "auto"
    depth_dir: str | None = (
        None  # for "import": <dir>/<seq>/<cam>/<frame>.exr|.npz; default <subject>/mvs_depth
    )
    depth_scale: float = 1000.0  # multiply imported depth by this to get mm (1000 for metres)
    mouth_mask: str | None = None  # a UV-space PNG overriding the derived mouth mask
    mouth_stretch: float = 2.5  # texel cells whose area grows this much over the frames are mouth
    mouth_dilate: int = 1  # texels added around the derived mouth region
    stats_list: str | None = None  # frames for the statistics; default the split's train frames


@dataclass
class DataConfig:
    """Training samples: one (frame, camera) image per step (method.md section 8)."""

    frames: str = "train"  # split name (npva.io.splits), "all" or a path to a "<seq> <frame>" list
    cameras: tuple[str, ...] = ()  # cameras to train on; empty: every camera (the authors used 400029 only)
    camera_split: bool = False  # keep only the training cameras of the subject's split
    # Photos resized to the training size kept on disk: "png", "npy" or "none".
    image_cache: str = resumable("png")
    cache_dir: str | None = resumable(None)  # where the cache lives; default <gendir>/image_cache
    # A sample whose files cannot be read is replaced by the next readable one.
    skip_unreadable: bool = resumable(True)


@dataclass
class GEPConfig:
    """Grid-Error-Patch ray sampling (method.md section 8); phases by epoch (35 epochs published)."""

    error_start: int = 10  # grid phase for epochs [0, error_start)
    patch_start: int = 25  # error phase for [error_start, patch_start); patch phase from here on
    grid_stride_x: int = 2  # grid phase: every 2nd column ...
    grid_stride_y: int = 3  # ... and every 3rd row, from a random offset (at 1024x667)
    error_rays: int = 115600  # error phase: rays per step (340^2), shared among the cells by error
    error_cells: int = 8  # the error map of an image has error_cells x error_cells cells
    error_momentum: float | None = None  # None: true running mean of every pixel error seen in a cell;
    # m in [0, 1): exponential running mean, cell = m * cell + (1 - m) * mean error of this step's rays
    patch_size: int = 340  # patch phase: one patch_size x patch_size square (clipped to the image)


@dataclass
class LossConfig:
    """Loss weights and their constants (method.md section 8)."""

    rgb_weight: float = 5.0  # colour error of the sampled rays
    lpips_weight: float = 0.1  # patch phase only
    ssim_weight: float = 0.0  # 1 - SSIM of the patch, patch phase only (not in the method)
    depth_weight: float = 0.1  # composited depth against the MVS depth
    rast_depth_weight: float = 0.2  # rasterized coarse-mesh depth against the MVS depth
    mesh_weight: float = 0.2  # coarse map against the tracked position map
    mesh_mouth_weight: float = 0.0  # weight of mouth texels in the mesh term's mean (0: left out)
    mouth_points_weight: float = 0.0  # the mouth's neural points against the tracked surface (0: off)
    smooth_weight: float = 1.0  # smoothness of the coarse map between neighbouring texels
    kl_weight: float = 0.001  # KL divergence of the latent's posterior from N(0, 1)
    displacement_weight: float = 0.1  # displacements longer than displacement_threshold_mm
    depth_threshold_mm: float = 10.0  # depth terms use rays whose error is below this
    smooth_beta_mm: float = 4.0  # smooth-L1 transition of the smoothness term
    displacement_threshold_mm: float = 10.0  # displacements longer than this are penalized
    mesh_norm: str = "l1"  # per-texel distance of the mesh term: "l1" (sum of |dx|) or "l2" (Euclidean)
    # LPIPS-VGG weight files, os.pathsep-separated; env NPVA_LPIPS_WEIGHTS.
    lpips_weights: str | None = resumable(None)
    lpips_substitute: str = "vgg"  # without LPIPS weights: ST-LPIPS "vgg"/"alex" (shipped) or a .pth path


@dataclass
class TrainConfig:
    """The training loop (method.md section 8): schedule, optimizer, devices, logging, checkpoints.

    The schedule counts epochs of steps_per_epoch steps (images_per_step images per step and process):
    the GEP phase and the learning rate of step s follow the epoch s / steps_per_epoch, so a short run
    can pass through every phase. The data order is separate: each process walks through its share of
    the samples, reshuffled (seeded) on every pass.
    """

    seed: int = 0  # seeds the networks' initialization, the data order, the rays and the latent samples
    epochs: int = resumable(35)  # length of the run in epochs of steps_per_epoch steps
    # None: one pass over this process's share of the samples (images_per_step of them a step)
    steps_per_epoch: int | None = None
    # Images (frame, camera) per step and process: each image's GEP rays are rendered and its gradients
    # averaged with the others' before one parameter update (docs/training.md, Images per step).
    images_per_step: int = 1
    lr: float = 1e-3  # Adam's learning rate at the start
    weight_decay: float = 4e-5  # Adam's L2 penalty
    lr_decay_epochs: tuple[int, ...] = (15,)  # the learning rate is multiplied by lr_decay at these
    lr_decay: float = 0.1  # factor applied at each of lr_decay_epochs
    grad_clip: float | None = resumable(None)  # largest global gradient norm; None: no clipping
    background: str = "learned"  # missed rays: "learned" colour per camera, "black" (published), "mask"
    # A learned colour gain and bias per training camera (npva.model.avatar.CameraColour); cameras not
    # trained on see the avatar uncalibrated. Off in the published configuration.
    camera_colour: bool = False
    # Networks under autocast on CUDA: "bf16" or "fp32" (always fp32 on CPU).
    precision: str = resumable("bf16")
    device: str = resumable("auto")  # "auto" (CUDA when present), "cpu" or "cuda"
    # Data-loader processes per training process (0: load in the training process); None: 2 on the CPU,
    # on CUDA up to 6, as the CPU cores per training process allow (a GPU step outruns two loaders).
    workers: int | None = resumable(None)
    # With several CUDA processes: BatchNorm statistics over all of them.
    sync_batchnorm: bool = resumable(True)
    # Torch.use_deterministic_algorithms (slower; bitwise-repeatable runs).
    deterministic: bool = resumable(False)
    # On CUDA, let cuDNN time its convolution algorithms once and keep the fastest. Its trials allocate
    # large workspaces, which count towards the run's peak memory. Ignored under deterministic.
    cudnn_autotune: bool = resumable(False)
    log_every: int = resumable(50)  # steps between TensorBoard scalars
    checkpoint_every: int = resumable(1000)  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = resumable(2)  # newest checkpoints kept in RUN_DIR/checkpoints
    # Steps between validations (also before the first step); 0: only at the end.
    val_every: int = resumable(5000)
    val_frames: str = resumable("test")  # held-out frames: a split name or a "<seq> <frame>" list file
    val_cameras: tuple[str, ...] = resumable(())  # empty: the training cameras
    # (frame, camera) pairs rendered in full, spread evenly over the held-out ones.
    val_samples: int = resumable(4)
    # End (with a checkpoint) once this many steps are done; rerun resumes.
    stop_after: int | None = resumable(None)
    progress: bool = resumable(True)  # progress bar on the terminal
    # Time each stage of a step (synchronizes CUDA at stage boundaries).
    profile_stages: bool = resumable(False)
    # One process: draw the next step's pixels and start copying its sample to the device while the
    # device runs this step's backward pass. The same results either way; false: one step at a time.
    overlap_steps: bool = resumable(True)
    # On CUDA with one process: the encoder's and decoders' forward and backward passes are captured
    # once as CUDA graphs and replayed (npva.model.fast.graphs); false: run op by op.
    cuda_graphs: bool = resumable(True)


@dataclass
class ExperimentConfig:
    """Every setting of a training run; saved beside the run (config.yaml) and inside its checkpoints."""

    model: ModelConfig = field(default_factory=ModelConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    gep: GEPConfig = field(default_factory=GEPConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---- settings as YAML and as `--set key=value` ------------------------------------------------------

# Settings that are no longer set on their own, with what decides them now. Settings files and checkpoints
# that still name them load: the derived ones are dropped, the texture switches become model.texture.
RETIRED_SETTINGS = {
    "data.texture_size": "derived from model.texture_size",
    "render.decoder.feature_dim": "derived from model.feature_channels and model.texture",
    "model.tracked_uv_size": "replaced by the tracked mesh itself, whose triangles give the rays their UV",
    **{
        key: f"a mode of model.texture ({', '.join(TEXTURE_MODES)})"
        for key in ("model.texture_features", "render.decoder.colour_residual", "render.texture_lookup")
    },
}
_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")
_NONE_WORDS = ("none", "null", "~")


def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a settings dataclass's fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _optional_inner(annotation: Any) -> Any | None:
    """T for `T | None`, else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0]
    return None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """A value read from YAML as the field type `annotation`; ValueError naming `key` otherwise.

    Integers are accepted for float fields and for text fields (YAML reads camera names as numbers);
    text is accepted for float fields (YAML reads 5e-4, without a dot, as text)."""
    inner = _optional_inner(annotation)
    if inner is not None:
        return None if value is None else _coerce(value, inner, key)
    if dataclasses.is_dataclass(annotation):  # a mapping is merged by _merge, never coerced
        raise ValueError(f"{key}: expected a mapping of settings, got {value!r}")
    if typing.get_origin(annotation) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        (item_type, _ellipsis) = typing.get_args(annotation)
        return tuple(_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value))
    ok = False
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation is str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{key}: expected {_type_name(annotation)}, got {value!r}")
    return value


def _merge(config: Any, data: dict[str, Any], prefix: str = "") -> Any:
    """A copy of settings dataclass `config` with the entries of `data` (nested dicts for nested
    settings) replacing its values; unknown keys raise ValueError naming them."""
    types_by_name = _field_types(type(config))
    changes = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if key in RETIRED_SETTINGS:
            continue
        if name not in types_by_name:
            known = ", ".join(types_by_name)
            raise ValueError(f"unknown setting {key!r} (known here: {known})")
        annotation = types_by_name[name]
        if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
            changes[name] = _merge(getattr(config, name), value, key)
        else:
            changes[name] = _coerce(value, annotation, key)
    return dataclasses.replace(config, **changes)


def merge_settings(config: Any, data: dict[str, Any]) -> Any:
    """`config` (a settings dataclass) with the nested dict `data` laid over it, typed by its fields.

    Raises ValueError naming the dotted key of an unknown setting or of a value of the wrong type."""
    return _merge(config, _texture_mode_from_switches(data))


def _texture_mode_from_switches(data: dict[str, Any]) -> dict[str, Any]:
    """Settings `data` with the boolean texture switches of older runs (model.texture_features,
    render.decoder.colour_residual, render.texture_lookup) turned into the model.texture mode they
    meant; data without them is returned as it is."""
    sections = {
        "model": ("texture_features",),
        "render": ("texture_lookup",),
        "decoder": ("colour_residual",),
    }
    model, render = data.get("model"), data.get("render")
    decoder = render.get("decoder") if isinstance(render, dict) else None
    found = {
        name: bool(section[name])
        for key, section in (("model", model), ("render", render), ("decoder", decoder))
        if isinstance(section, dict)
        for name in sections[key]
        if name in section
    }
    if not any(found.values()) or (isinstance(model, dict) and "texture" in model):
        return data
    mode = (
        "lookup"
        if found.get("texture_lookup")
        else "corrected"
        if found.get("colour_residual")
        else "features"
    )
    return {**data, "model": {**(model if isinstance(model, dict) else {}), "texture": mode}}


def load_config(path: str | Path, base: Any | None = None) -> Any:
    """Settings from a YAML file laid over `base` (default ExperimentConfig()); a partial file changes
    only what it names. Raises FormatError naming the file for bad YAML, unknown keys or wrong types."""
    path = Path(path)
    base = ExperimentConfig() if base is None else base
    if not path.is_file():
        raise MissingFileError(path, "settings file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise FormatError(path, f"not valid YAML ({exc})", line=None if line is None else line + 1) from None
    if data is None:
        return base
    if not isinstance(data, dict):
        raise FormatError(path, f"expected a mapping of settings sections, got {type(data).__name__}")
    try:
        return merge_settings(base, data)
    except ValueError as exc:
        raise FormatError(path, str(exc)) from None


def save_config(config: Any, path: str | Path) -> None:
    """Write settings as YAML (atomically); load_config reads them back equal."""
    with atomic_open(path, "w") as f:
        yaml.safe_dump(_plain(to_dict(config)), f, sort_keys=False)


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, for YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _parse_text(text: str, annotation: Any, key: str) -> Any:
    """The command-line text of a value, as the field type `annotation`."""
    stripped = text.strip()
    inner = _optional_inner(annotation)
    if inner is not None:
        return None if stripped.lower() in _NONE_WORDS else _parse_text(text, inner, key)
    if typing.get_origin(annotation) is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        body = stripped[1:-1] if stripped[:1] + stripped[-1:] in ("[]", "()") else stripped
        items = [item.strip() for item in body.split(",") if item.strip()]
        return tuple(_parse_text(item, item_type, f"{key}[{i}]") for i, item in enumerate(items))
    if annotation is bool:
        if stripped.lower() in _TRUE_WORDS:
            return True
        if stripped.lower() in _FALSE_WORDS:
            return False
        raise ValueError(f"{key}: expected true or false, got {text!r}")
    if annotation in (int, float):
        try:
            return annotation(stripped)
        except ValueError:
            raise ValueError(f"{key}: expected {annotation.__name__}, got {text!r}") from None
    if annotation is str:
        return text
    raise ValueError(f"{key}: cannot be set from the command line (a {_type_name(annotation)})")


def apply_overrides(config: Any, assignments: Sequence[str]) -> Any:
    """`config` with `key=value` assignments applied in order; dotted keys name nested settings
    (train.lr=5e-4, render.query.k=4, data.cameras=400029,400012, loss.lpips_weights=none).

    Values are typed by the field: numbers, true/false, comma-separated lists, none for optional
    fields. Raises NpvaError naming the assignment for unknown keys and values of the wrong type."""
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise NpvaError(f"--set {assignment!r}: expected key=value, e.g. train.lr=5e-4")
        try:
            config = _assign(config, key.split("."), text)
        except ValueError as exc:
            raise NpvaError(f"--set {assignment!r}: {exc}") from None
    return config


def _assign(config: Any, path: list[str], text: str, prefix: str = "") -> Any:
    """`config` with the setting at `path` (its dotted key split) parsed from `text`."""
    types_by_name = _field_types(type(config))
    name = path[0]
    key = f"{prefix}.{name}" if prefix else name
    if key in RETIRED_SETTINGS:
        raise ValueError(f"{key!r} is no longer a setting: it is {RETIRED_SETTINGS[key]}")
    if name not in types_by_name:
        where = f"{prefix} has" if prefix else "sections are"
        raise ValueError(f"unknown setting {key!r} ({where}: {', '.join(types_by_name)})")
    annotation = types_by_name[name]
    if dataclasses.is_dataclass(annotation):
        if len(path) == 1:
            raise ValueError(f"{key!r} is a section; name one of its settings ({key}.<name>=value)")
        return dataclasses.replace(config, **{name: _assign(getattr(config, name), path[1:], text, key)})
    if len(path) > 1:
        raise ValueError(f"{key!r} is a setting, not a section")
    return dataclasses.replace(config, **{name: _parse_text(text, annotation, key)})


# ---- settings described, for `npva train --help` ----------------------------------------------------


def setting_docs(config_class: type) -> dict[str, str]:
    """What the source says of each field of a settings dataclass: the comment lines right above the
    field and the comment at the end of its line(s), joined into one text."""
    source = textwrap.dedent(inspect.getsource(config_class))
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, whole line)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            whole = token.line.strip().startswith("#")
            comments[token.start[0]] = (token.string.lstrip("#").strip(), whole)
    (class_node,) = ast.parse(source).body
    docs = {}
    for node in class_node.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in comments and comments[line][1]:
            above.insert(0, comments[line][0])
            line -= 1
        after = [comments[n][0] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        docs[node.target.id] = " ".join(above + after)
    return docs


def describe_settings(config: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value in `config`, description) of every setting of a settings dataclass, in field
    order; the description ends with "[resumable]" for settings a resumed run may change."""
    rows = []
    docs = setting_docs(type(config))
    for f in dataclasses.fields(config):
        key, value = f"{prefix}{f.name}", getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe_settings(value, f"{key}.")
        else:
            rows.append((key, value, docs[f.name] + (" [resumable]" if f.metadata.get(RESUMABLE) else "")))
    return rows


def settings_help(config: Any) -> str:
    """Every setting of `config` (an ExperimentConfig) as help text: one "key = value" line each, its
    description indented below."""
    lines = []
    for key, value, doc in describe_settings(config):
        shown = list(value) if isinstance(value, tuple) else value
        lines.append(
            f"  {key} = {yaml.safe_dump(shown, default_flow_style=True).strip().removesuffix('...').strip()}"
        )
        lines += textwrap.wrap(doc, 100, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)
