"""Perceptual loss: LPIPS-VGG from weight files on the machine, or ST-LPIPS from weights a package ships.

LPIPS (Zhang et al. 2018, v0.1) compares two images through an ImageNet-trained backbone: inputs in
[-1, 1] are shifted and scaled per channel, five ReLU feature maps are taken, each unit-normalized over
channels, their squared difference weighted per channel by a learned 1x1 layer, averaged over space and
summed over the five layers.

- "lpips-vgg": VGG16 (conv 3x3, max-pool 2x2 stride 2), features after relu1_2, relu2_2, relu3_3, relu4_3
  and relu5_3. Weights from LossConfig.lpips_weights or the environment variable NPVA_LPIPS_WEIGHTS: one
  or more .pth state dicts (joined by os.pathsep) that together hold the backbone (torchvision keys
  "features.<i>.weight", as in vgg16-397923af.pth, or the LPIPS package's "net.slice<k>.<i>.weight")
  and the linear layers ("lin<k>.model.1.weight", as in LPIPS's vgg.pth).
- "st-lpips-vgg" / "st-lpips-alex": shift-tolerant LPIPS (Ghildyal and Liu 2022), whose ImageNet-trained
  weights ship in the `stlpips-pytorch` wheel (stlpips_pytorch/weights/vST0.0/; a copy of such a file
  may also be named by its path, LossConfig.lpips_substitute). Its networks are
  anti-aliased: every stride-2 reduction is a stride-1 max-pool followed by a blur-pool (reflection
  padding of 2, a [1 2 1] x [1 2 1] / 16 filter per channel, stride 2); the AlexNet variant also runs
  its first convolution (11x11, padding 2) at stride 1, blur-pools it before the ReLU, and uses 3x3
  stride-1 max-pools. The package's code is not imported (it needs torchvision): only its weight files
  are read, into the definitions below, with every key required.

It is a related but different metric from LPIPS: `name` says which one a run used. Random weights are
never used: without either weight source, building the loss raises an error that says what to install.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from npva.config import LossConfig
from npva.errors import FormatError, MissingFileError, NpvaError

ENV_WEIGHTS = "NPVA_LPIPS_WEIGHTS"
ST_LPIPS_PACKAGE = "stlpips_pytorch"
ST_LPIPS_REQUIREMENT = "stlpips-pytorch==0.0.2"

# LPIPS input normalization after mapping [0, 1] to [-1, 1]: (x - shift) / scale per channel.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

_VGG16_CHANNELS = (
    64,
    64,
    "pool",
    128,
    128,
    "pool",
    256,
    256,
    256,
    "pool",
    512,
    512,
    512,
    "pool",
    512,
    512,
    512,
)


class BlurPool(nn.Module):
    """Anti-aliased stride-2 reduction: reflection pad 2, depthwise [1 2 1] x [1 2 1] / 16 blur, stride 2.

    (N, C, H, W) -> (N, C, H // 2 + 1, W // 2 + 1); H and W must be at least 3.
    """

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps) / 16
        self.register_buffer("filt", kernel.expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
        return F.conv2d(padded, self.filt, stride=2, groups=x.shape[1])


def _vgg16_layers(shift_tolerant: bool) -> tuple[list[nn.Module], list[int]]:
    """VGG16 feature layers up to relu5_3 and the indices of the five tapped ReLUs."""
    layers: list[nn.Module] = []
    taps: list[int] = []
    channels = 3
    for item in _VGG16_CHANNELS:
        if item == "pool":
            taps.append(len(layers) - 1)
            if shift_tolerant:
                layers += [nn.MaxPool2d(2, stride=1), BlurPool(channels)]
            else:
                layers.append(nn.MaxPool2d(2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
            channels = item
    taps.append(len(layers) - 1)
    return layers, taps


def _st_alexnet_layers() -> tuple[list[nn.Module], list[int]]:
    """Shift-tolerant AlexNet feature layers and the indices of the five tapped ReLUs."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 11, stride=1, padding=2),
        BlurPool(64),
        nn.ReLU(),  # relu1
        nn.MaxPool2d(3, stride=1),
        BlurPool(64),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(),  # relu2
        nn.MaxPool2d(3, stride=1),
        BlurPool(192),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(),  # relu3
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),  # relu4
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),  # relu5
    ]
    return layers, [2, 6, 10, 12, 14]


class LpipsNetwork(nn.Module):
    """Backbone (numbered layers) + one 1x1 linear head per tapped layer; distances per image pair.

    State dict keys: shift, scale (1, 3, 1, 1); backbone.<i>.weight|bias|filt; heads.<k>.weight.
    """

    def __init__(self, layers: list[nn.Module], taps: list[int]):
        super().__init__()
        self.backbone = nn.Sequential(*layers)
        self.taps = list(taps)
        widths = [self._width_at(layers, tap) for tap in taps]
        self.heads = nn.ModuleList(nn.Conv2d(width, 1, 1, bias=False) for width in widths)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).reshape(1, 3, 1, 1))

    @staticmethod
    def _width_at(layers: list[nn.Module], index: int) -> int:
        return next(m.out_channels for m in reversed(layers[: index + 1]) if isinstance(m, nn.Conv2d))

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalized (over channels) feature maps of images (N, 3, H, W) in [0, 1]."""
        x = (images * 2 - 1 - self.shift) / self.scale
        outputs = []
        for index, layer in enumerate(self.backbone[: self.taps[-1] + 1]):
            x = layer(x)
            if index in self.taps:
                outputs.append(x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + 1e-10))
        return outputs

    def forward(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """Distance (N,) between images (N, 3, H, W) and references (N or 1, 3, H, W) in [0, 1]; one
        reference is compared with every image (its features computed once)."""
        total = images.new_zeros(images.shape[0])
        for head, a, b in zip(self.heads, self.features(images), self.features(references), strict=True):
            total = total + head((a - b) ** 2).mean(dim=(1, 2, 3))
        return total


class PerceptualLoss(nn.Module):
    """Mean perceptual distance of image pairs; frozen weights (gradients flow to the images only).

    name: "lpips-vgg", "st-lpips-vgg" or "st-lpips-alex"; source: the weight files it was built from;
    min_size: the smallest image side the backbone accepts.
    """

    def __init__(self, network: LpipsNetwork, name: str, source: Sequence[Path], min_size: int):
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.name = name
        self.source = [Path(p) for p in source]
        self.min_size = min_size

    def distance(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """Per-pair distance (N,) of images (N, 3, H, W) and references (N, 3, H, W), or of every image
        and one reference (1, 3, H, W); or of two (3, H, W) images. Values in [0, 1]."""
        if images.dim() == 3:
            images = images[None]
        if references.dim() == 3:
            references = references[None]
        if (
            images.dim() != 4
            or images.shape[1] != 3
            or references.shape[1:] != images.shape[1:]
            or references.shape[0] not in (1, images.shape[0])
        ):
            raise ValueError(
                f"expected (N, 3, H, W) images and (N or 1, 3, H, W) references, got "
                f"{tuple(images.shape)} and {tuple(references.shape)}"
            )
        if min(images.shape[-2:]) < self.min_size:
            raise ValueError(
                f"{self.name} needs images of at least {self.min_size} px a side, got "
                f"{tuple(images.shape[-2:])}"
            )
        return self.network(images, references)

    def forward(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """Mean distance over the pairs: a scalar."""
        return self.distance(images, references).mean()

    def train(self, mode: bool = True) -> PerceptualLoss:
        """The weights stay in evaluation mode whatever the trainer's mode."""
        super().train(mode)
        self.network.eval()
        return self


# ---- loading weights -------------------------------------------------------------------------------

_BACKBONE_KEY = re.compile(r"^(?:features|net\.slice\d)\.(\d+)\.(weight|bias|filt)$")
_HEAD_KEY = re.compile(r"^lin(\d)\.model\.\d\.weight$")
_SCALING_KEY = re.compile(r"^scaling_layer\.(shift|scale)$")


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise MissingFileError(path, "perceptual loss weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for files that are not state dicts
        raise FormatError(path, f"expected a PyTorch state dict (.pth), cannot load it ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FormatError(path, f"expected a state dict, found {type(state).__name__}")
    return state


def _translate(state: dict[str, torch.Tensor], backbone_size: int) -> dict[str, torch.Tensor]:
    """LPIPS-style / torchvision-style keys -> LpipsNetwork keys; unrelated keys (classifier) dropped."""
    translated = {}
    for key, value in state.items():
        if match := _BACKBONE_KEY.match(key):
            if int(match[1]) < backbone_size:
                translated[f"backbone.{match[1]}.{match[2]}"] = value
        elif match := _HEAD_KEY.match(key):
            translated[f"heads.{match[1]}.weight"] = value
        elif match := _SCALING_KEY.match(key):
            translated[match[1]] = value
    return translated


def _load(network: LpipsNetwork, paths: Sequence[Path]) -> LpipsNetwork:
    """Load every parameter and buffer of `network` from the union of the files' state dicts."""
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        state.update(_translate(_read_state(path), len(network.backbone)))
    own = network.state_dict()
    for name in ("shift", "scale"):  # torchvision / LPIPS linear-layer files leave the constants out
        state.setdefault(name, own[name])
    where = os.pathsep.join(str(p) for p in paths)
    missing = sorted(set(own) - set(state))
    if missing:
        raise FormatError(where, f"perceptual weights lack {len(missing)} tensors, e.g. {missing[:4]}")
    wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise FormatError(where, f"{k}: expected shape {tuple(own[k].shape)}, found {tuple(state[k].shape)}")
    network.load_state_dict({k: state[k].float() for k in own}, strict=True)
    return network


def lpips_vgg(paths: Sequence[str | Path]) -> PerceptualLoss:
    """LPIPS-VGG from weight files holding, together, the VGG16 backbone and the linear layers."""
    paths = [Path(p) for p in paths]
    layers, taps = _vgg16_layers(shift_tolerant=False)
    return PerceptualLoss(_load(LpipsNetwork(layers, taps), paths), "lpips-vgg", paths, min_size=16)


def shipped_st_lpips_weights(backbone: str) -> Path | None:
    """The ST-LPIPS weight file of `backbone` ("vgg" or "alex") in the installed stlpips-pytorch
    package, found without importing it; None when the package is absent."""
    if backbone not in ("vgg", "alex"):
        raise ValueError(f"ST-LPIPS backbone must be vgg or alex, got {backbone!r}")
    spec = importlib.util.find_spec(ST_LPIPS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "weights" / "vST0.0" / f"{backbone}_shift_tolerant.pth"
        if path.is_file():
            return path
    return None


def st_lpips(backbone: str = "vgg", path: str | Path | None = None) -> PerceptualLoss:
    """ST-LPIPS with the `backbone` ("vgg" or "alex") from `path`, default the shipped weight file."""
    if path is None:
        path = shipped_st_lpips_weights(backbone)
        if path is None:
            raise NpvaError(
                f"ST-LPIPS weights not found: pip install {ST_LPIPS_REQUIREMENT} (or npva[lpips])"
            )
    if backbone == "vgg":
        layers, taps = _vgg16_layers(shift_tolerant=True)
        min_size = 18
    elif backbone == "alex":
        layers, taps = _st_alexnet_layers()
        min_size = 21
    else:
        raise ValueError(f"ST-LPIPS backbone must be vgg or alex, got {backbone!r}")
    network = _load(LpipsNetwork(layers, taps), [Path(path)])
    return PerceptualLoss(network, f"st-lpips-{backbone}", [Path(path)], min_size)


def st_lpips_backbone(path: str | Path) -> str:
    """The backbone ("vgg" or "alex") of an ST-LPIPS weight file, told by its first convolution."""
    first = _read_state(Path(path)).get("net.slice1.0.weight")
    kernel = None if first is None or first.dim() != 4 else tuple(first.shape[-2:])
    if kernel == (3, 3):
        return "vgg"
    if kernel == (11, 11):
        return "alex"
    raise FormatError(
        path, "expected ST-LPIPS weights whose first convolution is VGG's (3x3) or AlexNet's (11x11)"
    )


def make_perceptual_loss(config: LossConfig) -> PerceptualLoss | None:
    """The perceptual loss the settings ask for; None when its weight is 0.

    LPIPS-VGG when weight files are named (LossConfig.lpips_weights, else NPVA_LPIPS_WEIGHTS);
    otherwise ST-LPIPS: LossConfig.lpips_substitute is "vgg" or "alex" (the weights shipped in
    stlpips-pytorch) or the path of an ST-LPIPS weight file. Raises NpvaError when no weights exist.
    """
    if not config.lpips_weight:
        return None
    named = config.lpips_weights or os.environ.get(ENV_WEIGHTS)
    if named:
        return lpips_vgg([p for p in named.split(os.pathsep) if p])
    substitute = config.lpips_substitute
    if substitute not in ("vgg", "alex"):
        return st_lpips(st_lpips_backbone(substitute), substitute)
    if shipped_st_lpips_weights(substitute) is None:
        raise NpvaError(
            f"the perceptual loss (lpips_weight {config.lpips_weight:g}) needs weights: set "
            f"loss.lpips_weights or {ENV_WEIGHTS} to LPIPS-VGG weight files (torchvision's vgg16 "
            f"and LPIPS's vgg.pth), or pip install {ST_LPIPS_REQUIREMENT} for shipped ST-LPIPS "
            f"weights, or set loss.lpips_weight to 0"
        )
    return st_lpips(substitute)
