"""ResNet trunk in plain torch with torchvision's parameter names (``conv1``, ``bn1``, ``layer1.0.conv1`` …).

torchvision does not import on the target machines, so the Bottleneck (v1.5: stride on the 3x3 conv) is
re-implemented here; a torchvision-layout state dict loads into it unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from memvos.models.modules import conv_bn_act, enable_fused_activations_, fuse_conv_bn_


class Bottleneck(nn.Module):
    """torchvision ``Bottleneck``: 1x1 -> 3x3 (stride) -> 1x1, expansion 4, projection shortcut if needed."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def fuse_bn_(self) -> None:
        """Fold bn1..bn3 (and the shortcut's BN) into their convs, in place, for inference."""
        for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            bn = getattr(self, bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                fuse_conv_bn_(getattr(self, conv_name), bn)
                setattr(self, bn_name, nn.Identity())
        if self.downsample is not None and isinstance(self.downsample[1], nn.BatchNorm2d):
            fuse_conv_bn_(self.downsample[0], self.downsample[1])
            self.downsample[1] = nn.Identity()
        enable_fused_activations_(self)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = conv_bn_act(self.conv1, self.bn1, x)
        out = conv_bn_act(self.conv2, self.bn2, out)
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_layer(inplanes: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """One ResNet stage (torchvision ``_make_layer``) of ``blocks`` bottlenecks."""
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * Bottleneck.expansion),
        )
    layers = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


RESNET50_BLOCKS = (3, 4, 6, 3)


class ResNet50Trunk(nn.Module):
    """ResNet-50 up to ``layer3`` (stride 16, 1024 channels); torchvision names, no layer4/fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = make_layer(64, 64, RESNET50_BLOCKS[0])
        self.layer2 = make_layer(256, 128, RESNET50_BLOCKS[1], stride=2)
        self.layer3 = make_layer(512, 256, RESNET50_BLOCKS[2], stride=2)
